"""bids2hf: BIDS datasets to Hugging Face Parquet datasets and back."""
