"""Formats shared by stages, with no Dask: atomic writes, table schemas, model files, the patch dataset."""
