"""Planning, pure: Inventory to ConversionPlan (columns, features, rows, shards); config and layouts.
"""
