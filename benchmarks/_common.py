"""Shared by every benchmark script: the raw apsw yardstick, interleaved rounds, files, statistics.

The machines these run on are shared and noisy, so absolute rates mean little: every figure
is a ratio against a baseline measured in the same run, in interleaved rounds (side A, side B,
side A, side B, ...), and the median of the per-round ratios is the result.

Not a package: the scripts beside this file import it as a top-level module (``import _common``),
which works because running ``python benchmarks/X.py`` puts ``benchmarks/`` on ``sys.path``.
"""

from __future__ import annotations

import gc
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
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


def raw_append(conn: apsw.Connection, values: list[bytes], n: int, start: int = 0) -> None:
    """The raw send path: per 1000 records, build the row tuples, then one transaction
    (executemany INSERT, partitions UPDATE, batch-index INSERT). Offsets start at ``start``."""
    size = len(values[0])
    mask = VALUE_POOL - 1
    end = start + n
    for base in range(start, end, RAW_BATCH):
        k = min(RAW_BATCH, end - base)
        ts = now_ms()
        rows = [(off, ts, None, values[off & mask], None) for off in range(base, base + k)]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(RAW_INSERT, rows)
        conn.execute(RAW_UPDATE, (base + k, k * size))
        conn.execute(RAW_INDEX, (base, base + k - 1, ts, k * size))
        conn.execute("COMMIT")


def raw_read(conn: apsw.Connection, start: int, want: int) -> int:
    """The raw poll loop: ``RAW_SELECT`` batches of 1000 from ``start``, one tuple per row
    (``fetchall``), until ``want`` rows are read; returns the count (raises if the rows run out)."""
    count, pos = 0, start
    execute = conn.execute
    while count < want:
        rows = execute(RAW_SELECT, (pos,)).fetchall()
        if not rows:
            raise BenchError(f"raw poll: stuck at {count} of {want} records")
        count += len(rows)
        pos = rows[-1][0] + 1
    return count


def raw_count(conn: apsw.Connection) -> tuple[int, int]:
    return conn.execute(f"SELECT count(*), coalesce(max(offset) + 1, 0) FROM {TABLE}").fetchone()


def check_count(side: str, got: int, want: int) -> None:
    if got != want:
        raise BenchError(f"{side}: expected {want} records, found {got}")


# -- the sqlog side: the same work through the public API ---------------------------------------
def sqlog_send(producer: sqlog.Producer, values: list[bytes], n: int) -> None:
    """``send()`` n records (values cycled from the pool), then ``flush()``."""
    mask = VALUE_POOL - 1
    send = producer.send
    for i in range(n):
        send(TOPIC, values[i & mask])
    producer.flush()


def sqlog_fill(path: str, values: list[bytes], n: int, **open_options: Any) -> None:
    """Create (or reopen) the log at ``path`` with the 1-partition bench topic and append n records."""
    with sqlog.open(path, **open_options) as log:
        if TOPIC not in log.list_topics():
            log.create_topic(TOPIC, partitions=1)
        with log.producer() as producer:
            sqlog_send(producer, values, n)


def sqlog_read(consumer: sqlog.Consumer, want: int, first: int | None = None,
               on_batch: Callable[[], None] | None = None) -> int:
    """``poll(max_records=1000)`` until ``want`` records have arrived, checking the offsets are
    consecutive (from ``first`` when given); ``on_batch`` runs after every non-empty poll."""
    count, last, empty = 0, -1 if first is None else first - 1, 0
    poll = consumer.poll
    while count < want:
        records = poll(max_records=min(POLL_MAX, want - count))
        if not records:
            empty += 1
            if empty > 100:
                raise BenchError(f"sqlog poll: stuck at {count} of {want} records")
            continue
        empty = 0
        if first is None and last == -1:
            last = records[0].offset - 1
        if records[0].offset != last + 1 or records[-1].offset != last + len(records):
            raise BenchError(f"sqlog poll: offsets not consecutive after {last}")
        count += len(records)
        last = records[-1].offset
        if on_batch is not None:
            on_batch()
    return count


def high_watermark(log: sqlog.Log) -> int:
    return log.describe_topic(TOPIC).partitions[0].high_watermark


# -- one side of a workload: fresh state, a timed run, a count check ---------------------------
@dataclass
class Side:
    """A side of a workload. ``run(n)`` does its setup, times the work, checks it, returns seconds.

    ``records``, when set, is the number of records this side does per round instead of the
    workload's (a slow peer does fewer); its rate is computed from its own count.
    """

    label: str
    run: Callable[[int], float]
    records: int | None = None


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
    # Reverse the side order every other round (A B, B A, ...): on a loaded machine the side
    # that runs second in a fixed order can look faster. bench_core.py keeps the fixed order.
    alternate: bool = False


class Files:
    """Fresh, numbered paths in the benchmark directory; removes each file (with WAL/SHM) when done."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.seq = 0

    def new(self, stem: str, suffix: str = ".db") -> str:
        self.seq += 1
        return os.path.join(self.root, f"{stem}-{self.seq}{suffix}")

    @staticmethod
    def remove(path: str) -> None:
        """Remove a database file with its WAL, shared-memory and journal files (or a directory)."""
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            return
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


def run_workload(w: Workload, rounds: int, progress: bool) -> None:
    """Warm every side up once, then ``rounds`` rounds, each running every side once in order."""
    w.setup()
    try:
        if w.warmup:
            for side in w.sides:
                side.run(min(w.warmup, side.records or w.warmup))
        for r in range(rounds):
            rates: dict[str, float] = {}
            order = w.sides[::-1] if w.alternate and r % 2 else w.sides
            for side in order:  # interleaved: every side once per round
                n = side.records or w.records
                rates[side.label] = n / side.run(n)
            for name, num, den in w.ratios:
                rates[name] = rates[num] / rates[den]
            rates = {side.label: rates[side.label] for side in w.sides} | {name: rates[name] for name, _, _ in w.ratios}
            w.rounds.append(rates)
            if progress:
                shown = "  ".join(f"{k}={v:,.0f}" if not k.startswith("ratio") else f"{k}={v:.2f}"
                                  for k, v in rates.items())
                print(f"  [{w.key} round {r + 1}/{rounds}] {shown}", file=sys.stderr, flush=True)
    finally:
        w.teardown()


def interleave(key: str, sides: Sequence[tuple[str, Callable[[], Any]]], rounds: int, progress: bool,
               show: Callable[[Any], str] = str) -> list[dict[str, Any]]:
    """Run every side once per round, reversing the order every other round; each side returns a
    figure (a number or a dict) and the rounds are returned as ``[{label: figure}, ...]``."""
    out = []
    for r in range(rounds):
        got: dict[str, Any] = {}
        for label, fn in (sides[::-1] if r % 2 else sides):
            gc.collect()
            got[label] = fn()
        out.append({label: got[label] for label, _ in sides})
        if progress:
            shown = "  ".join(f"{label}={show(got[label])}" for label, _ in sides)
            print(f"  [{key} round {r + 1}/{rounds}] {shown}", file=sys.stderr, flush=True)
    return out


def median_of(w: Workload, key: str) -> float:
    return statistics.median(r[key] for r in w.rounds)


def spread(w: Workload, key: str) -> tuple[float, float]:
    vals = [r[key] for r in w.rounds]
    return min(vals), max(vals)


# -- statistics, memory, tables ------------------------------------------------------------------
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, by linear interpolation."""
    if not sorted_values:
        raise ValueError("no values")
    k = (len(sorted_values) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def rss_bytes() -> int | None:
    """This process's resident set size: psutil when installed, else /proc/self/statm (Linux)."""
    try:
        import psutil  # type: ignore[import-not-found]

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        pass
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def aligned(head: Sequence[str], body: Sequence[Sequence[str]], align: str) -> str:
    """An aligned text table: ``align`` has one '<' or '>' per column."""
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(f"{c:{a}{wd}}" for c, a, wd in zip(cells, align, widths)).rstrip()

    lines = [fmt(head), "  ".join("-" * wd for wd in widths)]
    lines += [fmt(row) for row in body]
    return "\n".join(lines)
