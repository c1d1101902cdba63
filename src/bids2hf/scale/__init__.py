"""[issue 14] Scaling out: the Dask engine (``dask_engine``: the driver's side; ``dask_tasks``: what workers run)."""
