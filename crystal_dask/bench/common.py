"""Measuring helpers shared by the benchmarks: repeated timings summarised by median/min/max, the exact peak
resident memory of this process, of every Dask worker and of child processes, children released together on a
signal, the small real-patch dataset the train and evaluate benchmarks start from, and plain-text tables.

Peak memory is the kernel's high-water mark (VmHWM in /proc/<pid>/status), reset before each measurement by
writing 5 to /proc/<pid>/clear_refs (Linux): exact, with no sampling thread to miss a short spike. Without /proc
the lifetime peak from getrusage is reported instead, which cannot be reset.

A child process runs `prepare(**kwargs)` from a named module (imports and loading, untimed), says it is ready,
waits for the parent's go, runs the callable that `prepare` returned under a timer and reports its seconds and
its own peak RSS as JSON. Run as `python -m crystal_dask.bench.common child <module:function> <kwargs-json>`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed import Client

import crystal_dask

READY = "crystal-dask-bench: ready"
MIB = 1024 * 1024


# ------------------------------------------------------------------------------------------------ timings
@dataclass(frozen=True)
class Stat:
    """Repeated measurements of one quantity."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    def as_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.min, "max": self.max, "values": list(self.values)}


def fmt_stat(s: dict[str, float]) -> str:
    """`median (min-max)` of a Stat.as_dict(), with two decimals below 10 and one above."""
    d = 2 if s["median"] < 10 else 1
    return f"{s['median']:.{d}f} ({s['min']:.{d}f}-{s['max']:.{d}f})"


def rate(count: int, seconds: Sequence[float]) -> Stat:
    """Items per second of each repeat."""
    return Stat(tuple(count / s for s in seconds))


def ratio(a: Stat, b: Stat) -> float:
    """Ratio of the medians: how many times `a` is `b`."""
    return a.median / b.median


# ------------------------------------------------------------------------------------------------ memory
def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark; False where the kernel offers no way to."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss() -> int:
    """This process's peak resident memory in bytes since the last reset (or since it started)."""
    try:
        found = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        found = None
    if found:
        return int(found.group(1)) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def worker_names(client: Client) -> dict[str, str]:
    """Worker address -> `worker-<name>`, for readable tables."""
    return {addr: f"worker-{w.get('name', addr)}" for addr, w in client.scheduler_info()["workers"].items()}


@contextlib.contextmanager
def peaks(client: Client | None = None) -> Iterator[dict[str, int]]:
    """Peak RSS (bytes) of this process (`client`, which also hosts a LocalCluster's scheduler) and of every
    worker of `client` during the block; the dict is filled in when the block ends."""
    out: dict[str, int] = {}
    reset_peak_rss()
    if client is not None:
        client.run(reset_peak_rss)
    yield out
    out["client"] = peak_rss()
    if client is not None:
        names = worker_names(client)
        out |= dict(sorted((names[a], v) for a, v in client.run(peak_rss).items()))


def cpu_seconds() -> float:
    """CPU seconds (user + system, every thread) this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def cpu_used(client: Client | None = None) -> Iterator[dict[str, float]]:
    """CPU seconds this process (`client`, with a LocalCluster's scheduler) and every worker of `client` used
    during the block: what a contender costs the machine's cores, which a loaded machine inflates far less than
    its wall time. The dict (`total` included) is filled in when the block ends."""
    out: dict[str, float] = {}
    before = client.run(cpu_seconds) if client is not None else {}
    start = cpu_seconds()
    yield out
    out["client"] = cpu_seconds() - start
    if client is not None:
        names = worker_names(client)
        out |= dict(sorted((names[a], v - before.get(a, 0.0)) for a, v in client.run(cpu_seconds).items()))
    out["total"] = sum(out.values())


def merge_peaks(runs: Sequence[dict[str, int]]) -> dict[str, int]:
    """Largest peak of each process over repeats."""
    out: dict[str, int] = {}
    for run in runs:
        for k, v in run.items():
            out[k] = max(out.get(k, 0), v)
    return out


def fmt_bytes(n: float) -> str:
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / MIB:.0f} MiB"


# ------------------------------------------------------------------------------------------------ children
@dataclass(frozen=True)
class ChildResult:
    seconds: float  # the timed work, measured inside the child
    peak_rss: int  # the child's own peak over its whole life (imports and loading included)
    result: Any  # what the work returned (JSON)


def _child_env() -> dict[str, str]:
    """A plain process's environment: without the variables Dask's nanny sets for its workers (a LocalCluster
    also writes them into its parent's os.environ; MALLOC_TRIM_THRESHOLD_ alone slows image code ~1.7x), and
    with this package importable even when it runs from a source tree."""
    import dask.config

    worker_only = dask.config.get("distributed.nanny.pre-spawn-environ", {})
    env = {k: v for k, v in os.environ.items() if k not in worker_only}
    src = str(Path(crystal_dask.__file__).resolve().parents[1])
    path = env.get("PYTHONPATH")
    return {**env, "PYTHONPATH": src + (os.pathsep + path if path else "")}


def run_together(target: str, kwargs_list: Sequence[dict[str, Any]]) -> tuple[float, list[ChildResult]]:
    """Start one child per kwargs running `target` ("module:function"), wait until all have prepared, release
    them at once. Returns the wall seconds from release until the last child reported, and each child's result."""
    procs = [subprocess.Popen([sys.executable, "-m", "crystal_dask.bench.common", "child", target, json.dumps(kw)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_child_env())
             for kw in kwargs_list]
    try:
        for p in procs:
            line = p.stdout.readline().strip()
            if line != READY:
                raise RuntimeError(f"bench child {target} failed while preparing (exit {p.wait()}): {line!r}")
        start = time.perf_counter()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        lines = [p.stdout.readline() for p in procs]  # the report, before the interpreter's slow exit
        wall = time.perf_counter() - start
        for p in procs:
            p.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, line in zip(procs, lines, strict=True):
        if p.returncode != 0 or not line.startswith("{"):
            raise RuntimeError(f"bench child {target} exited with {p.returncode} after {line!r}; its stderr is above")
    return wall, [ChildResult(**json.loads(line)) for line in lines]


def _child_main(target: str, kwargs_json: str) -> None:
    module, name = target.split(":")
    prepare: Callable[..., Callable[[], Any]] = getattr(importlib.import_module(module), name)
    work = prepare(**json.loads(kwargs_json))
    print(READY, flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss": peak_rss(), "result": result}), flush=True)


# ------------------------------------------------------------------------------------------------ workdir
@contextlib.contextmanager
def workdir(path: Path | None, prefix: str) -> Iterator[Path]:
    """`path` (created, kept) or a temporary folder deleted afterwards."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path.resolve()
        return
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def corpus(root: Path, **kwargs: Any) -> tuple[Path, dict[str, Any]]:
    """A generated corpus under root/corpus-<hash of its arguments>, reused when a finished one is there.

    Returns its folder and its manifest (corpus.json, written last by generate_corpus)."""
    from crystal_dask.synthetic.corpus import generate_corpus

    key = json.dumps(kwargs, sort_keys=True, default=list).encode()
    folder = root / f"corpus-{hashlib.sha256(key).hexdigest()[:12]}"
    if not (folder / "corpus.json").exists():
        shutil.rmtree(folder, ignore_errors=True)
        generate_corpus(folder, **kwargs)
    return folder, json.loads((folder / "corpus.json").read_text())


# Windows of 256 px every 128 px (half overlap, NEDC's frame/window scheme) give ~300 real patches per
# generated 6000x4000 slide, so a dataset of a few thousand rows needs only a few slides to paint.
WINDOW_SETTINGS = {"mode": "window", "window_size": 256.0, "window_step": 128.0}
_WINDOWS_PER_SLIDE = 250  # conservative yield of one 6000x4000 slide with FCBR's ~14 regions


def patch_dataset(root: Path, client: Client, rows: int, seed: int = 0, slide_size: tuple[int, int] = (6000, 4000)):
    """An extracted dataset (crystal_dask.store.dataset.Dataset) of at least `rows` real patches, when the corpus
    yields them: a generated FCBR-like corpus cut into windows, every class in every split."""
    from crystal_dask.stages.extract import extract
    from crystal_dask.stages.scan import scan
    from crystal_dask.wsi.patches import PatchSettings

    per_slide = _WINDOWS_PER_SLIDE * slide_size[0] * slide_size[1] / (6000 * 4000)
    slides = max(2, math.ceil(rows / per_slide))
    folder, _ = corpus(root, flavour="fcbr", patients=slides, slides_per_patient=1, regions_per_slide=14,
                       crystalline=max(3, slides), slide_size=slide_size, seed=seed)
    return extract(scan(folder).regions, root / f"windows-{folder.name}", PatchSettings(**WINDOW_SETTINGS), client)


# ------------------------------------------------------------------------------------------------ output
def table(rows: Sequence[Sequence[Any]]) -> str:
    """Rows of cells as aligned plain text (first row is the header, underlined); numeric columns right-aligned."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    numeric = [all(r[i][:1].isdigit() for r in cells[1:]) for i in range(len(widths))]

    def line(r: list[str]) -> str:
        text = "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric, strict=True))
        return text.rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *map(line, cells[1:])])


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "child":
        sys.exit("usage: python -m crystal_dask.bench.common child <module:function> <kwargs-json>")
    _child_main(sys.argv[2], sys.argv[3])
