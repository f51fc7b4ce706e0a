"""`crystal-dask report`: the published tables, figures, JSON and Markdown from a results file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "Write report.json, report.md and PNG figures from a results.json (written by `crystal-dask run`)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", type=Path, help="results.json of a job")
    p.add_argument("-o", "--out", type=Path, required=True, help="report folder")


def run(args: argparse.Namespace) -> int:
    from crystal_dask.stages.report import write_report

    paths = write_report(json.loads(args.results.read_text()), args.out)
    print(f"report: {paths['report.md']}")
    return 0
