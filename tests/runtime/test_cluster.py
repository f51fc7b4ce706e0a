"""cluster.yaml checking and connecting to real clusters: LocalCluster, a spawned scheduler (plain and TLS)."""

from __future__ import annotations

import copy
import re
import shutil
import textwrap
from pathlib import Path

import dask
import dask.array as da
import pytest
import yaml
from distributed import Client, get_worker

from crystal_dask.runtime.cluster import (
    ClusterConfigError,
    connect,
    job_script,
    load_cluster_config,
    local_client,
    worker_count,
)
from tests.helpers import PROJECT
from tests.helpers.dask_processes import make_tls_files, scheduler_and_workers

REPO_CLUSTER_YAML = PROJECT / "cluster.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(textwrap.dedent(text))
    return path


# ------------------------------------------------------------------------------------------------ loading
def test_no_file_gives_local_defaults():
    cfg = load_cluster_config(None)
    assert cfg.kind == "local"
    assert dict(cfg.settings) == {
        "workers": 2, "threads_per_worker": 1, "memory_limit": "auto",
        "dashboard_address": "127.0.0.1:8787", "processes": True,
    }
    assert cfg.wait_for_workers == 60


def test_repo_cluster_yaml_is_local_with_documented_values():
    cfg = load_cluster_config(REPO_CLUSTER_YAML)
    assert cfg.kind == "local"
    assert cfg.settings["workers"] == 2 and cfg.settings["threads_per_worker"] == 1


def commented_block(kind: str) -> str:
    """The commented example for `kind` in the repo's cluster.yaml, uncommented (prose lines left out)."""
    text = REPO_CLUSTER_YAML.read_text()
    block = text.split(f"# {'-' * 64} {kind}", 1)[1].split(f"# {'-' * 64} ", 1)[0]
    return "\n".join(m.group(1) for m in re.finditer(r"^# ( *[a-z_]+:.*)$", block, re.M))


def test_repo_cluster_yaml_commented_examples_are_valid(tmp_path):
    slurm = load_cluster_config(write(tmp_path, commented_block("slurm")))
    assert slurm.kind == "slurm" and slurm.settings["scale"] == {"jobs": 4}
    assert slurm.passthrough["interface"] == "ib0"
    kube = load_cluster_config(write(tmp_path, commented_block("kubernetes")))
    assert kube.kind == "kubernetes" and kube.passthrough == {"namespace": "pathology", "env": {"OMP_NUM_THREADS": "1"}}
    # the address example names TLS files relative to the yaml, which do not exist in tmp_path
    with pytest.raises(ClusterConfigError, match=re.escape(f"tls.ca_file: no such file: {tmp_path}/certs/ca.pem")):
        load_cluster_config(write(tmp_path, commented_block("address")))


SLURM = "kind: slurm\ncores: 1\nmemory: 2GB\n"
BAD = [  # (yaml, key named in the error, part of the problem)
    ("kind: slrum\n", "kind", "must be one of local, address, slurm, pbs, sge, kubernetes; got 'slrum'"),
    ("workers: 0\n", "workers", "integer >= 1; got 0"),
    ("workers: two\n", "workers", "got 'two'"),
    ("workers: true\n", "workers", "got True"),
    ("threads_per_worker: -1\n", "threads_per_worker", ">= 1"),
    ("memory_limit: lots\n", "memory_limit", "size like '4GiB'"),
    ("dashboard_address: 8787x\n", "dashboard_address", "'host:port'"),
    ("processes: yes please\n", "processes", "true or false"),
    ("wokers: 2\n", "wokers", "not a key of kind local"),
    ("walltime: '01:00:00'\n", "walltime", "not a key of kind local"),
    ("jobqueue: {cores: 2}\n", "jobqueue", "not a key of kind local"),
    ("wait_for_workers: -5\n", "wait_for_workers", "seconds > 0"),
    ("kind: address\n", "address", "'tcp://host:port'"),
    ("kind: address\naddress: http://h:1\n", "address", "got 'http://h:1'"),
    ("kind: address\naddress: tcp://h:1\ntls: {ca_file: a, cert: b, key: c}\n", "tls", "is not tls://"),
    ("kind: address\naddress: tls://h:1\ntls: {ca_file: a}\n", "tls", "exactly ca_file, cert and key"),
    ("kind: address\naddress: tls://h:1\ntls: {ca_file: nope.pem, cert: b, key: c}\n", "tls.ca_file", "no such file"),
    ("kind: slurm\nmemory: 2GB\n", "cores", "required for kind slurm"),
    (SLURM.replace("cores: 1", "cores: 0"), "cores", ">= 1"),
    (SLURM.replace("2GB", "2 bananas"), "memory", "size like"),
    (SLURM + "walltime: soon\n", "walltime", "'01:30:00'"),
    (SLURM + "job_extra_directives: --exclusive\n", "job_extra_directives", "list of strings"),
    (SLURM + "scale: {jobs: 1, adapt: {maximum_jobs: 2}}\n", "scale", "{jobs: N}"),
    (SLURM + "scale: {jobs: 0}\n", "scale.jobs", ">= 1"),
    (SLURM + "scale: {adapt: {minimum_jobs: 3, maximum_jobs: 2}}\n", "scale.adapt.maximum_jobs", "below minimum"),
    (SLURM + "scale: {adapt: {minimum_jobs: 0, maximum_jobs: 2}}\n", "scale.adapt.minimum_jobs", ">= 1"),
    (SLURM + "jobqueue: {cores: 2}\n", "jobqueue.cores", "write it as the top-level key"),
    (SLURM + "jobqueue: [interface]\n", "jobqueue", "mapping"),
    (SLURM + "workers: 2\n", "workers", "not a key of kind slurm"),
    ("direct_to_workers: sometimes\n", "direct_to_workers", "true or false"),
    ("kind: kubernetes\n", "image", "required for kind kubernetes"),
    ("kind: kubernetes\nimage: x\nkubernetes: {n_workers: 3}\n", "kubernetes.n_workers", "top-level key"),
]


@pytest.mark.parametrize(("text", "key", "problem"), BAD, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD)])
def test_bad_value_names_file_and_key(tmp_path, text, key, problem):
    path = write(tmp_path, text)
    with pytest.raises(ClusterConfigError) as err:
        load_cluster_config(path)
    assert str(err.value).startswith(f"{path}: {key}: "), str(err.value)
    assert problem in str(err.value)


@pytest.mark.parametrize(("text", "direct"), [
    ("", True), ("kind: local\ndirect_to_workers: false\n", False), (SLURM, True),
    ("kind: address\naddress: tcp://h:1\n", None),
    ("kind: address\naddress: tcp://h:1\ndirect_to_workers: yes\n", True),
    ("kind: kubernetes\nimage: x\n", None),
])
def test_direct_to_workers_defaults_on_only_where_the_scheduler_runs_here(tmp_path, text, direct):
    """Where the scheduler runs in this process its workers can reach us, so we can reach them; a remote
    scheduler's workers may sit behind it (an ssh tunnel, a pod network), so dask's own config decides there."""
    assert load_cluster_config(write(tmp_path, text)).direct_to_workers is direct


def test_not_yaml_or_not_a_mapping_names_file(tmp_path):
    with pytest.raises(ClusterConfigError, match=r"cluster\.yaml:2:1: not valid YAML: expected ',' or ']'"):
        load_cluster_config(write(tmp_path, "kind: [local\n"))
    with pytest.raises(ClusterConfigError, match=r"cluster\.yaml: the top level must be a mapping"):
        load_cluster_config(write(tmp_path, "- local\n"))


def test_jobqueue_passthrough_survives_and_reaches_the_job_script(tmp_path):
    passthrough = {
        "job_name": "cd-passthrough",
        "account": "proj42",
        "job_script_prologue": ["export CRYSTAL_DASK_MARK=1"],
        "worker_extra_args": ["--lifetime", "55m"],
        "scheduler_options": {"dashboard_address": ":0", "host": "127.0.0.1"},
    }
    path = write(tmp_path, SLURM + "walltime: '00:05:00'\njob_extra_directives: [--exclusive]\n")
    with path.open("a") as f:
        yaml.safe_dump({"jobqueue": passthrough}, f)
    cfg = load_cluster_config(path)
    assert cfg.passthrough == passthrough
    script = job_script(cfg)  # a real SLURMCluster; no job is submitted
    for line in ("#SBATCH -J cd-passthrough", "#SBATCH -A proj42", "#SBATCH --exclusive", "#SBATCH -t 00:05:00",
                 "#SBATCH --cpus-per-task=1", "#SBATCH --mem=2G", "export CRYSTAL_DASK_MARK=1"):
        assert line in script.splitlines(), (line, script)
    assert "--lifetime 55m" in script and "tcp://127.0.0.1:" in script


def test_kubernetes_without_dask_kubernetes_says_how_to_install(tmp_path):
    try:
        import dask_kubernetes  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("dask-kubernetes is installed; this checks the message shown without it")
    cfg = load_cluster_config(write(tmp_path, "kind: kubernetes\nimage: example/crystal-dask:0.1\n"))
    assert cfg.wait_for_workers == 120
    with pytest.raises(ImportError, match="pip install dask-kubernetes"):
        with connect(cfg):
            pass


# ------------------------------------------------------------------------------------------------ connecting
def test_local_cluster_two_workers_dashboard_and_config_untouched(tmp_path, capfd):
    cfg = load_cluster_config(write(tmp_path, "kind: local\nworkers: 2\ndashboard_address: '127.0.0.1:0'\n"))
    before = copy.deepcopy(dask.config.config)
    with connect(cfg) as client:
        assert worker_count(client) == 2
        assert da.arange(1000, chunks=100).sum().compute() == 499500  # runs on the client's cluster
        ran_on = set(client.gather(client.map(lambda i: get_worker().address, range(40))))
        assert ran_on <= set(client.nthreads()) and ran_on
        cluster = client.cluster
    assert re.search(r"^dashboard: http://127\.0\.0\.1:\d+/status$", capfd.readouterr().err, re.M)
    assert client.status == "closed" and cluster.status.name == "closed"
    assert dask.config.config == before


def _count_relayed_scatters(dask_scheduler) -> None:
    """Wrap the scheduler's "scatter" handler, the one a Client calls when the scheduler relays the data."""
    relay = dask_scheduler.handlers["scatter"]
    dask_scheduler.relayed_scatters = 0

    async def counted(*args, **kwargs):
        dask_scheduler.relayed_scatters += 1
        return await relay(*args, **kwargs)

    dask_scheduler.handlers["scatter"] = counted


def test_local_client_sends_a_broadcast_straight_to_the_workers():
    """The Client connect() makes scatters without the scheduler relaying the data (what train.fit's broadcast
    of the training matrix relies on: 7x faster here); a plain Client on the same cluster is relayed."""
    import numpy as np

    x = np.arange(4_000_000, dtype=np.float32)
    with local_client(2, "2GiB") as client:
        client.run_on_scheduler(_count_relayed_scatters)
        relayed = lambda: client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.relayed_scatters)  # noqa: E731
        future = client.scatter(x, broadcast=True, hash=False)
        assert len(client.who_has(future)[future.key]) == 2
        assert np.array_equal(client.submit(np.copy, future).result(), x)
        assert relayed() == 0
        with Client(client.cluster) as plain:  # dask's default: through the scheduler
            plain.scatter(x, broadcast=True, hash=False)
        assert relayed() == 1


@pytest.mark.slow
def test_address_kind_runs_on_both_spawned_workers_and_leaves_them_running(tmp_path, capfd):
    with scheduler_and_workers(2, tmp_path / "procs") as address:
        cfg = load_cluster_config(write(tmp_path, f"kind: address\naddress: {address}\n"))
        before = copy.deepcopy(dask.config.config)
        with connect(cfg) as client:
            assert worker_count(client) == 2
            ran_on = set(client.gather(client.map(lambda i: get_worker().address, range(40))))
            assert da.ones((200, 200), chunks=50).sum().compute() == 40000
        assert len(ran_on) == 2
        assert re.search(r"^dashboard: http://127\.0\.0\.1:\d+/status$", capfd.readouterr().err, re.M)
        assert dask.config.config == before
        with Client(address) as again:  # connect() closed only its Client, not the scheduler it reached
            assert worker_count(again) == 2


def test_address_kind_times_out_naming_what_it_waited_for(tmp_path):
    with scheduler_and_workers(0, tmp_path / "procs") as address:
        path = write(tmp_path, f"kind: address\naddress: {address}\nwait_for_workers: 1\n")
        with pytest.raises(TimeoutError, match=rf"{re.escape(str(path))}: wait_for_workers: no worker joined "
                                               rf"the scheduler at {re.escape(address)} within 1 s"):
            with connect(load_cluster_config(path)):
                pass


def test_unreachable_address_names_file_and_address(tmp_path):
    path = write(tmp_path, "kind: address\naddress: tcp://127.0.0.1:9\nwait_for_workers: 1\n")
    with pytest.raises(ConnectionError, match=rf"^{re.escape(str(path))}: address: cannot reach the scheduler at "
                                              r"tcp://127\.0\.0\.1:9"):
        with connect(load_cluster_config(path)):
            pass


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a throwaway CA")
def test_address_kind_over_tls(tmp_path):
    tls = make_tls_files(tmp_path / "certs")
    with scheduler_and_workers(1, tmp_path / "procs", tls=tls) as address:
        assert address.startswith("tls://")
        # relative paths in the yaml resolve against the yaml's folder
        cfg = load_cluster_config(write(tmp_path, f"""\
            kind: address
            address: {address}
            tls: {{ca_file: certs/ca.pem, cert: certs/node.pem, key: certs/node.key}}
            """))
        with connect(cfg) as client:
            assert client.submit(sum, [1, 2, 3]).result() == 6
            assert client.scheduler.address.startswith("tls://")
