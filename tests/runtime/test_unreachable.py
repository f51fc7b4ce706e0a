"""Clusters that are not there (issue 9, class 4): a real socket that accepts and stays silent, and a real HTTP
server, given as a cluster.yaml `address`, fail within wait_for_workers with an error naming the file and address."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from pathlib import Path

import pytest

from crystal_dask.runtime.cluster import connect, load_cluster_config

WAIT = 2  # seconds: wait_for_workers in the cluster files below


def connect_in_thread(path: Path, limit: float) -> tuple[BaseException | None, float]:
    """connect() to `path`'s cluster in a thread; (what it raised, seconds taken). Fails if it takes > `limit` s,
    instead of hanging the test the way the bug hung the job."""
    result: list = []

    def attempt() -> None:
        started = time.monotonic()
        try:
            with connect(load_cluster_config(path)):
                result.append((None, time.monotonic() - started))
        except BaseException as exc:  # noqa: BLE001 - the test looks at whatever it was
            result.append((exc, time.monotonic() - started))

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(limit)
    assert result, f"connect() still hung after {limit} s, with wait_for_workers: {WAIT}"
    return result[0]


@pytest.fixture
def silent_port():
    """A real listening socket whose accepted connections are held open and never written to."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield server.getsockname()[1]
    stop.set()
    t.join()
    for s in held:
        s.close()
    server.close()


@pytest.fixture
def http_port():
    """A real tiny HTTP server (the standard library's), answering every request."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def write(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(f"kind: address\naddress: tcp://127.0.0.1:{port}\nwait_for_workers: {WAIT}\n")
    return path


def test_a_silent_port_fails_within_wait_for_workers(tmp_path, silent_port):
    path = write(tmp_path, silent_port)
    exc, took = connect_in_thread(path, limit=WAIT + 20)
    assert isinstance(exc, TimeoutError), repr(exc)
    assert str(exc).startswith(f"{path}: address: tcp://127.0.0.1:{silent_port} accepted a connection but said "
                               f"nothing within {WAIT} s")
    assert took < WAIT + 5


def test_an_http_server_is_named_as_such_not_a_huge_allocation(tmp_path, http_port):
    path = write(tmp_path, http_port)
    exc, took = connect_in_thread(path, limit=WAIT + 20)
    assert isinstance(exc, ConnectionError) and not isinstance(exc, MemoryError), repr(exc)
    assert str(exc).startswith(f"{path}: address: tcp://127.0.0.1:{http_port} answers, but not as a Dask scheduler")
    assert "HTTP/1.0" in str(exc) and "EiB" not in str(exc)
    assert took < WAIT + 5
