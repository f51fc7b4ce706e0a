"""Stage features: handcrafted feature families (crystal_dask/features) and PCA of the pixels, as more arrays of each
corpus's dataset, so a training configuration can choose `features: [stain, texture, calcification]` instead of
(or beside) the published raw pixels.

Settings, the job file's `features:` section:
    families: [stain, texture, calcification]  computed on the workers from each row's RGB box (default: none)
    um_per_px: 2.0        the fixed physical resolution every family sees (slides without an MPP: their level-0 px,
                          and a family that measures µm rejects the row with "no MPP")
    max_side: 1024        px at that resolution; a larger box contributes its central max_side x max_side square
    pca: 32               the `pca` family: the pixels reduced to this many components with dask-ml's PCA, fitted
                          on the cluster over the training rows of the training corpus only (0: none)

Each family is one float32 array (rows x columns, its column names and version in the array's attributes) with an
`ok_<family>` flag per row. A row a family cannot describe (no tissue, no MPP) is a reject with its reason in
<dataset>/features_rejects.parquet and is left out of every configuration (store.dataset.Dataset.usable), never fed
to a forest as NaN. Tasks own whole chunks and leave done-markers, like extract: resumable, and byte-identical on
1 or 2 workers.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from crystal_dask.checks import ConfigError, check_fields, integer, number, texts
from crystal_dask.experiment import Experiment
from crystal_dask.features import FAMILIES, FeatureError, compute_families, resample_to
from crystal_dask.runtime import keys
from crystal_dask.runtime.allocator import roomy_malloc
from crystal_dask.runtime.tasks import resumable, run_remaining
from crystal_dask.stages import extract
from crystal_dask.stages.base import Context, Step, fingerprint, stage_of
from crystal_dask.store.dataset import PIXELS, Dataset
from crystal_dask.store.files import write_json
from crystal_dask.store.schema import REJECTS, make_table, reject_row, write_table
from crystal_dask.wsi.slides import Slide, SlideError

NAME = "features"
SECTION = "features"
PCA = "pca"
PCA_VERSION = 1  # bump when the pca array's bytes change for the same inputs
MARKERS = ".features"
log = logging.getLogger("crystal_dask.pipeline")


@dataclass(frozen=True)
class FeatureSettings:
    families: tuple[str, ...] = ()
    um_per_px: float = 2.0
    max_side: int = 1024
    pca: int = 0

    def arrays(self) -> tuple[str, ...]:
        """Every array this section adds to a dataset."""
        return (*self.families, *((PCA,) if self.pca else ()))


_CHECKS = {
    "families": lambda v, k: texts(v, k, FAMILIES), "um_per_px": lambda v, k: float(number(v, k, positive=True)),
    "max_side": lambda v, k: integer(v, k, 32), "pca": lambda v, k: integer(v, k, 0),
}


def parse(cfg: Mapping[str, Any] | None, exp: Experiment, where: str) -> FeatureSettings:
    """Check the `features:` section (absent: no features); errors name the key."""
    return FeatureSettings(**check_fields(dict(cfg or {}), _CHECKS, where))


def known_arrays(exp: Experiment) -> tuple[str, ...]:
    """What a training configuration of this experiment may name in `features`."""
    return (PIXELS, *exp.settings[SECTION].arrays())


# ---------------------------------------------------------------------------------------------- the tasks
def read_rgb(slide: Slide, box: tuple[int, int, int, int], mpp: float | None, um_per_px: float,
             max_side: int) -> tuple[np.ndarray, float | None]:
    """The RGB of a level-0 box at `um_per_px` (its central max_side square when larger), read at the coarsest
    level that is still at least that fine. Without an MPP: level 0, at the level-0 pixel (resolution None)."""
    scale = um_per_px / mpp if mpp else 1.0  # level-0 px per output px
    x0, y0, x1, y1 = box
    side = max_side * scale
    if x1 - x0 > side:
        x0 = int(round((x0 + x1) / 2 - side / 2))
        x1 = x0 + int(round(side))
    if y1 - y0 > side:
        y0 = int(round((y0 + y1) / 2 - side / 2))
        y1 = y0 + int(round(side))
    level = max((lv.index for lv in slide.levels if lv.downsample <= scale * 1.001), default=0)
    rgb = slide.read_box(x0, y0, x1, y1, level)
    if not mpp:
        return rgb, None
    return resample_to(rgb, mpp * slide.levels[level].downsample, um_per_px), um_per_px


@resumable
def feature_chunk(task: dict) -> dict:
    """Compute the families of one chunk of rows on a worker and write whole chunks of their arrays (then its
    done-marker)."""
    roomy_malloc(task["stage"])
    families, rows = task["families"], task["rows"]
    values = {f: np.zeros((len(rows), len(FAMILIES[f].columns)), np.float32) for f in families}
    ok = np.zeros(len(rows), bool)
    outcome: list[dict] = [{} for _ in rows]
    by_slide: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        if not r.get("absent"):
            by_slide[r["slide"]].append(i)
    for path, idx in by_slide.items():
        try:
            slide = Slide(path)
        except SlideError as exc:
            for i in idx:
                outcome[i] = {"reject": f"slide unreadable: {exc}"}
            continue
        with slide:
            for i in idx:
                r = rows[i]
                try:
                    rgb, res = read_rgb(slide, tuple(r["box"]), r["mpp"], task["um_per_px"], task["max_side"])
                    for f, v in compute_families(rgb, res, families).items():
                        values[f][i] = v
                    ok[i] = True
                except (FeatureError, SlideError, ValueError, OSError, MemoryError) as exc:
                    why = str(exc) if isinstance(exc, FeatureError) else f"{type(exc).__name__}: {exc}"
                    outcome[i] = {"reject": why}
    ds = Dataset(task["dataset"])
    written = ds.write_rows(task["start"], {**values, **{f"ok_{f}": ok for f in families}})
    return {"start": task["start"], "rows": outcome, "checksums": written}  # recorded by the client, once


# ---------------------------------------------------------------------------------------------- the runs
def compute(ds: Dataset, settings: FeatureSettings, client, show_progress=None) -> dict[str, Any]:
    """Add the handcrafted families to a dataset; resumes chunk by chunk. Returns the features manifest."""
    families = settings.families
    key = fingerprint(ds.read_manifest()["plan_hash"], families, settings.um_per_px, settings.max_side,
                      {f: FAMILIES[f].version for f in families})
    markers = ds.root / MARKERS / key
    if not markers.exists():
        shutil.rmtree(ds.root / MARKERS, ignore_errors=True)  # another plan's markers describe other arrays
        markers.mkdir(parents=True)
    ds.add_arrays({f: ((len(FAMILIES[f].columns),), "float32") for f in families},
                  {f: {"columns": list(FAMILIES[f].columns), "version": FAMILIES[f].version,
                       "um_per_px": settings.um_per_px, "max_side": settings.max_side, "key": key} for f in families})
    table = ds.rows()
    n_rows = ds.group()["label"].shape[0]
    chunk = ds.group()["label"].chunks[0]
    by_row = {r["row"]: r for r in table.select(["row", "slide", "annotation", "region_id", "wx0", "wy0", "wx1", "wy1",
                                                 "mpp"]).to_pylist()}
    tasks = []
    for k, start in enumerate(range(0, n_rows if families else 0, chunk)):  # no families: no task
        rows = []
        for row in range(start, min(start + chunk, n_rows)):
            r = by_row.get(row)  # rows extract rejected stay zero and not ok
            rows.append({"slide": r["slide"], "box": [r["wx0"], r["wy0"], r["wx1"], r["wy1"]], "mpp": r["mpp"]}
                        if r else {"slide": "", "box": [0, 0, 1, 1], "mpp": None, "absent": True})
        tasks.append({"start": start, "rows": rows, "families": list(families), "um_per_px": settings.um_per_px,
                      "max_side": settings.max_side, "dataset": str(ds.root),
                      "marker": str(markers / f"chunk-{k:06d}.json")})
    results, chunks_run = run_remaining(client, feature_chunk, tasks, show_progress, stage=NAME)
    ds.sweep_partial_writes()
    rejects, checksums = [], {}
    for t, done in zip(tasks, results, strict=True):
        checksums |= done["checksums"]
        for i, o in enumerate(done["rows"]):
            r = by_row.get(t["start"] + i)
            if r is not None and "reject" in o:
                rejects.append(reject_row("features", r["annotation"], f"region {r['region_id']}", o["reject"],
                                          r["region_id"]))
    ds.add_checksums(checksums)  # reads of these arrays are checked like the pixels
    write_table(make_table(REJECTS, rejects), ds.root / "features_rejects.parquet", REJECTS)
    reasons: dict[str, int] = defaultdict(int)
    for r in rejects:
        reasons[r["reason"]] += 1
    return {"key": key, "families": {f: {"version": FAMILIES[f].version, "columns": len(FAMILIES[f].columns)}
                                     for f in families},
            "rows": table.num_rows, "rejected": len(rejects), "reasons": dict(sorted(reasons.items())),
            "chunks": len(tasks), "chunks_run": chunks_run}


def fit_pca(train_ds: Dataset, rows: np.ndarray, components: int, client, stage: str) -> Any:
    """dask-ml's PCA of the pixels of `rows`, fitted on the cluster (blocks of the zarr chunks); the tasks' keys
    start with `stage`."""
    from dask_ml.decomposition import PCA as DaskPCA

    data, _ = train_ds.dask_view(rows)
    data = data.astype(np.float32)
    model = DaskPCA(n_components=min(components, len(rows), data.shape[1]), svd_solver="randomized", random_state=0)
    with keys.named(client, stage):  # fit's own dask.compute, renamed as keys.compute renames ours
        model.fit(data)
    return model


def apply_pca(ds: Dataset, model: Any, client, key: str, stage: str) -> None:
    """Every row of `ds` projected on the fitted components, written as the `pca` array (rows extract rejected
    stay zero and not ok); the tasks' keys start with `stage`."""
    n = model.n_components_
    ds.add_arrays({PCA: ((n,), "float32")}, {PCA: {"columns": [f"pca_{i}" for i in range(n)], "version": PCA_VERSION,
                                                   "key": key}})
    table = ds.rows()
    written = np.zeros(ds.group()["label"].shape[0], bool)
    written[table["row"].to_numpy()] = True
    data, _ = ds.dask_view(np.arange(len(written)))
    # The projection itself (not model.transform: dask-ml 2025.1's PCA lacks an attribute scikit-learn 1.9's
    # fitted-check reads); blocks of rows, as evaluation reads them.
    mean, components = model.mean_.astype(np.float32), model.components_.astype(np.float32)
    (projected,) = client.gather(keys.compute(client, [(data.astype(np.float32) - mean) @ components.T], stage))
    projected[~written] = 0
    ds.add_checksums(ds.write_rows(0, {PCA: projected, f"ok_{PCA}": written}))


# ---------------------------------------------------------------------------------------------- the stage
def manifest_path(ds: Dataset) -> Path:
    return ds.root / "features.json"


def steps(ctx: Context) -> Iterator[Step]:
    """One step per corpus, even without families: it also removes the arrays the settings no longer make."""
    exp = ctx.experiment
    settings: FeatureSettings = exp.settings[SECTION]
    own = {"features": asdict(settings), "versions": {f: FAMILIES[f].version for f in settings.families}}
    for c in exp.corpora.values():
        ds = extract.dataset(exp, c.name)
        reads = (f"{extract.NAME}:{c.name}",)

        def run(reads=reads, name=c.name) -> None:
            ds = ctx.output(reads[0])
            ds.keep_arrays(settings.arrays())  # a family or pca taken out of the job must not outlive it
            manifest = compute(ds, settings, ctx.client, ctx.show_progress)
            write_json(manifest_path(ds), manifest)
            log.info("features %s: %s", name, json.dumps(manifest))

        yield Step(f"{NAME}:{c.name}", reads, own, (manifest_path(ds), ds.root / "features_rejects.parquet"), run,
                   product=ds)


def pca_step(ctx: Context, corpus: str, step_name: str) -> Step:
    """The step that fits the `pca` family on the training rows of `corpus` and adds it to every dataset (the
    train stage declares it: what PCA is fitted on is training's choice)."""
    exp = ctx.experiment
    components = exp.settings[SECTION].pca
    reads = tuple(f"{extract.NAME}:{c}" for c in exp.corpora)
    fitted_on = f"{extract.NAME}:{corpus}"
    record = exp.out / "features" / "pca.json"

    def run() -> None:
        train_ds = ctx.output(fitted_on)
        table = train_ds.rows()
        rows = np.sort(table.filter(pc.equal(table["split"], "train"))["row"].to_numpy())
        stage = f"{stage_of(step_name)}-{PCA}"  # train-pca-qr, train-pca-matmul-getitem: apart from the trees
        model = fit_pca(train_ds, rows, components, ctx.client, stage)
        key = fingerprint(train_ds.read_manifest()["plan_hash"], components)
        for r in reads:
            apply_pca(ctx.output(r), model, ctx.client, key, stage)
        write_json(record, {"key": key, "fitted_on": str(train_ds.root), "rows": int(len(rows)),
                            "components": int(model.n_components_),
                            "explained_variance_ratio": float(np.sum(model.explained_variance_ratio_))})

    return Step(step_name, reads, {"pca": components, "fitted_on": corpus, "version": PCA_VERSION}, (record,), run)


def check_features(names: tuple[str, ...], exp: Experiment, where: str) -> None:
    """A configuration's `features` must name arrays this experiment makes."""
    known = known_arrays(exp)
    for n in names:
        if n not in known:
            raise ConfigError(f"{where}: {n!r} is not made by this job (known: {', '.join(known)}; families are "
                              f"computed when listed in features.families)")

