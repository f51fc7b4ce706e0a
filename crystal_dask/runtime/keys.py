"""Task keys named after the stage: what the dashboard's task stream and progress bars show.

Dask names a task after the function or operation that made it (`getitem`, `shuffle-taker`,
`from_sequence-extract_chunk`, `finalize-hlgfinalizecompute`); the dashboard groups tasks by that prefix, so a
stage's work shows as dask's internals. `compute` runs collections with every key of their (optimized) graph
renamed to start with the stage's name, and returns futures as `client.compute` does; inside `named`, a library's
own `dask.compute` (dask-ml's PCA.fit) is renamed the same way.

A renamed key reads `<stage>-<kind>--<dask's name>`: the dashboard (dask.utils.key_split) keeps the leading words
made of letters only and stops at the first other word, here the empty one between the two dashes, so it groups
by `<stage>-<kind>` (`extract-chunk`, `features-chunk`, `train-fit-trees`, `evaluate-final`); dask's name
after it keeps the key unique.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Client, Future

# Words of a dask name that say how the task was made, not what it does: the bag's source partition, and the
# finalize step's own tag.
_PLUMBING = frozenset({"from_sequence", "hlgfinalizecompute"})
_WORD = re.compile(r"_*[A-Za-z][A-Za-z_]*")  # a name's word before its token (a function, an operation)
# The finalize step (into which dask fuses the last operation) as the dashboard can show it: key_split drops any
# 8-letter word starting with a-f (it takes it for a hex token), `finalize` among them.
FINAL = "final"


def _shown(word: str) -> bool:
    """Whether key_split keeps `word` in a group name (letters only, and not taken for a hex token)."""
    from dask.utils import key_split

    return key_split(f"x-{word}") == f"x-{word}"


def kind(name: str, stage: str) -> str:
    """What the task of dask name `name` does, in words joined by `-` that key_split keeps:
    `from_sequence-feature_chunk-<token>` in stage features -> `chunk` (the stage already says feature),
    `fit_trees-<token>` -> `fit-trees`, `reshape-sum-aggregate-finalize-hlgfinalizecompute-<token>` -> `final`."""
    labels = []
    for word in name.split("-"):
        if not _WORD.fullmatch(word):
            break
        labels.append(word)
    if "finalize" in labels:
        return FINAL
    words = [part for word in labels if word not in _PLUMBING for part in word.split("_") if _shown(part)]
    while words and stage.startswith(words[0]):
        words.pop(0)
    return "-".join(words) or "task"


def stage_key(key: Any, stage: str) -> Any:
    """`key` renamed `<stage>-<kind>--<its name>` (a name already `<stage>` or `<stage>-...` is the caller's own
    and kept)."""
    name = str(key[0] if isinstance(key, tuple) else key)
    named = name if name == stage or name.startswith(f"{stage}-") else f"{stage}-{kind(name, stage)}--{name}"
    return (named, *key[1:]) if isinstance(key, tuple) else named


def _renamed(expr: Any, stage: str) -> tuple[dict, dict]:
    """The graph of a (finalized, optimized) expression with every key through stage_key, and the renaming."""
    from dask._task_spec import convert_legacy_graph

    graph = convert_legacy_graph(dict(expr.__dask_graph__()))
    subs = {k: stage_key(k, stage) for k in graph}
    return {subs[k]: node.substitute(subs, key=subs[k]) for k, node in graph.items()}, subs


def compute(client: Client, collections: Sequence[Any], stage: str) -> list[Future]:
    """`client.compute(collections)` with every task key starting with `stage`: one future per collection, each
    holding what `collection.compute()` would return. The graph is the one client.compute makes (the collections
    optimized together, then finalized), only renamed."""
    from dask._expr import FinalizeCompute
    from dask.base import collections_to_expr
    from dask.core import flatten

    expr = FinalizeCompute(collections_to_expr(list(collections), True)).optimize()
    graph, subs = _renamed(expr, stage)
    return client.get(graph, [subs[k] for k in flatten(expr.__dask_keys__())], sync=False)


@contextmanager
def named(client: Client, stage: str) -> Iterator[None]:
    """Every `dask.compute` made inside (a library's, which names its own tasks) runs on `client` with its keys
    renamed as `compute` renames them: dask calls the configured scheduler with the optimized, finalized graph
    and its output keys, and takes the results in that order."""
    import dask

    def get(expr: Any, out: list, **_: Any) -> list:
        graph, subs = _renamed(expr, stage)
        return client.get(graph, [subs[k] for k in out])

    with dask.config.set(scheduler=get):
        yield
