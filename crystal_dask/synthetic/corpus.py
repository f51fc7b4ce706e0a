"""Synthetic NEDC-style corpora: patients, sessions, splits, file names, painted slides and their annotations.

`generate_corpus` plans the whole corpus up front (patients, slide names, every region's label) from one seed,
then renders the slides in parallel processes, each from its own seed (SeedSequence(seed, spawn_key=(1, i))):
the same arguments give the same bytes whatever the number of workers. Layouts:

NEDC:      <root>/svs/{train,dev,eval}/<patient8>_<subject8>/<session>/breast/<stem>.{svs,csv|xml}
Fox Chase: <root>/svs/<bucket5>/<patient9>/<specimen9>/c50.N_c50.N/<patient9>_<specimen9>_stNNN_xtN_tNNN.svs

Class frequencies follow the published counts per flavour (corpora.md): FCBR 61% non-cancer / 10% carcinogenic
/ 29% cancerous, TUBR 47% / 37% / 16%. The grouping assumed here is non-cancer = bckg, norm, artf, null, infl,
nneo; carcinogenic = susp, dcis; cancerous = indc. Crystalline regions come on top, cdcs:cnno:cidc = 168:51:220.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from crystal_dask.runtime.orphans import exit_with_parent
from crystal_dask.store.files import write_atomic
from crystal_dask.synthetic.slide_writer import pyramid, write_slide
from crystal_dask.synthetic.tissue import FLAVOURS, paint_slide, warm_textures
from crystal_dask.vocab import CLASSES, CRYSTALLINE, SPLIT_FRACTIONS, SPLITS
from crystal_dask.wsi.annotations import Header, Region, write_imagescope_xml, write_nedc_csv
from crystal_dask.wsi.split import apportion

_GROUPS = {"noncancer": ("bckg", "norm", "artf", "null", "infl", "nneo"), "carcinogenic": ("susp", "dcis"),
           "cancerous": ("indc",)}
_WITHIN = {"bckg": 0.34, "norm": 0.24, "artf": 0.08, "null": 0.08, "infl": 0.09, "nneo": 0.17,
           "susp": 0.45, "dcis": 0.55, "indc": 1.0}
_GROUP_SHARE = {"fcbr": {"noncancer": 12164, "carcinogenic": 1967, "cancerous": 5954},
                "tubr": {"noncancer": 8035, "carcinogenic": 6222, "cancerous": 2714}}
CRYSTAL_SHARE = {"cdcs": 168, "cnno": 51, "cidc": 220}
_VARIANTS = ("0000", "0000", "0000", "0000", "deep", "rcut", "0rcl")
_MIN_RADIUS = 60.0  # px: smallest region the placement will shrink to


def label_weights(flavour: str) -> dict[str, float]:
    """Probability of each of the 9 classes for a flavour's regions."""
    share = _GROUP_SHARE[flavour]
    total = sum(share.values())
    return {c: share[g] / total * _WITHIN[c] for g, members in _GROUPS.items() for c in members}


@dataclass(frozen=True)
class SlidePlan:
    """Everything one worker needs to paint and write one slide."""

    index: int
    seed: int
    root: str
    slide: str  # relative to root
    annotation: str  # relative to root, .csv or .xml
    bname: str
    patient: str
    split: str | None
    width: int
    height: int
    mpp: float
    labels: tuple[str, ...]
    flavour: str
    quality: int
    encode_threads: int
    kind: str = "small"  # small: painted whole (slide_writer); realistic: glass-and-tissue mosaic (realistic.py)


# -------------------------------------------------------------------------------------------- planning
def _weighted(rng: np.random.Generator, weights: dict[str, float], n: int) -> list[str]:
    keys = sorted(weights)
    p = np.array([weights[k] for k in keys], float)
    return [keys[i] for i in rng.choice(len(keys), size=n, p=p / p.sum())]


def _covering(rng: np.random.Generator, weights: dict[str, float], n: int) -> list[str]:
    """n labels: every label once when n allows, the rest drawn by weight; shuffled."""
    keys = sorted(weights)
    labels = keys + _weighted(rng, weights, n - len(keys)) if n >= len(keys) else _weighted(rng, weights, n)
    return [labels[i] for i in rng.permutation(n)]


def _subject(rng: np.random.Generator) -> str:
    v = int(rng.integers(26**4))
    letters = "".join(chr(97 + (v // 26**k) % 26) for k in range(3, -1, -1))
    return "aaaa" + letters


def _nedc_names(rng: np.random.Generator, patient: str, subject: str, n: int) -> list[tuple[str, str]]:
    """(folder relative to the split, stem) for a patient's n slides: sessions, variants, blocks, levels."""
    out, seen = [], set()
    session, year = 0, int(rng.integers(2008, 2021))
    date = (int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    for k in range(n):
        if k and rng.random() < 0.3:  # a later session
            session += 1
            year += int(rng.integers(0, 2))
            date = (int(rng.integers(1, 13)), int(rng.integers(1, 29)))
        folder = f"s{session:03d}_{year}"  # some sessions name only the year
        if rng.random() >= 0.3:
            folder += f"_{date[0]:02d}_{date[1]:02d}"
        variant = _VARIANTS[int(rng.integers(len(_VARIANTS)))]
        block, lvl, t = int(rng.integers(1, 4)), int(rng.integers(0, 4)), 0
        while (stem := f"{patient}_{subject}_s{session:03d}_0hne_{variant}_a{block:03d}_lvl{lvl:03d}_t{t:03d}") in seen:
            t += 1
        seen.add(stem)
        out.append((f"{patient}_{subject}/{folder}/breast", stem))
    return out


def _foxchase_names(rng: np.random.Generator, patient: str, n: int) -> list[tuple[str, str]]:
    """(folder relative to svs/, stem) for a Fox Chase patient's n slides."""
    out, seen = [], set()
    for _ in range(n):
        specimen = f"{int(rng.integers(10**6, 10**7)):09d}"
        site = f"c50.{int(rng.integers(0, 10))}"
        st, xt, t = int(rng.integers(1, 200)), int(rng.integers(1, 3)), 0
        while (stem := f"{patient}_{specimen}_st{st:03d}_xt{xt}_t{t:03d}") in seen:
            t += 1
        seen.add(stem)
        out.append((f"{int(patient) // 1000:05d}/{patient}/{specimen}/{site}_{site}", stem))
    return out


def _split_patients(rng: np.random.Generator, patients: list[str], splits: Sequence[float]) -> dict[str, str]:
    """Patient -> split: shuffled, cut by the fractions, every split non-empty when there are enough patients."""
    order = [patients[i] for i in rng.permutation(len(patients))]
    n = len(order)
    cuts = np.round(np.cumsum(splits) * n).astype(int)
    sizes = np.diff(np.concatenate([[0], cuts]))
    if n >= len(SPLITS):
        while (sizes == 0).any():  # take a patient from the largest split
            sizes[np.argmax(sizes)] -= 1
            sizes[np.argmin(sizes)] += 1
    out, start = {}, 0
    for name, size in zip(SPLITS, sizes, strict=True):
        out.update(dict.fromkeys(order[start:start + size], name))
        start += size
    return out


def plan_corpus(root: Path, *, flavour: str, patients: int, slides_per_patient: int | tuple[int, int],
                regions_per_slide: int, crystalline: int, slide_size: tuple[int, int], mpp: float, seed: int,
                xml_fraction: float, splits: Sequence[float] | None, quality: int = 80) -> list[SlidePlan]:
    """The corpus as a list of slide plans; cheap, deterministic in the arguments."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r} (known: {', '.join(FLAVOURS)})")
    if patients < 1 or regions_per_slide < 1 or crystalline < 0:
        raise ValueError("patients and regions_per_slide must be >= 1 and crystalline >= 0")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    foxchase = splits is None
    ids: dict[str, None] = {}  # ordered set
    while len(ids) < patients:  # Fox Chase numbers patients from 1, zero-padded to 9 digits
        ids[f"{int(rng.integers(1, 10**6)):09d}" if foxchase else f"{int(rng.integers(10**5, 10**8)):08d}"] = None
    split_of = dict.fromkeys(ids) if foxchase else _split_patients(rng, list(ids), splits)

    lo, hi = (slides_per_patient, slides_per_patient) if isinstance(slides_per_patient, int) else slides_per_patient
    slides: list[dict] = []
    for pid in ids:
        n = int(rng.integers(lo, hi + 1))
        names = _foxchase_names(rng, pid, n) if foxchase else _nedc_names(rng, pid, _subject(rng), n)
        for folder, stem in names:
            base = f"svs/{folder}" if foxchase else f"svs/{split_of[pid]}/{folder}"
            w = round(slide_size[0] * rng.uniform(0.85, 1.0))
            h = round(slide_size[1] * rng.uniform(0.85, 1.0))
            count = max(1, int(rng.poisson(regions_per_slide)))
            slides.append({"patient": pid, "split": split_of[pid], "base": base, "stem": stem, "width": w,
                           "height": h, "mpp": round(mpp * rng.uniform(0.995, 1.005), 4), "count": count})

    # labels: every class in every split (when it has room), frequencies by flavour
    weights = label_weights(flavour)
    labels: dict[int, list[str]] = {i: [] for i in range(len(slides))}
    for split in sorted({s["split"] or "" for s in slides}):
        members = [i for i, s in enumerate(slides) if (s["split"] or "") == split]
        drawn = _covering(rng, weights, sum(slides[i]["count"] for i in members))
        for i, end in zip(members, np.cumsum([slides[i]["count"] for i in members]), strict=True):
            labels[i] = drawn[end - slides[i]["count"] : end]

    # crystalline regions: extra regions on the slides of some patients, shared out over the splits by their
    # fractions (each split's share covers the three labels when it can)
    groups = [name for name in SPLITS if name in split_of.values()] or [None]
    fractions = [1.0] if foxchase else [splits[SPLITS.index(g)] for g in groups]
    for group, n in zip(groups, apportion(crystalline, fractions).tolist(), strict=True):
        members = [p for p in ids if split_of[p] == group]
        if not n or not members:
            continue
        holders = {members[i] for i in rng.permutation(len(members))[: max(1, math.ceil(n / 6))]}
        targets = [i for i, s in enumerate(slides) if s["patient"] in holders]
        order = [targets[j] for j in rng.permutation(len(targets))]
        for k, label in enumerate(_covering(rng, {k: float(v) for k, v in CRYSTAL_SHARE.items()}, n)):
            labels[order[k % len(order)]].append(label)

    n_xml = round(xml_fraction * len(slides))
    xml = set(rng.permutation(len(slides))[:n_xml].tolist())
    plans = []
    for i, s in enumerate(slides):
        suffix = ".xml" if i in xml else ".csv"
        plans.append(SlidePlan(i, seed, str(root), f"{s['base']}/{s['stem']}.svs", f"{s['base']}/{s['stem']}{suffix}",
                             s["stem"], s["patient"], s["split"], s["width"], s["height"], s["mpp"],
                             tuple(labels[i]), flavour, quality, 1))
    return plans


# ------------------------------------------------------------------------------------------- rendering
def place_regions(labels: Sequence[str], width: int, height: int, rng: np.random.Generator) -> list[Region]:
    """Non-overlapping irregular polygons (8-30 vertices), one per label, of varied size, inside the slide.

    Each polygon is star-shaped inside its own circle and circles do not meet, so polygons never overlap.
    """
    n = len(labels)
    short = min(width, height)
    r_hi = max(_MIN_RADIUS * 1.5, 0.3 * short)
    radii = np.exp(rng.uniform(np.log(min(150.0, r_hi)), np.log(r_hi), size=n))
    budget = 0.4 * width * height  # keep the regions to 40% of the slide so they fit
    area = np.pi * (radii**2).sum()
    if area > budget:
        radii *= math.sqrt(budget / area)
    radii = np.maximum(radii, _MIN_RADIUS)
    order = np.argsort(-radii, kind="stable")
    centres = np.zeros((n, 2))
    placed = np.zeros(n)
    gap = 8.0
    for rank, i in enumerate(order):
        r = radii[i]
        for attempt in range(2000):
            rr = max(r, 4.0)
            cx = rng.uniform(rr, width - 1 - rr)
            cy = rng.uniform(rr, height - 1 - rr)
            prev = order[:rank]
            if not len(prev) or (np.hypot(centres[prev, 0] - cx, centres[prev, 1] - cy)
                                 >= placed[prev] + rr + gap).all():
                break
            if attempt % 50 == 49:
                r *= 0.85  # crowded: try smaller
        else:
            raise ValueError(f"cannot place {n} regions on a {width}x{height} slide")
        centres[i], placed[i] = (cx, cy), rr
    regions = []
    for i, label in enumerate(labels):
        k = int(rng.integers(8, 31))
        ang = (np.arange(k) + rng.uniform(-0.3, 0.3, k)) * 2 * np.pi / k
        rad = placed[i] * np.clip(rng.uniform(0.62, 1.0, k), 0, 1)
        rad = (rad + np.roll(rad, 1) + np.roll(rad, -1)) / 3  # smoother outline
        x = np.clip(np.round(centres[i, 0] + rad * np.cos(ang)), 0, width - 1)
        y = np.clip(np.round(centres[i, 1] + rad * np.sin(ang)), 0, height - 1)
        regions.append(Region(i + 1, label, "breast", tuple(float(v) for v in x), tuple(float(v) for v in y)))
    return regions


def _label_image(rng: np.random.Generator) -> np.ndarray:
    """A slide label: white card with a barcode-like band, its pattern seeded like the slide."""
    img = np.full((300, 300, 3), 245, np.uint8)
    bars = rng.random(60) < 0.5
    img[40:140, 30:270][:, np.repeat(bars, 4)] = 20
    return img


def _macro(small: np.ndarray) -> np.ndarray:
    """Whole-glass overview: the section at the pyramid's smallest level (1/16), on glass, with a label area at the
    left."""
    h, w = small.shape[:2]
    macro = np.full((h + 20, w + w // 3 + 20, 3), 235, np.uint8)
    macro[10 : 10 + h, w // 3 + 10 : w // 3 + 10 + w] = small
    macro[10 : 10 + h, 5 : w // 3] = 250
    return macro


def render(plan: SlidePlan) -> dict:
    """Paint one slide, write its .svs and its annotation file; return what was written and the timings."""
    rng = np.random.default_rng(np.random.SeedSequence(plan.seed, spawn_key=(1, plan.index)))
    regions = place_regions(plan.labels, plan.width, plan.height, rng)
    if plan.kind == "realistic":
        return _render_realistic(plan, regions, rng)
    start = time.perf_counter()
    image = paint_slide(plan.width, plan.height, [(r.label, r.x, r.y) for r in regions], plan.flavour, rng)
    painted = time.perf_counter()
    slide = Path(plan.root) / plan.slide
    slide.parent.mkdir(parents=True, exist_ok=True)
    date = f"{int(rng.integers(1, 13)):02d}/{int(rng.integers(1, 29)):02d}/{int(rng.integers(10, 21))}"
    levels = pyramid(image)  # once: the macro is its smallest level
    written = write_slide(slide, image, plan.mpp, quality=plan.quality, workers=plan.encode_threads,
                          label=_label_image(rng), macro=_macro(levels[-1]), levels=levels,
                          metadata={"StripeWidth": "2040", "ScanScope ID": "SS1302", "Filename": plan.bname,
                                    "Date": date, "Time": "10:00:00"})
    header = Header(plan.bname, plan.mpp, plan.width, plan.height, "breast")
    annotation = Path(plan.root) / plan.annotation
    (write_imagescope_xml if annotation.suffix == ".xml" else write_nedc_csv)(annotation, header, regions)
    return {"slide": plan.slide, "annotation": plan.annotation, "bytes": written.nbytes,
            "raw_bytes": written.raw_bytes, "encode_seconds": written.encode_seconds,
            "paint_seconds": painted - start, "write_seconds": time.perf_counter() - painted}


def _render_realistic(plan: SlidePlan, regions: list[Region], rng: np.random.Generator) -> dict:
    from crystal_dask.synthetic.realistic import write_realistic_slide

    start = time.perf_counter()
    slide = Path(plan.root) / plan.slide
    slide.parent.mkdir(parents=True, exist_ok=True)
    written = write_realistic_slide(slide, plan.width, plan.height, regions, plan.mpp, plan.flavour, rng,
                                    quality=plan.quality, threads=plan.encode_threads,
                                    metadata={"ScanScope ID": "SS1302", "Filename": plan.bname})
    header = Header(plan.bname, plan.mpp, plan.width, plan.height, "breast")
    annotation = Path(plan.root) / plan.annotation
    (write_imagescope_xml if annotation.suffix == ".xml" else write_nedc_csv)(annotation, header, regions)
    return {"slide": plan.slide, "annotation": plan.annotation, "bytes": written.nbytes,
            "raw_bytes": written.raw_bytes, "encode_seconds": written.encode_seconds, "paint_seconds": 0.0,
            "write_seconds": time.perf_counter() - start, "tissue_fraction": written.tissue_fraction}


def generate_corpus(
    root: str | Path,
    *,
    flavour: str,
    patients: int,
    slides_per_patient: int | tuple[int, int] = 2,
    regions_per_slide: int = 10,
    crystalline: int = 0,
    slide_size: tuple[int, int] = (6000, 4000),
    mpp: float = 0.5,
    seed: int = 0,
    xml_fraction: float = 0.2,
    splits: Sequence[float] | None = SPLIT_FRACTIONS,
    quality: int = 80,
    workers: int = 2,
    kind: str = "small",
) -> dict:
    """Write a synthetic corpus under `root` and a deterministic `corpus.json` manifest; return a summary.

    `splits` None writes the Fox Chase layout (no split folders). Slide sizes vary between 85% and 100% of
    `slide_size`; each slide has about `regions_per_slide` regions (Poisson) plus its share of the
    `crystalline` ones. The summary adds timings to the manifest's counts. `kind` "realistic" writes
    glass-and-tissue mosaics (realistic.py), meant for slide sizes like real scans (40,000-60,000 px a side).
    """
    if kind not in ("small", "realistic"):
        raise ValueError(f"unknown corpus kind {kind!r} (small or realistic)")
    root = Path(root)
    if (root / "svs").is_dir() and any((root / "svs").iterdir()):
        raise ValueError(f"{root} already holds a corpus (svs/ is not empty); give an empty or new folder")
    args = {"flavour": flavour, "patients": patients, "slides_per_patient": slides_per_patient,
            "regions_per_slide": regions_per_slide, "crystalline": crystalline, "slide_size": list(slide_size),
            "mpp": mpp, "seed": seed, "xml_fraction": xml_fraction, "splits": list(splits) if splits else None,
            "quality": quality}
    if kind != "small":  # only then, so that the small corpus's manifest stays byte-identical
        args["kind"] = kind
    start = time.perf_counter()
    plans = plan_corpus(root, flavour=flavour, patients=patients, slides_per_patient=slides_per_patient,
                       regions_per_slide=regions_per_slide, crystalline=crystalline, slide_size=slide_size,
                       mpp=mpp, seed=seed, xml_fraction=xml_fraction, splits=splits, quality=quality)
    plans = [SlidePlan(**{**asdict(j), "kind": kind}) for j in plans]
    root.mkdir(parents=True, exist_ok=True)
    if workers > 1 and len(plans) > 1 and kind == "realistic":  # one slide at a time, its mosaics on threads
        results = [render(SlidePlan(**{**asdict(j), "encode_threads": workers})) for j in plans]
    elif workers > 1 and len(plans) > 1:
        warm_textures()  # forked workers inherit the texture fields instead of each computing them
        # the painters end with this process, however it ends (see runtime/orphans.py)
        with ProcessPoolExecutor(min(workers, len(plans)), initializer=exit_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            results = list(pool.map(render, plans))
    else:  # one process: let the tile encoder use the threads instead
        results = [render(SlidePlan(**{**asdict(j), "encode_threads": max(1, workers)})) for j in plans]

    by_label = Counter(label for j in plans for label in j.labels)
    by_split: dict[str, Counter] = {}
    for j in plans:
        by_split.setdefault(j.split or "all", Counter()).update(j.labels)
    manifest = {
        "flavour": flavour,
        "seed": seed,
        "layout": "foxchase" if splits is None else "nedc",
        "args": args,
        "counts": {
            "patients": patients,
            "slides": len(plans),
            "regions": sum(by_label.values()),
            "crystalline": sum(by_label[c] for c in CRYSTALLINE),
            "by_label": {c: by_label[c] for c in (*CLASSES, *CRYSTALLINE)},
            "by_split": {s: {c: n[c] for c in (*CLASSES, *CRYSTALLINE)} for s, n in sorted(by_split.items())},
            "slides_by_split": dict(sorted(Counter(j.split or "all" for j in plans).items())),
        },
        "slides": [{"slide": j.slide, "annotation": j.annotation, "patient": j.patient, "split": j.split,
                    "width": j.width, "height": j.height, "mpp": j.mpp, "labels": list(j.labels)} for j in plans],
    }
    # written last and whole: a corpus with its manifest is complete (the synth stage's output)
    write_atomic(root / "corpus.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    seconds = time.perf_counter() - start
    raw = sum(r["raw_bytes"] for r in results)
    encode = sum(r["encode_seconds"] for r in results)
    return {**manifest["counts"], "root": str(root), "flavour": flavour, "layout": manifest["layout"],
            "paths": [p for r in results for p in (r["slide"], r["annotation"])],
            "bytes": sum(r["bytes"] for r in results), "seconds": seconds,
            "paint_seconds": sum(r["paint_seconds"] for r in results),
            "write_seconds": sum(r["write_seconds"] for r in results),
            "encode_mb_per_s_per_thread": raw / 1e6 / max(encode, 1e-9),
            **({"tissue_fraction": [round(r["tissue_fraction"], 3) for r in results]} if kind != "small" else {})}
