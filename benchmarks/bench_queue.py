#!/usr/bin/env python3
"""Queue throughput: jobs/s (take one job, acknowledge it) with 1, 2 and 4 worker processes.

sqlog's share consumer (queue mode, KIP-932) runs beside two SQLite job queues doing the same
job loop in the same run: persist-queue's ``SQLiteAckQueue`` (``get()`` + ``ack()``) and
litequeue's ``LiteQueue`` (``pop()`` + ``done()``). Every side drains its own file, prefilled
with the same jobs (100-byte payloads) before timing; W worker processes start, open their
queue, wait at a barrier, and the clock runs from the barrier until the last worker has found
the queue empty. Rounds interleave the sides (sqlog, peers, sqlog, ...); the table shows the
median of the rounds. The script checks every job was taken and reports jobs taken more than
once (persist-queue's ack queue is not made for several processes); it asserts nothing about
speed. A peer that is not installed is skipped with a note (``pip install -e '.[bench]'``).

    python benchmarks/bench_queue.py [--quick] [--jobs N] [--rounds R] [--json PATH]

``run.py`` runs it too (``--only queue``): `measure` is the part both use.

Rows:
- ``sqlog``: ``poll(max_records=1)``, ``acknowledge(record)``; the acknowledgement travels in
  the next poll's transaction (Kafka's way), so one transaction per job.
- ``sqlog commit``: the same plus ``commit()`` after each job: two transactions per job, as the peers.
- ``sqlog x100``: ``poll(max_records=100)``, acknowledge each, one transaction per 100 jobs.
- ``persist-queue``: ``SQLiteAckQueue.get(block=False)`` then ``ack(item)``.
- ``litequeue``: ``LiteQueue.pop()`` then ``done(message_id)``.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import sqlog

PAYLOAD = 100  # bytes (characters for litequeue, which stores text)
TOPIC = "jobs"


def _payload(i: int) -> str:
    return f"{i:08d}".ljust(PAYLOAD, "x")


# -- the sides: fill(path, n) outside the clock; work(path) in each worker process ----------------
def sqlog_fill(path: str, n: int) -> None:
    with sqlog.open(path) as log:
        log.create_topic(TOPIC)
        with log.producer() as producer:
            for i in range(n):
                producer.send(TOPIC, _payload(i).encode())


def _sqlog_worker(batch: int, commit_each: bool) -> Callable[[str, Any], list[int]]:
    def work(path: str, barrier: Any) -> list[int]:
        log = sqlog.open(path, retention_check_interval_ms=None)
        jobs = log.share_consumer("bench", max_poll_records=batch)
        jobs.subscribe([TOPIC])
        taken: list[int] = []
        barrier.wait()
        while True:
            records = jobs.poll(timeout_ms=0)
            if not records:
                # Empty: the queue is drained, or the in-flight window is full behind a record
                # another worker holds; only the group's state tells which.
                jobs.commit()
                if log.describe_share_group("bench").lag == 0:
                    break
                records = jobs.poll(timeout_ms=5)
            for record in records:
                taken.append(int(record.value[:8]))
                jobs.acknowledge(record)
            if commit_each:
                jobs.commit()
        jobs.close()  # applies the last acknowledgements
        log.close()
        return taken

    return work


def persistqueue_fill(path: str, n: int) -> None:
    import persistqueue

    q = persistqueue.SQLiteAckQueue(path, auto_commit=True, multithreading=True)
    for i in range(n):
        q.put(_payload(i).encode())
    q.close()


def persistqueue_work(path: str, barrier: Any) -> list[int]:
    import persistqueue

    # auto_resume=False: resuming would hand another worker's unacknowledged jobs out again.
    q = persistqueue.SQLiteAckQueue(path, auto_commit=True, multithreading=True, auto_resume=False)
    taken: list[int] = []
    barrier.wait()
    while True:
        try:
            item = q.get(block=False)
        except persistqueue.Empty:
            break
        taken.append(int(item[:8]))
        q.ack(item)
    q.close()
    return taken


def litequeue_fill(path: str, n: int) -> None:
    import litequeue

    q = litequeue.LiteQueue(path, timeout=30)
    with q.transaction():  # one transaction for the prefill
        for i in range(n):
            q.put(_payload(i))
    q.close()


def litequeue_work(path: str, barrier: Any) -> list[int]:
    import litequeue

    q = litequeue.LiteQueue(path, timeout=30)
    taken: list[int] = []
    barrier.wait()
    while (message := q.pop()) is not None:
        taken.append(int(message.data[:8]))
        q.done(message.message_id)
    q.close()
    return taken


SIDES: dict[str, tuple[Callable[[str, int], None], Callable[[str, Any], list[int]], str | None]] = {
    "sqlog": (sqlog_fill, _sqlog_worker(1, False), None),
    "sqlog commit": (sqlog_fill, _sqlog_worker(1, True), None),
    "sqlog x100": (sqlog_fill, _sqlog_worker(100, False), None),
    "persist-queue": (persistqueue_fill, persistqueue_work, "persistqueue"),
    "litequeue": (litequeue_fill, litequeue_work, "litequeue"),
}


def _entry(side: str, path: str, barrier: Any, results: Any) -> None:
    try:
        taken = SIDES[side][1](path, barrier)
        results.put(("ok", taken))
    except BaseException as exc:  # reported by the parent
        barrier.abort()
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def _remove(path: str) -> None:
    if os.path.isdir(path):  # persist-queue keeps its database in a directory of that name
        shutil.rmtree(path, ignore_errors=True)
        return
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass


def run_side(side: str, workers: int, n: int, root: str, seq: int) -> dict[str, Any]:
    """Fill a fresh file, drain it with ``workers`` processes; jobs/s and a check of what was taken."""
    ctx = multiprocessing.get_context("spawn")
    path = os.path.join(root, f"{side.replace(' ', '-')}-{workers}-{seq}.db")
    try:
        SIDES[side][0](path, n)
        barrier = ctx.Barrier(workers + 1)
        results = ctx.Queue()
        procs = [ctx.Process(target=_entry, args=(side, path, barrier, results)) for _ in range(workers)]
        for p in procs:
            p.start()
        barrier.wait(timeout=120)
        t0 = time.perf_counter()
        outcomes = [results.get(timeout=600) for _ in procs]
        elapsed = time.perf_counter() - t0
        for p in procs:
            p.join(60)
        errors = [o[1] for o in outcomes if o[0] == "error"]
        if errors:
            return {"error": errors[0]}
        counts = Counter(job for _, taken in outcomes for job in taken)
        missing = n - len(counts)
        duplicates = sum(c - 1 for c in counts.values())
        return {"jobs_per_s": n / elapsed, "seconds": elapsed, "missing": missing, "duplicates": duplicates,
                "per_worker": [len(t) for _, t in outcomes]}
    finally:
        _remove(path)


def available(side: str) -> str | None:
    """None if the side can run, else why not."""
    module = SIDES[side][2]
    if module is None:
        return None
    try:
        __import__(module)
    except ImportError:
        return f"{module} is not installed (pip install -e '.[bench]')"
    return None


def measure(root: str, n: int, rounds: int, worker_counts: list[int], sides: list[str],
            progress: bool = True) -> dict[str, Any]:
    """Every runnable side at every worker count, in interleaved rounds, in ``root`` (emptied as it
    goes): ``{"rows": [...], "skipped": {side: why}}``, each row the median jobs/s of its rounds."""
    skipped = {s: why for s in sides if (why := available(s))}
    runnable = [s for s in sides if s not in skipped]
    rows: list[dict[str, Any]] = []
    seq = 0
    for workers in worker_counts:
        per_side: dict[str, list[dict[str, Any]]] = {s: [] for s in runnable}
        for r in range(rounds):
            for side in runnable if r % 2 == 0 else runnable[::-1]:
                seq += 1
                result = run_side(side, workers, n, root, seq)
                per_side[side].append(result)
                if progress:
                    shown = result.get("error") or f"{result['jobs_per_s']:9.0f} jobs/s"
                    print(f"  round {r + 1}: {side:14s} {workers} worker(s) {shown}", file=sys.stderr, flush=True)
        for side, results in per_side.items():
            good = [x for x in results if "error" not in x]
            row: dict[str, Any] = {"side": side, "workers": workers, "jobs": n, "rounds": results}
            if good:
                row["jobs_per_s"] = statistics.median(x["jobs_per_s"] for x in good)
                row["missing"] = max(x["missing"] for x in good)
                row["duplicates"] = max(x["duplicates"] for x in good)
            else:
                row["error"] = results[0]["error"]
            rows.append(row)
    return {"rows": rows, "skipped": skipped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round, 600 jobs: well under 30 s")
    parser.add_argument("--jobs", type=int, help="jobs per run (default 5000, quick 600)")
    parser.add_argument("--rounds", type=int, help="rounds per row (default 3, quick 1)")
    parser.add_argument("--workers", default="1,2,4", help="worker process counts (default 1,2,4)")
    parser.add_argument("--sides", default=",".join(SIDES), help="which rows to run")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--dir", help="directory for the temporary files (a real disk)")
    parser.add_argument("--timeout", type=float, default=900, help="dump stacks and exit after this many seconds")
    args = parser.parse_args()
    faulthandler.dump_traceback_later(args.timeout, exit=True)
    n = args.jobs or (600 if args.quick else 5000)
    rounds = args.rounds or (1 if args.quick else 3)
    worker_counts = [int(w) for w in args.workers.split(",")]
    sides = [s for s in args.sides.split(",") if s]
    root = tempfile.mkdtemp(prefix="bench-queue-", dir=args.dir)
    try:
        result = measure(root, n, rounds, worker_counts, sides)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows, skipped = result["rows"], result["skipped"]
    for side, why in skipped.items():
        print(f"skipping {side}: {why}", file=sys.stderr)
    runnable = [s for s in sides if s not in skipped]

    print(f"\nQueue: jobs/s (take + acknowledge), {n} jobs of {PAYLOAD} B, median of {rounds} round(s)")
    header = f"{'side':16s}" + "".join(f"{f'{w} worker' + ('s' if w > 1 else ''):>13s}" for w in worker_counts)
    print(header + "   notes")
    for side in runnable:
        cells, notes = [], []
        for w in worker_counts:
            row = next(x for x in rows if x["side"] == side and x["workers"] == w)
            if "error" in row:
                cells.append(f"{'error':>13s}")
                notes.append(f"{w}w: {row['error'][:60]}")
                continue
            cells.append(f"{row['jobs_per_s']:13.0f}")
            if row["duplicates"] or row["missing"]:
                notes.append(f"{w}w: {row['duplicates']} taken twice, {row['missing']} never")
        print(f"{side:16s}" + "".join(cells) + ("   " + "; ".join(notes) if notes else ""))
    for side, why in skipped.items():
        print(f"{side:16s} skipped: {why}")
    if args.json:
        meta = {"quick": args.quick, "jobs": n, "rounds": rounds, "workers": worker_counts,
                "python": platform.python_version(), "sqlog": sqlog.__version__, "skipped": skipped}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
