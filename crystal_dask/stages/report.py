"""Stage report: the published tables and figures of an experiment: report.json (every number), report.md, PNGs.

The stage gathers the models' manifests and every evaluation into <out>/results.json, then writes <out>/report/.
Input of write_report is that results dict:
    {"job": str, "classes": [codes], "configs": [baseline, other, ...],
     "sets": {set: {config: {"confusion": [[int]], "n": int, "predictions": path | None}}},
     "models": {config: {"train_rows": int, "class_counts": {code: int}, "manifest": path}},
     "notes": [str]}
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
from crystal_dask.stages.base import Context, Step, fingerprint
from crystal_dask.store.files import write_atomic, write_json
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


def _save(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
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


def write_report(results: dict[str, Any], out_dir: Path, paired: dict | None = None) -> dict[str, Path]:
    """Write report.json, report.md, confusion_<set>_<config>.png and per_class_<set>.png into `out_dir`.

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

    md += _models_markdown(results["models"], classes)
    if results.get("infer"):
        md += _infer_markdown(results["infer"], classes)
    if results["notes"]:
        md += ["## Notes", "", *(f"- {n}" for n in results["notes"]), ""]
    report = {"job": results["job"], "classes": classes, "configs": configs, "baseline": base, "sets": sets_out,
              "models": results["models"], "notes": list(results["notes"])}
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
                     "manifest": str(train.model_path(exp, name).with_suffix(".json")), "leakage": m.get("leakage")}
              for name, m in train.trained(exp).items()}
    notes = list(exp.notes) + [f"{n}: {m['leakage']}" for n, m in models.items() if m.get("leakage")]
    results = {"job": exp.name, "classes": list(CLASSES),
               "configs": [c.name for c in exp.settings[train.SECTION].configs],
               "sets": evaluate.results(exp), "models": models, "notes": notes}
    from crystal_dask.stages import infer

    inferred = infer.results(exp)
    if inferred:  # only when an infer stage ran: results.json of other jobs is unchanged
        results["infer"] = inferred
    return results


def steps(ctx: Context) -> Iterator[Step]:
    exp = ctx.experiment
    results = collect(exp)
    folder = output_dir(exp)
    ctx.products["report"] = folder / "report.md"

    def run() -> None:
        write_json(exp.out / "results.json", results)
        write_report(results, folder)

    # the paired statistics read the predictions tables: a rewritten table redoes the report
    tables = [(p, (st := Path(p).stat()).st_size, st.st_mtime_ns)
              for by_config in results["sets"].values() for p in (v["predictions"] for v in by_config.values())]
    yield Step(NAME, fingerprint(results, tables), (exp.out / "results.json", folder / "report.md"), run)
