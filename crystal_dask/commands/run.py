"""`crystal-dask run`: one job file, the whole experiment, on the cluster cluster.yaml describes."""

from __future__ import annotations

import argparse
from pathlib import Path

from crystal_dask.commands._common import add_cluster_argument, cluster_config, locked, progress_bar
from crystal_dask.stages import ORDER

HELP = (f"Run a job (jobs/<job>.yaml): the stages it asks for, in order: {', '.join(ORDER)}. Finished steps are "
        "skipped.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", type=Path, help="job file, e.g. jobs/demo.yaml")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the job's `out`, or runs/<name>)")
    p.add_argument("--dry-run", "-n", action="store_true",
                   help="list every step: run or skip, and why (a setting or an upstream step changed, outputs "
                        "missing or damaged, never run); starts no cluster and runs nothing")
    p.add_argument("--performance-reports", action="store_true",
                   help="write a Dask performance report per step that runs (<out>/reports/<step>.html; about a "
                        "second each)")
    add_cluster_argument(p)


def run(args: argparse.Namespace) -> int:
    from crystal_dask.pipeline import run_job
    from crystal_dask.stages import load_experiment
    from crystal_dask.status import starting

    # the job and the cluster file are checked together, before the lock, any output or any cluster
    job = load_experiment(args.job, args.out)
    if args.dry_run:
        cluster_config(args)  # checked as a run checks it, though none starts
        return dry_run_listing(job)
    with locked(args, job.out, "run") as connect:
        print(f"job {job.name}: outputs in {job.out}")
        # status.json says `starting` until the runner takes over, and why, if the cluster never comes
        with starting(job.out, job.name, job.source) as status, connect() as client:
            report = run_job(job, client, progress_bar(args), args.performance_reports, status)
    print(f"report: {report}")
    return 0


def dry_run_listing(job) -> int:
    """Print what `run` would do with each step, and why; a summary line last."""
    from crystal_dask.pipeline import dry_run

    decisions = dry_run(job)
    print(f"job {job.name}: outputs in {job.out} (dry run: nothing is run)")
    width = max((len(d.step.name) for d in decisions), default=0)
    for d in decisions:
        print(d.line(width))
    todo = sum(d.run for d in decisions)
    print(f"{todo} step(s) to run, {len(decisions) - todo} up to date")
    return 0
