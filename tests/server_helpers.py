"""Running `sqlog serve` as its own process for the protocol tests, and raw Kafka requests."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

CLI = [sys.executable, "-m", "sqlog.cli"]


class Served:
    """A running ``sqlog --db PATH serve --port 0`` process."""

    def __init__(self, proc: subprocess.Popen[str], host: str, port: int) -> None:
        self.proc = proc
        self.host = host
        self.port = port
        self.bootstrap = f"{host}:{port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


@contextmanager
def served(path: str, *extra: str) -> Iterator[Served]:
    """Start the server on a free port; stop it (SIGTERM) afterwards."""
    proc = subprocess.Popen([*CLI, "--db", path, "serve", "--port", "0", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("listening on "):
        proc.kill()
        raise AssertionError(f"sqlog serve did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    host, _, port = line.split()[-1].rpartition(":")
    s = Served(proc, host, int(port))
    try:
        yield s
    finally:
        if proc.poll() is None:
            s.stop()
        for f in (proc.stdout, proc.stderr):
            if f:
                f.close()


def request(api_key: int, version: int, body: bytes, correlation: int = 1, flexible: bool = False) -> bytes:
    """One framed request with a v1 (or v2, ``flexible``) header, client id "t"."""
    head = struct.pack(">hhih", api_key, version, correlation, 1) + b"t" + (b"\x00" if flexible else b"")
    return struct.pack(">i", len(head) + len(body)) + head + body


def recv_response(sock: socket.socket) -> bytes:
    """One response frame's bytes after the size (correlation id first); b"" if the server closed."""
    head = _recv_exact(sock, 4)
    if len(head) < 4:
        return b""
    (n,) = struct.unpack(">i", head)
    return _recv_exact(sock, n)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def record_batch(pid: int, epoch: int, seq: int, values: list[bytes]) -> bytes:
    """A v2 record batch of ``values`` (no keys, no headers) from producer ``pid``/``epoch``
    starting at sequence ``seq``."""
    from crc32c import crc32c

    from sqlog.server.wire import varint

    recs = b""
    for i, v in enumerate(values):
        body = b"\x00" + varint(0) + varint(i) + b"\x01" + varint(len(v)) + v + b"\x00"
        recs += varint(len(body)) + body
    tail = struct.pack(">hiqqqhii", 0, len(values) - 1, 1000, 1000, pid, epoch, seq, len(values)) + recs
    return struct.pack(">qiibI", 0, 9 + len(tail), 0, 2, crc32c(tail)) + tail


def produce_raw(sock: socket.socket, batch: bytes, topic: str = "t", partition: int = 0) -> tuple[int, int]:
    """Produce v3 of one batch (acks=all); ``(error code, base offset)``."""
    name = topic.encode()
    body = struct.pack(">hhi", -1, -1, 5000) + struct.pack(">ih", 1, len(name)) + name
    body += struct.pack(">ii", 1, partition) + struct.pack(">i", len(batch)) + batch
    sock.sendall(request(0, 3, body))
    resp = recv_response(sock)
    # corr, [topic: name, [partition, error, base, log_append_time]], throttle
    _, _, error, base = struct.unpack_from(">iihq", resp, 4 + 4 + 2 + len(name))
    return error, base


def init_producer_id(sock: socket.socket) -> tuple[int, int, int]:
    """InitProducerId v0 for an idempotent (not transactional) producer: ``(error, id, epoch)``."""
    sock.sendall(request(22, 0, struct.pack(">hi", -1, 60000)))
    _, _, error, pid, epoch = struct.unpack(">iihqh", recv_response(sock))
    return error, pid, epoch


def closed_by_peer(sock: socket.socket, timeout: float = 5) -> bool:
    """True once the server has closed the connection (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
