"""commands/_common.py: `locked`, the order of every verb that writes a folder on a cluster: the cluster file
checked, then the folder's lock, then (only when the block asks) the cluster."""

from __future__ import annotations

import argparse

import pytest

from crystal_dask.commands._common import locked
from crystal_dask.runtime.cluster import ClusterConfigError
from crystal_dask.runtime.lock import read_lock


def test_the_cluster_file_is_checked_before_the_lock_and_no_cluster_starts_unasked(tmp_path):
    out = tmp_path / "out"
    bad = tmp_path / "cluster.yaml"
    bad.write_text("kind: local\nworkers: 0\n")
    with pytest.raises(ClusterConfigError, match="workers"), locked(argparse.Namespace(cluster=bad), out, "extract"):
        raise AssertionError("the block ran with a bad cluster file")
    assert not out.exists()  # no lock taken, nothing written
    with locked(argparse.Namespace(cluster=None), out, "extract") as connect:
        assert read_lock(out)["what"] == "crystal-dask extract"
        assert callable(connect)  # the block starts the cluster, once its inputs are read: here it never does
    assert not out.exists()  # released, and the folder it made removed again
