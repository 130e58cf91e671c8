#!/usr/bin/env python3
"""sqlog.aio beside the sync API, in the same run (interleaved rounds):

- send: ``await producer.send()`` per record + ``flush()`` vs sync ``send()`` + ``flush()``;
- consume: ``await consumer.getmany(max_records=500)`` vs sync ``poll(max_records=500)``;
- e2e latency: a sync producer in a thread (``send().get()`` every ``interval``) to an awaiting
  ``getone()``, vs to a sync consumer blocked in ``poll()``: p50 / p99;
- loop stall: the longest lateness (and p99) of a task sleeping 1 ms while an async producer sends
  at full speed and two async consumers read, beside the same meter on an idle loop in the same
  round (what the machine alone does to a loop).

    python benchmarks/bench_aio.py [--quick] [--json PATH] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import struct
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import sqlog  # noqa: E402
import sqlog.aio  # noqa: E402

FULL = {"rounds": 3, "send": 100_000, "consume": 100_000, "latency": 500, "interval_ms": 2.0, "stall_s": 3.0}
QUICK = {"rounds": 1, "send": 3_000, "consume": 3_000, "latency": 40, "interval_ms": 2.0, "stall_s": 0.5}
VALUE = b"v" * 100
TP = sqlog.TopicPartition("t", 0)


class Dirs:
    def __init__(self, root: str) -> None:
        self.root = root
        self.n = 0

    def new(self) -> str:
        self.n += 1
        return os.path.join(self.root, f"aio-{self.n}.db")


def _fresh(path: str) -> None:
    with sqlog.open(path) as log:
        log.create_topic("t")


# -- send ---------------------------------------------------------------------------------------------
def sync_send(path: str, n: int) -> float:
    _fresh(path)
    with sqlog.open(path) as log:
        producer = log.producer()
        t = time.perf_counter()
        for _ in range(n):
            producer.send("t", VALUE)
        producer.flush()
        rate = n / (time.perf_counter() - t)
        assert log.describe_topic("t").partitions[0].high_watermark == n
        return rate


def async_send(path: str, n: int) -> float:
    _fresh(path)

    async def main() -> float:
        async with sqlog.aio.open(path) as log:
            producer = log.producer()
            await producer.send("t", VALUE)  # metadata loaded: not timed
            await producer.flush()
            t = time.perf_counter()
            for _ in range(n - 1):
                await producer.send("t", VALUE)
            await producer.flush()
            rate = (n - 1) / (time.perf_counter() - t)
            await producer.stop()
            assert (await log.describe_topic("t")).partitions[0].high_watermark == n
            return rate

    return asyncio.run(main())


# -- consume ------------------------------------------------------------------------------------------
def filled(path: str, n: int) -> str:
    _fresh(path)
    with sqlog.open(path) as log, log.producer() as producer:
        for i in range(0, n, 1000):
            producer.send_batch("t", [VALUE] * min(1000, n - i), partition=0)
    return path


def sync_consume(path: str, n: int) -> float:
    with sqlog.open(path) as log:
        consumer = log.consumer()
        consumer.assign([TP])
        consumer.seek(TP, 0)
        got = 0
        t = time.perf_counter()
        while got < n:
            got += len(consumer.poll(timeout_ms=1000, max_records=500))
        rate = n / (time.perf_counter() - t)
        consumer.close()
        return rate


def async_consume(path: str, n: int) -> float:
    async def main() -> float:
        async with sqlog.aio.open(path) as log:
            consumer = log.consumer()
            consumer.assign([TP])
            consumer.seek(TP, 0)
            await consumer.start()
            got = 0
            t = time.perf_counter()
            while got < n:
                batch = await consumer.getmany(timeout_ms=1000, max_records=500)
                got += sum(len(v) for v in batch.values())
            rate = n / (time.perf_counter() - t)
            await consumer.stop()
            return rate

    return asyncio.run(main())


# -- latency ------------------------------------------------------------------------------------------
def _sender(log: sqlog.Log, m: int, interval: float, started: threading.Event) -> threading.Thread:
    def run() -> None:
        started.wait()
        with log.producer(linger_ms=0) as producer:
            for _ in range(m):
                producer.send("t", struct.pack("d", time.perf_counter())).get()
                time.sleep(interval)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def sync_latency(path: str, m: int, interval: float) -> list[float]:
    _fresh(path)
    with sqlog.open(path) as log:
        consumer = log.consumer(auto_offset_reset="earliest")
        consumer.assign([TP])
        started = threading.Event()
        thread = _sender(log, m, interval, started)
        out: list[float] = []
        started.set()
        while len(out) < m:
            for r in consumer.poll(timeout_ms=1000):
                out.append(time.perf_counter() - struct.unpack("d", r.value)[0])
        thread.join()
        consumer.close()
        return out


def async_latency(path: str, m: int, interval: float) -> list[float]:
    _fresh(path)

    async def main() -> list[float]:
        async with sqlog.aio.open(path) as log:
            consumer = log.consumer(auto_offset_reset="earliest")
            consumer.assign([TP])
            await consumer.getmany(timeout_ms=0)
            started = threading.Event()
            thread = _sender(log.log, m, interval, started)
            out: list[float] = []
            started.set()
            while len(out) < m:
                r = await consumer.getone()
                out.append(time.perf_counter() - struct.unpack("d", r.value)[0])
            thread.join()
            await consumer.stop()
            return out

    return asyncio.run(main())


# -- loop stall ---------------------------------------------------------------------------------------
async def _meter(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - t - 0.001)


def _summary(lags: list[float]) -> dict[str, float]:
    lags = sorted(lags) or [0.0]
    return {"worst_ms": lags[-1] * 1000, "p99_ms": lags[int(0.99 * (len(lags) - 1))] * 1000, "ticks": len(lags)}


def loop_stall(path: str, seconds: float) -> dict[str, Any]:
    _fresh(path)

    async def idle() -> dict[str, float]:
        stop = asyncio.Event()
        lags: list[float] = []
        meter = asyncio.ensure_future(_meter(stop, lags))
        await asyncio.sleep(seconds)
        stop.set()
        await meter
        return _summary(lags)

    async def busy() -> dict[str, Any]:
        async with sqlog.aio.open(path) as log:
            stop = asyncio.Event()
            lags: list[float] = []
            meter = asyncio.ensure_future(_meter(stop, lags))
            producer = log.producer()
            consumers = [log.consumer("t", group_id=f"g{i}", auto_offset_reset="earliest") for i in range(2)]
            read = [0, 0]

            async def consume(i: int) -> None:
                while not stop.is_set():
                    batch = await consumers[i].getmany(timeout_ms=50)
                    read[i] += sum(len(v) for v in batch.values())

            readers = [asyncio.ensure_future(consume(i)) for i in range(2)]
            sent = 0
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                for _ in range(20):  # the app's own loop step stays short: what is measured is sqlog's
                    await producer.send("t", VALUE)
                sent += 20
                await asyncio.sleep(0)
            await producer.flush()
            stop.set()
            await meter
            await asyncio.gather(*readers)
            return {**_summary(lags), "sent": sent, "read": read, "send_rps": sent / seconds}

    return {"idle": asyncio.run(idle()), "busy": asyncio.run(busy())}


# -- the run ------------------------------------------------------------------------------------------
def measure(root: str, cfg: dict[str, Any], rounds: int, progress: bool = False) -> dict[str, Any]:
    """Every measurement, ``rounds`` times, sync and async interleaved; medians and per-round values."""
    dirs = Dirs(root)
    per: list[dict[str, Any]] = []
    interval = cfg["interval_ms"] / 1000
    for i in range(rounds):
        r: dict[str, Any] = {}
        r["sync_send_rps"] = sync_send(dirs.new(), cfg["send"])
        r["async_send_rps"] = async_send(dirs.new(), cfg["send"])
        src = filled(dirs.new(), cfg["consume"])
        r["sync_consume_rps"] = sync_consume(src, cfg["consume"])
        r["async_consume_rps"] = async_consume(src, cfg["consume"])
        s = sync_latency(dirs.new(), cfg["latency"], interval)
        a = async_latency(dirs.new(), cfg["latency"], interval)
        r["sync_latency_p50_ms"] = statistics.median(s) * 1000
        r["sync_latency_p99_ms"] = sorted(s)[int(0.99 * (len(s) - 1))] * 1000
        r["async_latency_p50_ms"] = statistics.median(a) * 1000
        r["async_latency_p99_ms"] = sorted(a)[int(0.99 * (len(a) - 1))] * 1000
        r["stall"] = loop_stall(dirs.new(), cfg["stall_s"])
        r["send_ratio"] = r["async_send_rps"] / r["sync_send_rps"]
        r["consume_ratio"] = r["async_consume_rps"] / r["sync_consume_rps"]
        r["latency_p50_ratio"] = r["async_latency_p50_ms"] / r["sync_latency_p50_ms"]
        per.append(r)
        for f in os.listdir(root):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(root, f))
        if progress:
            print(f"  round {i + 1}: send {r['send_ratio']:.2f}x consume {r['consume_ratio']:.2f}x "
                  f"latency p50 {r['async_latency_p50_ms']:.3f} vs {r['sync_latency_p50_ms']:.3f} ms, "
                  f"stall {r['stall']['busy']['worst_ms']:.1f} ms (idle loop {r['stall']['idle']['worst_ms']:.1f})",
                  file=sys.stderr, flush=True)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in per)

    keys = [k for k in per[0] if k != "stall"]
    return {
        **{k: med(k) for k in keys},
        "stall_worst_ms": max(r["stall"]["busy"]["worst_ms"] for r in per),
        "stall_p99_ms": statistics.median(r["stall"]["busy"]["p99_ms"] for r in per),
        "idle_stall_worst_ms": max(r["stall"]["idle"]["worst_ms"] for r in per),
        "idle_stall_p99_ms": statistics.median(r["stall"]["idle"]["p99_ms"] for r in per),
        "stall_send_rps": statistics.median(r["stall"]["busy"]["send_rps"] for r in per),
        "rounds": per,
    }


ROWS = [  # (title, value key, baseline key, ratio key, unit, target, check)
    ("async send() + flush() / sync", "async_send_rps", "sync_send_rps", "send_ratio", "rec/s", ">= 0.70",
     lambda d: d["send_ratio"] >= 0.7),
    ("async getmany() / sync poll()", "async_consume_rps", "sync_consume_rps", "consume_ratio", "rec/s", ">= 0.70",
     lambda d: d["consume_ratio"] >= 0.7),
    ("e2e latency p50: getone() / poll()", "async_latency_p50_ms", "sync_latency_p50_ms", "latency_p50_ratio", "ms",
     "<= 1.5x", lambda d: d["latency_p50_ratio"] <= 1.5),
    ("e2e latency p99: getone() / poll()", "async_latency_p99_ms", "sync_latency_p99_ms", None, "ms", "-", None),
    ("loop stall, worst (busy / idle loop)", "stall_worst_ms", "idle_stall_worst_ms", None, "ms", "< 10 ms",
     lambda d: d["stall_worst_ms"] < 10),
    ("loop stall, p99 (busy / idle loop)", "stall_p99_ms", "idle_stall_p99_ms", None, "ms", "-", None),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--dir", metavar="DIR")
    ap.add_argument("--rounds", type=int)
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    root = tempfile.mkdtemp(prefix="sqlog-bench-aio-", dir=args.dir)
    try:
        data = measure(root, cfg, args.rounds or cfg["rounds"], progress=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for title, value, base, ratio, unit, target, check in ROWS:
        r = f"{data[ratio]:.2f}" if ratio else "-"
        met = "-" if check is None else ("yes" if check(data) else "no")
        print(f"{title:40} {data[value]:>12,.3f} {data[base]:>12,.3f} {unit:6} ratio {r:>6}  target {target:9} {met}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": {"quick": args.quick, "sizes": cfg}, "data": data}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
