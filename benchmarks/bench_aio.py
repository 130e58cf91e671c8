#!/usr/bin/env python3
"""sqlog.aio beside the sync API, in the same run (interleaved rounds):

- send: ``await producer.send()`` per record + ``flush()`` vs sync ``send()`` + ``flush()``;
- consume: ``await consumer.getmany(max_records=500)`` vs sync ``poll(max_records=500)``;
- e2e latency: a sync producer in a thread (``send().get()`` every ``interval``) to an awaiting
  ``getone()``, vs to a sync consumer blocked in ``poll()``: p50 / p99;
- send keeping every future: as above, but each future kept in a list and awaited at the end
  (every record's `RecordMetadata` is built and set; a dropped future costs less);
- loop stall: the lateness of a task sleeping 1 ms (p50 / p99 / p99.9 / worst) while an async
  producer sends at full speed and two async consumers read, beside the same meter on an idle
  loop in the same round (what the machine alone does to a loop), and again after
  ``gc.freeze()`` (the README's advice: full collections then skip the startup heap);
- aiokafka peers (when aiokafka is installed): aiokafka's producer and consumer against
  ``sqlog serve`` (another process), run in a child process so aiokafka never joins this
  process's heap, beside sqlog.aio in-process, same round.

    python benchmarks/bench_aio.py [--quick] [--json PATH] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.util
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import sqlog  # noqa: E402
import sqlog.aio  # noqa: E402

FULL = {"rounds": 3, "send": 100_000, "consume": 100_000, "latency": 500, "interval_ms": 2.0, "stall_s": 3.0,
        "peer": 20_000}
QUICK = {"rounds": 1, "send": 3_000, "consume": 3_000, "latency": 40, "interval_ms": 2.0, "stall_s": 0.5,
         "peer": 1_000}
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


def async_send_kept(path: str, n: int) -> float:
    """As `async_send`, every future kept and awaited at the end."""
    _fresh(path)

    async def main() -> float:
        async with sqlog.aio.open(path) as log:
            producer = log.producer()
            await producer.send("t", VALUE)
            await producer.flush()
            futures = []
            t = time.perf_counter()
            for _ in range(n - 1):
                futures.append(await producer.send("t", VALUE))
            await producer.flush()
            offsets = [f.result().offset for f in futures]
            rate = (n - 1) / (time.perf_counter() - t)
            assert offsets == list(range(1, n))
            await producer.stop()
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

    def pct(q: float) -> float:
        return lags[int(q * (len(lags) - 1))] * 1000

    return {"worst_ms": lags[-1] * 1000, "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99),
            "p999_ms": pct(0.999), "ticks": len(lags)}


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

    out = {"idle": asyncio.run(idle()), "busy": asyncio.run(busy())}
    _fresh(path + ".frozen")
    path = path + ".frozen"
    gc.collect()
    gc.freeze()  # what the README advises a service to do once started
    try:
        out["frozen"] = asyncio.run(busy())
    finally:
        gc.unfreeze()
    return out


# -- aiokafka peers ------------------------------------------------------------------------------------
def aiokafka_round(path: str, n: int) -> tuple[float, float] | None:
    """(send rec/s, getmany rec/s) of aiokafka's clients against ``sqlog serve`` on a fresh file,
    or None without aiokafka. Run in a child process: imported here, aiokafka's ~8,000 objects
    would stay in this process's heap, which every later full garbage collection walks, so the
    loop-stall rows of every round after the first would measure a heap the first did not
    (worst stall ~10 -> ~19 ms, measured), and neither is sqlog's."""
    if importlib.util.find_spec("aiokafka") is None:
        return None
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--aiokafka-peer", path, str(n)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise RuntimeError(f"the aiokafka round failed: {done.stderr[-2000:]}")
    send, getmany = json.loads(done.stdout.strip().splitlines()[-1])
    return send, getmany


def _aiokafka_round(path: str, n: int) -> tuple[float, float]:
    """`aiokafka_round` in this process (the child's side)."""
    import aiokafka
    from bench_server import _serve

    _fresh(path)
    proc, bootstrap = _serve(path)

    async def main() -> tuple[float, float]:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        await producer.start()
        try:
            await producer.send_and_wait("t", VALUE)  # connected, metadata loaded: not timed
            t = time.perf_counter()
            for _ in range(n - 1):
                await producer.send("t", VALUE)
            await producer.flush()
            send = (n - 1) / (time.perf_counter() - t)
        finally:
            await producer.stop()
        consumer = aiokafka.AIOKafkaConsumer("t", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                             enable_auto_commit=False)
        await consumer.start()
        try:
            got = 0
            t = time.perf_counter()
            while got < n:
                batch = await consumer.getmany(timeout_ms=1000, max_records=500)
                got += sum(len(v) for v in batch.values())
            return send, n / (time.perf_counter() - t)
        finally:
            await consumer.stop()

    try:
        return asyncio.run(main())
    finally:
        proc.terminate()
        proc.wait(10)


def sqlog_aio_round(path: str, n: int) -> tuple[float, float]:
    """The same workload as `aiokafka_round` through sqlog.aio in this process."""
    send = async_send(path, n)
    return send, async_consume(path, n)


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
        r["async_send_kept_rps"] = async_send_kept(dirs.new(), cfg["send"])
        r["stall"] = loop_stall(dirs.new(), cfg["stall_s"])
        peer = aiokafka_round(dirs.new(), cfg["peer"])
        if peer is not None:
            mine = sqlog_aio_round(dirs.new(), cfg["peer"])
            r["peer_sqlog_aio_send_rps"], r["peer_sqlog_aio_getmany_rps"] = mine
            r["aiokafka_send_rps"], r["aiokafka_getmany_rps"] = peer
            r["aiokafka_send_ratio"] = mine[0] / peer[0]
            r["aiokafka_getmany_ratio"] = mine[1] / peer[1]
        r["send_ratio"] = r["async_send_rps"] / r["sync_send_rps"]
        r["send_kept_ratio"] = r["async_send_kept_rps"] / r["sync_send_rps"]
        r["consume_ratio"] = r["async_consume_rps"] / r["sync_consume_rps"]
        r["latency_p50_ratio"] = r["async_latency_p50_ms"] / r["sync_latency_p50_ms"]
        per.append(r)
        for f in os.listdir(root):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(root, f))
        if progress:
            print(f"  round {i + 1}: send {r['send_ratio']:.2f}x consume {r['consume_ratio']:.2f}x "
                  f"latency p50 {r['async_latency_p50_ms']:.3f} vs {r['sync_latency_p50_ms']:.3f} ms, "
                  f"stall worst {r['stall']['busy']['worst_ms']:.1f} / p99 {r['stall']['busy']['p99_ms']:.1f} ms "
                  f"(after gc.freeze() {r['stall']['frozen']['worst_ms']:.1f} / {r['stall']['frozen']['p99_ms']:.1f}; "
                  f"idle loop {r['stall']['idle']['worst_ms']:.1f} / {r['stall']['idle']['p99_ms']:.1f})",
                  file=sys.stderr, flush=True)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in per)

    def stall(side: str, key: str) -> float:
        values = [r["stall"][side][key] for r in per]
        return max(values) if key == "worst_ms" else statistics.median(values)

    keys = [k for k in per[0] if k != "stall"]
    return {
        **{k: med(k) for k in keys},
        **{f"{prefix}_{key}": stall(side, key)
           for prefix, side in (("stall", "busy"), ("idle_stall", "idle"), ("frozen_stall", "frozen"))
           for key in ("worst_ms", "p50_ms", "p90_ms", "p99_ms", "p999_ms")},
        "stall_send_rps": statistics.median(r["stall"]["busy"]["send_rps"] for r in per),
        "load_avg": os.getloadavg()[0],
        "rounds": per,
    }


ROWS = [  # (title, value key, baseline key, ratio key, unit, target, check); rows whose keys are absent are left out
    ("async send() + flush() / sync", "async_send_rps", "sync_send_rps", "send_ratio", "rec/s", ">= 0.70",
     lambda d: d["send_ratio"] >= 0.7),
    ("async send(), futures kept / sync", "async_send_kept_rps", "sync_send_rps", "send_kept_ratio", "rec/s", "-",
     None),
    ("async getmany() / sync poll()", "async_consume_rps", "sync_consume_rps", "consume_ratio", "rec/s", ">= 0.70",
     lambda d: d["consume_ratio"] >= 0.7),
    ("e2e latency p50: getone() / poll()", "async_latency_p50_ms", "sync_latency_p50_ms", "latency_p50_ratio", "ms",
     "<= 1.5x", lambda d: d["latency_p50_ratio"] <= 1.5),
    ("e2e latency p99: getone() / poll()", "async_latency_p99_ms", "sync_latency_p99_ms", None, "ms", "-", None),
    ("loop stall, worst (busy / idle loop)", "stall_worst_ms", "idle_stall_worst_ms", None, "ms", "< 10 ms",
     lambda d: d["stall_worst_ms"] < 10),
    ("loop stall, p99 (busy / idle loop)", "stall_p99_ms", "idle_stall_p99_ms", None, "ms", "-", None),
    ("loop stall, p99.9 (busy / idle loop)", "stall_p999_ms", "idle_stall_p999_ms", None, "ms", "-", None),
    ("loop stall, p50 (busy / idle loop)", "stall_p50_ms", "idle_stall_p50_ms", None, "ms", "-", None),
    ("loop stall after gc.freeze(), worst (/ idle)", "frozen_stall_worst_ms", "idle_stall_worst_ms", None, "ms",
     "< 10 ms", lambda d: d["frozen_stall_worst_ms"] < 10),
    ("loop stall after gc.freeze(), p99 (/ idle)", "frozen_stall_p99_ms", "idle_stall_p99_ms", None, "ms", "-", None),
    ("sqlog.aio send / aiokafka -> sqlog serve", "peer_sqlog_aio_send_rps", "aiokafka_send_rps",
     "aiokafka_send_ratio", "rec/s", "-", None),
    ("sqlog.aio getmany / aiokafka -> sqlog serve", "peer_sqlog_aio_getmany_rps", "aiokafka_getmany_rps",
     "aiokafka_getmany_ratio", "rec/s", "-", None),
]


def rows(data: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The `ROWS` this run measured (the aiokafka peers only where aiokafka is installed)."""
    return [row for row in ROWS if row[1] in data]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--dir", metavar="DIR")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--aiokafka-peer", nargs=2, metavar=("PATH", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.aiokafka_peer:  # the child of aiokafka_round
        print(json.dumps(_aiokafka_round(args.aiokafka_peer[0], int(args.aiokafka_peer[1]))))
        return 0
    cfg = QUICK if args.quick else FULL
    root = tempfile.mkdtemp(prefix="sqlog-bench-aio-", dir=args.dir)
    try:
        data = measure(root, cfg, args.rounds or cfg["rounds"], progress=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"load average {data['load_avg']:.2f} (1 min, at the end)")
    for title, value, base, ratio, unit, target, check in rows(data):
        r = f"{data[ratio]:.2f}" if ratio else "-"
        met = "-" if check is None else ("yes" if check(data) else "no")
        print(f"{title:40} {data[value]:>12,.3f} {data[base]:>12,.3f} {unit:6} ratio {r:>6}  target {target:9} {met}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": {"quick": args.quick, "sizes": cfg}, "data": data}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
