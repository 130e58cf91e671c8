#!/usr/bin/env python3
"""End-to-end latency, producer -> a blocked poll(), in-process and across processes.

One record every ``interval_ms`` (1 ms by default), each carrying the sender's
``time.monotonic_ns()`` in its first 8 bytes; the reader takes ``time.monotonic_ns()`` as soon as
the records are in its hands and keeps ``receive - send`` per record. ``CLOCK_MONOTONIC`` is one
clock for the whole machine on Linux, so the subtraction holds across processes too.

- sqlog: the producer (``linger_ms=0``) does ``send(...).get()`` per record; the consumer is
  blocked in ``poll(timeout_ms=500)`` on its own thread (in-process) or in a child process
  (across processes).
- raw apsw (the yardstick): the writer does ``BEGIN IMMEDIATE; INSERT; UPDATE partitions; COMMIT``
  per record (synchronous=NORMAL, sqlog's default); a second connection (a thread or a child
  process) runs ``PRAGMA data_version`` every ``RAW_POLL_S`` (100 µs of ``time.sleep``) and, when it
  changes, ``SELECT``s the new rows. That is the cheapest wake-up SQLite offers without a server.

Used by ``run.py`` (``--only latency``). ``python bench_latency.py --child KIND PATH COUNT`` is the
reader half of the cross-process measurement and is started by this module; it prints ``ready``
once blocked in its first wait, then one JSON list of latencies in nanoseconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sqlog  # noqa: E402
from _common import (  # noqa: E402
    RAW_INSERT,
    RAW_SELECT,
    RAW_UPDATE,
    TOPIC,
    BenchError,
    Files,
    interleave,
    median,
    now_ms,
    percentile,
    raw_create,
    raw_open,
)

RAW_POLL_S = 0.0001  # the raw reader's sleep between two PRAGMA data_version checks
POLL_TIMEOUT_MS = 500  # a blocked sqlog poll's timeout (it returns as soon as records arrive)
VALUE_SIZE = 100
WARM = 20  # records sent first and left out of the figures (fresh file, cold statements)
CHILD_TIMEOUT_S = 120.0
TP = sqlog.TopicPartition(TOPIC, 0)


def stamp(pad: bytes) -> bytes:
    return time.monotonic_ns().to_bytes(8, "big") + pad


def sent_at(value: bytes) -> int:
    return int.from_bytes(value[:8], "big")


def paced(total: int, interval_s: float, send_one: Any) -> None:
    """Call ``send_one()`` ``total`` times, the i-th no earlier than start + i * interval."""
    start = time.perf_counter()
    sleep, clock = time.sleep, time.perf_counter
    for i in range(total):
        delay = start + i * interval_s - clock()
        if delay > 0:
            sleep(delay)
        send_one()


# -- readers: a blocked sqlog poll(), or a raw data_version loop ------------------------------------
def sqlog_reader(log: sqlog.Log, total: int, ready: Any) -> list[int]:
    """Block in poll() until ``total`` records arrived; the latency of each, in ns."""
    consumer = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        consumer.assign([TP])
        consumer.position(TP)  # resolve the start now, not in the first timed poll
        ready()
        out: list[int] = []
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        poll, clock = consumer.poll, time.monotonic_ns
        while len(out) < total:
            records = poll(timeout_ms=POLL_TIMEOUT_MS, max_records=1000)
            now = clock()
            out.extend(now - sent_at(r.value) for r in records)
            if time.monotonic() > deadline:
                raise BenchError(f"sqlog reader: {len(out)} of {total} records after {CHILD_TIMEOUT_S} s")
        return out
    finally:
        consumer.close()


def raw_reader(path: str, total: int, ready: Any) -> list[int]:
    """Check ``PRAGMA data_version`` every RAW_POLL_S; on a change, SELECT the new rows."""
    conn = raw_open(path, "NORMAL")
    try:
        conn.execute("PRAGMA query_only=1")
        execute = conn.execute
        version = execute("PRAGMA data_version").fetchone()[0]
        ready()
        out: list[int] = []
        pos = 0
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        sleep, clock = time.sleep, time.monotonic_ns
        while len(out) < total:
            v = execute("PRAGMA data_version").fetchone()[0]
            if v == version:
                sleep(RAW_POLL_S)
                if time.monotonic() > deadline:
                    raise BenchError(f"raw reader: {len(out)} of {total} records after {CHILD_TIMEOUT_S} s")
                continue
            version = v
            rows = execute(RAW_SELECT, (pos,)).fetchall()
            now = clock()
            if rows:
                out.extend(now - sent_at(row[3]) for row in rows)
                pos = rows[-1][0] + 1
        return out
    finally:
        conn.close()


# -- writers ------------------------------------------------------------------------------------------
class RawWriter:
    """One raw transaction per record: BEGIN IMMEDIATE; INSERT; UPDATE partitions; COMMIT."""

    def __init__(self, path: str) -> None:
        self.conn = raw_create(path, "NORMAL")
        self.offset = 0
        self.pad = b"\0" * (VALUE_SIZE - 8)

    def send_one(self) -> None:
        execute = self.conn.execute
        value = stamp(self.pad)
        execute("BEGIN IMMEDIATE")
        execute(RAW_INSERT, (self.offset, now_ms(), None, value, None))
        self.offset += 1
        execute(RAW_UPDATE, (self.offset, len(value)))
        execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def sqlog_send_one(producer: sqlog.Producer, pad: bytes) -> Any:
    def send_one() -> None:
        producer.send(TOPIC, stamp(pad)).get()

    return send_one


# -- one round of each side ---------------------------------------------------------------------------
def in_process(kind: str, path: str, n: int, interval_s: float) -> list[int]:
    """Writer on this thread, reader on another; returns the latencies (ns) of the last n records."""
    total = n + WARM
    ready = threading.Event()
    result: dict[str, Any] = {}
    pad = b"\0" * (VALUE_SIZE - 8)

    def run_reader(read: Any) -> None:
        try:
            result["lat"] = read()
        except BaseException as exc:  # reported below
            result["error"] = exc
            ready.set()

    if kind == "sqlog":
        with sqlog.open(path) as log:
            log.create_topic(TOPIC, partitions=1)
            reader = threading.Thread(target=run_reader, args=(lambda: sqlog_reader(log, total, ready.set),),
                                      daemon=True)
            reader.start()
            ready.wait(30)
            with log.producer(linger_ms=0) as producer:
                if "error" not in result:
                    paced(total, interval_s, sqlog_send_one(producer, pad))
                reader.join(CHILD_TIMEOUT_S)
    else:
        writer = RawWriter(path)
        try:
            reader = threading.Thread(target=run_reader, args=(lambda: raw_reader(path, total, ready.set),),
                                      daemon=True)
            reader.start()
            ready.wait(30)
            if "error" not in result:
                paced(total, interval_s, writer.send_one)
            reader.join(CHILD_TIMEOUT_S)
        finally:
            writer.close()
    if "error" in result:
        raise BenchError(f"{kind} in-process reader failed: {result['error']!r}") from result["error"]
    if "lat" not in result:
        raise BenchError(f"{kind} in-process reader did not finish")
    return result["lat"][WARM:]


def across_processes(kind: str, path: str, n: int, interval_s: float) -> list[int]:
    """Writer in this process, reader in a child process started with ``--child``."""
    total = n + WARM
    pad = b"\0" * (VALUE_SIZE - 8)
    writer: RawWriter | None = None
    log: sqlog.Log | None = None
    if kind == "sqlog":
        log = sqlog.open(path)
        log.create_topic(TOPIC, partitions=1)
    else:
        writer = RawWriter(path)
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--child", kind, path, str(total)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # blocks until the child is ready (or dies)
        if line.strip() != "ready":
            out, err = child.communicate(timeout=30)
            raise BenchError(f"{kind} reader process did not start: {line}{out}{err}")
        if log is not None:
            with log.producer(linger_ms=0) as producer:
                paced(total, interval_s, sqlog_send_one(producer, pad))
        else:
            assert writer is not None
            paced(total, interval_s, writer.send_one)
        out, err = child.communicate(timeout=CHILD_TIMEOUT_S)
        if child.returncode != 0:
            raise BenchError(f"{kind} reader process failed ({child.returncode}): {err.strip()[-2000:]}")
        lat = json.loads(out)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if log is not None:
            log.close()
        if writer is not None:
            writer.close()
    if len(lat) != total:
        raise BenchError(f"{kind} reader process got {len(lat)} of {total} records")
    return lat[WARM:]


def child_main(kind: str, path: str, total: int) -> int:
    def ready() -> None:
        print("ready", flush=True)

    if kind == "sqlog":
        with sqlog.open(path) as log:
            lat = sqlog_reader(log, total, ready)
    else:
        lat = raw_reader(path, total, ready)
    print(json.dumps(lat), flush=True)
    return 0


# -- statistics and the workloads -------------------------------------------------------------------------
def summary(lat_ns: list[int]) -> dict[str, float]:
    s = sorted(lat_ns)
    return {
        "p50_ms": percentile(s, 50) / 1e6,
        "p99_ms": percentile(s, 99) / 1e6,
        "max_ms": s[-1] / 1e6,
        "mean_ms": sum(s) / len(s) / 1e6,
        "count": len(s),
    }


def measure(files: Files, mode: str, n: int, rounds: int, interval_ms: float, progress: bool) -> dict[str, Any]:
    """Interleaved rounds of sqlog and raw; per side, the median over rounds of each round's
    p50 / p99 / max, plus the percentiles of all rounds' latencies pooled."""
    fn = in_process if mode == "in_process" else across_processes
    interval_s = interval_ms / 1000
    pooled: dict[str, list[int]] = {"sqlog": [], "raw": []}

    def side(kind: str) -> Any:
        def run() -> dict[str, float]:
            path = files.new(f"latency-{mode}-{kind}")
            try:
                lat = fn(kind, path, n, interval_s)
            finally:
                files.remove(path)
            pooled[kind].extend(lat)
            return summary(lat)

        return run

    per_round = interleave(
        f"latency_{mode}", [("sqlog", side("sqlog")), ("raw", side("raw"))], rounds, progress,
        show=lambda s: f"p50 {s['p50_ms']:.3f} p99 {s['p99_ms']:.3f} max {s['max_ms']:.2f} ms",
    )
    out: dict[str, Any] = {"messages_per_round": n, "interval_ms": interval_ms, "rounds": rounds}
    for kind in ("sqlog", "raw"):
        out[kind] = {
            stat: median(r[kind][stat] for r in per_round) for stat in ("p50_ms", "p99_ms", "max_ms", "mean_ms")
        }
        out[kind]["pooled"] = summary(pooled[kind])
        out[kind]["rounds"] = [r[kind] for r in per_round]
    return out


# -- an idle blocked consumer's CPU -----------------------------------------------------------------------
def idle_child(path: str, seconds: float, mode: str) -> int:
    """A process as an idle app has it: the log open with its default upkeep threads, one consumer
    blocked in poll() with nothing arriving. Prints the process's CPU seconds (all threads) over
    ``seconds`` of wall time, as JSON. ``mode`` "poll": with the file watch off (the fallback that
    checks PRAGMA data_version every few ms, as every platform did before it)."""
    if mode == "poll":
        from sqlog import filewatch

        filewatch.INOTIFY = None
    with sqlog.open(path) as log:
        consumer = log.consumer(auto_offset_reset="latest", enable_auto_commit=False)
        consumer.assign([TP])
        consumer.position(TP)
        consumer.poll(timeout_ms=200)  # settle: statements prepared, first waits taken
        cpu0, wall0 = time.process_time(), time.monotonic()
        got = consumer.poll(timeout_ms=seconds * 1000)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        consumer.close()
    if got:
        raise BenchError("the idle consumer received records")
    print(json.dumps({"cpu_s": cpu, "wall_s": wall}), flush=True)
    return 0


def idle_cpu(files: Files, seconds: float, rounds: int, progress: bool) -> dict[str, Any]:
    """Per round, a child process idles (see `idle_child`) with the file watch ("watch", sqlog's
    default on Linux) and without it ("poll", the fallback); the median over rounds of each one's
    CPU use in percent of one core."""
    pcts: dict[str, list[float]] = {"watch": [], "poll": []}
    for i in range(rounds):
        for mode in pcts:
            path = files.new(f"idle-{mode}")
            try:
                with sqlog.open(path) as log:
                    log.create_topic(TOPIC, partitions=1)
                done = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--idle", path, str(seconds), mode],
                    capture_output=True, text=True, timeout=seconds + CHILD_TIMEOUT_S,
                )
                if done.returncode != 0:
                    raise BenchError(f"idle consumer process failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
                got = json.loads(done.stdout)
            finally:
                files.remove(path)
            pcts[mode].append(100 * got["cpu_s"] / got["wall_s"])
        if progress:
            print(f"  idle_cpu round {i + 1}/{rounds}: watch {pcts['watch'][-1]:.3f} %, "
                  f"poll {pcts['poll'][-1]:.3f} % of a core", file=sys.stderr)
    return {"seconds": seconds, "rounds": rounds, "cpu_pct": median(pcts["watch"]),
            "cpu_pct_polling": median(pcts["poll"]), "cpu_pct_rounds": pcts}


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        sys.exit(child_main(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    if len(sys.argv) == 5 and sys.argv[1] == "--idle":
        sys.exit(idle_child(sys.argv[2], float(sys.argv[3]), sys.argv[4]))
    print("run the latency workloads with: python benchmarks/run.py --only latency", file=sys.stderr)
    sys.exit(2)
