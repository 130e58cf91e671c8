#!/usr/bin/env python3
"""Compaction and the table view, each beside its baseline in the same run:

- compact N records over K keys (``log.sweep``) / one raw SQL DELETE doing the same work on tables
  of sqlog's schema (the partition table and the topic's latest-record table; rate = records in
  the partition per second of work); and, for reference, / one raw DELETE on a partition table
  with a ``(key, offset)`` index (sqlog's schema before the latest-record table);
- disk after compaction (database file, WAL checkpointed) / the live records' bytes;
- ``send()`` of keyed 100 B records to a compacted topic (latest-record row on every append) / to a
  delete-policy topic;
- ``table[key]`` lookups per second / the same probe of the latest-record table as one raw SELECT.

    python benchmarks/bench_compaction.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import apsw

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import sqlog  # noqa: E402

FUTURE = 2**62  # a sweep's now_ms after every record
VALUE = b"v" * 100

FULL = {"records": 1_000_000, "cases": [10_000, 1_000_000], "send": 200_000, "lookups": 100_000, "rounds": 3}
QUICK = {"records": 20_000, "cases": [200, 20_000], "send": 5_000, "lookups": 5_000, "rounds": 2}


def _keys(n: int, keys: int) -> list[bytes]:
    return [b"key-%08d" % (i % keys) for i in range(n)]


def _fill(log: sqlog.Log, topic: str, keys: list[bytes]) -> None:
    with log.producer(batch_size=1 << 20) as producer:
        for k in keys:
            producer.send(topic, VALUE, key=k, partition=0)


def compact_sqlog(root: str, n: int, nkeys: int) -> dict[str, float]:
    """Seconds for log.sweep() to compact n records over nkeys keys; disk before and after."""
    path = os.path.join(root, f"compact-{n}-{nkeys}.db")
    try:
        with sqlog.open(path, retention_check_interval_ms=None, wal_checkpoint_interval_ms=None) as log:
            log.create_topic("c", cleanup_policy="compact")
            _fill(log, "c", _keys(n, nkeys))
            log.checkpoint()
            began = time.perf_counter()
            result = log.sweep(now_ms=FUTURE)
            seconds = time.perf_counter() - began
            assert result.compacted_records == n - nkeys, result
            assert len(log.table("c")) == nkeys
            live = log.describe_topic("c").partitions[0].bytes
        db_bytes = os.path.getsize(path)  # closed: the WAL is checkpointed into it
        return {"seconds": seconds, "live_bytes": live, "db_bytes": db_bytes}
    finally:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)


def compact_raw(root: str, n: int, nkeys: int, schema: str = "latest") -> float:
    """Seconds for one raw DELETE removing every record a later one of the same key supersedes.

    ``schema="latest"``: on sqlog's schema, the partition table and a latest-record table
    (key -> latest offset), filled as sqlog's triggers fill it; the DELETE keeps each key's latest.
    ``schema="index"``: on a partition table with a ``(key, offset)`` index, the DELETE asks it
    whether a later record of the key exists (sqlog's schema before the latest-record table)."""
    path = os.path.join(root, f"raw-{n}-{nkeys}.db")
    conn = apsw.Connection(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("CREATE TABLE t(offset INTEGER PRIMARY KEY, ts INTEGER NOT NULL, key BLOB, value BLOB,"
                     " headers BLOB, crc INTEGER)")
        if schema == "index":
            conn.execute("CREATE INDEX k ON t(key, offset) WHERE key IS NOT NULL")
            delete = ("DELETE FROM t AS r WHERE key IS NOT NULL AND EXISTS"
                      " (SELECT 1 FROM t q WHERE q.key = r.key AND q.offset > r.offset)")
        else:
            conn.execute("CREATE TABLE l(key BLOB NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,"
                         " live INTEGER NOT NULL, PRIMARY KEY(key, partition)) WITHOUT ROWID")
            delete = ("DELETE FROM t AS r WHERE key IS NOT NULL AND"
                      " offset != (SELECT offset FROM l WHERE key = r.key AND partition = 0)")
        keys = _keys(n, nkeys)
        for i in range(0, n, 10_000):
            with conn:
                rows = [(o, keys[o], VALUE) for o in range(i, min(n, i + 10_000))]
                conn.executemany("INSERT INTO t VALUES (?, 0, ?, ?, NULL, 0)", rows)
                if schema != "index":
                    conn.executemany("INSERT INTO l VALUES (?, 0, ?, 1) ON CONFLICT(key, partition)"
                                     " DO UPDATE SET offset = excluded.offset", [(k, o) for o, k, _ in rows])
        began = time.perf_counter()
        with conn:
            conn.execute(delete)
        seconds = time.perf_counter() - began
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == nkeys
        return seconds
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)


def send_rate(root: str, n: int, policy: str) -> float:
    """Keyed 100 B send() + flush() per second to a topic of ``policy``."""
    path = os.path.join(root, f"send-{policy.replace(',', '-')}.db")
    try:
        with sqlog.open(path, retention_check_interval_ms=None) as log:
            log.create_topic("t", cleanup_policy=policy)
            keys = _keys(n, max(1, n // 10))
            random.Random(1).shuffle(keys)
            producer = log.producer()
            send = producer.send
            began = time.perf_counter()
            for k in keys:
                send("t", VALUE, key=k)
            producer.flush()
            seconds = time.perf_counter() - began
            producer.close()
        return n / seconds
    finally:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)


def lookup_rate(root: str, n: int, nkeys: int, lookups: int) -> tuple[float, float]:
    path = os.path.join(root, "table.db")
    try:
        with sqlog.open(path, retention_check_interval_ms=None) as log:
            log.create_topic("c", cleanup_policy="compact")
            _fill(log, "c", _keys(n, nkeys))
            table = log.table("c")
            probe = random.Random(2).choices(_keys(nkeys, nkeys), k=lookups)
            began = time.perf_counter()
            for k in probe:
                table[k]
            rate = lookups / (time.perf_counter() - began)
            # The baseline: the same probes (latest-record table, then the record) as one raw statement.
            raw = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
            try:
                cur = raw.cursor()
                began = time.perf_counter()
                for k in probe:
                    cur.execute("SELECT r.value FROM l1 JOIN p1_0 r ON r.offset = l1.offset WHERE l1.key = ?",
                                (k,)).fetchone()
                raw_rate = lookups / (time.perf_counter() - began)
            finally:
                raw.close()
            return rate, raw_rate
    finally:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)


def measure(root: str, cfg: dict[str, Any], progress: bool = False) -> dict[str, Any]:
    """Every measurement, rounds interleaved (sqlog then baseline); medians of per-round ratios."""
    n = cfg["records"]
    out: dict[str, Any] = {"records": n, "compact": {}}
    for nkeys in cfg["cases"]:
        ratios, sq, raw, disk, idx, idx_ratios = [], [], [], [], [], []
        for r in range(cfg["rounds"]):
            s = compact_sqlog(root, n, nkeys)
            b = compact_raw(root, n, nkeys)
            i = compact_raw(root, n, nkeys, "index")
            sq.append(n / s["seconds"])
            raw.append(n / b)
            idx.append(n / i)
            ratios.append(b / s["seconds"])
            idx_ratios.append(i / s["seconds"])
            disk.append(s["db_bytes"] / max(1, s["live_bytes"]))
            if progress:
                print(f"  [compact {n:,} over {nkeys:,} keys round {r + 1}] sqlog={sq[-1]:,.0f}/s raw={raw[-1]:,.0f}/s "
                      f"ratio={ratios[-1]:.2f} raw-on-index={idx[-1]:,.0f}/s ratio={idx_ratios[-1]:.2f} "
                      f"disk/live={disk[-1]:.2f} ({s['db_bytes']:,} B for {s['live_bytes']:,})", file=sys.stderr)
        out["compact"][nkeys] = {"sqlog": statistics.median(sq), "raw": statistics.median(raw),
                                 "ratio": statistics.median(ratios), "raw_index": statistics.median(idx),
                                 "ratio_index": statistics.median(idx_ratios),
                                 "disk_over_live": statistics.median(disk),
                                 "db_bytes": s["db_bytes"], "live_bytes": s["live_bytes"]}
    ratios, comp, dele = [], [], []
    for r in range(cfg["rounds"]):
        c = send_rate(root, cfg["send"], "compact")
        d = send_rate(root, cfg["send"], "delete")
        comp.append(c)
        dele.append(d)
        ratios.append(c / d)
        if progress:
            print(f"  [send round {r + 1}] compact={c:,.0f}/s delete={d:,.0f}/s ratio={c / d:.2f}", file=sys.stderr)
    out["send"] = {"compact": statistics.median(comp), "delete": statistics.median(dele),
                   "ratio": statistics.median(ratios), "records": cfg["send"]}
    nkeys = cfg["cases"][0]
    rate, raw_rate = lookup_rate(root, min(n, 100 * nkeys), nkeys, cfg["lookups"])
    out["lookups"] = {"per_s": rate, "raw_per_s": raw_rate, "keys": nkeys}
    return out


def report(data: dict[str, Any]) -> str:
    n = data["records"]
    lines = []
    for nkeys, c in data["compact"].items():
        lines.append(f"compact {n:,} records over {nkeys:,} keys: sqlog {c['sqlog']:,.0f} rec/s, raw DELETE "
                     f"{c['raw']:,.0f} rec/s, ratio {c['ratio']:.2f} (target >= 0.5); raw DELETE on a (key, offset) "
                     f"index {c['raw_index']:,.0f} rec/s, ratio {c['ratio_index']:.2f}; disk after "
                     f"{c['db_bytes']:,} B for {c['live_bytes']:,} B live = {c['disk_over_live']:.2f}x")
    s = data["send"]
    lines.append(f"send() keyed 100 B: compacted topic {s['compact']:,.0f}/s, delete topic {s['delete']:,.0f}/s, "
                 f"ratio {s['ratio']:.2f} (target >= 0.6)")
    lk = data["lookups"]
    lines.append(f"table[key] over {lk['keys']:,} keys: {lk['per_s']:,.0f} lookups/s "
                 f"(raw indexed SELECT: {lk['raw_per_s']:,.0f}/s)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a few seconds")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="sqlog-bench-compaction-")
    try:
        print(report(measure(root, QUICK if args.quick else FULL, progress=True)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
