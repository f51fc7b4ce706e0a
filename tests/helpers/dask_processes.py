"""Test helper: a real `dask scheduler` and `dask worker` processes on 127.0.0.1, optionally over TLS.

Tests import it as `from dask_processes import scheduler_and_workers, make_tls_files` (tests/ is on sys.path).
Every process is started here and ended here, by its Popen handle, even when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from distributed import Client
from distributed.security import Security

START_TIMEOUT = 30.0  # seconds for the scheduler file to appear and the workers to register


@dataclass(frozen=True)
class TLSFiles:
    """A throwaway CA and one certificate/key (for 127.0.0.1) that scheduler, workers and client all use."""

    ca_file: Path
    cert: Path
    key: Path

    def cli_args(self) -> list[str]:
        return ["--tls-ca-file", str(self.ca_file), "--tls-cert", str(self.cert), "--tls-key", str(self.key)]

    def security(self) -> Security:
        return Security(
            tls_ca_file=str(self.ca_file),
            tls_client_cert=str(self.cert),
            tls_client_key=str(self.key),
            require_encryption=True,
        )


def make_tls_files(directory: Path) -> TLSFiles:
    """Make a CA and a CA-signed certificate for IP 127.0.0.1 with the openssl command (skip-worthy if absent)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise FileNotFoundError("openssl is not on PATH")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.pem", "node.key", "node.csr", "node.pem"))
    ext = directory / "node.ext"
    # Extensions a strict verifier (Python >= 3.13 sets VERIFY_X509_STRICT) insists on.
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for cmd in (
        [openssl, "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=crystal-dask test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", ext],
    ):
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True)
    return TLSFiles(ca, cert, key)


@contextlib.contextmanager
def scheduler_and_workers(n_workers: int, tmp_path: Path, tls: TLSFiles | None = None) -> Iterator[str]:
    """Run a scheduler (its http server on a free port, no bokeh dashboard) and `n_workers` single-threaded
    workers; yield the scheduler address once all workers have registered. Logs go to tmp_path/dask-*.log and
    are quoted when startup fails."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    scheduler_file = tmp_path / "scheduler.json"
    tls_args = tls.cli_args() if tls else []
    procs: list[tuple[subprocess.Popen, Path]] = []

    def spawn(name: str, args: list[str]) -> None:
        log = tmp_path / f"dask-{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", *args], stdout=out, stderr=subprocess.STDOUT)
        procs.append((proc, log))

    def failed(what: str) -> RuntimeError:
        logs = "\n".join(f"--- {log.name} (exit {p.poll()}):\n{log.read_text()[-2000:]}" for p, log in procs)
        return RuntimeError(f"{what}\n{logs}")

    try:
        spawn("scheduler", ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                            "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(scheduler_file),
                            *(["--protocol", "tls"] if tls else []), *tls_args])
        deadline = time.monotonic() + START_TIMEOUT
        address = None
        while address is None:
            try:
                address = json.loads(scheduler_file.read_text())["address"]
            except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or half written
                if time.monotonic() > deadline or procs[0][0].poll() is not None:
                    raise failed("the dask scheduler did not write its scheduler file") from None
                time.sleep(0.05)
        for i in range(n_workers):
            spawn(f"worker-{i}", ["distributed.cli.dask_worker", address, "--name", f"worker-{i}", "--nthreads", "1",
                                  "--no-nanny", "--no-dashboard", "--local-directory", str(tmp_path), *tls_args])
        if n_workers:
            with Client(address, security=tls.security() if tls else None) as client:
                try:
                    client.wait_for_workers(n_workers, timeout=START_TIMEOUT)
                except TimeoutError:
                    raise failed(f"{n_workers} dask workers did not register with {address}") from None
        yield address
    finally:
        for proc, _ in reversed(procs):  # workers first, so they do not try to reconnect to a gone scheduler
            proc.terminate()
        for proc, _ in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
