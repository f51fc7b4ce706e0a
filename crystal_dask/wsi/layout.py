"""Corpus layout: find slides and their annotation files, and read patient and split from the paths.

NEDC:      <root>/svs/{train,dev,eval}/<patient8>_<subject8>/<session>/<tissue>/<stem>.{svs,csv,xml}
Fox Chase: <root>/svs/00000/<patient9>/<specimen>/<site>/<patient9>_<specimen>_..._t000.svs  (no split folder)
In both, the patient is the first field of the file stem.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from crystal_dask.vocab import SPLITS

SLIDE_SUFFIXES = frozenset({".svs", ".tif", ".tiff", ".ndpi"})
ANNOTATION_SUFFIXES = (".csv", ".xml")  # preference order when a slide has both


@dataclass(frozen=True)
class SlideEntry:
    slide: Path
    annotation: Path
    bname: str
    patient: str
    split: str | None  # None: the layout has no split folders


@dataclass
class Layout:
    entries: list[SlideEntry] = field(default_factory=list)
    # (path, reason) for files that pair with nothing or that the layout cannot place
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".ome.tif")] if name.lower().endswith(".ome.tif") else path.stem


def _split_of(path: Path, root: Path) -> str | None:
    parts = path.relative_to(root).parts
    for i, part in enumerate(parts[:-1]):
        if part in SPLITS and (i == 0 or parts[i - 1] == "svs"):
            return part
    return None


def discover(root: str | Path) -> Layout:
    """Walk a corpus root and pair every slide with its annotation file (same folder, same stem)."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"corpus root {root} is not a folder")
    by_folder: dict[Path, dict[str, dict[str, Path]]] = defaultdict(lambda: defaultdict(dict))
    for path in sorted(root.rglob("*")):
        suffix = ".ome.tif" if path.name.lower().endswith(".ome.tif") else path.suffix.lower()
        if path.is_file() and (suffix in SLIDE_SUFFIXES or suffix == ".ome.tif" or suffix in ANNOTATION_SUFFIXES):
            by_folder[path.parent][_stem(path)][suffix] = path

    layout = Layout()
    for folder in sorted(by_folder):
        for stem, files in sorted(by_folder[folder].items()):
            slides = [p for s, p in files.items() if s not in ANNOTATION_SUFFIXES]
            annotations = [files[s] for s in ANNOTATION_SUFFIXES if s in files]
            if stem.endswith("_REGIONDECISIONS"):
                layout.skipped += [(p, "model decisions, not annotations") for p in annotations + slides]
                continue
            if not slides:
                layout.skipped += [(p, "no slide with the same name in its folder") for p in annotations]
                continue
            if len(slides) > 1:
                layout.skipped += [(p, f"several slides share one name: {stem}") for p in slides + annotations]
                continue
            if not annotations:
                layout.skipped.append((slides[0], "no annotation file (.csv or .xml) with the same name"))
                continue
            used = f"another annotation file is used for this slide: {annotations[0].name}"
            layout.skipped += [(p, used) for p in annotations[1:]]
            patient = stem.split("_")[0]
            layout.entries.append(SlideEntry(slides[0], annotations[0], stem, patient, _split_of(slides[0], root)))
    return layout
