"""`crystal-dask status`: a job's progress, stage by stage, and where its outputs are."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "Show a job's state, its stages and where its report and logs are."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", type=Path, help="the job's output folder, or its job file")
    p.add_argument("--json", action="store_true", help="print the raw status as JSON")


def run(args: argparse.Namespace) -> int:
    from crystal_dask.runtime.submit import format_status, status

    state = status(args.job)
    print(json.dumps(state, indent=2) if args.json else format_status(state))
    return 0
