"""Extraction on real LocalClusters over generated corpora: accounting, pixels, modes, determinism, resume."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import tifffile
import zarr
from distributed import Client, LocalCluster
from skimage.transform import resize

from crystal_dask.stages.extract import extract
from crystal_dask.stages.scan import scan
from crystal_dask.store.dataset import MARKERS, Dataset
from crystal_dask.store.schema import PATCHES, REJECTS, read_table
from crystal_dask.vocab import CLASSES
from crystal_dask.wsi.patches import PatchSettings
from tests.helpers import child_env

SETTINGS = PatchSettings(chunk_rows=8)


def tree_digest(folder: Path) -> str:
    """sha256 over every file's relative path and bytes: equal digests mean byte-identical trees."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def accounted(regions: pa.Table, ds_root: Path) -> tuple[set, set, set]:
    """(scanned regions, regions with a patch, regions with an extract reject), each as (annotation, region id)."""
    def key(t: pa.Table, source: str) -> set:
        return set(zip(t[source].to_pylist(), t["region_id"].to_pylist(), strict=True))

    rejects = read_table(ds_root / "rejects.parquet", REJECTS)
    rejects = rejects.filter(pc.equal(rejects["stage"], "extract"))
    return key(regions, "annotation"), key(Dataset(ds_root).rows(), "annotation"), key(rejects, "source")


def test_region_mode_accounts_for_every_region(small_scan, small_dataset):
    scanned, written, rejected = accounted(small_scan.regions, small_dataset)
    assert scanned == written | rejected
    assert written and not (written & rejected)
    patches = read_table(small_dataset / "patches.parquet", PATCHES)
    assert patches.num_rows == len(written)  # one patch per region
    group = zarr.open_group(str(small_dataset / "patches.zarr"), mode="r")
    assert group["pixels"].shape == (small_scan.regions.num_rows, 256, 256)
    assert group["pixels"].chunks == (8, 256, 256) and group["pixels"].dtype == np.uint8
    rows = patches["row"].to_numpy()
    labels = group["label"][:]
    assert [CLASSES[i] for i in labels[rows]] == patches["cls"].to_pylist()
    assert list(group["crystal"][:][rows]) == patches["crystal"].to_pylist()
    assert set(np.flatnonzero(labels < 0)) == set(range(len(labels))) - set(rows)  # rejected rows stay unlabelled


def test_patch_pixels_match_an_independent_read(small_scan, small_dataset):
    """Pixels equal tifffile's whole-level read, sliced, BT.601 greyscale (the default), anti-aliased resize."""
    patches = Dataset(small_dataset).rows()
    pixels = zarr.open_group(str(small_dataset / "patches.zarr"), mode="r")["pixels"]
    for i in (0, patches.num_rows // 2, patches.num_rows - 1):
        r = patches.slice(i, 1).to_pylist()[0]
        level = r["level"]
        with tifffile.TiffFile(r["slide"]) as tif:
            whole = tif.series[0].levels[level].asarray()
        ds = r["downsample"]
        x0, y0 = int(np.floor(r["wx0"] / ds)), int(np.floor(r["wy0"] / ds))
        x1, y1 = int(np.ceil(r["wx1"] / ds)), int(np.ceil(r["wy1"] / ds))
        box = whole[y0:y1, x0:x1]
        assert min(box.shape[:2]) >= 256 or level == 0  # coarsest level that keeps 256 px, else level 0
        grey = box[..., :3].astype(float) @ np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as PIL's "L"
        expected = resize(grey, (256, 256), anti_aliasing=True, preserve_range=True)
        got = pixels[r["row"]].astype(float)
        # the pipeline may pre-average large boxes in integer blocks: allow small interpolation differences
        assert np.abs(got - expected).mean() < 2.0, r["row"]
        assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.98


def test_same_bytes_on_one_worker(small_scan, small_dataset, tmp_path):
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0") as c, Client(c) as one:
        extract(small_scan.regions, tmp_path / "one", SETTINGS, one, scan_rejects=small_scan.rejects)
    assert tree_digest(tmp_path / "one" / "patches.zarr") == tree_digest(small_dataset / "patches.zarr")
    assert Dataset(tmp_path / "one").rows().equals(Dataset(small_dataset).rows())


def test_rerun_is_skipped_and_settings_change_discards_old_chunks(small_scan, small_dataset, client, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(small_dataset, out)
    ds = extract(small_scan.regions, out, SETTINGS, client)
    assert ds.read_manifest()["chunks_run"] == len(list((small_dataset / MARKERS).rglob("chunk-*.json")))
    masked = PatchSettings(chunk_rows=8, mask_outside=True)
    ds = extract(small_scan.regions, out, masked, client)
    manifest = ds.read_manifest()
    assert manifest["chunks_run"] == manifest["chunks"]  # nothing reused from the other settings
    assert len(list((out / MARKERS).iterdir())) == 1  # the old plan's markers are gone
    old = zarr.open_group(str(small_dataset / "patches.zarr"), mode="r")["pixels"][:8]
    new = zarr.open_group(str(out / "patches.zarr"), mode="r")["pixels"][:8]
    assert not np.array_equal(old, new)


def test_window_mode(small_scan, client, tmp_path):
    s = PatchSettings(mode="window", window_size=300, min_overlap=0.6, chunk_rows=16)
    extract(small_scan.regions, tmp_path, s, client)
    patches = Dataset(tmp_path).rows()
    assert (patches["overlap"].to_numpy() >= 0.6).all()
    w = patches["wx1"].to_numpy() - patches["wx0"].to_numpy()
    assert (w == 300).all() and ((patches["wy1"].to_numpy() - patches["wy0"].to_numpy()) == 300).all()
    # windows lie inside their region's bbox neighbourhood and inside the slide
    assert (patches["wx1"].to_numpy() <= patches["slide_width"].to_numpy()).all()
    scanned, written, rejected = accounted(small_scan.regions, tmp_path)
    assert scanned == written | rejected
    assert patches.num_rows > len(written)  # large regions give several windows
    reasons = read_table(tmp_path / "rejects.parquet", REJECTS)["reason"].to_pylist()
    assert all("overlaps the region by at least 60%" in r for r in reasons)  # small regions: no window fits
    assert reasons, "the small corpus has regions smaller than a 300 px window"


def test_window_in_microns_needs_mpp(small_scan, client, tmp_path):
    regions = small_scan.regions.slice(0, 4)
    no_mpp = regions.set_column(regions.schema.get_field_index("mpp"), "mpp", pa.nulls(4, pa.float64()))
    s = PatchSettings(mode="window", window_size=100, window_unit="um", chunk_rows=8)
    extract(no_mpp, tmp_path, s, client)
    rejects = read_table(tmp_path / "rejects.parquet", REJECTS)
    assert rejects.num_rows == 4 and all("no MPP" in r for r in rejects["reason"].to_pylist())
    # with the slide's MPP a 100 um window is 100 / mpp pixels
    extract(regions, tmp_path / "mpp", s, client)
    p = Dataset(tmp_path / "mpp").rows()
    expected = np.rint(100 / p["mpp"].to_numpy())
    assert p.num_rows and np.array_equal(p["wx1"].to_numpy() - p["wx0"].to_numpy(), expected)


def _corrupt_tile(path: Path, level_page: int = 0, tile: int = 0) -> None:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[level_page]
        off, n = page.dataoffsets[tile], page.databytecounts[tile]
    with open(path, "r+b") as fh:
        fh.seek(off)
        fh.write(b"\x00" * n)  # the tile's JPEG stream is gone: no start-of-image marker


def test_bad_slides_become_rejects_and_the_rest_is_written(small_corpus, client, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(small_corpus, corpus)
    result = scan(corpus)
    slides = sorted(set(result.regions["slide"].to_pylist()))
    Path(slides[0]).write_bytes(b"not a tiff any more")  # broken between scan and extract
    with tifffile.TiffFile(slides[1]) as tif:
        ntiles = len(tif.pages[0].dataoffsets)
    for t in range(ntiles):
        _corrupt_tile(Path(slides[1]), 0, t)  # every level-0 tile
    s = PatchSettings(level=0, chunk_rows=8)  # level 0 only, so every region of slides[1] hits a bad tile
    extract(result.regions, tmp_path / "ds", s, client)
    rejects = read_table(tmp_path / "ds" / "rejects.parquet", REJECTS).to_pylist()
    by_slide = {sl: [r for r in result.regions.to_pylist() if r["slide"] == sl] for sl in slides[:2]}
    gone = [r for r in rejects if "slide unreadable" in r["reason"]]
    assert len(gone) == len(by_slide[slides[0]]) and all(slides[0] in r["reason"] for r in gone)
    decode = [r for r in rejects if "decode" in r["reason"].lower()]
    assert len(decode) == len(by_slide[slides[1]]) and all(slides[1] in r["reason"] for r in decode)
    scanned, written, rejected = accounted(result.regions, tmp_path / "ds")
    assert scanned == written | rejected and len(written) == len(scanned) - len(gone) - len(decode)


def test_realdata_region_and_unreadable_slide(realdata, client, tmp_path):
    from crystal_dask.wsi.annotations import Header, Region, write_nedc_csv

    folder = tmp_path / "svs" / "train" / "00000001_aaaaaaaa" / "s000_2015" / "breast"
    folder.mkdir(parents=True)
    for name, src, boxes in (("00000001_aaaaaaaa_s000_0hne_0000_a001_lvl000_t000", "CMU-1-Small-Region.svs",
                              [(100, 100, 900, 700), (1200, 1500, 2100, 2900)]),
                             ("00000001_aaaaaaaa_s000_0hne_0000_a001_lvl001_t000", "unreadable.svs",
                              [(2, 2, 14, 14)])):
        os.symlink(realdata / src, folder / f"{name}.svs")
        with tifffile.TiffFile(realdata / src) as tif:
            h, w = tif.pages[0].shape[:2]
        regions = [Region(i + 1, "indc", "breast", (x0, x1, x1, x0), (y0, y0, y1, y1))
                   for i, (x0, y0, x1, y1) in enumerate(boxes)]
        write_nedc_csv(folder / f"{name}.csv", Header(name, 0.499, w, h), regions)
    result = scan(tmp_path)
    extract(result.regions, tmp_path / "ds", PatchSettings(chunk_rows=4), client)
    patches = Dataset(tmp_path / "ds").rows()
    assert patches.num_rows == 2 and set(patches["mpp"].to_pylist()) == {0.499}
    pixels = zarr.open_group(str(tmp_path / "ds" / "patches.zarr"), mode="r")["pixels"]
    assert all(pixels[r].std() > 5 for r in patches["row"].to_pylist())  # tissue, not blank
    rejects = read_table(tmp_path / "ds" / "rejects.parquet", REJECTS).to_pylist()
    bad_slide = str(folder / "00000001_aaaaaaaa_s000_0hne_0000_a001_lvl001_t000.svs")
    assert len(rejects) == 1 and rejects[0]["location"] == "region 1"
    assert bad_slide in rejects[0]["reason"] and "Bogus marker length" in rejects[0]["reason"]


RESUME_SCRIPT = """
import sys, time
from pathlib import Path
from distributed import Client, LocalCluster
from crystal_dask.stages.extract import extract
from crystal_dask.wsi.patches import PatchSettings
from crystal_dask.store.schema import REGIONS, read_table
if __name__ == "__main__":
    regions = read_table(sys.argv[1], REGIONS)
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0") as c, Client(c) as cl:
        extract(regions, sys.argv[2], PatchSettings(chunk_rows=8), cl)
"""


@pytest.mark.slow
def test_resume_after_kill_is_byte_identical(small_scan, small_dataset, client, tmp_path):
    from crystal_dask.store.schema import REGIONS, write_table

    regions_file = write_table(small_scan.regions, tmp_path / "regions.parquet", REGIONS)
    out = tmp_path / "ds"
    env = child_env()
    proc = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, str(regions_file), str(out)], env=env,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / MARKERS).rglob("chunk-*.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the client, the scheduler and the worker die mid-run
    proc.wait()
    done_before = len(list((out / MARKERS).rglob("chunk-*.json")))
    assert not (out / "extract.json").exists(), "the run finished before it could be interrupted"
    ds = extract(small_scan.regions, out, SETTINGS, client)
    manifest = ds.read_manifest()
    assert manifest["chunks_run"] == manifest["chunks"] - done_before  # only the unfinished chunks ran again
    assert tree_digest(out / "patches.zarr") == tree_digest(small_dataset / "patches.zarr")
    assert Dataset(out).rows().equals(Dataset(small_dataset).rows())


@pytest.mark.slow
def test_killed_worker_still_gives_identical_output(small_scan, small_dataset, tmp_path):
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0") as c, Client(c) as cl:
        pids = cl.run(os.getpid)
        out = tmp_path / "ds"
        killer_done = threading.Event()

        def kill_one_worker():
            deadline = time.time() + 60
            while time.time() < deadline and not list((out / MARKERS).rglob("chunk-*.json")):
                time.sleep(0.02)
            os.kill(next(iter(pids.values())), signal.SIGKILL)  # the nanny restarts it; its tasks are rerun
            killer_done.set()

        t = threading.Thread(target=kill_one_worker)
        t.start()
        extract(small_scan.regions, out, SETTINGS, cl)
        t.join()
    assert killer_done.is_set()
    assert tree_digest(out / "patches.zarr") == tree_digest(small_dataset / "patches.zarr")


def test_orphans_of_killed_writers_are_swept_on_resume(small_scan, small_dataset, client, tmp_path):
    """A writer killed mid-write leaves zarr's `<chunk>.<uuid>.partial` or our `.<marker>.<pid>.tmp` behind.
    (CI caught the first one once in the killed-worker test.) The resumed run must end byte-identical anyway."""
    out = tmp_path / "ds"
    shutil.copytree(small_dataset, out)
    (out / "extract.json").unlink()  # the run "died" before it finished
    markers = sorted((out / MARKERS).rglob("chunk-*.json"))
    markers[-1].unlink()  # ... while writing the last chunk
    chunk = next(p for p in (out / "patches.zarr" / "pixels" / "c").rglob("*") if p.is_file())
    chunk.parent.joinpath(f"{chunk.name}.0123456789abcdef.partial").write_bytes(chunk.read_bytes()[:100])
    markers[-1].parent.joinpath(f".{markers[-1].name}.4242.tmp").write_text('{"chunk"')
    ds = extract(small_scan.regions, out, SETTINGS, client)
    assert ds.read_manifest()["chunks_run"] == 1
    assert not list(out.rglob("*.partial")) and not list(out.rglob(".*.tmp"))
    assert tree_digest(out / "patches.zarr") == tree_digest(small_dataset / "patches.zarr")
