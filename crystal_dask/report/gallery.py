"""The patch gallery: example patches per class (crystalline rows framed) and the most confident errors, read
from the dataset's zarr `pixels` by the rows of a predictions table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crystal_dask.report.markdown import GALLERY_PER_CLASS
from crystal_dask.store.dataset import PIXELS, Dataset
from crystal_dask.store.schema import PREDICTIONS, read_table

GALLERY_ERRORS = 6  # most confident errors shown (one row, as wide as the class rows)
THUMB = 96  # side of a gallery thumbnail, px (a 256 px patch is area-averaged down to it)
BORDER = 4  # px of the frame around a crystalline thumbnail
CRYSTAL_RGB = (230, 0, 126)  # the frame's colour (magenta): no grey patch pixel and no text has it
_GAP, _CAPTION, _LEFT, _HEADER, _DPI = 8, 28, 96, 26, 100


def _spread(idx: np.ndarray, k: int) -> np.ndarray:
    """k entries of idx, evenly spaced from first to last (distinct: the spacing is at least 1)."""
    if k <= 0:
        return idx[:0]
    return idx[np.linspace(0, len(idx) - 1, k).round().astype(int)]


def choose_examples(cls: np.ndarray, crystal: np.ndarray, rows: np.ndarray, order: Sequence[str],
                    per_class: int = GALLERY_PER_CLASS) -> dict[str, list[int]]:
    """Up to `per_class` rows of each class present, in `order` (others after, sorted); deterministic.

    Half the places go to crystalline rows when the class has any (more when plain rows run short), so a
    pathologist sees both kinds; within each kind the rows are spread evenly over the row order, which spreads
    them over slides and patients instead of taking the first slide's.
    """
    present = set(cls.tolist())
    codes = [c for c in order if c in present] + sorted(present - set(order))
    out: dict[str, list[int]] = {}
    for code in codes:
        idx = np.flatnonzero(cls == code)
        idx = idx[np.argsort(rows[idx], kind="stable")]
        cry, plain = idx[crystal[idx]], idx[~crystal[idx]]
        n_cry = min(len(cry), max(per_class // 2, per_class - len(plain)))
        n_plain = min(len(plain), per_class - n_cry)
        out[code] = sorted(int(rows[i]) for i in np.concatenate([_spread(cry, n_cry), _spread(plain, n_plain)]))
    return out


def confident_errors(rows: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray,
                     k: int = GALLERY_ERRORS) -> np.ndarray:
    """Indices of the k wrong predictions with the highest top probability (ties: lower row first)."""
    wrong = np.flatnonzero(y_true != y_pred)
    conf = proba[wrong].max(axis=1)
    return wrong[np.lexsort((rows[wrong], -conf))][:k]


def thumbnail(patch: np.ndarray, side: int = THUMB) -> np.ndarray:
    """A uint8 grey patch area-averaged to at most side x side (each output pixel the mean of its input box)."""
    h, w = patch.shape
    ey, ex = (np.arange(min(side, h)) * h) // min(side, h), (np.arange(min(side, w)) * w) // min(side, w)
    sums = np.add.reduceat(np.add.reduceat(patch.astype(np.float64), ey, axis=0), ex, axis=1)
    counts = np.outer(np.diff(ey, append=h), np.diff(ex, append=w))
    return np.round(sums / counts).astype(np.uint8)


def read_patches(dataset_root: str | Path, rows: Sequence[int]) -> dict[int, np.ndarray]:
    """row -> its grey patch (2-D uint8) from the dataset's `pixels` array."""
    ds = Dataset(Path(dataset_root))
    if not ds.zarr.is_dir():
        raise ValueError(f"gallery: dataset {ds.root} has no {ds.zarr.name}")
    wanted = np.unique(np.asarray(rows, dtype=np.int64))
    if len(wanted) == 0:
        return {}
    shape = ds.group()[PIXELS].shape[1:]
    values = ds.matrix(wanted, PIXELS).reshape(len(wanted), *shape)
    return {int(r): v for r, v in zip(wanted, values, strict=True)}




def compose(title: str, sections: list[tuple[str, list[tuple[str, list[dict[str, Any]]]]]],
            patches: dict[int, np.ndarray]) -> tuple[np.ndarray, list[tuple[float, float, str, dict[str, Any]]]]:
    """The montage as one RGB canvas (exact pixels: frames are solid CRYSTAL_RGB) and the texts to draw on it.

    `sections`: [(heading, [(row label, [example])])], example = {"row", "crystal", "caption"}.
    Each shown example gets "marked" set to whether its frame was painted.
    """
    ncols = max((len(ex) for _, lines in sections for _, ex in lines), default=1)
    cell_w, cell_h = THUMB + 2 * BORDER + _GAP, THUMB + 2 * BORDER + _CAPTION
    width = _LEFT + max(ncols, 1) * cell_w
    height = _HEADER + sum(_HEADER + len(lines) * cell_h for _, lines in sections)
    canvas = np.full((height, width, 3), 255, np.uint8)
    texts: list[tuple[float, float, str, dict[str, Any]]] = [(width / 2, _HEADER / 2, title,
                                                              {"fontsize": 10, "ha": "center", "va": "center"})]
    y = _HEADER
    for heading, lines in sections:
        texts.append((6, y + _HEADER / 2, heading, {"fontsize": 9, "ha": "left", "va": "center", "weight": "bold"}))
        y += _HEADER
        for label, examples in lines:
            texts.append((_LEFT - 8, y + BORDER + THUMB / 2, label, {"fontsize": 8, "ha": "right", "va": "center"}))
            for j, ex in enumerate(examples):
                x0 = _LEFT + j * cell_w
                thumb = thumbnail(patches[ex["row"]])
                th, tw = thumb.shape
                ex["marked"] = bool(ex["crystal"])
                if ex["marked"]:  # the frame: exactly the (th + 2B) x (tw + 2B) box minus the thumbnail
                    canvas[y:y + th + 2 * BORDER, x0:x0 + tw + 2 * BORDER] = CRYSTAL_RGB
                canvas[y + BORDER:y + BORDER + th, x0 + BORDER:x0 + BORDER + tw] = thumb[..., None]
                texts.append((x0 + BORDER + tw / 2, y + th + 2 * BORDER + 2, ex["caption"],
                              {"fontsize": 6.5, "ha": "center", "va": "top", "linespacing": 1.1}))
            y += cell_h
    return canvas, texts


def gallery(set_name: str, entry: dict[str, Any], config: str, classes: Sequence[str], path: Path) -> dict[str, Any]:
    """gallery_<set>.png from one configuration's predictions table and the set's dataset; returns its record:
    {"figure", "config", "dataset", "examples": {class: [{"row", "crystal", "marked"}]},
     "errors": [{"row", "crystal", "marked", "true", "predicted", "proba"}], "wrong": int}."""
    table = read_table(entry["predictions"], PREDICTIONS).sort_by("row")
    rows = table["row"].to_numpy()
    cls = np.asarray(table["cls"].to_pylist(), dtype=object)
    crystal = table["crystal"].to_numpy(zero_copy_only=False).astype(bool)
    y_true, y_pred = table["y_true"].to_numpy(), table["y_pred"].to_numpy()
    proba = np.asarray(table["proba"].to_pylist(), dtype=np.float64).reshape(len(rows), -1)
    at = {int(r): i for i, r in enumerate(rows)}

    def code(k: int) -> str:
        return classes[k] if 0 <= k < len(classes) else str(k)

    chosen = choose_examples(cls, crystal, rows, classes)
    examples = {c: [{"row": r, "crystal": bool(crystal[at[r]]),
                     "caption": f"#{r}" + (" crystalline" if crystal[at[r]] else "")} for r in rs]
                for c, rs in chosen.items()}
    counts = {c: int((cls == c).sum()) for c in chosen}
    crystal_counts = {c: int(crystal[cls == c].sum()) for c in chosen}
    errors = [{"row": int(rows[i]), "crystal": bool(crystal[i]), "true": code(int(y_true[i])),
               "predicted": code(int(y_pred[i])), "proba": round(float(proba[i].max()), 4),
               "caption": f"{code(int(y_true[i]))} -> {code(int(y_pred[i]))}\np {proba[i].max():.2f}  #{rows[i]}"}
              for i in confident_errors(rows, y_true, y_pred, proba)]
    patches = read_patches(entry["dataset"], [e["row"] for ex in examples.values() for e in ex]
                            + [e["row"] for e in errors])
    lines = [(f"{c}\n{counts[c]:,} rows\n{crystal_counts[c]:,} cryst.", ex) for c, ex in examples.items()]
    sections = [("Examples per class (magenta frame: crystalline row)", lines)]
    n_wrong = int((y_true != y_pred).sum())
    if errors:
        sections.append((f"Most confident errors of {config} ({len(errors)} of {n_wrong:,} wrong; true -> predicted)",
                         [("errors", errors)]))
    from crystal_dask.report.figures import montage_png

    montage_png(*compose(f"{set_name}: example patches", sections, patches), path, _DPI)
    for e in [*errors, *(e for ex in examples.values() for e in ex)]:
        del e["caption"]
    return {"figure": path.name, "config": config, "dataset": str(entry["dataset"]), "examples": examples,
            "errors": errors, "wrong": n_wrong}

