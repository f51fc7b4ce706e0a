"""crystal_dask: NEDC breast corpora to zarr patch datasets and balanced random forests, on any Dask cluster."""

__version__ = "0.1.0"
