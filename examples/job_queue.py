"""A durable job queue on a sqlog topic: share-group workers in separate processes (KIP-932).

Three worker processes drain the "jobs" topic together, each job locked by one worker at a
time. Worker "carol" crashes on purpose in the middle of a job (os._exit, as a kill -9 would):
the jobs it held come back to the others once their 1.5 s lock expires, with delivery count 2.
Job 13 is poison: it fails every time, is released, and after delivery_count_limit (3)
deliveries it goes to the dead-letter topic "jobs.dlq" with headers saying where it came from.
Each finished job is reported on a "results" topic; at the end every other job must be done
exactly once. (Delivery is at least once: a worker dying after a job's work but before its
acknowledgement is committed would see that job done again, so real jobs should be idempotent.
Carol dies before finishing any job of the batch she holds.)

    python examples/job_queue.py [PATH]
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter

import sqlog

JOBS = 60
POISON = 13
LOCK_MS = 1_500
LIMIT = 3


def worker(path: str, name: str, crash_after: int | None) -> None:
    """Take jobs, do them, acknowledge each; ``crash_after`` jobs in, die mid-job."""
    log = sqlog.open(path)
    results = log.producer(value_serializer=sqlog.JSON)
    jobs = log.share_consumer("workers", record_lock_duration_ms=LOCK_MS, delivery_count_limit=LIMIT,
                              dead_letter_topic="jobs.dlq", max_poll_records=2, value_deserializer=sqlog.JSON)
    jobs.subscribe(["jobs"])
    done = 0
    idle_since = time.monotonic()
    while True:
        records = jobs.poll(timeout_ms=300)
        if not records:
            # Nothing to take: finished once the group has nothing left (held jobs of a crashed
            # worker still count until their locks expire and someone does them).
            if time.monotonic() - idle_since > 1 and log.describe_share_group("workers").lag == 0:
                break
            continue
        idle_since = time.monotonic()
        if crash_after is not None and done >= crash_after:
            held = ", ".join(str(r.value["id"]) for r in records)
            print(f"  {name}: CRASH in the middle of job {records[0].value['id']} (holding jobs {held})", flush=True)
            time.sleep(0.01)
            os._exit(1)  # no close(), no release: only the lock expiry brings the jobs back
        for record in records:
            job = record.value
            if job.get("poison"):
                print(f"  {name}: job {job['id']} failed (delivery {record.delivery_count}); releasing it", flush=True)
                jobs.acknowledge(record, "release")
                continue
            time.sleep(job["work_ms"] / 1000)  # the work
            results.send("results", {"id": job["id"], "worker": name, "delivery": record.delivery_count})
            jobs.acknowledge(record, "accept")
            done += 1
            again = f" (delivery {record.delivery_count}: redelivered)" if record.delivery_count > 1 else ""
            print(f"  {name}: job {job['id']} done{again}", flush=True)
        results.flush()  # results durable before the jobs count as done
        jobs.commit()
    jobs.close()
    results.close()
    log.close()
    print(f"  {name}: queue drained, {done} jobs done, exiting", flush=True)


def main(path: str | None = None) -> None:
    path = path or os.path.join(tempfile.mkdtemp(prefix="jobs-"), "jobs.db")
    started = time.monotonic()
    with sqlog.open(path) as log:
        for topic, partitions in (("jobs", 3), ("jobs.dlq", 1), ("results", 1)):
            log.create_topic(topic, partitions=partitions, exist_ok=True)
        with log.producer(value_serializer=sqlog.JSON) as producer:
            for i in range(JOBS):
                job = {"id": i, "poison": True} if i == POISON else {"id": i, "work_ms": 20 + (i * 37) % 60}
                producer.send("jobs", job, key=str(i).encode())
    print(f"enqueued {JOBS} jobs in {path}; starting 3 workers (carol will crash after 5 jobs)")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=worker, args=(path, name, crash)) for name, crash in
             (("alice", None), ("bob", None), ("carol", 5))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    print(f"workers exited with codes {[p.exitcode for p in procs]} (carol's 1 is the crash)")

    with sqlog.open(path) as log:
        reader = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False, value_deserializer=sqlog.JSON)
        reader.subscribe(["results"])
        results = []
        while batch := reader.poll(timeout_ms=200):
            results.extend(r.value for r in batch)
        reader.close()
        done = Counter(r["id"] for r in results)
        redelivered = sorted(r["id"] for r in results if r["delivery"] > 1)
        print(f"\n{len(done)} of {JOBS - 1} good jobs done; redelivered after the crash: {redelivered}")
        dlq = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
        dlq.subscribe(["jobs.dlq"])
        dead = dlq.poll(timeout_ms=200)
        dlq.close()
        for record in dead:
            headers = {k: v.decode() for k, v in record.headers if k.startswith("__dlq") and v is not None}
            print(f"dead letter: {record.value.decode()} with {headers}")
        print(f"share group: {log.describe_share_group('workers')}")
    assert set(done) == set(range(JOBS)) - {POISON}, "every good job is done"
    assert set(done.values()) == {1}, f"and exactly once: {done.most_common(3)}"
    assert redelivered, "the crashed worker's jobs came back"
    assert len(dead) == 1 and dict(dead[0].headers)["__dlq.errors.delivery.count"] == str(LIMIT).encode()
    print(f"ok in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
