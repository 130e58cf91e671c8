#!/usr/bin/env python3
"""sqlog's core benchmark: each workload beside raw apsw doing the same SQL work on the same schema.

The machine this runs on is shared and noisy, so absolute rates mean little. Every sqlog
figure is reported as a ratio against raw apsw measured in the same run, in interleaved
rounds (sqlog, raw, sqlog, raw, ...), and the median of the per-round ratios is the result.
Each side works on its own file in a temporary directory. This script reports; it asserts
nothing about speed (it does check that every record it sent arrived, or read, exactly once).

    python benchmarks/bench_core.py [--quick] [--records N] [--rounds R] [--json PATH]

See benchmarks/README.md for what each row means.
"""

from __future__ import annotations

import argparse
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
TABLE = "p1_0"  # the raw side's partition table, named as sqlog names topic id 1, partition 0
RAW_BATCH = 1000  # rows per raw transaction (send path) and per raw SELECT (poll)
POLL_MAX = 1000  # max_records per sqlog poll()
VALUE_POOL = 256  # distinct values cycled through, the same on both sides
BUSY_TIMEOUT_MS = 10_000  # sqlog.open()'s default busy timeout
THREADS = 8  # senders sharing one producer in the group-commit workload

# The raw side's schema: the same tables sqlog creates (see sqlog/storage.py), written out here
# so the yardstick depends on nothing inside sqlog.
RAW_DDL = f"""
CREATE TABLE topics(
    topic_id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
    retention_ms INTEGER, retention_bytes INTEGER, created_ms INTEGER NOT NULL);
CREATE TABLE partitions(
    topic_id INTEGER NOT NULL, partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL DEFAULT 0, log_start_offset INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(topic_id, partition)) WITHOUT ROWID;
CREATE TABLE batches(
    topic_id INTEGER NOT NULL, partition INTEGER NOT NULL, base_offset INTEGER NOT NULL,
    last_offset INTEGER NOT NULL, max_timestamp INTEGER NOT NULL, bytes INTEGER NOT NULL,
    PRIMARY KEY(topic_id, partition, base_offset)) WITHOUT ROWID;
CREATE TABLE {TABLE}(offset INTEGER PRIMARY KEY, ts INTEGER NOT NULL, key BLOB, value BLOB, headers BLOB);
INSERT INTO topics VALUES (1, '{TOPIC}', NULL, NULL, 0);
INSERT INTO partitions(topic_id, partition) VALUES (1, 0);
"""
RAW_INSERT = f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, ?)"
RAW_UPDATE = "UPDATE partitions SET next_offset = ?, bytes = bytes + ? WHERE topic_id = 1 AND partition = 0"
RAW_INDEX = "INSERT INTO batches VALUES (1, 0, ?, ?, ?, ?)"
RAW_SELECT = f"SELECT offset, ts, key, value, headers FROM {TABLE} WHERE offset >= ? ORDER BY offset LIMIT {RAW_BATCH}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def make_values(size: int) -> list[bytes]:
    return [os.urandom(size) for _ in range(VALUE_POOL)]


class BenchError(RuntimeError):
    """A side did not do the work it was timed for (records lost, duplicated, or out of order)."""


# -- the raw apsw side -----------------------------------------------------------------------
def raw_open(path: str, synchronous: str) -> apsw.Connection:
    """A connection with sqlog's pragmas: busy timeout first, incremental auto-vacuum, WAL, synchronous."""
    conn = apsw.Connection(path)
    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")
    return conn


def raw_create(path: str, synchronous: str) -> apsw.Connection:
    conn = raw_open(path, synchronous)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(RAW_DDL)
    conn.execute("COMMIT")
    return conn


def raw_append(conn: apsw.Connection, values: list[bytes], n: int) -> None:
    """The raw send path: per 1000 records, build the row tuples, then one transaction
    (executemany INSERT, partitions UPDATE, batch-index INSERT)."""
    size = len(values[0])
    mask = VALUE_POOL - 1
    for base in range(0, n, RAW_BATCH):
        k = min(RAW_BATCH, n - base)
        ts = now_ms()
        rows = [(off, ts, None, values[off & mask], None) for off in range(base, base + k)]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(RAW_INSERT, rows)
        conn.execute(RAW_UPDATE, (base + k, k * size))
        conn.execute(RAW_INDEX, (base, base + k - 1, ts, k * size))
        conn.execute("COMMIT")


def raw_count(conn: apsw.Connection) -> tuple[int, int]:
    return conn.execute(f"SELECT count(*), coalesce(max(offset) + 1, 0) FROM {TABLE}").fetchone()


def check_count(side: str, got: int, want: int) -> None:
    if got != want:
        raise BenchError(f"{side}: expected {want} records, found {got}")


# -- one side of a workload: fresh state, a timed run, a count check ---------------------------
@dataclass
class Side:
    """A side of a workload. ``run(n)`` does its setup, times the work, checks it, returns seconds."""

    label: str
    run: Callable[[int], float]


@dataclass
class Workload:
    key: str
    title: str
    records: int
    sides: list[Side]  # run in this order in every round
    # (name, numerator side label, denominator side label): per-round rate ratios
    ratios: list[tuple[str, str, str]]
    setup: Callable[[], None] = lambda: None
    teardown: Callable[[], None] = lambda: None
    warmup: int = 0
    rounds: list[dict[str, float]] = field(default_factory=list)


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


def timed(fn: Callable[[], Any]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- send path ---------------------------------------------------------------------------------
def send_workload(files: Files, size: int, n: int, label: str, key: str) -> Workload:
    values = make_values(size)
    mask = VALUE_POOL - 1

    def sqlog_side(n: int) -> float:
        path = files.new(f"send{size}-sqlog")
        try:
            with sqlog.open(path) as log:
                log.create_topic(TOPIC, partitions=1)
                producer = log.producer()

                def work() -> None:
                    send = producer.send
                    for i in range(n):
                        send(TOPIC, values[i & mask])
                    producer.flush()

                elapsed = timed(work)
                producer.close()
                hw = log.describe_topic(TOPIC).partitions[0].high_watermark
                check_count("sqlog send", hw, n)
            return elapsed
        finally:
            files.remove(path)

    def raw_side(n: int) -> float:
        path = files.new(f"send{size}-raw")
        try:
            conn = raw_create(path, "NORMAL")
            try:
                elapsed = timed(lambda: raw_append(conn, values, n))
                check_count("raw send", raw_count(conn)[0], n)
            finally:
                conn.close()
            return elapsed
        finally:
            files.remove(path)

    return Workload(
        key, label, n, [Side("sqlog", sqlog_side), Side("raw", raw_side)],
        [("ratio", "sqlog", "raw")], warmup=min(n, 2000),
    )


# -- poll ----------------------------------------------------------------------------------------
def poll_workload(files: Files, size: int, n: int) -> Workload:
    values = make_values(size)
    mask = VALUE_POOL - 1
    state: dict[str, Any] = {}
    tp = sqlog.TopicPartition(TOPIC, 0)

    def setup() -> None:
        # Filled once, read by every round: the sqlog file through the producer, the raw one by raw inserts.
        state["sqlog_path"] = path = files.new("poll-sqlog")
        with sqlog.open(path) as log:
            log.create_topic(TOPIC, partitions=1)
            with log.producer() as producer:
                for i in range(n):
                    producer.send(TOPIC, values[i & mask])
        state["raw_path"] = raw_path = files.new("poll-raw")
        conn = raw_create(raw_path, "NORMAL")
        raw_append(conn, values, n)
        conn.close()

    def teardown() -> None:
        for k in ("sqlog_path", "raw_path"):
            if k in state:
                files.remove(state.pop(k))

    def sqlog_side(want: int) -> float:
        with sqlog.open(state["sqlog_path"]) as log:
            consumer = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
            consumer.assign([tp])
            got = [0]

            def work() -> None:
                count, last, empty = 0, -1, 0
                poll = consumer.poll
                while count < want:
                    records = poll(max_records=POLL_MAX)
                    if not records:
                        empty += 1
                        if empty > 100:
                            raise BenchError(f"sqlog poll: stuck at {count} of {want} records")
                        continue
                    empty = 0
                    if records[0].offset != last + 1 or records[-1].offset != last + len(records):
                        raise BenchError(f"sqlog poll: offsets not consecutive after {last}")
                    count += len(records)
                    last = records[-1].offset
                got[0] = count

            elapsed = timed(work)
            consumer.close()
        check_count("sqlog poll", got[0], want)
        return elapsed

    def raw_side(want: int) -> float:
        conn = raw_open(state["raw_path"], "NORMAL")
        conn.execute("PRAGMA query_only=1")  # a reader's connection, as the consumer has
        got = [0]

        def work() -> None:
            count, pos = 0, 0
            execute = conn.execute
            while count < want:
                rows = execute(RAW_SELECT, (pos,)).fetchall()
                if not rows:
                    raise BenchError(f"raw poll: stuck at {count} of {want} records")
                count += len(rows)
                pos = rows[-1][0] + 1
            got[0] = count

        try:
            elapsed = timed(work)
        finally:
            conn.close()
        check_count("raw poll", got[0], want)
        return elapsed

    return Workload(
        "poll_100b" if size == 100 else f"poll_{size}b", f"poll() {size} B", n,
        [Side("sqlog", sqlog_side), Side("raw", raw_side)], [("ratio", "sqlog", "raw")],
        setup=setup, teardown=teardown, warmup=min(n, 2000),
    )


# -- durable single sends, 1 thread and 8 threads sharing one producer ----------------------------
def durable_workload(files: Files, m: int) -> Workload:
    values = make_values(100)
    mask = VALUE_POOL - 1

    def sqlog_side(threads: int) -> Callable[[int], float]:
        def run(m: int) -> float:
            per = max(m // threads, 1)
            total = per * threads
            path = files.new(f"durable{threads}-sqlog")
            try:
                with sqlog.open(path, durability="full") as log:
                    log.create_topic(TOPIC, partitions=1)
                    producer = log.producer()
                    errors: list[BaseException] = []
                    start = threading.Barrier(threads + 1)
                    done = threading.Barrier(threads + 1)

                    def sender(t: int) -> None:
                        try:
                            start.wait()
                            send = producer.send
                            for i in range(per):
                                send(TOPIC, values[(t * per + i) & mask]).get()
                        except BaseException as exc:  # reported by the main thread
                            errors.append(exc)
                        finally:
                            done.wait()

                    if threads == 1:
                        def work() -> None:
                            send = producer.send
                            for i in range(per):
                                send(TOPIC, values[i & mask]).get()
                        elapsed = timed(work)
                    else:
                        pool = [threading.Thread(target=sender, args=(t,), daemon=True) for t in range(threads)]
                        for th in pool:
                            th.start()
                        elapsed = timed(lambda: (start.wait(), done.wait()))
                        for th in pool:
                            th.join()
                        if errors:
                            raise BenchError(f"sqlog durable x{threads}: a sender failed: {errors[0]!r}") from errors[0]
                    producer.close()
                    hw = log.describe_topic(TOPIC).partitions[0].high_watermark
                    check_count(f"sqlog durable x{threads}", hw, total)
                return elapsed * m / total  # normalised to m records
            finally:
                files.remove(path)

        return run

    def raw_side(m: int) -> float:
        path = files.new("durable-raw")
        try:
            conn = raw_create(path, "FULL")
            try:
                def work() -> None:
                    execute = conn.execute
                    for off in range(m):
                        value = values[off & mask]
                        execute("BEGIN IMMEDIATE")
                        execute(RAW_INSERT, (off, now_ms(), None, value, None))
                        execute(RAW_UPDATE, (off + 1, len(value)))
                        execute("COMMIT")

                elapsed = timed(work)
                check_count("raw durable", raw_count(conn)[0], m)
            finally:
                conn.close()
            return elapsed
        finally:
            files.remove(path)

    m = max(m - m % THREADS, THREADS)
    return Workload(
        "durable_send", "durable send().get()", m,
        [Side("sqlog_1t", sqlog_side(1)), Side("raw", raw_side), Side(f"sqlog_{THREADS}t", sqlog_side(THREADS))],
        [("ratio_1t", "sqlog_1t", "raw"), (f"ratio_{THREADS}t", f"sqlog_{THREADS}t", "raw"),
         (f"ratio_{THREADS}t_vs_1t", f"sqlog_{THREADS}t", "sqlog_1t")],
        warmup=min(m, 64),
    )


# -- running and reporting -----------------------------------------------------------------------
def run_workload(w: Workload, rounds: int, progress: bool) -> None:
    w.setup()
    try:
        if w.warmup:
            for side in w.sides:
                side.run(w.warmup)
        for r in range(rounds):
            rates: dict[str, float] = {}
            for side in w.sides:  # interleaved: every side once per round, in a fixed order
                rates[side.label] = w.records / side.run(w.records)
            for name, num, den in w.ratios:
                rates[name] = rates[num] / rates[den]
            w.rounds.append(rates)
            if progress:
                shown = "  ".join(f"{k}={v:,.0f}" if not k.startswith("ratio") else f"{k}={v:.2f}"
                                  for k, v in rates.items())
                print(f"  [{w.key} round {r + 1}/{rounds}] {shown}", file=sys.stderr, flush=True)
    finally:
        w.teardown()


def median_of(w: Workload, key: str) -> float:
    return statistics.median(r[key] for r in w.rounds)


def spread(w: Workload, key: str) -> tuple[float, float]:
    vals = [r[key] for r in w.rounds]
    return min(vals), max(vals)


def results(workloads: list[Workload]) -> list[dict[str, Any]]:
    """One row per reported workload: medians of the rounds plus every round's figures."""
    rows = []
    for w in workloads:
        if w.key == "durable_send":
            variants = [("durable_send_1t", "durable send().get(), 1 thread", "sqlog_1t", "ratio_1t"),
                        (f"durable_send_{THREADS}t", f"durable send().get(), {THREADS} threads",
                         f"sqlog_{THREADS}t", f"ratio_{THREADS}t")]
        else:
            variants = [(w.key, w.title, "sqlog", "ratio")]
        for key, title, sq, ratio in variants:
            lo, hi = spread(w, ratio)
            row: dict[str, Any] = {
                "workload": key,
                "title": title,
                "records": w.records,
                "sqlog_rps": median_of(w, sq),
                "raw_rps": median_of(w, "raw"),
                "ratio": median_of(w, ratio),
                "ratio_min": lo,
                "ratio_max": hi,
                "rounds": [{"sqlog_rps": r[sq], "raw_rps": r["raw"], "ratio": r[ratio]} for r in w.rounds],
            }
            if key == f"durable_send_{THREADS}t":
                vs = f"ratio_{THREADS}t_vs_1t"
                lo1, hi1 = spread(w, vs)
                row["vs_1_thread"] = {
                    "sqlog_1t_rps": median_of(w, "sqlog_1t"),
                    "ratio": median_of(w, vs),
                    "ratio_min": lo1,
                    "ratio_max": hi1,
                    "rounds": [r[vs] for r in w.rounds],
                }
            rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]], rounds: int) -> None:
    head = ("workload", "records", "sqlog rec/s", "raw rec/s", "ratio", f"ratio spread ({rounds} rounds)")
    body = [
        (r["title"], f"{r['records']:,}", f"{r['sqlog_rps']:,.0f}", f"{r['raw_rps']:,.0f}",
         f"{r['ratio']:.2f}x", f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}")
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    align = ["<", ">", ">", ">", ">", ">"]

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(f"{c:{a}{wd}}" for c, a, wd in zip(cells, align, widths))

    print(fmt(head))
    print("  ".join("-" * wd for wd in widths))
    for line in body:
        print(fmt(line))
    for r in rows:
        vs = r.get("vs_1_thread")
        if vs:
            print(f"\ngroup commit: {r['sqlog_rps']:,.0f} rec/s from {THREADS} threads sharing one producer vs "
                  f"{vs['sqlog_1t_rps']:,.0f} from 1 thread = {vs['ratio']:.2f}x "
                  f"(spread {vs['ratio_min']:.2f}-{vs['ratio_max']:.2f})")
    print("ratio = sqlog rate / raw apsw rate, median of per-round ratios (rates shown are per-side medians)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, 2 rounds: a few seconds")
    ap.add_argument("--records", type=int, default=None,
                    help="records per send/poll round (default 200000; quick 20000); 1 KiB sends use a quarter")
    ap.add_argument("--durable-records", type=int, default=None,
                    help="records per durable-send round (default records/50; quick 400)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds per workload (default 5; quick 2)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    ap.add_argument("--dir", metavar="DIR", help="where the temporary database files go (default: system temp)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="dump every thread's traceback and exit if the run takes longer (seconds)")
    ap.add_argument("-q", "--no-progress", action="store_true", help="no per-round lines on stderr")
    args = ap.parse_args(argv)

    n = args.records if args.records is not None else (20_000 if args.quick else 200_000)
    m = args.durable_records if args.durable_records is not None else (400 if args.quick else max(n // 50, 200))
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 5)
    if n < 1 or m < 1 or rounds < 1:
        ap.error("--records, --durable-records and --rounds must be >= 1")
    if args.timeout:
        faulthandler.dump_traceback_later(args.timeout, exit=True)

    root = tempfile.mkdtemp(prefix="sqlog-bench-", dir=args.dir)
    started = time.time()
    try:
        files = Files(root)
        workloads = [
            send_workload(files, 100, n, "send() 100 B + flush()", "send_100b"),
            send_workload(files, 1024, max(n // 4, 1), "send() 1 KiB + flush()", "send_1kib"),
            poll_workload(files, 100, n),
            durable_workload(files, m),
        ]
        for w in workloads:
            run_workload(w, rounds, progress=not args.no_progress)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = results(workloads)
    print(f"sqlog {sqlog.__version__}  apsw {apsw.apsw_version()}  SQLite {apsw.sqlite_lib_version()}  "
          f"Python {platform.python_version()}  {os.cpu_count()} CPUs  {rounds} rounds  "
          f"{time.time() - started:.1f} s\n")
    print_table(rows, rounds)
    if args.json:
        doc = {
            "meta": {
                "sqlog": sqlog.__version__, "apsw": apsw.apsw_version(), "sqlite": apsw.sqlite_lib_version(),
                "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                "records": n, "durable_records": m, "rounds": rounds, "quick": args.quick,
                "started": started, "seconds": time.time() - started,
            },
            "workloads": rows,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    if args.timeout:
        faulthandler.cancel_dump_traceback_later()
    return 0


if __name__ == "__main__":
    sys.exit(main())
