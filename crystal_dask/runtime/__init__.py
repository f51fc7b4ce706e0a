"""Where the work runs: the Dask cluster connection, per-stage allocator settings, batch submission of the driver."""
