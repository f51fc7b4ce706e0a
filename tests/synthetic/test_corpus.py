"""Synthetic corpora: NEDC and Fox Chase names, readable slides and annotations, labels, same bytes for a seed."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile

from crystal_dask.cli import main
from crystal_dask.synthetic.corpus import generate_corpus, label_weights, place_regions
from crystal_dask.vocab import CLASSES, CRYSTALLINE
from crystal_dask.wsi.annotations import read_annotations
from crystal_dask.wsi.layout import discover
from crystal_dask.wsi.polygon import polygon_mask
from crystal_dask.wsi.slides import Slide

NEDC = re.compile(
    r"svs/(?P<split>train|dev|eval)/(?P<patient>\d{8})_(?P<subject>[a-z]{8})/"
    r"(?P<session>s\d{3})_(?P<year>\d{4})(?:_\d{2}_\d{2})?/breast/"
    r"(?P=patient)_(?P=subject)_(?P=session)_0hne_(?:0000|deep|rcut|0rcl)_a\d{3}_lvl00[0-3]_t\d{3}\.(?:svs|csv|xml)"
)
FOXCHASE = re.compile(
    r"svs/\d{5}/(?P<patient>\d{9})/(?P<specimen>\d{9})/(?P<site>c50\.\d)_(?P=site)/"
    r"(?P=patient)_(?P=specimen)_st\d{3}_xt\d_t\d{3}\.(?:svs|csv|xml)"
)
ARGS = {"flavour": "fcbr", "patients": 8, "slides_per_patient": (1, 2), "regions_per_slide": 7, "crystalline": 9,
        "slide_size": (1600, 1200), "seed": 11, "xml_fraction": 0.3}


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("nedc")
    summary = generate_corpus(root, workers=2, **ARGS)
    return root, summary


def test_same_seed_same_bytes_with_one_or_two_workers(corpus, tmp_path):
    root, _ = corpus
    generate_corpus(tmp_path, workers=1, **ARGS)
    assert _digests(tmp_path) == _digests(root)


def test_other_seed_other_corpus(tmp_path):
    small = {**ARGS, "patients": 2, "slides_per_patient": 1, "crystalline": 0, "slide_size": (800, 600)}
    a = generate_corpus(tmp_path / "a", **{**small, "seed": 12}, workers=1)
    b = generate_corpus(tmp_path / "b", **{**small, "seed": 13}, workers=1)
    assert set(a["paths"]).isdisjoint(b["paths"])


def test_nedc_names_and_layout(corpus):
    root, summary = corpus
    files = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "corpus.json"]
    assert files and all(NEDC.fullmatch(f) for f in files), [f for f in files if not NEDC.fullmatch(f)]
    assert sorted(files) == sorted(summary["paths"])
    suffixes = Counter(Path(f).suffix for f in files)
    assert suffixes[".svs"] == summary["slides"] == suffixes[".csv"] + suffixes[".xml"]
    assert suffixes[".xml"] >= 1 and suffixes[".csv"] >= 1
    split_of = {}
    for f in files:
        m = NEDC.fullmatch(f)
        assert split_of.setdefault(m["patient"], m["split"]) == m["split"]  # one patient, one split
    assert set(split_of.values()) == {"train", "dev", "eval"}
    layout = discover(root)
    assert not layout.skipped and len(layout.entries) == summary["slides"]
    assert all(split_of[e.patient] == e.split for e in layout.entries)


def test_slides_open_as_aperio_svs(corpus):
    root, _ = corpus
    manifest = json.loads((root / "corpus.json").read_text())
    for entry in manifest["slides"][:4]:
        path = root / entry["slide"]
        with tifffile.TiffFile(path) as tif:
            assert tif.is_svs and len(tif.series[0].levels) >= 3
            page = tif.pages[0]
            assert page.compression == 7 and (page.tilewidth, page.tilelength) == (256, 256)
            assert f"|MPP = {entry['mpp']:.4f}" in page.description
        with Slide(path) as slide:
            assert (slide.width, slide.height) == (entry["width"], entry["height"])
            assert slide.mpp == pytest.approx(entry["mpp"])
            pixels = slide.read(0, 0, 0, slide.width, slide.height)
            assert 120 < pixels.mean() < 240  # stained tissue on glass, not blank


def test_annotations_read_back(corpus):
    root, summary = corpus
    manifest = json.loads((root / "corpus.json").read_text())
    seen: Counter = Counter()
    by_split: dict[str, Counter] = {}
    sizes = []
    for entry in manifest["slides"]:
        ann = read_annotations(root / entry["annotation"])
        assert not ann.errors, ann.errors
        header = ann.header
        assert header.bname == Path(entry["slide"]).stem and header.tissue == "breast"
        assert (header.width, header.height, header.mpp) == (entry["width"], entry["height"], entry["mpp"])
        assert [r.label for r in ann.regions] == entry["labels"]
        cover = np.zeros((header.height // 4 + 1, header.width // 4 + 1), np.int8)
        for r in ann.regions:
            assert 8 <= len(r.x) <= 30
            assert min(r.x) >= 0 and max(r.x) < header.width and min(r.y) >= 0 and max(r.y) < header.height
            cover += polygon_mask(np.array(r.x) / 4, np.array(r.y) / 4, cover.shape)
            sizes.append(max(r.bbox[2] - r.bbox[0], r.bbox[3] - r.bbox[1]))
        assert cover.max() <= 1  # regions never overlap
        seen.update(r.label for r in ann.regions)
        by_split.setdefault(entry["split"], Counter()).update(r.label for r in ann.regions)
    assert set(seen) == set(CLASSES) | set(CRYSTALLINE)
    assert sum(seen[c] for c in CRYSTALLINE) == ARGS["crystalline"] == summary["crystalline"]
    assert dict(seen) == {k: v for k, v in summary["by_label"].items() if v}
    assert set(CRYSTALLINE) <= set(by_split["train"])  # crystal-enriched training has all three
    for split, counts in by_split.items():
        if sum(counts[c] for c in CLASSES) >= len(CLASSES):
            assert set(CLASSES) <= set(counts), f"{split} lacks {set(CLASSES) - set(counts)}"
    assert min(sizes) < 400 and max(sizes) > 2 * min(sizes)  # small and large regions


def test_manifest_is_deterministic_and_consistent(corpus):
    root, summary = corpus
    manifest = json.loads((root / "corpus.json").read_text())
    assert manifest["flavour"] == "fcbr" and manifest["seed"] == 11 and manifest["layout"] == "nedc"
    assert manifest["args"]["slide_size"] == [1600, 1200]
    counts = manifest["counts"]
    assert counts["regions"] == sum(len(s["labels"]) for s in manifest["slides"]) == summary["regions"]
    assert counts["slides_by_split"] == dict(Counter(s["split"] for s in manifest["slides"]))
    assert "seconds" not in json.dumps(manifest)


def test_foxchase_layout(tmp_path):
    summary = generate_corpus(tmp_path, flavour="tubr", patients=3, slides_per_patient=1, regions_per_slide=4,
                              slide_size=(1200, 900), seed=2, splits=None, workers=1)
    files = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and p.name != "corpus.json"]
    assert len(files) == 6 and all(FOXCHASE.fullmatch(f) for f in files), files
    assert summary["layout"] == "foxchase" and set(summary["by_split"]) == {"all"}
    layout = discover(tmp_path)
    assert len(layout.entries) == 3 and all(e.split is None for e in layout.entries)
    assert {e.patient for e in layout.entries} == {FOXCHASE.fullmatch(f)["patient"] for f in files}


def test_label_frequencies_follow_the_flavour():
    fc, tu = label_weights("fcbr"), label_weights("tubr")
    assert sum(fc.values()) == pytest.approx(1) and sum(tu.values()) == pytest.approx(1)
    assert set(fc) == set(CLASSES)
    noncancer = ("bckg", "norm", "artf", "null", "infl", "nneo")
    assert sum(fc[c] for c in noncancer) == pytest.approx(12164 / (12164 + 1967 + 5954))
    assert tu["susp"] + tu["dcis"] > fc["susp"] + fc["dcis"] and tu["indc"] < fc["indc"]


def test_place_regions_crowded_slide_still_fits():
    labels = ["bckg"] * 40
    regions = place_regions(labels, 1000, 800, np.random.default_rng(0))
    cover = np.zeros((800, 1000), np.int8)
    for r in regions:
        cover += polygon_mask(np.array(r.x), np.array(r.y), cover.shape)
    assert len(regions) == 40 and cover.max() == 1


def test_cli_prints_counts(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["synth", str(out), "--patients", "3", "--slides-per-patient", "1", "--regions-per-slide", "3",
               "--crystalline", "3", "--slide-size", "1000x800", "--seed", "4", "--workers", "1"])
    text = capsys.readouterr().out
    assert rc == 0 and (out / "corpus.json").exists()
    assert re.search(r"^\s*split\s+slides\s+bckg", text, re.MULTILINE)
    assert re.search(r"^\s*total\s+3\s", text, re.MULTILINE)
    assert "3 patients, 3 slides" in text
    with pytest.raises(SystemExit):
        main(["synth", str(out), "--slide-size", "1000"])


def test_an_existing_corpus_is_not_overwritten(corpus):
    root, _ = corpus
    with pytest.raises(ValueError, match="already holds a corpus"):
        generate_corpus(root, workers=1, **ARGS)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown flavour"):
        generate_corpus(tmp_path, flavour="xyz", patients=1)
    assert main(["synth", str(tmp_path / "x"), "--patients", "0", "--workers", "1"]) == 2
