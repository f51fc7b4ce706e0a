"""Is a Dask scheduler there? A bounded check of an `address` before distributed's Client is pointed at it.

distributed's own connect does not bound every case: a port that accepts but never answers held a Client far past
its `timeout`, and a server that answers something else (HTTP) has its first 8 bytes read as a frame count
("Unable to allocate 3.07 EiB"). A Dask scheduler writes its handshake as soon as it accepts a connection (the
listener's side of distributed.comm.core's handshake), so one read tells: a little-endian count of frames comes
from Dask, silence or text does not. Only that first message is read; the probe connection is then closed.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

MAX_FRAMES = 1 << 16  # a handshake has a handful of frames; b"HTTP/1.1" read as a count is ~3.5e18


def _recv_some(sock: socket.socket, n: int, deadline: float) -> bytes:
    data = b""
    while len(data) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            part = sock.recv(n - len(data))
        except TimeoutError:
            break
        if not part:
            break
        data += part
    return data


def check_scheduler(address: str, timeout: float, source: str) -> None:
    """Raise ConnectionError/TimeoutError naming `source` and `address` unless a Dask scheduler answers at a tcp://
    `address` within `timeout` seconds. tls:// addresses are only connected to (the TLS handshake speaks first)."""
    where = f"{source}: address"
    parts = urlsplit(address)
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    except TimeoutError:
        raise TimeoutError(f"{where}: cannot reach the scheduler at {address}: no connection within {timeout:g} s "
                           f"(wait_for_workers)") from None
    except OSError as exc:
        raise ConnectionError(f"{where}: cannot reach the scheduler at {address}: {exc}") from exc
    with sock:
        if parts.scheme != "tcp":
            return
        # half the time for the scheduler's unprompted handshake; if silent, ask as a web client would, so that
        # a web server (e.g. the dashboard's port given for the scheduler's) says so
        first = _recv_some(sock, 8, time.monotonic() + timeout / 2)
        if not first:
            try:
                sock.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
            except OSError:
                pass
            first = _recv_some(sock, 64, deadline)
        if not first:
            raise TimeoutError(f"{where}: {address} accepted a connection but said nothing within {timeout:g} s "
                               f"(wait_for_workers): not a Dask scheduler, or a hung one")
        if first[:5] == b"HTTP/" or (len(first) == 8 and int.from_bytes(first, "little") > MAX_FRAMES):
            said = first.split(b"\r\n")[0][:40].decode("ascii", "replace")
            hint = " (a web server: is this the dashboard's port, not the scheduler's?)" if said.startswith(
                "HTTP/") else ""
            raise ConnectionError(f"{where}: {address} answers, but not as a Dask scheduler: it said {said!r}{hint}")
        if len(first) < 8:
            raise ConnectionError(f"{where}: {address} closed the connection after {len(first)} byte(s): "
                                  f"not a Dask scheduler")
