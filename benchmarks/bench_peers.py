#!/usr/bin/env python3
"""Peers on sqlog's workloads, in the same interleaved rounds as sqlog itself.

- persist-queue: ``SQLiteAckQueue`` (``put``; ``get`` + ``ack``). Its connection keeps SQLite's
  default ``synchronous=FULL`` and commits every put and every status change, so each is durable.
- litequeue: ``LiteQueue`` (``put``; ``pop`` + ``done``), WAL with ``synchronous=NORMAL`` as it
  ships; for the durable row its connection is switched to ``synchronous=FULL``.
- Redis Streams: a ``redis-server`` this module starts on 127.0.0.1 (a free port, ``--save ''``,
  AOF on with ``appendfsync everysec`` and, on a second server, ``always``), driven by redis-py:
  ``XADD`` pipelined 1000 at a time; reads by ``XREADGROUP COUNT 1000`` + one ``XACK`` per batch, and
  by ``XRANGE COUNT 1000``; durable single puts are unpipelined ``XADD``s on the ``always`` server.

A peer whose package (or ``redis-server``) is missing is skipped with a note. Slow peers do fewer
records per round (their rate is computed from their own count; for litequeue, whose ``pop`` scans
past finished rows, fewer records flatter it). Used by ``run.py`` (``--only peers``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sqlog  # noqa: E402
from _common import (  # noqa: E402
    TOPIC,
    VALUE_POOL,
    BenchError,
    Files,
    Side,
    Workload,
    check_count,
    high_watermark,
    make_values,
    sqlog_fill,
    sqlog_read,
    sqlog_send,
    timed,
)

PEERS = ("persist_queue", "litequeue", "redis")
PIPELINE = 1000  # XADDs per redis pipeline, records per XREADGROUP / XRANGE
MASK = VALUE_POOL - 1
TP = sqlog.TopicPartition(TOPIC, 0)


def availability() -> dict[str, str | None]:
    """Per peer: None when it can run, else why it is skipped."""
    out: dict[str, str | None] = {}
    try:
        import persistqueue  # noqa: F401
        out["persist_queue"] = None
    except ImportError:
        out["persist_queue"] = "persist-queue is not installed (pip install -e '.[bench]')"
    try:
        import litequeue  # noqa: F401
        out["litequeue"] = None
    except ImportError:
        out["litequeue"] = "litequeue is not installed (pip install -e '.[bench]')"
    try:
        import redis  # noqa: F401
        out["redis"] = None if shutil.which("redis-server") else \
            "redis-server is not on PATH (e.g. apt-get install redis-server)"
    except ImportError:
        out["redis"] = "redis (redis-py) is not installed (pip install -e '.[bench]')"
    return out


def versions() -> dict[str, str]:
    out = {}
    for mod, name in (("persistqueue", "persist_queue"), ("litequeue", "litequeue"), ("redis", "redis_py")):
        try:
            out[name] = str(getattr(__import__(mod), "__version__", "?"))
        except ImportError:
            pass
    if shutil.which("redis-server"):
        try:
            out["redis_server"] = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                                                 timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        from redis.utils import HIREDIS_AVAILABLE  # type: ignore[import-not-found]
        out["redis_py_parser"] = "hiredis" if HIREDIS_AVAILABLE else "python"
    except ImportError:
        pass
    return out


# -- a redis-server of our own ----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """``redis-server`` on 127.0.0.1, no RDB snapshots, AOF with the given appendfsync, in its own
    directory; stopped (and the directory removed) by ``close()``."""

    def __init__(self, files: Files, appendfsync: str) -> None:
        import redis

        self.appendfsync = appendfsync
        self.dir = files.new(f"redis-{appendfsync}", suffix="")
        os.makedirs(self.dir)
        self.proc: subprocess.Popen[bytes] | None = None
        self.seq = 0
        last = ""
        for _ in range(3):  # a free port can be taken between our probe and the server's bind
            self.port = free_port()
            logfile = os.path.join(self.dir, "redis.log")
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "yes", "--appendfsync", appendfsync, "--dir", self.dir,
                 "--daemonize", "no", "--logfile", logfile],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            self.client = redis.Redis(host="127.0.0.1", port=self.port)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if self.client.ping():
                        return
                except redis.exceptions.ConnectionError:
                    time.sleep(0.02)
            try:
                with open(logfile) as f:
                    last = f.read()[-1000:]
            except OSError:
                pass
            self._stop()
        raise BenchError(f"redis-server (appendfsync {appendfsync}) did not start: {last}")

    def key(self) -> str:
        self.seq += 1
        return f"bench:{self.seq}"

    def _stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            self._stop()
            shutil.rmtree(self.dir, ignore_errors=True)


def redis_fill(client: Any, key: str, values: list[bytes], n: int) -> None:
    for base in range(0, n, PIPELINE):
        pipe = client.pipeline(transaction=False)
        for i in range(base, min(base + PIPELINE, n)):
            pipe.xadd(key, {"v": values[i & MASK]})
        pipe.execute()


# -- the sides ----------------------------------------------------------------------------------------
class Peers:
    """Builds the three peer workloads; ``close()`` stops the redis servers it started."""

    def __init__(self, files: Files, avail: dict[str, str | None], n: int, n_pq: int, n_lq: int, n_redis: int,
                 m: int, m_slow: int) -> None:
        self.files = files
        self.avail = avail
        self.n, self.n_pq, self.n_lq, self.n_redis, self.m, self.m_slow = n, n_pq, n_lq, n_redis, m, m_slow
        self.values = make_values(100)
        self.servers: dict[str, RedisServer] = {}

    def redis(self, appendfsync: str) -> RedisServer:
        if appendfsync not in self.servers:
            self.servers[appendfsync] = RedisServer(self.files, appendfsync)
        return self.servers[appendfsync]

    def close(self) -> None:
        for server in self.servers.values():
            server.close()
        self.servers.clear()

    def ok(self, peer: str) -> bool:
        return self.avail.get(peer) is None

    # -- helpers for the peers' queues
    def pq_queue(self, durable_fill: bool = True) -> tuple[Any, str]:
        import persistqueue

        path = self.files.new("pq", suffix="")
        q = persistqueue.SQLiteAckQueue(path, multithreading=False, auto_commit=True)
        if not durable_fill:
            q._putter.execute("PRAGMA synchronous=OFF")  # untimed prefill only; restored before timing
        return q, path

    def lq_queue(self) -> tuple[Any, str]:
        import litequeue

        path = self.files.new("lq")
        return litequeue.LiteQueue(path), path

    # -- produce
    def produce(self) -> Workload:
        sides = [Side("sqlog", self._sqlog_produce)]
        if self.ok("persist_queue"):
            sides.append(Side("persist_queue", self._pq_produce, self.n_pq))
        if self.ok("litequeue"):
            sides.append(Side("litequeue", self._lq_produce, self.n_lq))
        if self.ok("redis"):
            for mode in ("everysec", "always"):
                sides.append(Side(f"redis_{mode}", self._redis_produce(mode), self.n_redis))
        return Workload("peers_produce", "produce 100 B", self.n, sides,
                        [(f"ratio_{s.label}", "sqlog", s.label) for s in sides[1:]], warmup=200, alternate=True)

    def _sqlog_produce(self, n: int) -> float:
        path = self.files.new("peer-sqlog")
        try:
            with sqlog.open(path) as log:
                log.create_topic(TOPIC, partitions=1)
                producer = log.producer()
                elapsed = timed(lambda: sqlog_send(producer, self.values, n))
                producer.close()
                check_count("sqlog produce", high_watermark(log), n)
            return elapsed
        finally:
            self.files.remove(path)

    def _pq_produce(self, n: int) -> float:
        q, path = self.pq_queue()
        values = self.values
        try:
            def work() -> None:
                put = q.put
                for i in range(n):
                    put(values[i & MASK])

            elapsed = timed(work)
            check_count("persist-queue put", q.qsize(), n)
            q.close()
            return elapsed
        finally:
            self.files.remove(path)

    def _lq_produce(self, n: int, durable: bool = False) -> float:
        q, path = self.lq_queue()
        values = self.values
        try:
            if durable:
                q.conn.execute("PRAGMA synchronous=FULL")

            def work() -> None:
                put = q.put
                for i in range(n):
                    put(values[i & MASK])

            elapsed = timed(work)
            check_count("litequeue put", q.qsize(), n)
            q.conn.close()
            return elapsed
        finally:
            self.files.remove(path)

    def _redis_produce(self, mode: str) -> Any:
        def run(n: int) -> float:
            server = self.redis(mode)
            key = server.key()
            try:
                elapsed = timed(lambda: redis_fill(server.client, key, self.values, n))
                check_count(f"redis {mode} XADD", server.client.xlen(key), n)
                return elapsed
            finally:
                server.client.delete(key)

        return run

    # -- consume
    def consume(self) -> Workload:
        state: dict[str, Any] = {"group": 0}
        sides = [Side("sqlog_poll", self._sqlog_consume(state, commit=False)),
                 Side("sqlog_poll_commit", self._sqlog_consume(state, commit=True))]
        ratios = []
        if self.ok("persist_queue"):
            sides.append(Side("persist_queue", self._pq_consume, self.n_pq))
            ratios.append(("ratio_persist_queue", "sqlog_poll_commit", "persist_queue"))
        if self.ok("litequeue"):
            sides.append(Side("litequeue", self._lq_consume, self.n_lq))
            ratios.append(("ratio_litequeue", "sqlog_poll_commit", "litequeue"))
        if self.ok("redis"):
            sides.append(Side("redis_xreadgroup", self._redis_consume(group=True), self.n_redis))
            sides.append(Side("redis_xrange", self._redis_consume(group=False), self.n_redis))
            ratios.append(("ratio_redis_xreadgroup", "sqlog_poll_commit", "redis_xreadgroup"))
            ratios.append(("ratio_redis_xrange", "sqlog_poll", "redis_xrange"))

        def setup() -> None:
            state["path"] = path = self.files.new("peer-consume-sqlog")
            sqlog_fill(path, self.values, self.n)

        def teardown() -> None:
            if "path" in state:
                self.files.remove(state.pop("path"))

        return Workload("peers_consume", "consume 100 B", self.n, sides, ratios, setup=setup, teardown=teardown,
                        warmup=200, alternate=True)

    def _sqlog_consume(self, state: dict[str, Any], commit: bool) -> Any:
        def run(n: int) -> float:
            with sqlog.open(state["path"]) as log:
                state["group"] += 1
                consumer = log.consumer(group_id=f"bench-{state['group']}" if commit else None,
                                        auto_offset_reset="earliest", enable_auto_commit=False)
                consumer.assign([TP])
                consumer.position(TP)
                got = [0]
                on_batch = consumer.commit if commit else None
                elapsed = timed(lambda: got.__setitem__(0, sqlog_read(consumer, n, first=0, on_batch=on_batch)))
                if commit:
                    check_count("sqlog committed offset", consumer.committed(TP) or 0, n)
                consumer.close()
            check_count("sqlog consume", got[0], n)
            return elapsed

        return run

    def _pq_consume(self, n: int) -> float:
        q, path = self.pq_queue(durable_fill=False)
        values = self.values
        try:
            for i in range(n):
                q.put(values[i & MASK])
            q._putter.execute("PRAGMA synchronous=FULL")  # as it ships: every get and ack is durable

            def work() -> None:
                get, ack = q.get, q.ack
                for _ in range(n):
                    item = get(block=False, raw=True)
                    ack(id=item["pqid"])

            elapsed = timed(work)
            check_count("persist-queue acked", q.acked_count(), n)
            q.close()
            return elapsed
        finally:
            self.files.remove(path)

    def _lq_consume(self, n: int) -> float:
        q, path = self.lq_queue()
        values = self.values
        try:
            for i in range(n):
                q.put(values[i & MASK])
            got = [0]

            def work() -> None:
                pop, done = q.pop, q.done
                count = 0
                for _ in range(n):
                    message = pop()
                    if message is None:
                        break
                    done(message.message_id)
                    count += 1
                got[0] = count

            elapsed = timed(work)
            check_count("litequeue pop", got[0], n)
            q.conn.close()
            return elapsed
        finally:
            self.files.remove(path)

    def _redis_consume(self, group: bool) -> Any:
        def run(n: int) -> float:
            server = self.redis("everysec")
            client = server.client
            key = server.key()
            try:
                redis_fill(client, key, self.values, n)
                got = [0]
                if group:
                    client.xgroup_create(key, "g", id="0")

                    def work() -> None:
                        count = 0
                        while count < n:
                            resp = client.xreadgroup("g", "c", {key: ">"}, count=PIPELINE)
                            if not resp or not resp[0][1]:
                                raise BenchError(f"redis XREADGROUP: stuck at {count} of {n}")
                            entries = resp[0][1]
                            client.xack(key, "g", *[e[0] for e in entries])
                            count += len(entries)
                        got[0] = count
                else:
                    def work() -> None:
                        count, low = 0, "-"
                        while count < n:
                            entries = client.xrange(key, min=low, count=PIPELINE)
                            if not entries:
                                raise BenchError(f"redis XRANGE: stuck at {count} of {n}")
                            count += len(entries)
                            low = "(" + entries[-1][0].decode()
                        got[0] = count

                elapsed = timed(work)
                check_count(f"redis {'XREADGROUP' if group else 'XRANGE'}", got[0], n)
                return elapsed
            finally:
                client.delete(key)

        return run

    # -- durable single puts
    def durable(self, sqlog_durable_side: Side) -> Workload:
        sides = [Side("sqlog", sqlog_durable_side.run)]
        if self.ok("persist_queue"):
            sides.append(Side("persist_queue", self._pq_produce, self.m_slow))
        if self.ok("litequeue"):
            sides.append(Side("litequeue", lambda n: self._lq_produce(n, durable=True), self.m_slow))
        if self.ok("redis"):
            sides.append(Side("redis_always", self._redis_single, self.m_slow))
        return Workload("peers_durable", "durable single put", self.m, sides,
                        [(f"ratio_{s.label}", "sqlog", s.label) for s in sides[1:]], warmup=32, alternate=True)

    def _redis_single(self, n: int) -> float:
        server = self.redis("always")
        client = server.client
        key = server.key()
        values = self.values
        try:
            def work() -> None:
                xadd = client.xadd
                for i in range(n):
                    xadd(key, {"v": values[i & MASK]})

            elapsed = timed(work)
            check_count("redis always single XADD", client.xlen(key), n)
            return elapsed
        finally:
            client.delete(key)


if __name__ == "__main__":
    print("run the peer workloads with: python benchmarks/run.py --only peers", file=sys.stderr)
    sys.exit(2)
