"""Label vocabulary: the 9 classes, the crystalline mapping with its flag, empty labels, job remaps and their errors."""

from __future__ import annotations

import pytest

from crystal_dask.vocab import CLASSES, CRYSTALLINE, DEFAULT_LABELS, LabelMap, UnknownLabel


def test_nine_classes_resolve_to_themselves_without_crystal_flag():
    assert len(CLASSES) == 9
    for cls in CLASSES:
        assert DEFAULT_LABELS.resolve(cls) == (cls, False)


@pytest.mark.parametrize(("raw", "cls"), [("cdcs", "dcis"), ("cnno", "nneo"), ("cidc", "indc")])
def test_crystalline_labels_map_to_their_class_and_keep_the_flag(raw, cls):
    assert CRYSTALLINE[raw] == cls
    assert DEFAULT_LABELS.resolve(raw) == (cls, True)
    assert DEFAULT_LABELS.resolve(raw.upper()) == (cls, True)


@pytest.mark.parametrize("raw", ["", "   ", "NULL", " Null "])
def test_empty_label_means_null(raw):
    assert DEFAULT_LABELS.resolve(raw) == ("null", False)


def test_unknown_label_names_the_label_and_the_vocabulary():
    with pytest.raises(UnknownLabel, match=r"unknown label 'tumr'.*bckg.*cidc"):
        DEFAULT_LABELS.resolve("tumr")


def test_crystalline_labels_are_not_scored_classes():
    assert set(CRYSTALLINE).isdisjoint(CLASSES) and len(CLASSES) == 9
    with pytest.raises(ValueError, match="maps to 'cancer', which is not a class"):
        LabelMap(crystalline={"x": "cancer"})

def test_from_config_remaps_and_extends():
    labels = LabelMap.from_config({"remap": {"Tumor": "INDC", "calc": "cdcs"}, "crystalline": {"CSUS": "susp"}})
    assert labels.resolve("tumor") == ("indc", False)
    assert labels.resolve("calc") == ("dcis", True)  # remapped onto a crystalline label keeps the flag
    assert labels.resolve("csus") == ("susp", True)
    assert labels.resolve("cidc") == ("indc", True)  # the built-in crystalline labels stay
    assert {"tumor", "calc", "csus"} <= set(labels.vocabulary)
    with pytest.raises(UnknownLabel):
        DEFAULT_LABELS.resolve("tumor")  # the default map is untouched


@pytest.mark.parametrize("cfg", [None, {}])
def test_from_config_empty_is_the_default(cfg):
    assert LabelMap.from_config(cfg) == DEFAULT_LABELS


def test_from_config_unknown_key_names_it():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['remaps'\]"):
        LabelMap.from_config({"remaps": {"a": "norm"}})


def test_from_config_remap_target_must_be_known_and_is_named():
    with pytest.raises(ValueError, match=r"remap 'tumor' -> 'cancer'"):
        LabelMap.from_config({"remap": {"tumor": "cancer"}})


def test_from_config_crystalline_must_map_to_a_class_and_is_named():
    with pytest.raises(ValueError, match=r"crystalline label 'cxyz' maps to 'cdcs'"):
        LabelMap.from_config({"crystalline": {"cxyz": "cdcs"}})
