"""cli.py: every verb module is discovered and complete, the console script lists them, exit codes pass through."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import crystal_dask
from crystal_dask.cli import VERBS, build_parser, main
from crystal_dask.stages import ORDER
from crystal_dask.store.schema import REGIONS, REJECTS, read_table

COMMANDS = Path(crystal_dask.__file__).parent / "commands"
# the verbs as the folder has them, found without pkgutil
EXPECTED = sorted(p.stem.replace("_", "-") for p in COMMANDS.glob("*.py") if not p.stem.startswith("_"))
SCRIPT = Path(sys.executable).parent / "crystal-dask"


def test_every_verb_module_is_discovered():
    assert len(EXPECTED) >= 10  # the folder was found at all
    assert list(VERBS) == EXPECTED
    assert "read-region" in VERBS and not any(v.startswith("_") for v in VERBS)


def test_every_stage_has_its_verb():
    assert len(ORDER) >= 8 and not set(ORDER) - set(VERBS), set(ORDER) - set(VERBS)


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"]])
def test_help_lists_every_stage_in_run_order(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    assert ", ".join(ORDER) in " ".join(capsys.readouterr().out.split())  # argparse rewraps the text


@pytest.mark.parametrize("verb", EXPECTED)
def test_verb_module_has_help_add_arguments_and_run(verb):
    mod = importlib.import_module(f"crystal_dask.commands.{verb.replace('-', '_')}")
    assert isinstance(mod.HELP, str) and mod.HELP.strip()
    assert len(inspect.signature(mod.add_arguments).parameters) == 1
    assert len(inspect.signature(mod.run).parameters) == 1


@pytest.mark.parametrize("verb", EXPECTED)
def test_verb_help_shows_its_help_text(verb, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([verb, "--help"])
    assert exit_.value.code == 0
    mod = importlib.import_module(f"crystal_dask.commands.{verb.replace('-', '_')}")
    out = " ".join(capsys.readouterr().out.split())  # argparse rewraps the text
    assert out.startswith(f"usage: crystal-dask {verb}")
    assert " ".join(mod.HELP.split()) in out


def test_one_parser_holds_every_verb_without_clashes():
    usage = build_parser().format_usage()  # argparse raises on a clashing option within a verb
    assert "{" + ",".join(EXPECTED) + "}" in usage


@pytest.mark.skipif(not SCRIPT.exists(), reason=f"console script {SCRIPT} not installed (pip install -e .)")
def test_console_script_help_lists_every_verb():
    done = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for verb in EXPECTED:
        assert f"    {verb} " in done.stdout, verb  # each verb's own line in the subcommand list


@pytest.mark.skipif(not SCRIPT.exists(), reason=f"console script {SCRIPT} not installed (pip install -e .)")
def test_console_script_refuses_an_unknown_verb():
    done = subprocess.run([str(SCRIPT), "frobnicate"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "invalid choice: 'frobnicate'" in done.stderr
    assert done.stdout == ""


def test_unknown_verb_and_no_verb_exit_2_with_a_message(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["frobnicate", "x"])
    assert exit_.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert "required: verb" in capsys.readouterr().err


def test_main_returns_the_verbs_failure_code(tmp_path: Path, capsys):
    out = tmp_path / "scan"
    assert main(["scan", str(tmp_path / "no-corpus"), "-o", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"scan: corpus root {tmp_path / 'no-corpus'} ")
    assert not out.exists()


def test_main_returns_the_verbs_success_code(tmp_path: Path, capsys):
    (tmp_path / "corpus").mkdir()
    out = tmp_path / "scan"
    assert main(["scan", str(tmp_path / "corpus"), "-o", str(out), "--strict"]) == 0
    assert '"regions": 0' in capsys.readouterr().out
    assert read_table(out / "regions.parquet", REGIONS).num_rows == 0
    assert read_table(out / "rejects.parquet", REJECTS).num_rows == 0


def test_a_known_verb_imports_only_its_own_module(tmp_path: Path):
    # a fresh interpreter: this test process has imported every verb already
    code = ("import sys; from crystal_dask.cli import main; "
            f"rc = main(['scan', {str(tmp_path / 'none')!r}, '-o', {str(tmp_path / 'o')!r}]); "
            "print(rc, sorted(m for m in sys.modules if m.startswith('crystal_dask.commands.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split(" ", 1) == ["2", "['crystal_dask.commands.scan']\n"], done.stderr


HEAVY = ("zarr", "dask.bag", "sklearn", "imblearn")


@pytest.mark.parametrize("argv", [["--help"], ["status", "{out}"], ["status", "{out}", "--json"]])
def test_status_and_help_stay_light(tmp_path: Path, argv):
    """`crystal-dask status` and `--help` answer without loading the pipeline's heavy packages."""
    from crystal_dask.status import Status

    Status(tmp_path / "run", "demo", tmp_path / "demo.yaml").stage("scan:fcbr", state="done")
    args = [a.format(out=tmp_path / "run") for a in argv]
    code = ("import sys\nfrom crystal_dask.cli import main\ntry:\n    main(" + repr(args) + ")\n"
            "except SystemExit:\n    pass\n"
            f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "HEAVY []", done.stdout + done.stderr
    if argv[0] == "status" and len(argv) == 2:
        assert "scan:fcbr" in done.stdout and "running" in done.stdout


def test_a_dry_run_loads_no_model_library_no_statistics_and_no_figures(tmp_path: Path):
    """`run --dry-run` declares every step without skops/scikit-learn, scipy.stats or matplotlib (~1 s)."""
    from tests.helpers.jobs import tiny_job

    job = tiny_job(tmp_path)
    code = ("import sys\nfrom crystal_dask.cli import main\n"
            f"rc = main(['run', {str(job)!r}, '--dry-run'])\n"
            "heavy = ('skops', 'sklearn', 'imblearn', 'scipy.stats', 'matplotlib')\n"
            "print('HEAVY', rc, sorted(m for m in heavy if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "HEAVY 0 []", done.stdout + done.stderr
