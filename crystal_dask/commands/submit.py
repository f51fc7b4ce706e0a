"""`crystal-dask submit`: start a job detached (a SLURM batch job of its own, or a background process)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Start a job detached: on SLURM as its own batch job (never on the login node), else in the background."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", type=Path, help="job file, e.g. jobs/demo.yaml")
    p.add_argument("--cluster", type=Path, default=None, help="cluster.yaml (kind slurm: the driver is sbatch'ed)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the job's `out`)")
    p.add_argument("--driver-cores", type=int, default=1, help="SLURM: cores of the driver job")
    p.add_argument("--driver-memory", default="4G", help="SLURM: memory of the driver job")
    p.add_argument("--driver-walltime", default="24:00:00", help="SLURM: walltime of the driver job")
    p.add_argument("--driver-partition", default=None, help="SLURM: partition of the driver job")


def run(args: argparse.Namespace) -> int:
    from crystal_dask.runtime.submit import DriverResources, submit

    record = submit(args.job, args.cluster, args.out, DriverResources(
        args.driver_cores, args.driver_memory, args.driver_walltime, args.driver_partition))
    where = f"SLURM job {record['slurm_job_id']}" if record["kind"] == "slurm" else f"pid {record['pid']}"
    print(f"submitted {record['job']} as {where}; log: {record['log']}")
    print(f"follow it with: crystal-dask status {record['out']}")
    return 0
