"""`crystal-dask bench`: each benchmark against baselines measured in the same run (common: children, stats, tables)."""
