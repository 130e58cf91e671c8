"""Two `sqlog serve` processes on one file are one broker's state: one consumer group across them
(confluent-kafka, one member per process), idempotent producers' sequences seen by both and kept
across a restart, producer ids unique across processes; a group id is either a protocol group or a
native one, whichever joins second is refused, in both directions."""

from __future__ import annotations

import signal
import socket
import threading
import time
from typing import Any

import pytest

pytest.importorskip("cramjam")
ck = pytest.importorskip("confluent_kafka")

import sqlog  # noqa: E402

from helpers import fill  # noqa: E402
from server_helpers import init_producer_id, produce_raw, record_batch, served  # noqa: E402

SESSION_MS = 30_000


def _member(bootstrap: str, group: str, name: str, consumed: dict[str, list[tuple[int, int]]],
            **config: Any) -> Any:
    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": group, "client.id": name,
                     "auto.offset.reset": "earliest", "heartbeat.interval.ms": 200,
                     "session.timeout.ms": SESSION_MS, "enable.auto.commit": True,
                     "auto.commit.interval.ms": 100, **config})
    c.subscribe(["jobs"])
    consumed[name] = []
    return c


def _pump(consumers: dict[str, Any], consumed: dict[str, list[tuple[int, int]]], until: Any,
          timeout: float = 40) -> None:
    """Poll every consumer in turn (short polls: a rebalance needs them all) until ``until()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until():
        for name, c in consumers.items():
            m = c.poll(0.05)
            if m is not None and m.error() is None:
                consumed[name].append((m.partition(), m.offset()))
    assert until(), {n: c.assignment() for n, c in consumers.items()}


def _parts(c: Any) -> set[int]:
    return {tp.partition for tp in c.assignment()}


def test_one_group_across_two_serve_processes_splits_and_rebalances(log_path: str) -> None:
    with sqlog.open(log_path) as log:
        fill(log, "jobs", 40, 4, create=True)
    consumed: dict[str, list[tuple[int, int]]] = {}
    with served(log_path) as s1, served(log_path) as s2:
        a = _member(s1.bootstrap, "workers", "a", consumed)
        b = _member(s2.bootstrap, "workers", "b", consumed)
        both = {"a": a, "b": b}
        _pump(both, consumed, lambda: len(_parts(a)) == 2 and len(_parts(b)) == 2
              and sum(len(v) for v in consumed.values()) == 40)
        assert _parts(a) | _parts(b) == {0, 1, 2, 3} and not _parts(a) & _parts(b)
        everything = consumed["a"] + consumed["b"]
        assert sorted(everything) == sorted({(p, o) for p in range(4) for o in range(10)})  # once each
        assert {p for p, _ in consumed["a"]} == _parts(a) and {p for p, _ in consumed["b"]} == _parts(b)
        with sqlog.open(log_path) as log:  # sqlog's own view of the protocol group
            assert "workers" in log.list_groups()
            d = log.describe_group("workers")
        assert (d.state, d.strategy) == ("Stable", "range")
        assert {m.client_id: {tp.partition for tp in m.assignment} for m in d.members} == {
            "a": _parts(a), "b": _parts(b)}
        assert all(m.subscription == ("jobs",) for m in d.members)
        assert {p.partition: p.owner for p in d.partitions} == {
            tp.partition: m.member_id for m in d.members for tp in m.assignment}
        b.close()  # LeaveGroup through s2: a, on s1, takes everything
        _pump({"a": a}, consumed, lambda: _parts(a) == {0, 1, 2, 3})
        a.close()
    with sqlog.open(log_path) as log:  # both members' commits, one set
        d = log.describe_group("workers")
    assert {(p.partition, p.committed_offset) for p in d.partitions} == {(p, 10) for p in range(4)}


def test_three_cooperative_sticky_members_on_two_processes(log_path: str) -> None:
    """librdkafka's incremental (cooperative) rebalances, with the members split over two servers."""
    with sqlog.open(log_path) as log:
        fill(log, "jobs", 60, 6, create=True)
    consumed: dict[str, list[tuple[int, int]]] = {}
    coop = {"partition.assignment.strategy": "cooperative-sticky"}
    with served(log_path) as s1, served(log_path) as s2:
        members = {"a": _member(s1.bootstrap, "workers", "a", consumed, **coop),
                   "b": _member(s2.bootstrap, "workers", "b", consumed, **coop),
                   "c": _member(s1.bootstrap, "workers", "c", consumed, **coop)}

        def split(names: str, each: int) -> bool:
            owned = [_parts(members[n]) for n in names]
            return all(len(o) == each for o in owned) and set().union(*owned) == set(range(6))

        _pump(members, consumed, lambda: split("abc", 2) and sum(map(len, consumed.values())) >= 60)
        assert sorted(set(consumed["a"] + consumed["b"] + consumed["c"])) == [
            (p, o) for p in range(6) for o in range(10)]
        members.pop("b").close()  # s2's member leaves: its two partitions move to a and c on s1
        _pump(members, consumed, lambda: split("ac", 3))
        for c in members.values():
            c.close()


def test_a_member_whose_serve_process_dies_is_replaced_before_its_session_times_out(log_path: str) -> None:
    with sqlog.open(log_path) as log:
        log.create_topic("jobs", partitions=4)
    consumed: dict[str, list[tuple[int, int]]] = {}
    with served(log_path) as s1, served(log_path) as s2:
        a = _member(s1.bootstrap, "workers", "a", consumed)
        b = _member(s2.bootstrap, "workers", "b", consumed)
        _pump({"a": a, "b": b}, consumed, lambda: len(_parts(a)) == 2 and len(_parts(b)) == 2)
        s2.stop(signal.SIGKILL)
        began = time.monotonic()
        _pump({"a": a}, consumed, lambda: _parts(a) == {0, 1, 2, 3}, timeout=SESSION_MS / 1000 - 5)
        took = time.monotonic() - began
        a.close()
        del b  # its server is gone: no LeaveGroup to send
    assert took < SESSION_MS / 1000  # the dead process's member went at once, not at its session timeout


def test_a_group_with_live_protocol_members_refuses_a_native_consumer(log_path: str) -> None:
    with sqlog.open(log_path) as log:
        fill(log, "jobs", 4, 2, create=True)
        consumed: dict[str, list[tuple[int, int]]] = {}
        with served(log_path) as s:
            a = _member(s.bootstrap, "shared", "a", consumed)
            _pump({"a": a}, consumed, lambda: len(_parts(a)) == 2)
            native = log.consumer(group_id="shared", auto_offset_reset="earliest")
            native.subscribe(["jobs"])
            with pytest.raises(sqlog.InconsistentGroupProtocolError, match="Kafka-protocol member"):
                native.poll(timeout_ms=100)
            with pytest.raises(sqlog.GroupNotEmptyError):  # admin changes wait for the Kafka members too
                log.alter_group_offsets("shared", {sqlog.TopicPartition("jobs", 0): 0})
            a.close()  # once they have left, the group id is free for native consumers
            assert len(native.poll(timeout_ms=2000)) > 0
            native.close()


def test_a_protocol_member_joining_a_native_group_through_another_process_is_refused(log_path: str) -> None:
    with sqlog.open(log_path) as log:
        log.create_topic("jobs", partitions=2)
        native = log.consumer(group_id="shared")
        native.subscribe(["jobs"])
        native.poll(timeout_ms=200)
        with served(log_path) as s1, served(log_path) as s2:
            errors = []
            for s in (s1, s2):
                c = ck.Consumer({"bootstrap.servers": s.bootstrap, "group.id": "shared"})
                c.subscribe(["jobs"])
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and len(errors) < 2:
                    m = c.poll(0.2)
                    if m is not None and m.error():
                        errors.append(m.error().code())
                        break
                c.close()
        native.close()
    assert errors == [ck.KafkaError.INCONSISTENT_GROUP_PROTOCOL] * 2


# -- idempotent producers -------------------------------------------------------------------------
def test_a_retried_batch_is_stored_once_across_processes_and_restarts(log_path: str) -> None:
    with sqlog.open(log_path) as log:
        log.create_topic("t")
    with served(log_path) as s1:
        with socket.create_connection((s1.host, s1.port), timeout=10) as sock:
            error, pid, epoch = init_producer_id(sock)
            assert error == 0
            first = record_batch(pid, epoch, 0, [b"a", b"b"])
            assert produce_raw(sock, first) == (0, 0)
    with served(log_path) as s2, served(log_path) as s3:  # a restart, and two processes at once
        with socket.create_connection((s2.host, s2.port), timeout=10) as two, \
                socket.create_connection((s3.host, s3.port), timeout=10) as three:
            assert produce_raw(two, first) == (0, 0)  # the retry after the restart: where it went
            assert produce_raw(three, record_batch(pid, epoch, 2, [b"c"])) == (0, 2)
            assert produce_raw(two, record_batch(pid, epoch, 2, [b"c"])) == (0, 2)  # retried to the other one
            assert produce_raw(two, record_batch(pid, epoch, 9, [b"x"]))[0] == 45  # OUT_OF_ORDER_SEQUENCE_NUMBER
            assert produce_raw(three, record_batch(pid, epoch, 3, [b"d"])) == (0, 3)
    with sqlog.open(log_path) as log:
        c = log.consumer(auto_offset_reset="earliest")
        c.assign([sqlog.TopicPartition("t", 0)])
        assert [r.value for r in c.poll(timeout_ms=1000)] == [b"a", b"b", b"c", b"d"]
        c.close()


def test_producer_ids_are_unique_across_processes(log_path: str) -> None:
    with sqlog.open(log_path):
        pass
    ids: list[int] = []
    with served(log_path) as s1, served(log_path) as s2:
        def take(s: Any) -> None:
            with socket.create_connection((s.host, s.port), timeout=10) as sock:
                for _ in range(25):
                    error, pid, _ = init_producer_id(sock)
                    assert error == 0
                    ids.append(pid)

        threads = [threading.Thread(target=take, args=(s,)) for s in (s1, s2, s1, s2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert len(ids) == 100 and len(set(ids)) == 100
    with served(log_path) as s3, socket.create_connection((s3.host, s3.port), timeout=10) as sock:
        assert init_producer_id(sock)[1] not in ids  # nor reused after a restart


# -- a real client's retry, after a restart ---------------------------------------------------------
class Proxy:
    """A TCP proxy in front of a `sqlog serve` process (``target``, a port, may change): armed with
    `swallow_next_produce`, it forwards the next Produce request, then drops the connection instead
    of relaying the answer, so the client sees a network error for a batch that was stored."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.target = 0
        self.armed = threading.Event()
        self.swallowed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def swallow_next_produce(self) -> None:
        self.swallowed.clear()
        self.armed.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._pair, args=(client,), daemon=True).start()

    @staticmethod
    def _frame(sock: socket.socket) -> bytes:
        head = sock.recv(4, socket.MSG_WAITALL)
        if len(head) < 4:
            raise ConnectionError("closed")
        body = sock.recv(int.from_bytes(head, "big"), socket.MSG_WAITALL)
        return head + body

    def _pair(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        drop: list[bytes] = []  # the correlation id whose answer is swallowed

        def back() -> None:
            try:
                while True:
                    frame = self._frame(upstream)
                    if drop and frame[4:8] == drop[0]:
                        self.swallowed.set()
                        break
                    client.sendall(frame)
            except OSError:
                pass
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)  # a FIN now, and the other thread's recv returns
                except OSError:
                    pass
                s.close()

        threading.Thread(target=back, daemon=True).start()
        try:
            while True:
                frame = self._frame(client)
                if frame[4:6] == b"\x00\x00" and self.armed.is_set():  # api key 0: Produce
                    self.armed.clear()
                    drop.append(frame[8:12])
                upstream.sendall(frame)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


def _serve_behind(path: str, proxy: Proxy) -> Any:
    """A `sqlog serve` process advertising the proxy's port; the proxy now forwards to it."""
    import subprocess
    import sys

    code = ("import asyncio, sys, sqlog.server; asyncio.run(sqlog.server.run(sys.argv[1], '127.0.0.1', 0,"
            " advertised_port=int(sys.argv[2])))")
    proc = subprocess.Popen([sys.executable, "-c", code, path, str(proxy.port)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    assert line.startswith("listening on "), line
    proxy.target = int(line.rsplit(":", 1)[1])
    return proc


def test_kafka_python_retries_a_stored_batch_after_a_restart_and_it_is_stored_once(log_path: str) -> None:
    kafka = pytest.importorskip("kafka")
    with sqlog.open(log_path) as log:
        log.create_topic("t")
    proxy = Proxy()
    first = _serve_behind(log_path, proxy)
    p = kafka.KafkaProducer(bootstrap_servers=f"127.0.0.1:{proxy.port}", enable_idempotence=True, acks="all",
                            retry_backoff_ms=100, reconnect_backoff_ms=100, reconnect_backoff_max_ms=500)
    try:
        assert p.send("t", b"one").get(timeout=20).offset == 0
        proxy.swallow_next_produce()
        pending = p.send("t", b"two")  # stored by the first process; its answer never arrives
        assert proxy.swallowed.wait(20)
        first.send_signal(signal.SIGTERM)
        assert first.wait(20) == 0
        second = _serve_behind(log_path, proxy)  # a restart: the client retries its batch here
        try:
            assert pending.get(timeout=60).offset == 1  # where the first process stored it
            assert p.send("t", b"three").get(timeout=20).offset == 2
        finally:
            p.close()
            second.send_signal(signal.SIGTERM)
            second.wait(20)
    finally:
        proxy.close()
    with sqlog.open(log_path) as log:
        c = log.consumer(auto_offset_reset="earliest")
        c.assign([sqlog.TopicPartition("t", 0)])
        assert [r.value for r in c.poll(timeout_ms=1000)] == [b"one", b"two", b"three"]
        c.close()
