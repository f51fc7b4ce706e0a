"""Stage synth: generate the corpora a job asks for (`corpora.<name>.synth`) in the real NEDC layout.

Outputs: <out>/corpora/<name>/ with its corpus.json manifest (written last); the step's product is that folder.
A corpus on disk (`path`) has no step.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from crystal_dask.experiment import CorpusSpec, Experiment
from crystal_dask.stages.base import Context, Step

NAME = "synth"


def corpus_root(exp: Experiment, corpus: CorpusSpec) -> Path:
    """Where a corpus's slides are: its own folder, or where this stage generates it."""
    return corpus.path if corpus.path is not None else exp.out / "corpora" / corpus.name


def steps(ctx: Context) -> Iterator[Step]:
    for c in ctx.experiment.corpora.values():
        if c.synth is None:
            continue
        root = corpus_root(ctx.experiment, c)
        args = dict(c.synth)
        yield Step(f"{NAME}:{c.name}", (), {"synth": args}, (root / "corpus.json",),
                   lambda root=root, args=args: regenerate(root, args), product=root)


def regenerate(root: Path, args: Mapping[str, Any]) -> None:
    """Generate a corpus afresh: a partial one (an interrupted synth) or one from other settings is removed."""
    from crystal_dask.synthetic.corpus import generate_corpus

    shutil.rmtree(root, ignore_errors=True)
    kw = dict(args)
    if "slide_size" in kw:
        kw["slide_size"] = tuple(kw["slide_size"])
    generate_corpus(root, **kw)
