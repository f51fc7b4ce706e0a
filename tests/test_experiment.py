"""Job files: every key and type checked at load, errors naming the file and the key; the shipped jobs load."""

from __future__ import annotations

import pytest
import yaml

from crystal_dask.experiment import ExperimentError, output_folder
from crystal_dask.stages import load_experiment
from tests.helpers import PROJECT
from tests.helpers.jobs import TINY, write_job


@pytest.mark.parametrize(("change", "message"), [
    ({"corpora": None}, r"corpora: is required"),
    ({"corpora": {"a": {"path": "/nonexistent/corpus"}}}, r"corpora.a.path: /nonexistent/corpus is not a folder"),
    ({"corpora": {"a": {}}}, r"corpora.a: give exactly one of path"),
    ({"corpora": {"a": {"synth": {"flavor": "fcbr"}}}},
     r"corpora.a.synth: unknown key\(s\) \['flavor'\]; allowed: crystalline, flavour"),
    ({"extract": {"mode": "tiles"}}, r"corpora.fcbr.extract: extract.mode: must be one of region, window"),
    ({"extract": {"chunk": 3}}, r"corpora.fcbr.extract: extract: unknown key\(s\) \['chunk'\]"),
    ({"train": {"corpus": "nope"}}, r"train.corpus: 'nope' is not one of the corpora"),
    ({"train": {"corpus": "fcbr", "configs": {"x": {"sample_n": 0}}}}, r"train.configs.x.sample_n"),
    ({"evaluate": {"sets": {"s": {"corpus": "fcbr", "splits": ["test"]}}}}, r"evaluate.sets.s.splits: 'test'"),
    ({"labels": {"remap": {"tumour": "cancer"}}}, r"labels: .*'cancer' is neither a class nor crystalline"),
    ({"colour": 1}, r": \(top level\): unknown key\(s\) \['colour'\]"),
])
def test_job_errors_name_the_file_and_key(tmp_path, change, message):
    cfg = {k: v for k, v in {**TINY, **change}.items() if v is not None}
    path = write_job(tmp_path, cfg)
    with pytest.raises(ExperimentError, match=message) as err:
        load_experiment(path)
    assert str(err.value).startswith(str(path))


def test_shipped_jobs_load(tmp_path):
    demo = load_experiment(PROJECT / "jobs" / "demo.yaml")
    assert set(demo.corpora) == {"fcbr", "tubr"}
    configs = {c.name: c for c in demo.settings["train"].configs}
    assert list(configs)[:2] == ["baseline", "crystal"] and configs["crystal_by_label"].balance == "label"
    assert configs["crystal_features"].features == ("stain", "texture", "calcification")
    assert demo.settings["features"].families == ("stain", "texture", "calcification")
    features = load_experiment(PROJECT / "jobs" / "features.yaml")
    assert features.settings["features"].pca == 32 and features.settings["features"].arrays()[-1] == "pca"
    for name in ("crystal_vs_baseline.yaml", "tubr_full_eval.yaml"):
        text = (PROJECT / "jobs" / name).read_text()
        for placeholder in ("/data/nedc/fcbr/v1.0.0", "/data/nedc/tubr/v3.0.0"):
            assert placeholder in text
            folder = tmp_path / placeholder.strip("/").replace("/", "_")
            folder.mkdir(exist_ok=True)
            text = text.replace(placeholder, str(folder))
        job = load_experiment(write_job(tmp_path, yaml.safe_load(text), name))
        assert job.settings["train"].corpus == "fcbr" and job.settings["train"].configs[0].sample_n == 1850
    windows = load_experiment(tmp_path / "tubr_full_eval.yaml").corpora["tubr_windows"].extract
    assert windows.mode == "window" and windows.window_step == 250


# issue 9, class 6: wrong types that used to pass the loader (some changing the experiment silently)
@pytest.mark.parametrize(("change", "message"), [
    ({"train": {"corpus": "fcbr", "configs": {"c": {"crystal": "false"}}}},
     r"train.configs.c.crystal: must be true or false \(a YAML boolean\); got 'false'"),
    ({"corpora": {"fcbr": {**TINY["corpora"]["fcbr"], "split_seed": 1.7}}},
     r"corpora.fcbr.split_seed: must be an integer"),
    ({"corpora": {"fcbr": {**TINY["corpora"]["fcbr"], "split_seed": "abc"}}}, r"corpora.fcbr.split_seed: must be an"),
    ({"train": {"corpus": "fcbr", "configs": {"c": {"sample_n": 1.5}}}},
     r"train.configs.c.sample_n: must be an integer"),
    ({"corpora": {"fcbr": {"synth": {**TINY["corpora"]["fcbr"]["synth"], "patients": "many"}}}},
     r"corpora.fcbr.synth.patients: must be an integer >= 1; got 'many'"),
    ({"notes": 5}, r"notes: must be a list of strings; got 5"),
    ({"labels": {"remap": {5: "indc"}}}, r"labels.remap: must be a mapping with text keys"),
    ({"labels": {"remap": {"tumour": 5}}}, r"labels.remap.tumour: must be a non-empty string"),
    ({"evaluate": {"sets": {"s": {"corpus": "fcbr", "splits": "eval"}}}},
     r"evaluate.sets.s.splits: must be a list of strings; got 'eval'"),
    ({"train": {"corpus": "fcbr", "configs": {"c": {"splits": "train"}}}}, r"train.configs.c.splits: must be a list"),
    ({"name": ["x"]}, r"name: must be a non-empty string"),
])
def test_wrong_types_are_refused_naming_file_and_key(tmp_path, change, message):
    path = write_job(tmp_path, {**TINY, **change})
    with pytest.raises(ExperimentError, match=message) as err:
        load_experiment(path)
    assert str(err.value).startswith(f"{path}: ")


def test_yaml_errors_and_non_mappings_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("corpora: [unclosed\n")
    with pytest.raises(ExperimentError, match=f"^{bad}:2:1: not valid YAML: expected ',' or ']'"):
        load_experiment(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ExperimentError, match=f"^{bad}: \\(top level\\): must be a mapping"):
        load_experiment(bad)


def test_output_folder_reads_out_without_checking_the_rest(tmp_path):
    path = write_job(tmp_path, {"out": str(tmp_path / "o"), "corpora": "not checked here"})
    assert output_folder(path) == (tmp_path / "o").resolve()
    assert output_folder(write_job(tmp_path, {"name": "n"}, "j.yaml")) == (PROJECT.cwd() / "runs" / "n").resolve()


def test_a_configuration_may_only_name_arrays_the_job_makes(tmp_path):
    cfg = {**TINY, "train": {"corpus": "fcbr", "configs": {"c": {"features": ["texture"]}}}}
    with pytest.raises(ExperimentError, match=r"train.configs.c.features: 'texture' is not made by this job"):
        load_experiment(write_job(tmp_path, cfg))
    ok = load_experiment(write_job(tmp_path, {**cfg, "features": {"families": ["texture"]}}, "ok.yaml"))
    assert ok.settings["train"].configs[0].features == ("texture",)
    with pytest.raises(ExperimentError, match=r"features.families: 'colour' is not one of"):
        load_experiment(write_job(tmp_path, {**cfg, "features": {"families": ["colour"]}}, "bad.yaml"))
    with pytest.raises(ExperimentError, match=r"train.configs.c.balance: must be one of class, label; got 'raw'"):
        load_experiment(write_job(tmp_path, {**TINY, "train": {"corpus": "fcbr", "configs": {
            "c": {"balance": "raw"}}}}, "bal.yaml"))


def test_a_configuration_name_with_a_colon_is_refused(tmp_path):
    """Step names join their parts with ':' (the pca step is train:pca:fit): a configuration cannot take one."""
    path = write_job(tmp_path, {**TINY, "train": {**TINY["train"], "configs": {"pca:fit": {}}}})
    with pytest.raises(ExperimentError, match=r"train\.configs\.pca:fit: a configuration's name cannot hold ':'"):
        load_experiment(path)
