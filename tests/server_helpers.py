"""Running `sqlog serve` as its own process for the protocol tests, and raw Kafka requests."""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

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


class Certs:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost (PEM files in a directory)."""

    def __init__(self, directory: str) -> None:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca = os.path.join(directory, "ca.pem")
        self.cert = os.path.join(directory, "server-cert.pem")
        self.key = os.path.join(directory, "server-key.pem")
        ca.cert_pem.write_to_path(self.ca)
        cert.private_key_pem.write_to_path(self.key)
        with open(self.cert, "wb") as f:
            for pem in cert.cert_chain_pems:
                f.write(pem.bytes())

    def serve_args(self) -> tuple[str, ...]:
        return ("--tls-cert", self.cert, "--tls-key", self.key)


def add_user(path: str, name: str, password: str) -> None:
    """``sqlog --db PATH users add NAME --password-stdin``."""
    done = subprocess.run([*CLI, "--db", path, "users", "add", name, "--password-stdin"], input=password + "\n",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


class FuzzRun(NamedTuple):
    quiet: list[float]  # round-trip seconds, sorted, without the fuzz
    noisy: list[float]  # the same during the fuzz
    connections: int  # fuzz connections made
    acked: int  # records the well-behaved producer wrote, warm-up included

    def p(self, latencies: list[float], q: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * q))]

    def summary(self) -> str:
        ms = lambda x: f"{x * 1000:.1f} ms"  # noqa: E731
        return (f"well-behaved round trips: alone p50 {ms(self.p(self.quiet, 0.5))} p99 {ms(self.p(self.quiet, 0.99))}"
                f" ({len(self.quiet)}); during fuzz p50 {ms(self.p(self.noisy, 0.5))} p99 "
                f"{ms(self.p(self.noisy, 0.99))} max {ms(self.noisy[-1])} ({len(self.noisy)}); "
                f"{self.connections} fuzz connections; load {os.getloadavg()[0]:.1f}")


def fuzz_latencies(conf: dict[str, Any], topic: str, garbage: Callable[[random.Random], tuple[str, int, bytes]],
                   seconds: float = 2.0, threads: int = 6) -> FuzzRun:
    """Round trips of a well-behaved confluent-kafka producer (one record produced, its ack awaited):
    for ``seconds`` alone, then for ``seconds`` while ``threads`` threads each open connection after
    connection and send ``garbage(rng)`` -> (host, port, bytes) on it. Returns the quiet and the
    noisy latencies and counts (`FuzzRun`); any failed ack raises."""
    import confluent_kafka as ck

    producer = ck.Producer({**conf, "linger.ms": 0})
    failures: list[Any] = []

    def round_trips(until: float) -> list[float]:
        out = []
        while time.monotonic() < until:
            started = time.monotonic()
            producer.produce(topic, b"well-behaved", on_delivery=lambda err, _msg: err and failures.append(err))
            assert producer.flush(10) == 0, "an ack did not arrive within 10 s"
            out.append(time.monotonic() - started)
        assert not failures, failures
        return sorted(out)

    warm = round_trips(time.monotonic() + 0.5)  # connect and warm up
    quiet = round_trips(time.monotonic() + seconds)
    stop = threading.Event()
    made = [0] * threads

    def fuzz(i: int) -> None:
        rng = random.Random(14 + i)
        while not stop.is_set():
            host, port, data = garbage(rng)
            try:
                with socket.create_connection((host, port), timeout=2) as sock:
                    sock.sendall(data)
                    sock.settimeout(0.2)
                    while sock.recv(65536):  # answers (a fuzzed request may be valid), until EOF
                        pass
            except OSError:  # reset, timeout: the server closed it or is still reading
                pass
            made[i] += 1

    workers = [threading.Thread(target=fuzz, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    try:
        noisy = round_trips(time.monotonic() + seconds)
    finally:
        stop.set()
        for w in workers:
            w.join(10)
    return FuzzRun(quiet, noisy, sum(made), len(warm) + len(quiet) + len(noisy))
