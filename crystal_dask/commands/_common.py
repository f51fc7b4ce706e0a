"""Options and helpers shared by the verbs that run on a Dask cluster."""

from __future__ import annotations

import argparse
import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # distributed costs 0.2 s to import: `run --dry-run` and the error paths need none
    from distributed import Client

    from crystal_dask.runtime.cluster import ClusterConfig

    Connect = Callable[[], contextlib.AbstractContextManager[Client]]


def add_cluster_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", type=Path, default=None,
                   help="cluster.yaml saying where to run (default: an embedded LocalCluster)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress at all (by default a bar on a terminal, a few log lines elsewhere)")


def cluster_config(args: argparse.Namespace) -> ClusterConfig:
    """The --cluster file, read and checked (None: the local defaults): a bad file is one line naming file and
    key, and leaves nothing."""
    from crystal_dask.runtime.cluster import load_cluster_config

    return load_cluster_config(args.cluster)


@contextlib.contextmanager
def client_for(cluster: ClusterConfig) -> Iterator[Client]:
    """A Client on the checked `cluster` (runtime.cluster.connect), imported only when a verb needs one."""
    from crystal_dask.runtime.cluster import connect

    with connect(cluster) as client:
        yield client


@contextlib.contextmanager
def locked(args: argparse.Namespace, out: Path, verb: str) -> Iterator[Connect]:
    """The order of every verb that writes a folder on a cluster: its --cluster file checked (after the settings
    the verb checks first), then <out>'s lock taken (a second command on the folder is refused at once: no slow
    import, no cluster, no status or output yet), then the block, which reads the verb's inputs and starts the
    cluster by entering what this yields (`with connect() as client`) once they are all there."""
    from crystal_dask.runtime.lock import hold

    cluster = cluster_config(args)
    with hold(out, f"crystal-dask {verb}"):
        yield functools.partial(client_for, cluster)


def progress_bar(args: argparse.Namespace):
    """A callable that shows progress over futures fitting the output (crystal_dask.progress); None with
    --no-progress."""
    from crystal_dask.progress import display

    return display(not getattr(args, "no_progress", False))
