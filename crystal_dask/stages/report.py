"""Stage report: the published tables and figures of an experiment: report.json (every number), report.md, PNGs.

The stage gathers the models' manifests and every evaluation into <out>/results.json, then writes <out>/report/.
Input of write_report is that results dict:
    {"job": str, "classes": [codes], "configs": [baseline, other, ...],
     "sets": {set: {config: {"confusion": [[int]], "n": int, "predictions": path | None, "dataset": root}}},
     "models": {config: {"train_rows": int, "class_counts": {code: int}, "manifest": path,
                         "model": path, "features": [family], "columns": [name] | None}},
     "notes": [str]}
`dataset`, `model`, `features` and `columns` are optional (results written before them still report): a model
file adds importances_<config>.png (top features by mean decrease in impurity), a dataset root with the last
configuration's predictions adds gallery_<set>.png (example patches per class, the most confident errors).
The first config is the baseline; every other config is compared with it on every set. Paired statistics
(McNemar, patient bootstrap) need per-patch correctness: pass `paired`, or let write_report read the
predictions tables named in the results. Figures are drawn on bare matplotlib Figures (Agg), never through
pyplot, so the caller's backend and global state are left alone.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from crystal_dask.experiment import Experiment
from crystal_dask.metrics import compare, summarize
from crystal_dask.stages import evaluate, train
from crystal_dask.stages.base import Context, Step
from crystal_dask.store.dataset import PIXELS, Dataset
from crystal_dask.store.files import write_atomic, write_json
from crystal_dask.store.models import load_model
from crystal_dask.store.schema import PREDICTIONS, read_table

NA = "n/a"


def _check_results(results: dict[str, Any]) -> None:
    """Fail early, naming the key, on a results dict that does not have the documented shape."""
    for key in ("job", "classes", "configs", "sets", "models", "notes"):
        if key not in results:
            raise ValueError(f"results: missing key {key!r}")
    if not results["configs"]:
        raise ValueError("results['configs']: at least one configuration is needed")
    for set_name, by_config in results["sets"].items():
        for config in results["configs"]:
            entry = by_config.get(config)
            if entry is None:
                raise ValueError(f"results['sets'][{set_name!r}]: configuration {config!r} is missing")
            for key in ("confusion", "n"):
                if key not in entry:
                    raise ValueError(f"results['sets'][{set_name!r}][{config!r}]: missing key {key!r}")


def load_paired(results: dict[str, Any]) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Per-patch correctness and patients from the predictions tables named in `results` (PREDICTIONS schema).

    Returns {set: {config: {"correct", "patients", "crystal": arrays}}} ordered by the tables' `row`, for
    the set/config pairs that name a predictions file. Within a set every table must hold the same rows.
    """
    paired: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for set_name, by_config in results["sets"].items():
        rows_seen: np.ndarray | None = None
        for config, entry in by_config.items():
            path = entry.get("predictions")
            if not path:
                continue
            table = read_table(path, PREDICTIONS).sort_by("row")
            rows = table["row"].to_numpy()
            if rows_seen is not None and not np.array_equal(rows, rows_seen):
                raise ValueError(f"{path}: rows differ from the other predictions of set {set_name!r}")
            rows_seen = rows
            paired.setdefault(set_name, {})[config] = {
                "correct": table["y_true"].to_numpy() == table["y_pred"].to_numpy(),
                "patients": table["patient"].to_numpy(zero_copy_only=False).astype(str),
                "crystal": table["crystal"].to_numpy(zero_copy_only=False).astype(bool),
            }
    return paired


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _pct(x: float | None) -> str:
    return NA if x is None else f"{100 * x:.1f}%"


def _pp(x: float) -> str:
    return f"{100 * x:+.2f} pp"


def _num(x: float | None) -> str:
    return NA if x is None else f"{x:.3f}"


def _p(p: float) -> str:
    return "< 1e-16" if p < 1e-16 else f"{p:.3g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], text: Sequence[int] = (0,)) -> list[str]:
    """A Markdown table; the `text` columns are left-aligned, the numeric rest right-aligned."""
    align = ["---" if i in text else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return [*lines, ""]


def _paired_for(paired: dict[str, Any], set_name: str, base: str, config: str) -> dict[str, Any]:
    """Arguments of compare() for the paired statistics of one set, when both configurations have data."""
    by_config = paired.get(set_name, {})
    if base not in by_config or config not in by_config:
        return {}
    a, b = by_config[base], by_config[config]
    if not np.array_equal(np.asarray(a["patients"]), np.asarray(b["patients"])):
        raise ValueError(f"paired[{set_name!r}]: patients of {base!r} and {config!r} differ (rows not aligned)")
    return {"correct_a": np.asarray(a["correct"]), "correct_b": np.asarray(b["correct"]),
            "patients": np.asarray(a["patients"])}


def _crystalline_split(by_config: dict[str, Any], configs: Sequence[str]) -> dict[str, Any]:
    """Accuracy on the crystalline rows and on the rest, per configuration (when every one has per-row data)."""
    if not all("crystal" in by_config.get(c, {}) for c in configs):
        return {}
    out = {}
    for c in configs:
        correct, crystal = np.asarray(by_config[c]["correct"]), np.asarray(by_config[c]["crystal"])
        out[c] = {part: {"n": int(mask.sum()), "correct": int(correct[mask].sum()),
                         "accuracy": float(correct[mask].mean()) if mask.any() else None}
                  for part, mask in (("crystalline", crystal), ("other", ~crystal))}
    return out


def _crystalline_markdown(split: dict[str, Any], configs: Sequence[str]) -> list[str]:
    rows = [[part, *(f"{_pct(split[c][part]['accuracy'])} ({split[c][part]['correct']:,}/{split[c][part]['n']:,})"
                     for c in configs)] for part in ("crystalline", "other")]
    return ["### Crystalline rows and the rest", "",
            "Rows annotated cdcs/cnno/cidc are scored as dcis/nneo/indc; here they are counted apart.", "",
            *_table(["rows", *configs], rows), ""]


def _save(fig: Figure, path: Path, dpi: int = 110) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return write_atomic(path, buf.getvalue())


def _save_rgb(fig: Figure, path: Path, dpi: int) -> Path:
    """Like _save, without the alpha channel (a photographic montage is a quarter smaller as RGB)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    fig.dpi = dpi
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    buf = io.BytesIO()
    Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3]).save(buf, format="png", optimize=True)
    return write_atomic(path, buf.getvalue())


def _confusion_png(summary: dict[str, Any], title: str, path: Path) -> Path:
    cm = np.array(summary["confusion"])
    labels = summary["labels"]
    support = cm.sum(axis=1, keepdims=True)
    # rows of an absent class have no fractions: masked, drawn grey
    frac = np.ma.masked_invalid(np.divide(cm, support, out=np.full(cm.shape, np.nan), where=support > 0))
    k = len(labels)
    fig = Figure(figsize=(max(4.8, 1.2 + 0.62 * k), max(4.0, 1.0 + 0.55 * k)), layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="0.88")
    im = ax.imshow(frac, cmap=cmap, vmin=0.0, vmax=1.0)
    dark = frac.filled(0) > 0.55
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]:,}", ha="center", va="center", fontsize=7,
                    color="white" if dark[i, j] else "black", fontweight="bold" if i == j else "normal")
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), [f"{c} ({s:,})" for c, s in zip(labels, support[:, 0], strict=True)])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (rows)")
    ax.set_title(f"{title}\naccuracy {_pct(summary['accuracy'])} of {summary['n']:,}", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class's rows")
    return _save(fig, path)


def _per_class_png(summaries: dict[str, dict[str, Any]], classes: Sequence[str], title: str, path: Path) -> Path:
    k, m = len(classes), len(summaries)
    width = 0.8 / m
    fig = Figure(figsize=(max(6.0, 0.75 * k + 1.5), 4.0), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(k)
    rows = next(iter(summaries.values()))["classes"]  # supports, from the first config
    for j, c in enumerate(classes):
        if rows[c]["support"] == 0:
            ax.text(j, 1, "no rows", ha="center", va="bottom", fontsize=7, color="0.4", rotation=90)
    for i, (config, s) in enumerate(summaries.items()):
        acc = [s["classes"][c]["accuracy"] for c in classes]
        heights = np.array([np.nan if a is None else 100 * a for a in acc])
        bars = ax.bar(x - 0.4 + width * (i + 0.5), heights, width, label=f"{config} (overall {_pct(s['accuracy'])})")
        ax.bar_label(bars, labels=["" if a is None else f"{100 * a:.0f}" for a in acc], fontsize=6, padding=1)
    ax.set_xticks(x, [f"{c}\n{rows[c]['support']:,}" for c in classes])
    ax.set_xlabel("class, with its number of rows")
    ax.set_ylim(0, 118)  # headroom: the legend sits above the 100% bars
    ax.set_ylabel("per-class accuracy (recall), %")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", frameon=False, ncols=min(m, 3))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return _save(fig, path)


def _set_markdown(
    set_name: str, configs: Sequence[str], classes: Sequence[str], summaries: dict[str, Any],
    comparisons: dict[str, Any], figures: dict[str, str],
) -> list[str]:
    base = configs[0]
    out = [f"## {set_name}", "", "### Overall", ""]
    out += _table(
        ["", *configs],
        [
            ["patches", *(f"{summaries[c]['n']:,}" for c in configs)],
            ["correct", *(f"{summaries[c]['correct']:,}" for c in configs)],
            ["incorrect", *(f"{summaries[c]['incorrect']:,}" for c in configs)],
            ["accuracy", *(_pct(summaries[c]["accuracy"]) for c in configs)],
        ],
    )
    if comparisons:
        out += [f"### Accuracy difference against {base}", ""]
        rows = []
        for config, r in comparisons.items():
            level = r["wald"]["level"]
            row = [config, _pp(r["delta"]), f"[{_pp(r['wald']['low'])}, {_pp(r['wald']['high'])}]"]
            if "mcnemar" in r:
                mc = r["mcnemar"]
                row.append(f"b01 {mc['b01']:,}, b10 {mc['b10']:,}, {mc['method']}, p {_p(mc['p_value'])}")
            else:
                row.append(NA)
            if "bootstrap" in r:
                bs = r["bootstrap"]
                row.append(f"[{_pp(bs['low'])}, {_pp(bs['high'])}] ({bs['n_patients']:,} patients, "
                           f"{bs['n_boot']:,} replicates)")
            else:
                row.append(NA)
            rows.append(row)
        pct = f"{100 * level:g}%"
        out += _table(["configuration", "Δ accuracy", f"{pct} CI (Wald, independent)", "McNemar (paired)",
                       f"{pct} CI (patient bootstrap)"], rows, text=(0, 3))
        out += ["Δ = configuration − baseline, in percentage points (pp). The Wald interval is the published one; "
                "McNemar and the patient bootstrap use that both configurations scored the same patches "
                f"({NA}: no per-patch predictions given).", ""]
    out += ["### Per-class accuracy", "", "Correct among the class's rows (= recall); (correct / rows).", ""]
    rows = []
    for code in classes:
        cells = [code]
        for c in configs:
            pc = summaries[c]["classes"][code]
            cells.append(f"{_pct(pc['accuracy'])} ({pc['correct']:,}/{pc['support']:,})")
        for r in comparisons.values():
            d = r["per_class_delta"][code]
            cells.append(NA if d is None else _pp(d))
        rows.append(cells)
    out += _table(["class", *configs, *(f"Δ {c}" for c in comparisons)], rows)
    out += ["### Precision, recall, F1", "",
            f"{NA}: undefined (class never predicted, or absent). Averages run over the classes present; "
            "an undefined value counts as 0.", ""]
    rows = []
    for code in classes:
        cells = [code]
        for c in configs:
            pc = summaries[c]["classes"][code]
            cells += [_num(pc["precision"]), _num(pc["recall"]), _num(pc["f1"])]
        rows.append(cells)
    for avg in ("macro", "weighted"):
        cells = [f"*{avg}*"]
        for c in configs:
            a = summaries[c][avg]
            cells += [_num(a["precision"]), _num(a["recall"]), _num(a["f1"])]
        rows.append(cells)
    header = ["class"] + [f"{c} {m}" for c in configs for m in ("P", "R", "F1")]
    out += _table(header, rows)
    out += ["### Figures", ""]
    out += [f"![{set_name}: {c} confusion matrix]({figures[c]})" for c in configs]
    out += ["", f"![{set_name}: per-class accuracy]({figures['per_class']})", ""]
    return out


def _models_markdown(models: dict[str, Any], classes: Sequence[str]) -> list[str]:
    if not models:
        return []
    extra = sorted({k for m in models.values() for k in m.get("class_counts", {}) if k not in classes})
    cols = [*classes, *extra]
    rows = []
    for config, m in models.items():
        counts = m.get("class_counts", {})
        rows.append([config, f"{m.get('train_rows', 0):,}", *(f"{counts.get(c, 0):,}" for c in cols),
                     f"`{m['manifest']}`" if m.get("manifest") else NA])
    header = ["configuration", "training rows", *cols, "manifest"]
    return ["## Models", "", *_table(header, rows, text=(0, len(header) - 1))]


# ------------------------------------------------------------------------------- feature importances, gallery
TOP_FEATURES = 20  # bars in importances_<config>.png
GALLERY_PER_CLASS = 6  # example patches per class in gallery_<set>.png (9 classes: 54 + the errors, < 1 MB)
GALLERY_ERRORS = 6  # most confident errors shown (one row, as wide as the class rows)
THUMB = 96  # side of a gallery thumbnail, px (a 256 px patch is area-averaged down to it)
BORDER = 4  # px of the frame around a crystalline thumbnail
CRYSTAL_RGB = (230, 0, 126)  # the frame's colour (magenta): no grey patch pixel and no text has it
_GAP, _CAPTION, _LEFT, _HEADER, _DPI = 8, 28, 96, 26, 100


_PIXEL_COLUMN = re.compile(r"pixels\[(\d+)\]")  # how Dataset.columns names the pixels beside feature arrays


def _pixel_names(n: int) -> list[str] | None:
    """`pixel (y, x)` for the n raw pixels of a square patch (row-major, as Dataset.matrix flattens it)."""
    side = int(np.sqrt(n))
    return [f"pixel ({i // side}, {i % side})" for i in range(n)] if side * side == n else None


def feature_names(n_features: int, columns: Sequence[str] | None) -> list[str]:
    """Names of a model's matrix columns: the manifest's `columns` (its `pixels[i]` shown as `pixel (y, x)`),
    else `pixel (y, x)` for a square patch of raw pixels, else `column i`."""
    if columns is not None:
        if len(columns) != n_features:
            raise ValueError(f"the manifest names {len(columns)} columns but the model has {n_features} features")
        names = [str(c) for c in columns]
        pixels = [i for i, c in enumerate(names) if _PIXEL_COLUMN.fullmatch(c)]
        as_yx = _pixel_names(len(pixels))
        if pixels and as_yx:
            for i in pixels:
                names[i] = as_yx[int(_PIXEL_COLUMN.fullmatch(names[i]).group(1))]
        return names
    return _pixel_names(n_features) or [f"column {i}" for i in range(n_features)]


def importances(model_path: str | Path, columns: Sequence[str] | None, top: int = TOP_FEATURES) -> dict[str, Any]:
    """The `top` largest feature_importances_ (mean decrease in impurity) of a saved forest, largest first.

    The model is loaded with store.models.load_model (hash and type checked). Ties keep the column order.
    Returns {"n_features", "top": [{"rank", "column", "name", "importance"}]}.
    """
    model = load_model(Path(model_path))
    imp = np.asarray(model.feature_importances_, dtype=np.float64)
    names = feature_names(len(imp), columns)
    order = np.argsort(-imp, kind="stable")[:top]
    return {"n_features": len(imp),
            "top": [{"rank": r + 1, "column": int(i), "name": names[i], "importance": float(imp[i])}
                    for r, i in enumerate(order)]}


def _importances_png(entry: dict[str, Any], title: str, path: Path) -> Path:
    top = entry["top"]
    k = len(top)
    fig = Figure(figsize=(7.0, 1.3 + 0.27 * k), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(k)
    bars = ax.barh(y, [t["importance"] for t in top], color="tab:blue")
    ax.bar_label(bars, labels=[f"{t['importance']:.4f}" for t in top], fontsize=7, padding=2)
    ax.set_yticks(y, [t["name"] for t in top], fontsize=8)
    ax.invert_yaxis()  # the largest on top
    ax.set_xlabel("importance (mean decrease in impurity, normalised over all features)")
    ax.set_title(f"{title}\ntop {k} of {entry['n_features']:,} features", fontsize=10)
    ax.margins(x=0.18)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    return _save(fig, path)


def _importances_markdown(imps: dict[str, Any]) -> list[str]:
    out = ["## Feature importances", "",
           "Mean decrease in impurity over the forest's trees (sums to 1 over all features); the top "
           f"{TOP_FEATURES} per configuration. Pixel columns are named by their (y, x) in the patch.", ""]
    for config, e in imps.items():
        feats = ", ".join(e["features"]) if e.get("features") else NA
        out += [f"### {config} (features: {feats}; {e['n_features']:,} columns)", ""]
        out += _table(["rank", "feature", "importance"],
                      [[str(t["rank"]), t["name"], f"{t['importance']:.5f}"] for t in e["top"]], text=(1,))
        out += [f"![{config}: feature importances]({e['figure']})", ""]
    return out


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


def _read_patches(dataset_root: str | Path, rows: Sequence[int]) -> dict[int, np.ndarray]:
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


def _gallery_png(title: str, sections: list[tuple[str, list[tuple[str, list[dict[str, Any]]]]]],
                 patches: dict[int, np.ndarray], path: Path) -> Path:
    """Compose the montage as one RGB image (exact pixels: frames are solid CRYSTAL_RGB), drawn 1:1 on a Figure.

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
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest", resample=False)  # 1 canvas pixel = 1 PNG pixel
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()
    for x, yy, s, kw in texts:
        ax.text(x, yy, s, color="black", **kw)
    return _save_rgb(fig, path, _DPI)


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
    patches = _read_patches(entry["dataset"], [e["row"] for ex in examples.values() for e in ex]
                            + [e["row"] for e in errors])
    lines = [(f"{c}\n{counts[c]:,} rows\n{crystal_counts[c]:,} cryst.", ex) for c, ex in examples.items()]
    sections = [("Examples per class (magenta frame: crystalline row)", lines)]
    n_wrong = int((y_true != y_pred).sum())
    if errors:
        sections.append((f"Most confident errors of {config} ({len(errors)} of {n_wrong:,} wrong; true -> predicted)",
                         [("errors", errors)]))
    _gallery_png(f"{set_name}: example patches", sections, patches, path)
    for e in [*errors, *(e for ex in examples.values() for e in ex)]:
        del e["caption"]
    return {"figure": path.name, "config": config, "dataset": str(entry["dataset"]), "examples": examples,
            "errors": errors, "wrong": n_wrong}


def _gallery_markdown(set_name: str, g: dict[str, Any]) -> list[str]:
    return ["### Gallery", "",
            f"Up to {GALLERY_PER_CLASS} patches per class (crystalline rows framed in magenta, about half the "
            f"places when the class has any) and the {len(g['errors'])} most confident errors of {g['config']} "
            f"(of {g['wrong']:,} wrong). Rows are listed in report.json.", "",
            f"![{set_name}: gallery]({g['figure']})", ""]


def write_report(results: dict[str, Any], out_dir: Path, paired: dict | None = None) -> dict[str, Path]:
    """Write report.json, report.md, confusion_<set>_<config>.png and per_class_<set>.png into `out_dir`, plus
    importances_<config>.png for every model that names its file (`models.<config>.model`) and gallery_<set>.png
    for every set whose last configuration names its dataset and predictions (`sets.<set>.<config>.dataset`).

    `paired[set][config] = {"correct": bool array, "patients": str array}` (same patches, same order for every
    config of a set) enables McNemar and the patient bootstrap; when None, it is read from the predictions
    tables named in `results` (see load_paired). Returns {file name: path}. Same input, byte-identical JSON and
    Markdown. Every file is written atomically.
    """
    _check_results(results)
    out_dir = Path(out_dir)
    classes, configs = list(results["classes"]), list(results["configs"])
    base = configs[0]
    if paired is None:
        paired = load_paired(results)
    slugs = [_slug(s) for s in results["sets"]]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"results['sets']: set names {list(results['sets'])} collide as file names {slugs}")

    written: dict[str, Path] = {}
    sets_out: dict[str, Any] = {}
    md = [f"# {results['job']}", "",
          f"Configurations: {', '.join(configs)} (baseline: {base}). Classes: {', '.join(classes)}.", ""]
    for (set_name, by_config), slug in zip(results["sets"].items(), slugs, strict=True):
        summaries: dict[str, Any] = {}
        for config in configs:
            entry = by_config[config]
            s = summarize(np.array(entry["confusion"]), classes)
            if s["n"] != entry["n"]:
                raise ValueError(f"results['sets'][{set_name!r}][{config!r}]: n={entry['n']} but the confusion "
                                 f"matrix counts {s['n']}")
            summaries[config] = s
        comparisons = {
            config: compare(np.array(by_config[base]["confusion"]), np.array(by_config[config]["confusion"]),
                            classes, **_paired_for(paired, set_name, base, config))
            for config in configs[1:]
        }
        figures: dict[str, str] = {}
        for config in configs:
            name = f"confusion_{slug}_{_slug(config)}.png"
            written[name] = _confusion_png(summaries[config], f"{set_name} · {config}", out_dir / name)
            figures[config] = name
        name = f"per_class_{slug}.png"
        written[name] = _per_class_png(summaries, classes, f"{set_name}: per-class accuracy", out_dir / name)
        figures["per_class"] = name
        sets_out[set_name] = {"summaries": summaries, "comparisons": comparisons, "figures": figures}
        md += _set_markdown(set_name, configs, classes, summaries, comparisons, figures)
        split = _crystalline_split(paired.get(set_name, {}), configs)
        if split:
            sets_out[set_name]["crystalline"] = split
            md += _crystalline_markdown(split, configs)
        last = by_config[configs[-1]]
        if last.get("dataset") and last.get("predictions"):  # results.json written before the gallery: none
            name = f"gallery_{slug}.png"
            g = gallery(set_name, last, configs[-1], classes, out_dir / name)
            written[name] = out_dir / name
            figures["gallery"] = name
            sets_out[set_name]["gallery"] = g
            md += _gallery_markdown(set_name, g)

    md += _models_markdown(results["models"], classes)
    imps: dict[str, Any] = {}
    for config, m in results["models"].items():
        if not m.get("model"):  # results.json written before the importances: none
            continue
        name = f"importances_{_slug(config)}.png"
        imps[config] = {"model": m["model"], "features": m.get("features"),
                        **importances(m["model"], m.get("columns")), "figure": name}
        feats = ", ".join(m.get("features") or []) or "?"
        written[name] = _importances_png(imps[config], f"{config} ({feats}): feature importances", out_dir / name)
    if imps:
        md += _importances_markdown(imps)
    if results.get("infer"):
        md += _infer_markdown(results["infer"], classes)
    if results["notes"]:
        md += ["## Notes", "", *(f"- {n}" for n in results["notes"]), ""]
    report = {"job": results["job"], "classes": classes, "configs": configs, "baseline": base, "sets": sets_out,
              "models": results["models"], "notes": list(results["notes"])}
    if imps:
        report["importances"] = imps
    if results.get("infer"):
        report["infer"] = results["infer"]  # a key of its own: the keys above stay as they were
    written["report.json"] = write_atomic(
        out_dir / "report.json", (json.dumps(report, indent=2, allow_nan=False) + "\n").encode()
    )
    written["report.md"] = write_atomic(out_dir / "report.md", "\n".join(md).encode())
    return written


def _infer_markdown(infer: dict[str, Any], classes: Sequence[str]) -> list[str]:
    """Whole-slide inference (stages/infer.py): per set and model, slides, windows, and where the slides have
    annotations the per-window accuracy, macro F1 and per-class Dice of predicted against annotated area."""
    md = ["## Whole-slide inference", "",
          "Every tissue window of every slide predicted; scored windows are those an annotated region covers by at "
          "least `min_overlap` (NEDC's frame rule). Dice compares predicted and annotated window areas over the "
          "whole grid.", ""]
    rows, dice_rows = [], []
    for set_name, by_config in infer.items():
        for config, r in by_config.items():
            score = r.get("score") or {}
            summary = score.get("summary") or {}
            rows.append([set_name, config, f"{r['slides_done']}/{r['slides_in']}", f"{r['windows']:,}",
                         f"{score.get('windows_scored', 0):,}", _pct(summary.get("accuracy")),
                         _num((summary.get("macro") or {}).get("f1")), str(r["rejects"])])
            dice = score.get("dice") or {}
            dice_rows.append([f"{set_name} · {config}", *(_num(dice.get(c)) for c in classes)])
    md += _table(["set", "model", "slides", "windows", "scored", "accuracy", "macro F1", "rejects"], rows,
                 text=(0, 1))
    md += ["Per-class Dice:", "", *_table(["set · model", *classes], dice_rows)]
    return md


# ----------------------------------------------------------------------------------------------- the stage
NAME = "report"


def output_dir(exp: Experiment) -> Path:
    return exp.out / "report"


def collect(exp: Experiment) -> dict[str, Any]:
    """results.json: every model's training summary and every evaluation, from those stages' own outputs."""
    from crystal_dask.vocab import CLASSES

    models = {name: {"train_rows": m["train_rows"], "class_counts": m["class_counts"],
                     "manifest": str(train.model_path(exp, name).with_suffix(".json")), "leakage": m.get("leakage"),
                     "model": str(train.model_path(exp, name)),
                     # a manifest from before feature sets trained on pixels and named no columns
                     "features": list(m["config"].get("features") or [PIXELS]), "columns": m.get("columns")}
              for name, m in train.trained(exp).items()}
    notes = list(exp.notes) + [f"{n}: {m['leakage']}" for n, m in models.items() if m.get("leakage")]
    sets = evaluate.results(exp)
    for set_name, by_config in sets.items():
        for config, entry in by_config.items():
            confusion_json = evaluate.output_dir(exp, set_name, config) / "confusion.json"
            entry["dataset"] = json.loads(confusion_json.read_text())["dataset"]
    results = {"job": exp.name, "classes": list(CLASSES),
               "configs": [c.name for c in exp.settings[train.SECTION].configs],
               "sets": sets, "models": models, "notes": notes}
    from crystal_dask.stages import infer

    inferred = infer.results(exp)
    if inferred:  # only when an infer stage ran: results.json of other jobs is unchanged
        results["infer"] = inferred
    return results


def steps(ctx: Context) -> Iterator[Step]:
    exp = ctx.experiment
    folder = output_dir(exp)
    ctx.products["report"] = folder / "report.md"
    # it reads what every training, evaluation and inference step made (declared before it)
    reads = tuple(n for n in ctx.steps if n.split(":")[0] in (train.NAME, evaluate.NAME, "infer"))
    order = {"configs": [c.name for c in exp.settings[train.SECTION].configs],
             "sets": [s.name for s in exp.settings[evaluate.SECTION]]}

    def run() -> None:
        results = collect(exp)
        write_json(exp.out / "results.json", results)
        write_report(results, folder)

    yield Step(NAME, reads, {"job": exp.name, "notes": list(exp.notes), **order},
               (exp.out / "results.json", folder / "report.md"), run)
