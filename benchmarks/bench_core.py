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
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import apsw

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for _common when imported from elsewhere

import sqlog
from _common import (  # noqa: E402
    RAW_INSERT,
    RAW_UPDATE,
    TOPIC,
    VALUE_POOL,
    BenchError,
    Files,
    Side,
    Workload,
    aligned,
    check_count,
    high_watermark,
    make_values,
    median_of,
    now_ms,
    raw_append,
    raw_count,
    raw_create,
    raw_open,
    raw_read,
    run_workload,
    spread,
    sqlog_fill,
    sqlog_read,
    sqlog_send,
    timed,
)

THREADS = 8  # senders sharing one producer in the group-commit workload


# -- send path ---------------------------------------------------------------------------------
def send_workload(files: Files, size: int, n: int, label: str, key: str) -> Workload:
    values = make_values(size)

    def sqlog_side(n: int) -> float:
        path = files.new(f"send{size}-sqlog")
        try:
            with sqlog.open(path) as log:
                log.create_topic(TOPIC, partitions=1)
                producer = log.producer()
                elapsed = timed(lambda: sqlog_send(producer, values, n))
                producer.close()
                check_count("sqlog send", high_watermark(log), n)
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
    state: dict[str, Any] = {}
    tp = sqlog.TopicPartition(TOPIC, 0)

    def setup() -> None:
        # Filled once, read by every round: the sqlog file through the producer, the raw one by raw inserts.
        state["sqlog_path"] = path = files.new("poll-sqlog")
        sqlog_fill(path, values, n)
        state["raw_path"] = raw_path = files.new("poll-raw")
        conn = raw_create(raw_path, "NORMAL")
        raw_append(conn, values, n)
        conn.close()

    def teardown() -> None:
        for k in ("sqlog_path", "raw_path"):
            if k in state:
                files.remove(state.pop(k))

    def sqlog_side(check_crcs: bool) -> Callable[[int], float]:
        def run(want: int) -> float:
            with sqlog.open(state["sqlog_path"]) as log:
                consumer = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False, check_crcs=check_crcs)
                consumer.assign([tp])
                got = [0]

                def work() -> None:
                    got[0] = sqlog_read(consumer, want, first=0)

                elapsed = timed(work)
                consumer.close()
            check_count("sqlog poll", got[0], want)
            return elapsed

        return run

    def raw_side(want: int) -> float:
        conn = raw_open(state["raw_path"], "NORMAL")
        conn.execute("PRAGMA query_only=1")  # a reader's connection, as the consumer has
        got = [0]

        def work() -> None:
            got[0] = raw_read(conn, 0, want)

        try:
            elapsed = timed(work)
        finally:
            conn.close()
        check_count("raw poll", got[0], want)
        return elapsed

    return Workload(
        "poll_100b" if size == 100 else f"poll_{size}b", f"poll() {size} B", n,
        [Side("sqlog", sqlog_side(True)), Side("sqlog_nocrc", sqlog_side(False)), Side("raw", raw_side)],
        [("ratio", "sqlog", "raw"), ("ratio_nocrc", "sqlog_nocrc", "raw")],
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
                    check_count(f"sqlog durable x{threads}", high_watermark(log), total)
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


# -- reporting -----------------------------------------------------------------------------------
def results(workloads: list[Workload]) -> list[dict[str, Any]]:
    """One row per reported workload: medians of the rounds plus every round's figures."""
    rows = []
    for w in workloads:
        if w.key == "durable_send":
            variants = [("durable_send_1t", "durable send().get(), 1 thread", "sqlog_1t", "ratio_1t"),
                        (f"durable_send_{THREADS}t", f"durable send().get(), {THREADS} threads",
                         f"sqlog_{THREADS}t", f"ratio_{THREADS}t")]
        elif w.key.startswith("poll"):  # checksums verified (the default) and not
            variants = [(w.key, w.title, "sqlog", "ratio"),
                        (f"{w.key}_nocrc", f"{w.title}, check_crcs=False", "sqlog_nocrc", "ratio_nocrc")]
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
    print(aligned(head, body, "<>>>>>"))
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
