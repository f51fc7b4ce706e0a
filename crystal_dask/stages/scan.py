"""Stage scan: one row per usable annotated region (REGIONS schema), one reject row per unusable input.

Runs on the client and reads no pixels: only annotation files and slide headers (size, MPP).
Outputs: <out>/scan/<corpus>/regions.parquet and rejects.parquet (the step's product is that folder); redone when
the labels or split_seed change, or any file of the corpus (its synth step, or its files' listing on disk).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from crystal_dask.experiment import CorpusSpec, Experiment
from crystal_dask.stages import synth
from crystal_dask.stages.base import Context, Step, fingerprint
from crystal_dask.store.schema import REGIONS, REJECTS, make_table, read_table, reject_row, write_table
from crystal_dask.vocab import DEFAULT_LABELS, SPLIT_FRACTIONS, LabelMap
from crystal_dask.wsi.annotations import AnnotationFile, Issue, check_bounds, read_annotations
from crystal_dask.wsi.layout import SlideEntry, discover
from crystal_dask.wsi.slides import Slide, SlideError
from crystal_dask.wsi.split import split_patients

NAME = "scan"
log = logging.getLogger("crystal_dask.pipeline")

_REGION_PREFIX = re.compile(r"^region \d+: ")
_NUMBER = re.compile(r"\d+")
_UNCLOSED = re.compile(r" \([^)]*$")  # "unknown label 'x' (known" once the list after ': ' is cut


@dataclass
class ScanResult:
    regions: pa.Table  # REGIONS
    rejects: pa.Table  # REJECTS
    notes: list[Issue] = field(default_factory=list)  # facts worth telling that are not faults (MPP unknown)

    def summary(self) -> dict:
        t = self.regions
        per_split = Counter(zip(t.column("split").to_pylist(), t.column("label").to_pylist(), strict=True))
        by_split: dict[str, dict[str, int]] = defaultdict(dict)
        for (s, label), n in sorted(per_split.items()):
            by_split[s][label] = n
        return {
            "regions": t.num_rows,
            "slides": len(set(t.column("slide").to_pylist())),
            "patients": len(set(t.column("patient").to_pylist())),
            "rejects": self.rejects.num_rows,
            "notes": len(self.notes),
            "by_split": dict(by_split),
            "reject_reasons": dict(Counter(map(reason_kind, self.rejects.column("reason").to_pylist()))),
        }


def reason_kind(reason: str) -> str:
    """A reject reason without what names one region or file, to count reasons by kind.

    Reasons read "<kind>: <details>"; csv faults found per region start with "region N: ".
    """
    kind = _REGION_PREFIX.sub("", reason).split(": ", 1)[0]
    return _UNCLOSED.sub("", _NUMBER.sub("N", kind))


def _read(entry: SlideEntry, labels: LabelMap) -> AnnotationFile:
    """The annotation file of `entry`; whatever its content, a fault of it never ends the scan of the others.

    The readers turn every fault they know into an Issue; one they do not know becomes a whole-file reject here
    (logged with its traceback), so that the other files are still scanned.
    """
    try:
        return read_annotations(entry.annotation, labels)
    except Exception as exc:  # noqa: BLE001 - the boundary that keeps one file's fault to that file
        log.warning("scan: reading %s failed", entry.annotation, exc_info=True)
        reason = f"cannot read the file: {type(exc).__name__}: {exc}".splitlines()[0]
        return AnnotationFile(entry.annotation, None, errors=[Issue(str(entry.annotation), "", reason)])


def _scan_entry(entry: SlideEntry, corpus: str, labels: LabelMap) -> tuple[list[dict], list[dict], list[Issue]]:
    """Regions, rejects and notes of one slide + annotation pair; the split is filled in later when the path has
    none."""
    ann = _read(entry, labels)
    rejects = [reject_row(NAME, i.source, i.location, i.reason, i.region_id) for i in ann.errors]
    notes = ann.notes
    try:
        with Slide(entry.slide) as slide:
            width, height, mpp = slide.width, slide.height, slide.mpp
    except SlideError as exc:
        rejects += [reject_row(NAME, entry.slide, f"region {r.region_id}", f"slide unreadable: {exc}", r.region_id)
                    for r in ann.regions]
        if not ann.regions:
            rejects.append(reject_row(NAME, entry.slide, "", f"slide unreadable: {exc}"))
        return [], rejects, notes

    if not ann.regions and not any(i.region_id is not None or i.location == "" for i in ann.errors):
        # nothing named a region (nor was the whole file refused): the slide would vanish without a word
        rejects.append(reject_row(NAME, entry.annotation, "", f"no regions: {entry.annotation.name} names none, "
                                                              f"so slide {entry.slide.name} contributes nothing"))
    header = ann.header
    if header is not None and (header.width, header.height) != (width, height):
        reason = (f"header disagrees with the slide: {header.width}x{header.height} pixels in "
                  f"{entry.annotation.name}, {width}x{height} in {entry.slide.name}")
        return [], rejects + [reject_row(NAME, entry.annotation, f"region {r.region_id}", reason, r.region_id)
                              for r in ann.regions], notes
    if mpp is None and header is not None:
        mpp = header.mpp  # the slide records none: the annotation's header is the best we have
    rows = []
    for r in ann.regions:
        reason = check_bounds(r, width, height)
        if reason:
            rejects.append(reject_row(NAME, entry.annotation, f"region {r.region_id}", reason, r.region_id))
            continue
        cls, crystal = labels.resolve(r.label)
        x0, y0, x1, y1 = r.bbox
        rows.append({
            "corpus": corpus, "split": entry.split, "patient": entry.patient, "slide": str(entry.slide),
            "annotation": str(entry.annotation), "bname": entry.bname, "region_id": r.region_id,
            "label": r.label or "null", "cls": cls, "crystal": crystal, "tissue": r.tissue,
            "x0": x0, "y0": y0, "x1": x1, "y1": y1, "polygon_x": list(r.x), "polygon_y": list(r.y),
            "mpp": mpp, "slide_width": width, "slide_height": height,
        })
    return rows, rejects, notes


def scan(
    root: str | Path,
    *,
    corpus: str | None = None,
    labels: LabelMap = DEFAULT_LABELS,
    split_fractions: Sequence[float] = SPLIT_FRACTIONS,
    split_seed: int = 0,
    threads: int = 8,
) -> ScanResult:
    """Scan a corpus root in the NEDC or Fox Chase layout."""
    root = Path(root).resolve()
    layout = discover(root)
    corpus = corpus or root.name
    with ThreadPoolExecutor(threads) as pool:  # slide headers and csv parsing: I/O-bound
        results = list(pool.map(lambda e: _scan_entry(e, corpus, labels), layout.entries))
    rows = [r for rs, _, _ in results for r in rs]
    rejects = [reject_row(NAME, p, "", reason) for p, reason in layout.skipped] + [x for _, rj, _ in results
                                                                                   for x in rj]
    notes = [n for _, _, ns in results for n in ns]

    # A patient whose slides carry no split folder gets a patient-level split (spreading crystalline rows apart
    # from the others of their class); a patient found in two split folders is an error for its later slides
    # (no patient in two sets).
    fixed: dict[str, str] = {}
    for e in layout.entries:
        if e.split is not None:
            fixed.setdefault(e.patient, e.split)
    unsplit: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        if r["split"] is None and r["patient"] not in fixed:
            unsplit[r["patient"]][r["cls"] + ("+crystal" if r["crystal"] else "")] += 1
    assigned = {**split_patients(unsplit, split_fractions, split_seed), **fixed} if unsplit else fixed
    kept = []
    for r in rows:
        split = assigned[r["patient"]]
        if r["split"] is not None and r["split"] != split:
            rejects.append(reject_row(NAME, r["slide"], f"region {r['region_id']}",
                                   f"patient in two splits: {r['patient']} is also in {split!r}",
                                   r["region_id"]))
            continue
        kept.append({**r, "split": split})
    kept.sort(key=lambda r: (r["split"], r["patient"], r["slide"], r["region_id"]))
    return ScanResult(make_table(REGIONS, kept), make_table(REJECTS, rejects), notes)


# ----------------------------------------------------------------------------------------------- the stage
def output_dir(exp: Experiment, corpus: str) -> Path:
    return exp.out / "scan" / corpus


def read_output(folder: Path) -> ScanResult:
    """A finished scan (the folder a scan step makes, its product), as later stages read it."""
    return ScanResult(read_table(folder / "regions.parquet", REGIONS), read_table(folder / "rejects.parquet", REJECTS))


def corpus_listing(root: Path) -> list[tuple[str, int, int]]:
    """Names, sizes and mtimes of a corpus's files: a scan is redone when any of them changes."""
    return [(str(p.relative_to(root)), (st := p.stat()).st_size, st.st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()]


def steps(ctx: Context) -> Iterator[Step]:
    exp = ctx.experiment
    labels = {"remap": dict(exp.labels.remap), "crystalline": dict(exp.labels.crystalline)}
    for c in exp.corpora.values():
        folder = output_dir(exp, c.name)
        settings = {"labels": labels, "split_seed": c.split_seed}
        if c.synth is None:  # a corpus on disk is an input: its files' names, sizes and mtimes
            settings["corpus"] = {"path": str(c.path), "files": fingerprint(corpus_listing(c.path))}
        reads = (f"{synth.NAME}:{c.name}",) if c.synth is not None else ()

        def run(c=c, folder=folder, reads=reads) -> None:
            _run(ctx.output(reads[0]) if reads else c.path, c, exp.labels, folder)

        yield Step(f"{NAME}:{c.name}", reads, settings, (folder / "regions.parquet", folder / "rejects.parquet"), run,
                   product=folder)


def _run(root: Path, c: CorpusSpec, labels: LabelMap, folder: Path) -> None:
    result = scan(root, corpus=c.name, labels=labels, split_seed=c.split_seed)
    write_table(result.regions, folder / "regions.parquet", REGIONS)
    write_table(result.rejects, folder / "rejects.parquet", REJECTS)
    log.info("scan %s: %s", c.name, json.dumps(result.summary()))
    for n in result.notes:
        log.info("scan note: %s", n)
