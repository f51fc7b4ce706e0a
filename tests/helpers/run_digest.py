"""Digest of a finished job's outputs: what "byte-identical" means for a refactor or a format change.

    python -m tests.helpers.run_digest runs/demo > digest.json

For every dataset: sha256 of each zarr array's decoded contents (independent of chunk file names) and of its
patches table; for every evaluation: sha256 of the predictions table's rows; for every whole-slide inference (when
the job has one): its summary rows and each slide's probability grid; and results.json's confusion matrices.
Two runs are the same experiment when their digests are equal (paths inside the run folder are made relative).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import zarr


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(out: Path) -> dict:
    d: dict = {"datasets": {}, "predictions": {}, "confusion": {}}
    for ds in sorted((out / "datasets").iterdir()):
        group = zarr.open_group(str(ds / "patches.zarr"), mode="r")
        d["datasets"][ds.name] = {name: _sha(group[name][...].tobytes()) for name in sorted(group.array_keys())}
        rows = json.dumps(pq.read_table(ds / "patches.parquet").to_pylist(), sort_keys=True, default=str)
        d["datasets"][ds.name]["patches.parquet"] = _sha(rows.replace(str(out), "<out>").encode())  # paths in the run
    for pred in sorted((out / "eval").rglob("predictions.parquet")):
        rows = pq.read_table(pred).to_pylist()
        d["predictions"][str(pred.parent.relative_to(out / "eval"))] = _sha(json.dumps(rows, sort_keys=True).encode())
    for summary in sorted((out / "infer").rglob("summary.parquet")) if (out / "infer").is_dir() else []:
        folder = summary.parent  # whole-slide inference: its summary rows and every slide's probability grid
        rows = json.dumps(pq.read_table(summary).to_pylist(), sort_keys=True, default=str)
        d.setdefault("infer", {})[str(folder.relative_to(out / "infer"))] = {
            "summary.parquet": _sha(rows.replace(str(out), "<out>").encode()),
            **{str(z.parent.relative_to(folder)): _sha(zarr.open_group(str(z), mode="r")["proba"][...].tobytes())
               for z in sorted(folder.rglob("windows.zarr"))}}
    results = json.loads((out / "results.json").read_text())
    d["confusion"] = {s: {c: v["confusion"] for c, v in cfgs.items()} for s, cfgs in results["sets"].items()}
    return d


if __name__ == "__main__":
    print(json.dumps(digest(Path(sys.argv[1])), indent=1, sort_keys=True))
