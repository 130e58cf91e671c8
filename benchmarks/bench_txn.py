#!/usr/bin/env python3
"""Exactly-once costs: transactional consume-transform-produce vs the same loop without
transactions, and send(message_id=...) vs plain send().

    python benchmarks/bench_txn.py [--quick] [--records N] [--rounds R] [--json PATH]

ctp: a consumer in a group polls up to 500 records of a 100-byte topic, sends one output record
per input, and stores its offsets. Plain: send()s, flush(), consumer.commit() (at least once:
two write transactions per batch). Transactional: begin_transaction(), send()s,
send_offsets_to_transaction(), commit_transaction() (exactly once: one write transaction).
Target: transactional >= 0.8x plain.

message_id: send(..., message_id=unique id) + flush() on a topic with dedupe_window_ms vs plain
send() + flush() on the same kind of topic. Target >= 0.6x.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sqlog  # noqa: E402
from _common import Files, Side, Workload, check_count, make_values, median_of, run_workload, spread, timed  # noqa: E402

BATCH = 500


def _fill(log: sqlog.Log, values: list[bytes], n: int) -> None:
    log.create_topic("in", partitions=1)
    log.create_topic("out", partitions=1)
    with log.producer() as p:
        for i in range(n):
            p.send("in", values[i % len(values)])


def ctp_workload(files: Files, n: int) -> Workload:
    values = make_values(100)

    def side(transactional: bool) -> float:
        path = files.new("ctp-txn" if transactional else "ctp-plain")
        try:
            with sqlog.open(path) as log:
                _fill(log, values, n)
                consumer = log.consumer(group_id="ctp", auto_offset_reset="earliest", enable_auto_commit=False,
                                        max_poll_records=BATCH)
                consumer.subscribe(["in"])
                producer = log.producer(transactional_id="ctp") if transactional else log.producer()
                if transactional:
                    producer.init_transactions()

                def loop() -> None:
                    done = 0
                    while done < n:
                        records = consumer.poll(timeout_ms=1000)
                        if transactional:
                            producer.begin_transaction()
                        for r in records:
                            producer.send("out", r.value)
                        if transactional:
                            producer.send_offsets_to_transaction(
                                {sqlog.TopicPartition("in", 0): records[-1].offset + 1}, consumer.group_metadata()
                            )
                            producer.commit_transaction()
                        else:
                            producer.flush()
                            consumer.commit()
                        done += len(records)

                elapsed = timed(loop)
                consumer.close()
                producer.close()
                check_count("ctp output", log.describe_topic("out").partitions[0].high_watermark, n)
            return elapsed
        finally:
            files.remove(path)

    return Workload(
        "txn_ctp", "transactional consume-transform-produce", n,
        [Side("txn", lambda n: side(True)), Side("plain", lambda n: side(False))],
        [("ratio", "txn", "plain")], alternate=True,
    )


def message_id_workload(files: Files, n: int) -> Workload:
    values = make_values(100)

    def side(with_ids: bool) -> float:
        path = files.new("mid-ids" if with_ids else "mid-plain")
        try:
            with sqlog.open(path) as log:
                log.create_topic("q", partitions=1, dedupe_window_ms=3_600_000)
                producer = log.producer()
                ids = [f"order-{i}" for i in range(n)] if with_ids else None

                def run() -> None:
                    send = producer.send
                    if ids is not None:
                        for i in range(n):
                            send("q", values[i % len(values)], message_id=ids[i])
                    else:
                        for i in range(n):
                            send("q", values[i % len(values)])
                    producer.flush()

                elapsed = timed(run)
                producer.close()
                check_count("message_id send", log.describe_topic("q").partitions[0].high_watermark, n)
            return elapsed
        finally:
            files.remove(path)

    return Workload(
        "send_message_id", "send(message_id=...) + flush()", n,
        [Side("ids", lambda n: side(True)), Side("plain", lambda n: side(False))],
        [("ratio", "ids", "plain")], alternate=True,
    )


TARGETS = {"txn_ctp": 0.8, "send_message_id": 0.6}


def summary(w: Workload) -> dict[str, object]:
    num, den = w.sides[0].label, w.sides[1].label
    lo, hi = spread(w, "ratio")
    return {"workload": w.key, "title": w.title, "records": w.records, f"{num}_rps": median_of(w, num),
            f"{den}_rps": median_of(w, den), "ratio": median_of(w, "ratio"), "ratio_min": lo, "ratio_max": hi,
            "target": TARGETS[w.key], "rounds": w.rounds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, 2 rounds: a few seconds")
    ap.add_argument("--records", type=int, default=None, help="records per round (default 100000; quick 5000)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; quick 2)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    ap.add_argument("--dir", metavar="DIR", help="where the temporary database files go")
    ap.add_argument("--timeout", type=float, default=None, help="dump tracebacks and exit after this many seconds")
    ap.add_argument("-q", "--no-progress", action="store_true", help="no per-round lines on stderr")
    args = ap.parse_args(argv)
    n = args.records if args.records is not None else (5_000 if args.quick else 100_000)
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 5)
    if n < 1 or rounds < 1:
        ap.error("--records and --rounds must be >= 1")
    if args.timeout:
        faulthandler.dump_traceback_later(args.timeout, exit=True)
    root = tempfile.mkdtemp(prefix="sqlog-bench-", dir=args.dir)
    started = time.time()
    try:
        files = Files(root)
        workloads = [ctp_workload(files, n), message_id_workload(files, n)]
        for w in workloads:
            run_workload(w, rounds, progress=not args.no_progress)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = [summary(w) for w in workloads]
    print(f"sqlog {sqlog.__version__}  {os.cpu_count()} CPUs  {rounds} rounds  {time.time() - started:.1f} s\n")
    for row in rows:
        print(f"{row['title']:<45} ratio {row['ratio']:.2f}x  (spread {row['ratio_min']:.2f}-{row['ratio_max']:.2f},"
              f" target >= {row['target']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": {"quick": args.quick, "rounds": rounds, "records": n}, "workloads": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
