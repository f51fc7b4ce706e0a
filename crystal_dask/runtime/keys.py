"""Task keys named after the stage: what the dashboard's task stream and progress bars show.

Dask names a task after the function or operation that made it (`getitem`, `shuffle-taker`, `from_sequence`,
`finalize-hlgfinalizecompute`); the dashboard groups tasks by that prefix, so a stage's work shows as dask's
internals. `compute` runs collections with every key of their (optimized) graph renamed to start with the stage's
name (`evaluate-getitem`, `evaluate-shuffle-taker`), and returns futures as `client.compute` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Client, Future


def stage_key(key: Any, stage: str) -> Any:
    """`key` with its name starting `<stage>-` (a name already starting with the stage is kept)."""
    name = key[0] if isinstance(key, tuple) else key
    named = name if str(name).startswith(stage) else f"{stage}-{name}"
    return (named, *key[1:]) if isinstance(key, tuple) else named


def compute(client: Client, collections: Sequence[Any], stage: str) -> list[Future]:
    """`client.compute(collections)` with every task key starting with `stage`: one future per collection, each
    holding what `collection.compute()` would return. The graph is the one client.compute makes (the collections
    optimized together, then finalized), only renamed."""
    from dask._expr import FinalizeCompute
    from dask._task_spec import convert_legacy_graph
    from dask.base import collections_to_expr
    from dask.core import flatten

    expr = FinalizeCompute(collections_to_expr(list(collections), True)).optimize()
    graph = convert_legacy_graph(dict(expr.__dask_graph__()))
    subs = {k: stage_key(k, stage) for k in graph}
    renamed = {subs[k]: node.substitute(subs, key=subs[k]) for k, node in graph.items()}
    return client.get(renamed, [subs[k] for k in flatten(expr.__dask_keys__())], sync=False)
