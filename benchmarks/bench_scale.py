#!/usr/bin/env python3
"""Scale: append and consume rates with 0, 1M and 10M records already in the log; open() time on
the large log; a consumer's RSS while it reads the whole large log.

Every level has a sqlog file (filled through ``producer.send``) and a raw apsw file (filled by the
raw send path), both 1-partition, 100-byte values. Each round, at every level, each side appends
``m`` records (sqlog: ``send`` x m + ``flush``; raw: ``executemany`` 1000 a transaction) and then
reads those m records back from where they start (sqlog: a consumer ``assign``ed and ``seek``ed
there, ``poll(max_records=1000)``; raw: the ``SELECT ... LIMIT 1000`` loop on its own connection).
Level 0 is a fresh file each round; levels up to ``COPY_LIMIT`` records start each round from a
copy of the filled file; larger levels (10M) keep their file, which grows by m a round (the
records present at each round's start are in the JSON).

Used by ``run.py`` (``--only scale``). ``python bench_scale.py --rss-child KIND PATH`` is the reader
started in a fresh process for the RSS figure; it prints one JSON object.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import apsw  # noqa: E402

import sqlog  # noqa: E402
from _common import (  # noqa: E402
    BUSY_TIMEOUT_MS,
    TOPIC,
    BenchError,
    Files,
    check_count,
    high_watermark,
    interleave,
    make_values,
    median,
    raw_append,
    raw_create,
    raw_open,
    raw_read,
    rss_bytes,
    sqlog_fill,
    sqlog_read,
    sqlog_send,
    timed,
)

COPY_LIMIT = 2_000_000  # levels up to this many records are copied fresh for every round
RSS_SAMPLE_S = 0.01
TP = sqlog.TopicPartition(TOPIC, 0)
MB = 1024 * 1024


def raw_next_offset(conn: Any) -> int:
    return conn.execute("SELECT next_offset FROM partitions WHERE topic_id = 1 AND partition = 0").fetchone()[0]


def fmt_level(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


# -- one round at one level ------------------------------------------------------------------------
def sqlog_round(path: str, values: list[bytes], m: int, fresh: bool) -> dict[str, float]:
    with sqlog.open(path) as log:
        if fresh:
            log.create_topic(TOPIC, partitions=1)
        before = high_watermark(log)
        producer = log.producer()
        t_append = timed(lambda: sqlog_send(producer, values, m))
        producer.close()
        check_count("sqlog scale append", high_watermark(log) - before, m)
        consumer = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
        consumer.assign([TP])
        consumer.seek(TP, before)
        got = [0]
        t_consume = timed(lambda: got.__setitem__(0, sqlog_read(consumer, m, first=before)))
        consumer.close()
    check_count("sqlog scale consume", got[0], m)
    return {"records_before": before, "append_rps": m / t_append, "consume_rps": m / t_consume}


def raw_round(path: str, values: list[bytes], m: int, fresh: bool) -> dict[str, float]:
    conn = raw_create(path, "NORMAL") if fresh else raw_open(path, "NORMAL")
    try:
        before = raw_next_offset(conn)
        t_append = timed(lambda: raw_append(conn, values, m, before))
        check_count("raw scale append", raw_next_offset(conn) - before, m)
        reader = raw_open(path, "NORMAL")
        reader.execute("PRAGMA query_only=1")
        try:
            got = [0]
            t_consume = timed(lambda: got.__setitem__(0, raw_read(reader, before, m)))
        finally:
            reader.close()
    finally:
        conn.close()
    check_count("raw scale consume", got[0], m)
    return {"records_before": before, "append_rps": m / t_append, "consume_rps": m / t_consume}


def raw_connect(path: str) -> Any:
    """The open() baseline: what any apsw program does before its first read of a WAL database
    (connect, busy timeout, journal_mode, synchronous) plus one read, so the schema is loaded."""
    conn = apsw.Connection(path)
    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    raw_next_offset(conn)
    return conn


def copy_db(src: str, dst: str) -> None:
    """Copy a closed (checkpointed, WAL-less) database file."""
    for suffix in ("-wal", "-shm"):
        if os.path.exists(src + suffix) and os.path.getsize(src + suffix) > 0 and suffix == "-wal":
            raise BenchError(f"{src} has a WAL: close it before copying")
    shutil.copyfile(src, dst)


# -- RSS of a consumer reading the whole log, in a fresh process -----------------------------------------
class RssSampler:
    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_S):
            rss = rss_bytes()
            if rss is not None:
                self.samples.append(rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def rss_child(kind: str, path: str) -> int:
    if rss_bytes() is None:
        print(json.dumps({"error": "no RSS source: install psutil or run on Linux (/proc/self/statm)"}))
        return 0
    if kind == "sqlog":
        log = sqlog.open(path)
        want = high_watermark(log)
        consumer = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
        consumer.assign([TP])
        consumer.position(TP)
        start = rss_bytes()
        with RssSampler() as sampler:
            got = [0]
            seconds = timed(lambda: got.__setitem__(0, sqlog_read(consumer, want, first=0)))
            end = rss_bytes()
        consumer.close()
        log.close()
    else:
        conn = raw_open(path, "NORMAL")
        conn.execute("PRAGMA query_only=1")
        want = raw_next_offset(conn)
        start = rss_bytes()
        with RssSampler() as sampler:
            got = [0]
            seconds = timed(lambda: got.__setitem__(0, raw_read(conn, 0, want)))
            end = rss_bytes()
        conn.close()
    check_count(f"{kind} RSS reader", got[0], want)
    assert start is not None and end is not None
    print(json.dumps({
        "records": got[0], "seconds": seconds, "consume_rps": got[0] / seconds,
        "start_bytes": start, "peak_bytes": max([start, end, *sampler.samples]), "end_bytes": end,
        "samples": len(sampler.samples),
    }))
    return 0


def rss_reading(kind: str, path: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--rss-child", kind, path],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise BenchError(f"{kind} RSS reader failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


# -- the whole workload ---------------------------------------------------------------------------------
def measure(files: Files, levels: list[int], m: int, rounds: int, opens: int, progress: bool) -> dict[str, Any]:
    values = make_values(100)
    pristine: dict[tuple[str, int], str] = {}
    fill_seconds: dict[str, dict[str, float]] = {}
    out: dict[str, Any] = {"levels": levels, "records_per_round": m, "rounds": rounds, "copy_limit": COPY_LIMIT}
    try:
        # Fill each level once, both sides (timed too: a long append run is informative).
        for level in levels:
            if level == 0:
                continue
            path = files.new(f"scale{level}-sqlog")
            secs = timed(lambda: sqlog_fill(path, values, level))
            pristine[("sqlog", level)] = path
            raw_path = files.new(f"scale{level}-raw")

            def fill_raw() -> None:
                conn = raw_create(raw_path, "NORMAL")
                raw_append(conn, values, level)
                conn.close()

            raw_secs = timed(fill_raw)
            pristine[("raw", level)] = raw_path
            fill_seconds[fmt_level(level)] = {"sqlog_rps": level / secs, "raw_rps": level / raw_secs}
            if progress:
                print(f"  [scale fill {fmt_level(level)}] sqlog {level / secs:,.0f} rec/s  "
                      f"raw {level / raw_secs:,.0f} rec/s  ({os.path.getsize(path) / MB:,.0f} MB)",
                      file=sys.stderr, flush=True)
        out["fill"] = fill_seconds

        def side(kind: str, level: int) -> Any:
            round_fn = sqlog_round if kind == "sqlog" else raw_round

            def run() -> dict[str, float]:
                if level == 0:
                    path = files.new(f"scale0-{kind}")
                    try:
                        return round_fn(path, values, m, fresh=True)
                    finally:
                        files.remove(path)
                src = pristine[(kind, level)]
                if level <= COPY_LIMIT:
                    path = files.new(f"scale{level}-{kind}-copy")
                    copy_db(src, path)
                    try:
                        return round_fn(path, values, m, fresh=False)
                    finally:
                        files.remove(path)
                return round_fn(src, values, m, fresh=False)

            return run

        sides = [(f"{kind}@{fmt_level(level)}", side(kind, level)) for level in levels for kind in ("sqlog", "raw")]
        per_round = interleave("scale", sides, rounds, progress,
                               show=lambda r: f"{r['append_rps']:,.0f}/{r['consume_rps']:,.0f}")
        by_level: dict[str, Any] = {}
        for level in levels:
            name = fmt_level(level)
            entry: dict[str, Any] = {"records": level}
            for kind in ("sqlog", "raw"):
                label = f"{kind}@{name}"
                rs = [r[label] for r in per_round]
                base = [r[f"{kind}@{fmt_level(levels[0])}"] for r in per_round]
                entry[kind] = {
                    "append_rps": median(x["append_rps"] for x in rs),
                    "consume_rps": median(x["consume_rps"] for x in rs),
                    # per-round ratios against the empty log in the same round
                    "append_vs_empty": median(x["append_rps"] / b["append_rps"] for x, b in zip(rs, base)),
                    "consume_vs_empty": median(x["consume_rps"] / b["consume_rps"] for x, b in zip(rs, base)),
                    "records_before": [x["records_before"] for x in rs],
                    "rounds": rs,
                }
            sq = [r[f"sqlog@{name}"] for r in per_round]
            rw = [r[f"raw@{name}"] for r in per_round]
            entry["append_vs_raw"] = median(a["append_rps"] / b["append_rps"] for a, b in zip(sq, rw))
            entry["consume_vs_raw"] = median(a["consume_rps"] / b["consume_rps"] for a, b in zip(sq, rw))
            by_level[name] = entry
        out["by_level"] = by_level

        # open() of the largest log (warm page cache: the file was just written), beside raw apsw's
        # connect-and-pragmas on the raw file of the same size and sqlog.open() of an empty log.
        largest = max(levels)
        big_sqlog, big_raw = pristine[("sqlog", largest)], pristine[("raw", largest)]
        empty = files.new("scale-open-empty")
        sqlog.open(empty).close()

        def time_open(fn: Any) -> Any:
            def run() -> float:
                t0 = time.perf_counter()
                handle = fn()
                dt = time.perf_counter() - t0
                handle.close()
                return dt * 1000

            return run

        open_rounds = interleave(
            "scale open", [("sqlog", time_open(lambda: sqlog.open(big_sqlog))),
                           ("raw", time_open(lambda: raw_connect(big_raw))),
                           ("sqlog_empty", time_open(lambda: sqlog.open(empty)))],
            opens, False,
        )
        files.remove(empty)
        out["open_ms"] = {
            "records": largest,
            "file_bytes": os.path.getsize(big_sqlog),
            **{k: median(r[k] for r in open_rounds) for k in ("sqlog", "raw", "sqlog_empty")},
            "rounds": open_rounds,
        }
        if progress:
            o = out["open_ms"]
            print(f"  [scale open {fmt_level(largest)}] sqlog {o['sqlog']:.2f} ms  raw {o['raw']:.2f} ms  "
                  f"sqlog empty {o['sqlog_empty']:.2f} ms", file=sys.stderr, flush=True)

        # RSS of a consumer reading the whole largest log, each side in a fresh process.
        rss: dict[str, Any] = {"records_in_log": None}
        for kind in ("sqlog", "raw"):
            got = rss_reading(kind, pristine[(kind, largest)])
            if "error" in got:
                rss = {"error": got["error"]}
                break
            rss[kind] = got
            rss["records_in_log"] = got["records"]
            if progress:
                print(f"  [scale rss {kind}] {got['records']:,} records at {got['consume_rps']:,.0f} rec/s, "
                      f"RSS start {got['start_bytes'] / MB:.1f} peak {got['peak_bytes'] / MB:.1f} "
                      f"end {got['end_bytes'] / MB:.1f} MB", file=sys.stderr, flush=True)
        out["rss"] = rss
    finally:
        for path in pristine.values():
            files.remove(path)
    return out


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--rss-child":
        sys.exit(rss_child(sys.argv[2], sys.argv[3]))
    print("run the scale workloads with: python benchmarks/run.py --only scale", file=sys.stderr)
    sys.exit(2)
