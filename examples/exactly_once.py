"""Exactly once with sqlog transactions, across worker processes that crash.

1. Consume-transform-produce: worker processes in group "etl", each with its own
   transactional_id, turn "orders" into "invoices": per batch, begin_transaction(), send the
   outputs, send_offsets_to_transaction(), commit_transaction(). Worker "w1" dies mid-transaction
   (os._exit after its sends, before the commit, as a kill -9 would), then is restarted beside
   "w2": nothing of that transaction is in the file, its records are done again, and every order
   ends up with exactly one invoice.
2. A job-queue worker that accepts and writes in one transaction: share-group workers take a job,
   send its result and accept the job (send_acknowledgements_to_transaction), then commit. One
   worker dies between the send and the commit: its job comes back after the lock expires and
   is done by another, and "results" holds exactly one result per job.

    python examples/exactly_once.py [PATH]
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import sqlog

ORDERS = 400
JOBS = 30
LOCK_MS = 1_000


def until_caught_up(poll: Callable[..., list[Any]], caught_up: Callable[[], bool]) -> Iterator[list[Any]]:
    """Each non-empty poll, until polls have come back empty for a while and the group has no lag."""
    idle_since = time.monotonic()
    while True:
        records = poll(timeout_ms=200)
        if records:
            idle_since = time.monotonic()
            yield records
        elif time.monotonic() - idle_since > 1.5 and caught_up():
            return


def etl_worker(path: str, name: str, crash_after_batches: int | None) -> None:
    """Turn orders into invoices, one transaction per polled batch, until the group is caught up."""
    log = sqlog.open(path)
    consumer = log.consumer(group_id="etl", auto_offset_reset="earliest", enable_auto_commit=False,
                            max_poll_records=25, value_deserializer=sqlog.JSON)
    consumer.subscribe(["orders"])
    producer = log.producer(transactional_id=f"etl-{name}", value_serializer=sqlog.JSON)
    producer.init_transactions()  # fences a previous process with this id (e.g. before a crash)
    batches = 0
    for records in until_caught_up(consumer.poll, lambda: log.describe_group("etl").lag == 0):
        producer.begin_transaction()
        for r in records:
            producer.send("invoices", {"invoice_for": r.value["order_id"], "total": r.value["amount"]}, key=r.key)
        if crash_after_batches is not None and batches >= crash_after_batches:
            print(f"  {name}: CRASH before committing a transaction of {len(records)} invoices", flush=True)
            os._exit(1)
        producer.send_offsets_to_transaction(
            {sqlog.TopicPartition(r.topic, r.partition): r.offset + 1 for r in records}, consumer.group_metadata())
        try:
            producer.commit_transaction()
        except (sqlog.CommitFailedError, sqlog.TransactionAbortedError):
            # A rebalance moved a partition away meanwhile: nothing was written; read on from the
            # group's committed offsets.
            for tp in consumer.assignment():
                committed = consumer.committed(tp)
                consumer.seek(tp, committed) if committed is not None else consumer.seek_to_beginning(tp)
        batches += 1
    consumer.close()
    producer.close()
    log.close()


def job_worker(path: str, name: str, crash: bool) -> None:
    """Take a job, send its result and accept the job in one transaction; ``crash``: die before
    the first commit."""
    log = sqlog.open(path)
    jobs = log.share_consumer("workers", record_lock_duration_ms=LOCK_MS, max_poll_records=1,
                              value_deserializer=sqlog.JSON)
    jobs.subscribe(["jobs"])
    producer = log.producer(transactional_id=f"job-{name}", value_serializer=sqlog.JSON)
    producer.init_transactions()
    for taken in until_caught_up(jobs.poll, lambda: log.describe_share_group("workers").lag == 0):
        for job in taken:
            producer.begin_transaction()
            producer.send("results", {"job": job.value["id"], "by": name, "delivery": job.delivery_count})
            jobs.acknowledge(job)  # accept
            producer.send_acknowledgements_to_transaction(jobs)
            if crash:
                print(f"  {name}: CRASH holding job {job.value['id']} with its result sent, not committed",
                      flush=True)
                os._exit(1)
            producer.commit_transaction()  # the result and the accept, or neither
    jobs.close()
    producer.close()
    log.close()


def _run(target, *args) -> int:  # type: ignore[no-untyped-def]
    proc = multiprocessing.get_context("spawn").Process(target=target, args=args)
    proc.start()
    proc.join(120)
    if proc.is_alive():
        proc.kill()
        raise SystemExit(f"{args[1]} did not finish")
    return proc.exitcode or 0


def main(path: str) -> int:
    started = time.monotonic()
    log = sqlog.open(path)
    for topic, partitions in (("orders", 4), ("invoices", 4), ("jobs", 1), ("results", 1)):
        log.create_topic(topic, partitions=partitions)
    with log.producer(key_serializer=sqlog.STRING, value_serializer=sqlog.JSON) as p:
        for i in range(ORDERS):
            p.send("orders", {"order_id": i, "amount": i % 50}, key=f"customer-{i % 17}")
        for i in range(JOBS):
            p.send("jobs", {"id": i})

    print("consume-transform-produce: w1 crashes mid-transaction; restarted, it and w2 finish the work")
    ctx = multiprocessing.get_context("spawn")
    crashed = _run(etl_worker, path, "w1", 2)
    print(f"  w1 exited with {crashed}; restarting it beside w2")
    w2 = ctx.Process(target=etl_worker, args=(path, "w2", None))
    w2.start()
    _run(etl_worker, path, "w1", None)
    w2.join(120)
    with log.consumer(auto_offset_reset="earliest", value_deserializer=sqlog.JSON) as reader:
        reader.subscribe(["invoices"])
        invoices = Counter()
        while batch := reader.poll(timeout_ms=500):
            invoices.update(r.value["invoice_for"] for r in batch)
    lag = log.describe_group("etl").lag
    print(f"  {sum(invoices.values())} invoices for {len(invoices)} orders; group lag {lag}")
    assert crashed == 1, "w1 was to crash"
    assert invoices == Counter(range(ORDERS)), "every order has exactly one invoice"
    assert lag == 0, "the group's committed offsets are at the log end"

    print("job queue: accept and write in one transaction; worker j1 crashes before its commit")
    others = [ctx.Process(target=job_worker, args=(path, name, False)) for name in ("j2", "j3")]
    crashed = _run(job_worker, path, "j1", True)
    for proc in others:
        proc.start()
    for proc in others:
        proc.join(120)
    with log.consumer(auto_offset_reset="earliest", value_deserializer=sqlog.JSON) as reader:
        reader.subscribe(["results"])
        results = []
        while batch := reader.poll(timeout_ms=500):
            results.extend(r.value for r in batch)
    done = Counter(r["job"] for r in results)
    redelivered = [r for r in results if r["delivery"] > 1]
    print(f"  {len(results)} results for {len(done)} jobs; "
          f"redelivered after the crash: {[(r['job'], r['by']) for r in redelivered]}")
    assert crashed == 1, "j1 was to crash"
    assert done == Counter(range(JOBS)), "every job has exactly one result"
    assert redelivered and all(r["by"] != "j1" for r in results), "j1's job was done again by another worker"
    assert log.describe_share_group("workers").lag == 0
    report = log.check()
    assert report.ok, report.violations
    log.close()
    print(f"ok in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.exit(main(sys.argv[1]))
    with tempfile.TemporaryDirectory() as d:
        sys.exit(main(os.path.join(d, "exactly_once.db")))
