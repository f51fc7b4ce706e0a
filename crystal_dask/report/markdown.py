"""report.md: Markdown tables and sections, from numbers already computed (no I/O, no figures)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

NA = "n/a"
TOP_FEATURES = 20  # features per model in the importances table and figure
GALLERY_PER_CLASS = 6  # example patches per class in gallery_<set>.png (9 classes: 54 + the errors, < 1 MB)


def pct(x: float | None) -> str:
    return NA if x is None else f"{100 * x:.1f}%"


def pp(x: float) -> str:
    return f"{100 * x:+.2f} pp"


def num(x: float | None) -> str:
    return NA if x is None else f"{x:.3f}"


def p_value(p: float) -> str:
    return "< 1e-16" if p < 1e-16 else f"{p:.3g}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], text: Sequence[int] = (0,)) -> list[str]:
    """A Markdown table; the `text` columns are left-aligned, the numeric rest right-aligned."""
    align = ["---" if i in text else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return [*lines, ""]


def crystalline_markdown(split: dict[str, Any], configs: Sequence[str]) -> list[str]:
    rows = [[part, *(f"{pct(split[c][part]['accuracy'])} ({split[c][part]['correct']:,}/{split[c][part]['n']:,})"
                     for c in configs)] for part in ("crystalline", "other")]
    return ["### Crystalline rows and the rest", "",
            "Rows annotated cdcs/cnno/cidc are scored as dcis/nneo/indc; here they are counted apart.", "",
            *table(["rows", *configs], rows)]


def set_markdown(
    set_name: str, configs: Sequence[str], classes: Sequence[str], summaries: dict[str, Any],
    comparisons: dict[str, Any], figures: dict[str, str],
) -> list[str]:
    base = configs[0]
    out = [f"## {set_name}", "", "### Overall", ""]
    out += table(
        ["", *configs],
        [
            ["patches", *(f"{summaries[c]['n']:,}" for c in configs)],
            ["correct", *(f"{summaries[c]['correct']:,}" for c in configs)],
            ["incorrect", *(f"{summaries[c]['incorrect']:,}" for c in configs)],
            ["accuracy", *(pct(summaries[c]["accuracy"]) for c in configs)],
        ],
    )
    if comparisons:
        out += [f"### Accuracy difference against {base}", ""]
        rows = []
        for config, r in comparisons.items():
            level = r["wald"]["level"]
            row = [config, pp(r["delta"]), f"[{pp(r['wald']['low'])}, {pp(r['wald']['high'])}]"]
            if "mcnemar" in r:
                mc = r["mcnemar"]
                row.append(f"b01 {mc['b01']:,}, b10 {mc['b10']:,}, {mc['method']}, p {p_value(mc['p_value'])}")
            else:
                row.append(NA)
            if "bootstrap" in r:
                bs = r["bootstrap"]
                row.append(f"[{pp(bs['low'])}, {pp(bs['high'])}] ({bs['n_patients']:,} patients, "
                           f"{bs['n_boot']:,} replicates)")
            else:
                row.append(NA)
            rows.append(row)
        level_pct = f"{100 * level:g}%"
        out += table(["configuration", "Δ accuracy", f"{level_pct} CI (Wald, independent)", "McNemar (paired)",
                       f"{level_pct} CI (patient bootstrap)"], rows, text=(0, 3))
        out += ["Δ = configuration − baseline, in percentage points (pp). The Wald interval is the published one; "
                "McNemar and the patient bootstrap use that both configurations scored the same patches "
                f"({NA}: no per-patch predictions given).", ""]
    out += ["### Per-class accuracy", "", "Correct among the class's rows (= recall); (correct / rows).", ""]
    rows = []
    for code in classes:
        cells = [code]
        for c in configs:
            pc = summaries[c]["classes"][code]
            cells.append(f"{pct(pc['accuracy'])} ({pc['correct']:,}/{pc['support']:,})")
        for r in comparisons.values():
            d = r["per_class_delta"][code]
            cells.append(NA if d is None else pp(d))
        rows.append(cells)
    out += table(["class", *configs, *(f"Δ {c}" for c in comparisons)], rows)
    out += ["### Precision, recall, F1", "",
            f"{NA}: undefined (class never predicted, or absent). Averages run over the classes present; "
            "an undefined value counts as 0.", ""]
    rows = []
    for code in classes:
        cells = [code]
        for c in configs:
            pc = summaries[c]["classes"][code]
            cells += [num(pc["precision"]), num(pc["recall"]), num(pc["f1"])]
        rows.append(cells)
    for avg in ("macro", "weighted"):
        cells = [f"*{avg}*"]
        for c in configs:
            a = summaries[c][avg]
            cells += [num(a["precision"]), num(a["recall"]), num(a["f1"])]
        rows.append(cells)
    header = ["class"] + [f"{c} {m}" for c in configs for m in ("P", "R", "F1")]
    out += table(header, rows)
    out += ["### Figures", ""]
    out += [f"![{set_name}: {c} confusion matrix]({figures[c]})" for c in configs]
    out += ["", f"![{set_name}: per-class accuracy]({figures['per_class']})", ""]
    return out


def models_markdown(models: dict[str, Any], classes: Sequence[str]) -> list[str]:
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
    return ["## Models", "", *table(header, rows, text=(0, len(header) - 1))]


def importances_markdown(imps: dict[str, Any]) -> list[str]:
    out = ["## Feature importances", "",
           "Mean decrease in impurity over the forest's trees (sums to 1 over all features); the top "
           f"{TOP_FEATURES} per configuration. Pixel columns are named by their (y, x) in the patch.", ""]
    for config, e in imps.items():
        feats = ", ".join(e["features"]) if e.get("features") else NA
        out += [f"### {config} (features: {feats}; {e['n_features']:,} columns)", ""]
        out += table(["rank", "feature", "importance"],
                      [[str(t["rank"]), t["name"], f"{t['importance']:.5f}"] for t in e["top"]], text=(1,))
        out += [f"![{config}: feature importances]({e['figure']})", ""]
    return out


def calcification_markdown(signal: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Per set: how often the calcification family found a deposit, per class and crystalline/other row."""
    from crystal_dask.features.calcification_summary import markdown as groups_table

    out = ["## Calcification signal", "",
           "Rows whose calcification columns are non-zero (at least one deposit detected), per class and per "
           "crystalline / other row: read beside the importances, a family that finds nothing on the crystalline "
           "rows cannot be what the forest learnt from.", ""]
    for set_name, groups in signal.items():
        out += [f"### {set_name}", "", *groups_table(groups)]
    return out


def gallery_markdown(set_name: str, g: dict[str, Any]) -> list[str]:
    return ["### Gallery", "",
            f"Up to {GALLERY_PER_CLASS} patches per class (crystalline rows framed in magenta, about half the "
            f"places when the class has any) and the {len(g['errors'])} most confident errors of {g['config']} "
            f"(of {g['wrong']:,} wrong). Rows are listed in report.json.", "",
            f"![{set_name}: gallery]({g['figure']})", ""]


def infer_markdown(infer: dict[str, Any], classes: Sequence[str]) -> list[str]:
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
                         f"{score.get('windows_scored', 0):,}", pct(summary.get("accuracy")),
                         num((summary.get("macro") or {}).get("f1")), str(r["rejects"])])
            dice = score.get("dice") or {}
            dice_rows.append([f"{set_name} · {config}", *(num(dice.get(c)) for c in classes)])
    md += table(["set", "model", "slides", "windows", "scored", "accuracy", "macro F1", "rejects"], rows,
                 text=(0, 1))
    md += ["Per-class Dice:", "", *table(["set · model", *classes], dice_rows)]
    return md

