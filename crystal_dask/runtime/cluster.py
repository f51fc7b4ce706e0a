"""cluster.yaml says where a job runs: load and check it, then connect a distributed Client to that cluster.

Kinds: `local` (a LocalCluster on this machine), `address` (an already running scheduler, optionally over TLS),
`slurm`/`pbs`/`sge` (worker jobs submitted by dask-jobqueue) and `kubernetes` (dask-kubernetes' operator).
Only crystal_dask's own keys are checked here; the `jobqueue:` and `kubernetes:` mappings are handed unchanged
to those libraries' constructors. Nothing here writes to the user's dask configuration.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.config

from crystal_dask.checks import (
    ConfigError,
    at_least,
    byte_size,
    byte_size_or_auto,
    flag,
    host_port,
    read_yaml,
    seconds,
    section,
    text,
    texts,
    walltime,
)
from crystal_dask.runtime.reach import check_scheduler

if TYPE_CHECKING:  # loading and checking a cluster.yaml needs no distributed (0.2 s): `run --dry-run` checks it too
    from distributed import Client
    from distributed.security import Security

KINDS: tuple[str, ...] = ("local", "address", "slurm", "pbs", "sge", "kubernetes")
BATCH_KINDS: tuple[str, ...] = ("slurm", "pbs", "sge")
# Seconds connect() waits for the first worker: batch jobs and pods queue, local workers just start.
WAIT_QUEUED, WAIT_DIRECT = 120.0, 60.0
# Kinds whose scheduler runs in this process: its workers reach it, so this Client can reach them too and may
# send data straight to them (a broadcast of the training matrix is ~7x faster than relayed by the scheduler).
SCHEDULER_HERE: tuple[str, ...] = ("local", *BATCH_KINDS)


class ClusterConfigError(ConfigError):
    """A cluster.yaml value that crystal_dask cannot use; the message names the file and the key."""


@dataclass(frozen=True)
class ClusterConfig:
    """A checked cluster.yaml. Treat the mappings as read-only.

    `settings` holds crystal_dask's keys for `kind` (defaults filled in for local, only the given keys for the
    batch kinds, so the user's jobqueue.yaml still supplies the rest); `passthrough` is the `jobqueue:` or
    `kubernetes:` mapping exactly as written; `source` names the file in messages. `direct_to_workers` is the
    Client's own setting (None: dask's `distributed.client.direct-to-workers` config decides).
    """

    kind: str
    settings: Mapping[str, Any]
    passthrough: Mapping[str, Any]
    wait_for_workers: float
    source: str
    direct_to_workers: bool | None = None


# ------------------------------------------------------------------------------------------------ checkers
# crystal_dask.checks' checkers, (value, key) -> value, raising ConfigError "<key>: <problem>"; the loader adds
# the file. Tables below are key -> (checker, default).
def _mapping(value: Any, key: str) -> dict[str, Any]:
    """A mapping with text keys; unlike a job file's sections, null is not an empty one here."""
    if value is None:
        raise ConfigError(f"{key}: must be a mapping with text keys; got None")
    return section(value, key)


_NO_DEFAULT = object()
_LOCAL = {
    "workers": (at_least(1), 2),
    "threads_per_worker": (at_least(1), 1),
    "memory_limit": (byte_size_or_auto, "auto"),
    "dashboard_address": (host_port, "127.0.0.1:8787"),
    "processes": (flag, True),
}
_BATCH = {  # names are dask-jobqueue's own keyword arguments; unset ones fall back to the user's jobqueue.yaml
    "cores": (at_least(1), _NO_DEFAULT),
    "memory": (byte_size, _NO_DEFAULT),
    "walltime": (walltime, _NO_DEFAULT),
    "queue": (text, _NO_DEFAULT),
    "processes": (at_least(1), _NO_DEFAULT),
    "job_extra_directives": (lambda v, k: list(texts(v, k)), _NO_DEFAULT),
    "python": (text, _NO_DEFAULT),
    "local_directory": (text, _NO_DEFAULT),
    "log_directory": (text, _NO_DEFAULT),
}
_KUBERNETES = {
    "name": (text, "crystal-dask"),
    "image": (text, _NO_DEFAULT),
    "n_workers": (at_least(1), 2),
    "resources": (_mapping, _NO_DEFAULT),
}
_COMMON = ("kind", "wait_for_workers", "direct_to_workers")
_OWN_KEYS: dict[str, tuple[str, ...]] = {
    "local": tuple(_LOCAL),
    "address": ("address", "tls"),
    **dict.fromkeys(BATCH_KINDS, (*_BATCH, "scale", "jobqueue")),
    "kubernetes": (*_KUBERNETES, "kubernetes"),
}


# ------------------------------------------------------------------------------------------------ loading
def load_cluster_config(path: Path | None) -> ClusterConfig:
    """Read and check a cluster.yaml; `None` gives the local defaults (a LocalCluster of 2 workers)."""
    if path is None:
        return cluster_config_from_mapping({}, source="<defaults>")
    path = Path(path)
    data = read_yaml(path, ClusterConfigError)
    return cluster_config_from_mapping(data if data is not None else {}, source=str(path), base=path.parent)


def cluster_config_from_mapping(data: Any, source: str = "<mapping>", base: Path | None = None) -> ClusterConfig:
    """Check an already parsed cluster mapping (e.g. a job's inline `cluster:`); `base` anchors relative TLS
    file paths (default: the current directory)."""
    if not isinstance(data, Mapping):
        raise ClusterConfigError(f"{source}: the top level must be a mapping of keys; got {type(data).__name__}")

    def bad(key: str, problem: str) -> ClusterConfigError:
        return ClusterConfigError(f"{source}: {key}: {problem}")

    kind = data.get("kind", "local")
    if kind not in KINDS:
        raise bad("kind", f"must be one of {', '.join(KINDS)}; got {kind!r}")
    allowed = _OWN_KEYS[kind]
    for key in data:
        if key not in (*_COMMON, *allowed):
            raise bad(str(key), f"not a key of kind {kind}; its keys are: {', '.join((*_COMMON, *allowed))}")
    passthrough: dict[str, Any] = {}
    try:  # every ConfigError below starts with its (possibly nested) key
        wait = seconds(data.get("wait_for_workers", WAIT_DIRECT if kind in ("local", "address") else WAIT_QUEUED),
                       "wait_for_workers")
        direct = flag(data["direct_to_workers"], "direct_to_workers") if "direct_to_workers" in data else (
            True if kind in SCHEDULER_HERE else None)
        table = {"local": _LOCAL, "kubernetes": _KUBERNETES}.get(kind, _BATCH)
        settings: dict[str, Any] = {}
        for key, (check, default) in (table.items() if kind != "address" else ()):
            if key in data:
                settings[key] = check(data[key], key)
            elif default is not _NO_DEFAULT:
                settings[key] = default
        if kind == "address":
            settings = _address_settings(data, base or Path.cwd())
        elif kind in BATCH_KINDS:
            settings["scale"] = _scale(data.get("scale", {"jobs": 1}))
            for key in ("cores", "memory"):  # dask-jobqueue cannot submit without them
                if key not in settings and dask.config.get(f"jobqueue.{kind}.{key}", None) is None:
                    raise ConfigError(f"{key}: required for kind {kind} (not set here nor in dask config "
                                      f"jobqueue.{kind})")
            passthrough = _passthrough(data, "jobqueue", settings)
        elif kind == "kubernetes":
            if "image" not in settings:
                raise ConfigError("image: required for kind kubernetes (an image with crystal_dask installed)")
            passthrough = _passthrough(data, "kubernetes", settings)
    except ConfigError as exc:
        raise ClusterConfigError(f"{source}: {exc}") from None
    return ClusterConfig(kind, settings, passthrough, wait, source, direct)


def _address_settings(data: Mapping[str, Any], base: Path) -> dict[str, Any]:
    address = data.get("address")
    if not isinstance(address, str) or not re.match(r"^(tcp|tls)://[^\s/]+:\d{1,5}$", address):
        raise ConfigError(f"address: must be 'tcp://host:port' or 'tls://host:port'; got {address!r}")
    if "tls" not in data:
        return {"address": address, "tls": None}
    if not address.startswith("tls://"):
        raise ConfigError(f"tls: given, but address {address!r} is not tls://")
    tls = data["tls"]
    if not isinstance(tls, Mapping) or set(tls) != {"ca_file", "cert", "key"}:
        raise ConfigError(f"tls: must be a mapping with exactly ca_file, cert and key; got {tls!r}")
    files = {}
    for key in ("ca_file", "cert", "key"):
        file = base / text(tls[key], f"tls.{key}")
        if not file.is_file():
            raise ConfigError(f"tls.{key}: no such file: {file}")
        files[key] = str(file)
    return {"address": address, "tls": files}


def _scale(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or len(value) != 1 or not set(value) <= {"jobs", "adapt"}:
        raise ConfigError("scale: must be {jobs: N} or {adapt: {minimum_jobs: N, maximum_jobs: M}}; "
                          f"got {value!r}")
    if "jobs" in value:
        return {"jobs": at_least(1)(value["jobs"], "scale.jobs")}
    adapt = value["adapt"]
    if not isinstance(adapt, Mapping) or "maximum_jobs" not in adapt or set(adapt) - {"minimum_jobs", "maximum_jobs"}:
        raise ConfigError(f"scale.adapt: must be {{minimum_jobs: N, maximum_jobs: M}}; got {adapt!r}")
    # at least one job, because connect() waits for a worker before it returns
    low = at_least(1)(adapt.get("minimum_jobs", 1), "scale.adapt.minimum_jobs")
    high = at_least(1)(adapt["maximum_jobs"], "scale.adapt.maximum_jobs")
    if high < low:
        raise ConfigError(f"scale.adapt.maximum_jobs: {high} is below minimum_jobs {low}")
    return {"adapt": {"minimum_jobs": low, "maximum_jobs": high}}


def _passthrough(data: Mapping[str, Any], key: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    extra = _mapping(data.get(key, {}), key)
    for name in extra:
        if name in settings or name in ("scale", "n_workers"):
            raise ConfigError(f"{key}.{name}: set by crystal_dask; write it as the top-level key instead")
    return extra


# ------------------------------------------------------------------------------------------------ connecting
@contextlib.contextmanager
def connect(cfg: ClusterConfig) -> Iterator[Client]:
    """Start (or reach) the cluster `cfg` describes, print its dashboard link to stderr, wait for a worker,
    yield a Client; on exit close the Client and whatever this call started (never a scheduler it only reached).

    The Client is dask's default scheduler only inside the block (distributed's own scoped setting, undone on
    close); no other dask configuration is touched.
    """
    from distributed import Client

    with contextlib.ExitStack() as stack:
        if cfg.kind == "address":
            address = cfg.settings["address"]
            # bounded by wait_for_workers, naming the file: a silent port or a web server never reaches Client
            check_scheduler(address, cfg.wait_for_workers, cfg.source)
            try:
                client = stack.enter_context(
                    Client(address, security=_security(cfg.settings["tls"]), timeout=cfg.wait_for_workers,
                           direct_to_workers=cfg.direct_to_workers)
                )
            except (OSError, MemoryError) as exc:  # MemoryError: something else answered (see runtime/reach.py)
                raise ConnectionError(f"{cfg.source}: address: cannot reach the scheduler at {address}: {exc}") from exc
            waited_for = f"the scheduler at {address}"
        else:
            cluster = stack.enter_context(_start_cluster(cfg))
            client = stack.enter_context(Client(cluster, direct_to_workers=cfg.direct_to_workers))
            waited_for = f"the {cfg.kind} cluster (scheduler {cluster.scheduler_address})"
            if cfg.kind in BATCH_KINDS:
                logs = cfg.settings.get("log_directory", "the jobs' output files")
                waited_for += f"; see the batch queue (are the jobs pending?) and the worker logs in {logs}"
        print(f"dashboard: {client.dashboard_link}", file=sys.stderr, flush=True)
        try:
            client.wait_for_workers(1, timeout=cfg.wait_for_workers)
        except TimeoutError:
            raise TimeoutError(
                f"{cfg.source}: wait_for_workers: no worker joined {waited_for} within {cfg.wait_for_workers:g} s"
            ) from None
        yield client


def worker_count(client: Client) -> int:
    """How many workers the client's scheduler has right now."""
    return len(client.nthreads())


def job_script(cfg: ClusterConfig) -> str:
    """The batch script a slurm/pbs/sge config would submit (starts a scheduler briefly, submits nothing)."""
    if cfg.kind not in BATCH_KINDS:
        raise ValueError(f"{cfg.source}: kind: {cfg.kind} submits no job script")
    with _jobqueue_cluster(cfg) as cluster:
        return cluster.job_script()


def _security(tls: Mapping[str, str] | None) -> Security | None:
    if tls is None:
        return None
    from distributed.security import Security

    return Security(
        tls_ca_file=tls["ca_file"], tls_client_cert=tls["cert"], tls_client_key=tls["key"], require_encryption=True
    )


@contextlib.contextmanager
def _start_cluster(cfg: ClusterConfig) -> Iterator[Any]:
    if cfg.kind == "local":
        from distributed import LocalCluster

        s = cfg.settings
        with LocalCluster(
            n_workers=s["workers"],
            threads_per_worker=s["threads_per_worker"],
            memory_limit=s["memory_limit"],
            dashboard_address=s["dashboard_address"],
            processes=s["processes"],
        ) as cluster:
            yield cluster
    elif cfg.kind in BATCH_KINDS:
        with _jobqueue_cluster(cfg) as cluster:
            scale = cfg.settings["scale"]
            if "jobs" in scale:
                cluster.scale(jobs=scale["jobs"])
            else:
                cluster.adapt(**scale["adapt"])
            yield cluster
    else:
        with _kube_cluster(cfg) as cluster:
            yield cluster


def _jobqueue_cluster(cfg: ClusterConfig):
    import dask_jobqueue

    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster, "sge": dask_jobqueue.SGECluster}
    kwargs = {k: v for k, v in cfg.settings.items() if k != "scale"}
    return cls[cfg.kind](**kwargs, **cfg.passthrough)


def _kube_cluster(cfg: ClusterConfig):
    try:
        from dask_kubernetes.operator import KubeCluster
    except ImportError:
        raise ImportError(
            f"{cfg.source}: kind: kubernetes needs dask-kubernetes: pip install dask-kubernetes"
        ) from None
    return KubeCluster(**cfg.settings, **cfg.passthrough)


@contextlib.contextmanager
def local_client(workers: int = 2, memory_limit: str = "auto") -> Iterator[Client]:
    """`connect` to a fresh LocalCluster of `workers` one-thread workers, dashboard on a free port: a job's
    default cluster, for benchmarks and tests that should run exactly what `crystal-dask run` runs."""
    cfg = cluster_config_from_mapping({"workers": workers, "memory_limit": memory_limit,
                                       "dashboard_address": "127.0.0.1:0"}, source="local_client")
    with connect(cfg) as client:
        client.wait_for_workers(workers)
        yield client
