#!/usr/bin/env python3
"""sqlog's retention benchmark: how fast a sweep deletes, what producers wait meanwhile, and what
the background sweeper costs a producer.

Three measurements, in interleaved rounds, each on fresh files in a temporary directory:

1. Sweep throughput. A 4-partition topic holding N records of 100 bytes is swept empty by
   ``log.sweep(now_ms=...)``: once by time retention (every record is 10 days old, retention is
   1 day) and once by size retention (the topic is altered to keep 1000 bytes per partition).
   Reported: records and MB deleted per second, pages given back, the db+WAL size on disk
   before, at its peak during, and after the sweep (and after one ``log.checkpoint()``).
2. The same sweeps with a producer thread on the same log doing ``send().get()`` to another
   topic in a loop: its longest wait is the longest time the sweep kept the write lock from it,
   as seen from outside (it includes SQLite's busy-handler back-off).
3. Producer throughput with the background sweeper off (``retention_check_interval_ms=None``)
   and on (every 100 ms, aggressive on purpose), on a topic with ``retention_bytes`` so retention
   really deletes. Size retention is enforced on append in both cases.

The machine this runs on is shared and noisy: rates are medians of the rounds, and the sweeper's
cost is the median of per-round on/off ratios. This script reports; it asserts nothing about
speed (it does check that each sweep deleted exactly what retention should, and that every
record sent arrived).

    python benchmarks/bench_retention.py [--quick] [--records N] [--rounds R] [--json PATH]

See benchmarks/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import apsw

import sqlog

TOPIC = "bench"
PROBE_TOPIC = "probe"  # the concurrent producer's topic: no retention, never swept
PARTITIONS = 4
VALUE_SIZE = 100
VALUE_POOL = 256
DAY_MS = 86_400_000
TIME_RETENTION_MS = DAY_MS  # the time-swept topic keeps a day; its records are AGE_MS old
AGE_MS = 10 * DAY_MS
SIZE_SWEEP_BUDGET = 1000  # bytes per partition the size-swept topic keeps: 10 records of 100 bytes
SWEEPER_INTERVAL_MS = 100  # the "on" side's background sweeper
WAL_SAMPLE_S = 0.005  # how often the disk sampler looks at the files during a sweep

try:  # for the report only: the chunk the sweep deletes per transaction
    from sqlog.retention import SWEEP_CHUNK_RECORDS
except ImportError:  # pragma: no cover - renamed or moved
    SWEEP_CHUNK_RECORDS = None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def make_values(size: int) -> list[bytes]:
    return [os.urandom(size) for _ in range(VALUE_POOL)]


class BenchError(RuntimeError):
    """A side did not do the work it was timed for (wrong count deleted, records lost)."""


def check(side: str, what: str, got: int, want: int) -> None:
    if got != want:
        raise BenchError(f"{side}: expected {what} {want}, found {got}")


class Files:
    """Fresh, numbered paths in the benchmark directory; removes each file (with WAL/SHM) when done."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.seq = 0

    def new(self, stem: str) -> str:
        self.seq += 1
        return os.path.join(self.root, f"{stem}-{self.seq}.db")

    @staticmethod
    def remove(path: str) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.remove(path + suffix)
            except FileNotFoundError:
                pass


def disk_bytes(path: str) -> int:
    """Database plus WAL bytes on disk."""
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.stat(path + suffix).st_size
        except FileNotFoundError:
            pass
    return total


class DiskSampler:
    """Samples db+WAL size (and the WAL alone) every few milliseconds; keeps the peaks."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.peak = disk_bytes(path)
        self.peak_wal = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-disk", daemon=True)

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, disk_bytes(self.path))
            try:
                self.peak_wal = max(self.peak_wal, os.stat(self.path + "-wal").st_size)
            except FileNotFoundError:
                pass
            if self._stop.wait(WAL_SAMPLE_S):
                return

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, disk_bytes(self.path))


class Probe:
    """A producer thread doing ``send().get()`` in a loop; records each send's start and end."""

    def __init__(self, log: sqlog.Log) -> None:
        self._log = log
        self.spans: list[tuple[float, float]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-probe", daemon=True)

    def _run(self) -> None:
        value = b"p" * VALUE_SIZE
        try:
            producer = self._log.producer(linger_ms=0)
            try:
                send = producer.send
                clock = time.perf_counter
                spans = self.spans
                while not self._stop.is_set():
                    t0 = clock()
                    send(PROBE_TOPIC, value).get(timeout=60)
                    spans.append((t0, clock()))
                    self._started.set()
            finally:
                producer.close()
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            self._started.set()

    def __enter__(self) -> Probe:
        self._thread.start()
        self._started.wait()  # it has sent (and had acknowledged) at least one record
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None and exc[0] is None:
            raise BenchError(f"probe producer failed: {self.error!r}") from self.error

    def during(self, start: float, end: float) -> list[float]:
        """Latencies (s) of the sends that overlapped ``[start, end]``."""
        return [e - s for s, e in self.spans if s < end and e > start]


# -- a workload: every side once per round, the order alternating between rounds ------------------
@dataclass
class Side:
    label: str
    run: Callable[[], dict[str, float]]  # one measurement: fresh files, timed work, checks


@dataclass
class Workload:
    key: str
    sides: list[Side]
    setup: Callable[[], None] = lambda: None
    teardown: Callable[[], None] = lambda: None
    rounds: list[dict[str, dict[str, float]]] = field(default_factory=list)


def run_workload(w: Workload, rounds: int, progress: bool,
                 show: Callable[[dict[str, dict[str, float]]], str]) -> None:
    w.setup()
    try:
        for r in range(rounds):
            # Interleaved: every side once a round, the order reversed every other round (A B, B A, ...)
            # so neither side always runs first (on a busy machine the position alone shifted rates).
            order = w.sides if r % 2 == 0 else w.sides[::-1]
            figures = {side.label: side.run() for side in order}
            w.rounds.append(figures)
            if progress:
                print(f"  [{w.key} round {r + 1}/{rounds}] {show(figures)}", file=sys.stderr, flush=True)
    finally:
        w.teardown()


def med(w: Workload, side: str, key: str) -> float:
    return statistics.median(r[side][key] for r in w.rounds)


# -- 1 and 2: sweeps ----------------------------------------------------------------------------
def sweep_workload(files: Files, kind: str, n: int) -> Workload:
    """Sweep a full topic empty by ``kind`` ("time" or "size") retention, alone and with a producer."""
    values = make_values(VALUE_SIZE)
    mask = VALUE_POOL - 1
    state: dict[str, Any] = {}
    per_partition = n // PARTITIONS
    expected = n if kind == "time" else n - PARTITIONS * min(per_partition, SIZE_SWEEP_BUDGET // VALUE_SIZE)

    def setup() -> None:
        # Filled once through the producer, then copied for every round (copying is much faster
        # than refilling, and every round still starts from an identical fresh file).
        state["template"] = path = files.new(f"sweep-{kind}-template")
        with sqlog.open(path, retention_check_interval_ms=None) as log:
            log.create_topic(TOPIC, partitions=PARTITIONS,
                             retention_ms=TIME_RETENTION_MS if kind == "time" else None)
            log.create_topic(PROBE_TOPIC, partitions=1)
            ts = now_ms() - AGE_MS if kind == "time" else None
            with log.producer() as producer:
                send = producer.send
                for i in range(n):
                    send(TOPIC, values[i & mask], partition=i % PARTITIONS, timestamp_ms=ts)
            hw = sum(p.high_watermark for p in log.describe_topic(TOPIC).partitions)
            check(f"sweep {kind} fill", "records", hw, n)
        # closed: the WAL is checkpointed into the database file and removed

    def teardown() -> None:
        if "template" in state:
            files.remove(state.pop("template"))

    def side(with_producer: bool) -> Callable[[], dict[str, float]]:
        label = f"sweep {kind}{' + producer' if with_producer else ''}"

        def run() -> dict[str, float]:
            path = files.new(f"sweep-{kind}")
            shutil.copyfile(state["template"], path)
            try:
                with sqlog.open(path, retention_check_interval_ms=None) as log:
                    if kind == "size":
                        log.alter_topic(TOPIC, retention_bytes=SIZE_SWEEP_BUDGET)
                    before = disk_bytes(path)
                    probe = Probe(log) if with_producer else None
                    with DiskSampler(path) as sampler, probe or contextlib.nullcontext():
                        gc.collect()
                        t0 = time.perf_counter()
                        result = log.sweep(now_ms=now_ms())
                        t1 = time.perf_counter()
                    after = disk_bytes(path)
                    log.checkpoint()
                    after_checkpoint = disk_bytes(path)
                    check(label, "records deleted", result.records, expected)
                    check(label, "bytes deleted", result.bytes, expected * VALUE_SIZE)
                    parts = log.describe_topic(TOPIC).partitions
                    check(label, "records left", sum(p.records for p in parts), n - expected)
                    check(label, "high watermark", sum(p.high_watermark for p in parts), n)
                    seconds = t1 - t0
                    out = {
                        "seconds": seconds,
                        "deleted": result.records,
                        "deleted_bytes": result.bytes,
                        "rps": result.records / seconds,
                        "mbps": result.bytes / seconds / 1e6,
                        "pages_freed": result.pages_freed,
                        "disk_before": before,
                        "disk_peak": sampler.peak,
                        "wal_peak": sampler.peak_wal,
                        "disk_after": after,
                        "disk_after_checkpoint": after_checkpoint,
                    }
                    if probe is not None:
                        waits = sorted(probe.during(t0, t1)) or [0.0]  # none only if the sweep was instant
                        out.update({
                            "producer_sends": len(probe.during(t0, t1)),
                            "producer_median_wait_ms": statistics.median(waits) * 1000,
                            "producer_p99_wait_ms": waits[min(len(waits) - 1, int(len(waits) * 0.99))] * 1000,
                            "producer_max_wait_ms": waits[-1] * 1000,
                        })
                return out
            finally:
                files.remove(path)

        return run

    return Workload(f"sweep_{kind}", [Side("alone", side(False)), Side("producer", side(True))],
                    setup=setup, teardown=teardown)


def sweep_rows(w: Workload, kind: str, n: int) -> dict[str, Any]:
    title = {"time": "time retention sweep", "size": "size retention sweep"}[kind]

    def worst(side: str, key: str) -> float:
        return max(r[side][key] for r in w.rounds)

    return {
        "workload": w.key,
        "title": title,
        "records": n,
        "partitions": PARTITIONS,
        "deleted": int(med(w, "alone", "deleted")),
        "seconds": med(w, "alone", "seconds"),
        "sweep_rps": med(w, "alone", "rps"),
        "sweep_mbps": med(w, "alone", "mbps"),
        "pages_freed": int(med(w, "alone", "pages_freed")),
        "disk_before_bytes": int(med(w, "alone", "disk_before")),
        "disk_peak_bytes": int(med(w, "alone", "disk_peak")),
        "wal_peak_bytes": int(med(w, "alone", "wal_peak")),
        "disk_after_bytes": int(med(w, "alone", "disk_after")),
        "disk_after_checkpoint_bytes": int(med(w, "alone", "disk_after_checkpoint")),
        "with_producer": {
            "seconds": med(w, "producer", "seconds"),
            "sweep_rps": med(w, "producer", "rps"),
            "sweep_mbps": med(w, "producer", "mbps"),
            "producer_sends": int(med(w, "producer", "producer_sends")),
            "producer_median_wait_ms": med(w, "producer", "producer_median_wait_ms"),
            "producer_p99_wait_ms": med(w, "producer", "producer_p99_wait_ms"),
            "producer_max_wait_ms": med(w, "producer", "producer_max_wait_ms"),
            "producer_max_wait_ms_worst": worst("producer", "producer_max_wait_ms"),
            "disk_peak_bytes": int(med(w, "producer", "disk_peak")),
            "wal_peak_bytes": int(med(w, "producer", "wal_peak")),
            "wal_peak_bytes_worst": int(worst("producer", "wal_peak")),
        },
        "rounds": w.rounds,
    }


# -- 3: producer throughput, background sweeper off vs on ----------------------------------------
def produce_workload(files: Files, m: int, budget: int) -> Workload:
    values = make_values(VALUE_SIZE)
    mask = VALUE_POOL - 1

    def side(interval_ms: int | None) -> Callable[[], dict[str, float]]:
        label = f"produce sweeper {'off' if interval_ms is None else 'on'}"

        def run(count: int = m) -> dict[str, float]:
            path = files.new(f"produce-{'off' if interval_ms is None else 'on'}")
            try:
                with sqlog.open(path, retention_check_interval_ms=interval_ms) as log:
                    log.create_topic(TOPIC, partitions=PARTITIONS, retention_bytes=budget)
                    producer = log.producer()
                    gc.collect()
                    t0 = time.perf_counter()
                    send = producer.send
                    for i in range(count):
                        send(TOPIC, values[i & mask])
                    producer.flush()
                    seconds = time.perf_counter() - t0
                    disk = log.stats()
                    producer.close()
                    parts = log.describe_topic(TOPIC).partitions
                    check(label, "records sent", sum(p.high_watermark for p in parts), count)
                    retained = max(p.bytes for p in parts)
                    deleted = sum(p.log_start_offset for p in parts)
                return {
                    "seconds": seconds,
                    "rps": count / seconds,
                    "db_bytes": disk["db_bytes"],
                    "wal_bytes": disk["wal_bytes"],
                    "disk_bytes": disk["db_bytes"] + disk["wal_bytes"],
                    "retention_deleted": deleted,
                    "max_partition_bytes": retained,
                }
            finally:
                files.remove(path)

        return run

    off, on = side(None), side(SWEEPER_INTERVAL_MS)

    def warmup() -> None:  # both sides once on a few thousand records, not recorded
        for run in (off, on):
            run(max(min(m, 20_000) // 4, 1))

    return Workload("produce_sweeper", [Side("off", off), Side("on", on)], setup=warmup)


def produce_row(w: Workload, m: int, budget: int) -> dict[str, Any]:
    ratios = [r["on"]["rps"] / r["off"]["rps"] for r in w.rounds]
    return {
        "workload": w.key,
        "title": f"send() {VALUE_SIZE} B + flush()",
        "records": m,
        "partitions": PARTITIONS,
        "retention_bytes": budget,
        "sweeper_interval_ms": SWEEPER_INTERVAL_MS,
        "off_rps": med(w, "off", "rps"),
        "on_rps": med(w, "on", "rps"),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "off_disk_bytes": int(med(w, "off", "disk_bytes")),
        "on_disk_bytes": int(med(w, "on", "disk_bytes")),
        "off_wal_bytes": int(med(w, "off", "wal_bytes")),
        "on_wal_bytes": int(med(w, "on", "wal_bytes")),
        "off_retention_deleted": int(med(w, "off", "retention_deleted")),
        "on_retention_deleted": int(med(w, "on", "retention_deleted")),
        "rounds": [{**r, "ratio": q} for r, q in zip(w.rounds, ratios)],
    }


# -- reporting ------------------------------------------------------------------------------------
def mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:,.1f}"


def table(head: tuple[str, ...], body: list[tuple[str, ...]]) -> None:
    widths = [max(len(c) for c in col) for col in zip(head, *body)]
    align = ["<"] + [">"] * (len(head) - 1)

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(f"{c:{a}{wd}}" for c, a, wd in zip(cells, align, widths)).rstrip()

    print(fmt(head))
    print("  ".join("-" * wd for wd in widths))
    for line in body:
        print(fmt(line))


def print_report(sweeps: list[dict[str, Any]], produce: dict[str, Any], rounds: int) -> None:
    chunk = f"{SWEEP_CHUNK_RECORDS:,}" if SWEEP_CHUNK_RECORDS else "?"
    print(f"1. log.sweep() emptying a {PARTITIONS}-partition topic of {VALUE_SIZE} B records "
          f"(medians of {rounds} rounds; sqlog deletes {chunk} records per transaction)")
    table(
        ("sweep", "deleted", "seconds", "rec/s", "MB/s", "pages freed",
         "db+WAL MB before", "peak during", "after", "after checkpoint"),
        [(r["title"], f"{r['deleted']:,}", f"{r['seconds']:.2f}", f"{r['sweep_rps']:,.0f}",
          f"{r['sweep_mbps']:,.1f}", f"{r['pages_freed']:,}", mb(r["disk_before_bytes"]),
          mb(r["disk_peak_bytes"]), mb(r["disk_after_bytes"]), mb(r["disk_after_checkpoint_bytes"]))
         for r in sweeps],
    )
    print("MB = 10^6 record bytes (key + value + headers); pages freed = SweepResult.pages_freed "
          "(incremental_vacuum); the database file shrinks at the checkpoint after the sweep")
    print()
    print("2. the same sweeps while another thread sends to another topic with send().get() in a loop")
    table(
        ("sweep", "sweep rec/s", "sends during", "median wait ms", "p99 ms", "longest wait ms",
         "(worst round)", "db+WAL MB peak during", "of it WAL"),
        [(r["title"], f"{p['sweep_rps']:,.0f}", f"{p['producer_sends']:,}",
          f"{p['producer_median_wait_ms']:.2f}", f"{p['producer_p99_wait_ms']:.1f}",
          f"{p['producer_max_wait_ms']:.1f}", f"{p['producer_max_wait_ms_worst']:.1f}",
          mb(p["disk_peak_bytes"]), mb(p["wal_peak_bytes"]))
         for r in sweeps for p in [r["with_producer"]]],
    )
    print("longest wait = the slowest send().get() overlapping the sweep: the longest the sweep kept the "
          "write lock from a producer, plus SQLite's busy-handler back-off")
    print("peak WAL MB, sweep alone / with the producer / with it, worst round: " + "; ".join(
        f"{r['title'].split()[0]} {mb(r['wal_peak_bytes'])} / {mb(r['with_producer']['wal_peak_bytes'])}"
        f" / {mb(r['with_producer']['wal_peak_bytes_worst'])}" for r in sweeps))
    print()
    p = produce
    print(f"3. producer throughput with the background sweeper off vs on "
          f"({PARTITIONS} partitions, retention_bytes {p['retention_bytes']:,} per partition)")
    table(
        ("workload", "records", "sweeper off rec/s", f"on ({SWEEPER_INTERVAL_MS} ms) rec/s", "on/off",
         f"spread ({rounds} rounds)", "db+WAL MB off", "db+WAL MB on"),
        [(p["title"], f"{p['records']:,}", f"{p['off_rps']:,.0f}", f"{p['on_rps']:,.0f}",
          f"{p['ratio']:.2f}x", f"{p['ratio_min']:.2f}-{p['ratio_max']:.2f}",
          mb(p["off_disk_bytes"]), mb(p["on_disk_bytes"]))],
    )
    print(f"off = retention_check_interval_ms=None: size retention is still enforced on append "
          f"(deleted {p['off_retention_deleted']:,} of {p['records']:,} records; "
          f"on: {p['on_retention_deleted']:,}); on = a sweep every {SWEEPER_INTERVAL_MS} ms")
    print("on/off = median of per-round ratios; db+WAL = database plus WAL file on disk right after flush()")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, 2 rounds: a few seconds")
    ap.add_argument("--records", type=int, default=None,
                    help="records in the topic each sweep empties (default 300000; quick 20000)")
    ap.add_argument("--produce-records", type=int, default=None,
                    help="records sent per producer round (default 200000; quick 20000)")
    ap.add_argument("--retention-bytes", type=int, default=None,
                    help="per-partition budget of the producer workload (default 1 MiB; quick 64 KiB)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds per workload (default 6; quick 2)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    ap.add_argument("--dir", metavar="DIR", help="where the temporary database files go (default: system temp)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="dump every thread's traceback and exit if the run takes longer (seconds)")
    ap.add_argument("-q", "--no-progress", action="store_true", help="no per-round lines on stderr")
    args = ap.parse_args(argv)

    n = args.records if args.records is not None else (20_000 if args.quick else 300_000)
    m = args.produce_records if args.produce_records is not None else (20_000 if args.quick else 200_000)
    budget = args.retention_bytes if args.retention_bytes is not None else (
        64 * 1024 if args.quick else 1024 * 1024)
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 6)
    if n < PARTITIONS or m < 1 or rounds < 1 or budget < 1:
        ap.error(f"--records must be >= {PARTITIONS}; --produce-records, --rounds, --retention-bytes >= 1")
    n -= n % PARTITIONS
    if args.timeout:
        faulthandler.dump_traceback_later(args.timeout, exit=True)

    progress = not args.no_progress

    def show_sweep(f: dict[str, dict[str, float]]) -> str:
        a, p = f["alone"], f["producer"]
        return (f"alone={a['rps']:,.0f} rec/s  with producer={p['rps']:,.0f} rec/s, "
                f"{p['producer_sends']:,.0f} sends, longest wait {p['producer_max_wait_ms']:.1f} ms")

    def show_produce(f: dict[str, dict[str, float]]) -> str:
        return (f"off={f['off']['rps']:,.0f}  on={f['on']['rps']:,.0f}  "
                f"ratio={f['on']['rps'] / f['off']['rps']:.2f}")

    root = tempfile.mkdtemp(prefix="sqlog-bench-retention-", dir=args.dir)
    started = time.time()
    try:
        files = Files(root)
        sweeps = [sweep_workload(files, "time", n), sweep_workload(files, "size", n)]
        for w in sweeps:
            run_workload(w, rounds, progress, show_sweep)
        produce = produce_workload(files, m, budget)
        run_workload(produce, rounds, progress, show_produce)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    sweep_results = [sweep_rows(w, kind, n) for w, kind in zip(sweeps, ("time", "size"))]
    produce_result = produce_row(produce, m, budget)
    print(f"sqlog {sqlog.__version__}  apsw {apsw.apsw_version()}  SQLite {apsw.sqlite_lib_version()}  "
          f"Python {platform.python_version()}  {os.cpu_count()} CPUs  {rounds} rounds  "
          f"{time.time() - started:.1f} s\n")
    print_report(sweep_results, produce_result, rounds)
    if args.json:
        doc = {
            "meta": {
                "sqlog": sqlog.__version__, "apsw": apsw.apsw_version(), "sqlite": apsw.sqlite_lib_version(),
                "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                "records": n, "produce_records": m, "retention_bytes": budget, "rounds": rounds,
                "partitions": PARTITIONS, "value_bytes": VALUE_SIZE, "size_sweep_budget": SIZE_SWEEP_BUDGET,
                "sweep_chunk_records": SWEEP_CHUNK_RECORDS, "sweeper_interval_ms": SWEEPER_INTERVAL_MS,
                "quick": args.quick, "started": started, "seconds": time.time() - started,
            },
            "workloads": [*sweep_results, produce_result],
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    if args.timeout:
        faulthandler.cancel_dump_traceback_later()
    return 0


if __name__ == "__main__":
    sys.exit(main())
