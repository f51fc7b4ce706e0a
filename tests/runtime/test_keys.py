"""runtime/keys.py: collections computed on a real cluster with every task key named after the stage, the same
values as dask's own compute."""

from __future__ import annotations

import dask.array as da
import dask.bag as db
import numpy as np
from dask.utils import key_split
from distributed import get_task_stream

from crystal_dask.runtime.keys import compute, stage_key


def test_stage_key_prefixes_names_once():
    assert stage_key(("getitem-abc", 0, 1), "evaluate") == ("evaluate-getitem-abc", 0, 1)
    assert stage_key("finalize-hlgfinalizecompute-abc", "evaluate") == "evaluate-finalize-hlgfinalizecompute-abc"
    assert stage_key("evaluate-predict-abc", "evaluate") == "evaluate-predict-abc"


def test_every_task_is_named_after_the_stage_and_values_are_dask_own(client):
    x = da.from_array(np.arange(200.0).reshape(40, 5), chunks=(8, 5))
    rows = x[np.array([0, 3, 9, 17, 33])].reshape(5, 5)  # fancy indexing: shuffle-taker, getitem, ...
    total = (x * 2).sum(axis=0)
    bag = db.from_sequence(range(6), npartitions=3).map(lambda v: v + 1)
    with get_task_stream(client) as stream:
        futures = compute(client, [rows, total, bag], "evaluate")
        got = client.gather(futures)
    assert np.array_equal(got[0], rows.compute()) and np.array_equal(got[1], total.compute())
    assert got[2] == [1, 2, 3, 4, 5, 6]
    prefixes = {key_split(t["key"]) for t in stream.data}
    assert len(prefixes) > 3 and all(p.startswith("evaluate") for p in prefixes), prefixes
    assert all(f.key.startswith("evaluate-") for f in futures), [f.key for f in futures]
