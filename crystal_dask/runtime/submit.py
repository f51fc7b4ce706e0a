"""Detached jobs: start the driver (`crystal-dask run`) in the background or as a SLURM batch job, and read
back where it stands. The record of a submission is <out>/submit.json; the driver writes <out>/status.json.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crystal_dask import status as status_file
from crystal_dask.errors import PROG
from crystal_dask.experiment import output_folder
from crystal_dask.runtime.cluster import BATCH_KINDS, load_cluster_config
from crystal_dask.stages import load_experiment
from crystal_dask.store.files import write_json


@dataclass(frozen=True)
class DriverResources:
    """What the driver's own batch job asks for (it runs the scheduler and the client, not the work)."""

    cores: int = 1
    memory: str = "4G"
    walltime: str = "24:00:00"
    partition: str | None = None


def _driver_command(job_file: Path, cluster_file: Path | None, out: Path) -> list[str]:
    # its output is a log file, so progress shows as plain lines there (crystal_dask.progress decides)
    cmd = [sys.executable, "-m", "crystal_dask.cli", "run", str(job_file.resolve()), "--out", str(out)]
    if cluster_file is not None:
        cmd += ["--cluster", str(cluster_file.resolve())]
    return cmd


def submit(job_file: Path, cluster_file: Path | None = None, out: Path | None = None,
           resources: DriverResources = DriverResources()) -> dict[str, Any]:
    """Start the job detached; returns (and writes to <out>/submit.json) how to find it again."""
    job = load_experiment(job_file, out)  # a bad job file fails here, not in the background
    cluster = load_cluster_config(cluster_file)
    job.out.mkdir(parents=True, exist_ok=True)
    cmd = _driver_command(job_file, cluster_file, job.out)
    log = job.out / "driver.log"
    record: dict[str, Any] = {"job": job.name, "out": str(job.out), "command": cmd, "log": str(log),
                              "submitted": time.time()}
    if cluster.kind == "slurm":
        if shutil.which("sbatch") is None:
            raise RuntimeError(f"{cluster.source}: kind: slurm but there is no sbatch on PATH here")
        args = ["sbatch", "--parsable", f"--job-name=crystal-dask-{job.name}", f"--output={log}",
                f"--cpus-per-task={resources.cores}", f"--mem={resources.memory}", f"--time={resources.walltime}",
                f"--chdir={os.getcwd()}", "--wrap", shlex.join(cmd)]
        if resources.partition:
            args.insert(1, f"--partition={resources.partition}")
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"sbatch refused the driver job: {done.stderr.strip() or done.stdout.strip()}")
        record |= {"kind": "slurm", "slurm_job_id": done.stdout.strip().split(";")[0]}
    elif cluster.kind in BATCH_KINDS:
        raise NotImplementedError(
            f"{cluster.source}: kind: {cluster.kind}: detached drivers are submitted to SLURM only for now; "
            f"run `{shlex.join(cmd)}` inside a batch job of your own")
    else:
        with open(log, "ab") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=os.getcwd())
        record |= {"kind": "background", "pid": proc.pid}
    write_json(job.out / "submit.json", record)
    return record


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of this very process has exited too
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def status(out: Path) -> dict[str, Any]:
    """Where a job stands: the driver's status.json, plus whether its process or batch job still runs."""
    out = Path(out)
    if out.is_file():  # a job file: find its output folder
        out = output_folder(out)
    state: dict[str, Any] = {"out": str(out)}
    state |= status_file.read(out) or {}
    ended: bool | None = None  # whether the submitted driver has ended: None when nobody can tell from here
    if (out / "submit.json").exists():
        sub = json.loads((out / "submit.json").read_text())
        state["submission"] = sub
        if sub["kind"] == "background":
            state["driver_running"] = _pid_alive(sub["pid"])
            ended = not state["driver_running"]
        elif sub["kind"] == "slurm" and shutil.which("squeue"):
            q = subprocess.run(["squeue", "-h", "-j", sub["slurm_job_id"], "-o", "%T"], capture_output=True, text=True)
            # squeue exits 1 both for a job the controller has forgotten (ended) and when it cannot ask the
            # controller at all: only the first says anything about the driver
            if q.returncode == 0 or SLURM_FORGOTTEN in q.stderr:
                state["slurm_state"] = q.stdout.strip() or None  # None: squeue no longer lists the job
                ended = state["slurm_state"] is None or state["slurm_state"] in SLURM_ENDED
            else:
                state["slurm_error"] = (q.stderr.strip().splitlines() or [f"squeue exited {q.returncode}"])[-1]
    state["driver_ended"] = ended
    if "state" not in state:
        if "submission" not in state:
            state["state"] = "unknown: nothing ran here"
        elif ended:  # it ended before it wrote a word here (an import failed, killed at once): its log says why
            state |= {"state": "failed", "driver_gone": True, "error": "the driver ended before it started the "
                      f"job; its last word: {_last_word(Path(state['submission']['log']))}"}
        else:
            state["state"] = "submitted, not started yet"
    elif state["state"] in ("running", status_file.STARTING) and (ended or (
            state.get("host") == socket.gethostname() and not _pid_alive(state["pid"]))):
        # the driver died without a word (SIGKILL, out of memory, a reboot): nothing else would ever say so
        state["state"] = f"driver gone: pid {state['pid']} on {state['host']} no longer runs (killed?); rerun to resume"
        state["driver_gone"] = True
    return state


# what squeue says of a job id its controller no longer knows (it forgets ended jobs after MinJobAge)
SLURM_FORGOTTEN = "Invalid job id specified"
# squeue's states of a job that has ended (one squeue no longer lists has ended too: its slurm_state is None)
SLURM_ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
               "DEADLINE")


def _last_word(log: Path) -> str:
    """The driver's last error line in its log (`crystal-dask: error: ...`, else its last line: a traceback's
    ends with the exception), or why there is none."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError as exc:
        return f"cannot read {log}: {exc.strerror or exc}"
    errors = [line for line in lines if line.startswith(f"{PROG}: error:")]
    return (errors or lines or [f"{log} is empty"])[-1]


def format_status(state: dict[str, Any]) -> str:
    lines = [f"job {state.get('job', '?')}: {state['state']}  (outputs: {state['out']})"]
    if "slurm_state" in state or "slurm_error" in state:
        shown = (f"cannot tell ({state['slurm_error']})" if "slurm_error" in state
                 else state["slurm_state"] or "finished (not in the queue)")
        lines.append(f"  driver: SLURM job {state['submission']['slurm_job_id']}: {shown}")
    if "driver_running" in state:
        lines.append(f"  driver: pid {state['submission']['pid']}: "
                     f"{'running' if state['driver_running'] else 'not running'}")
    for st in state.get("stages", []):
        name = st["name"]
        took = f" ({st['ended'] - st['started']:.1f} s)" if "ended" in st and "started" in st else ""
        why = f"  ({st['why']})" if st.get("why") and st.get("state") != "skipped" else ""
        lines.append(f"  {name:<32} {st.get('state', '?')}{took}{why}")
    if state.get("error"):
        lines.append(f"  error: {state['error']}")
    if state.get("report"):
        lines.append(f"  report: {state['report']}")
    if "submission" in state:
        lines.append(f"  log: {state['submission']['log']}")
    return "\n".join(lines)
