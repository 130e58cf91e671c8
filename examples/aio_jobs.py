"""An asyncio service that enqueues jobs and a worker that does them, on one sqlog file.

    python examples/aio_jobs.py [PATH]

The "service" (say, an HTTP handler) enqueues a job with ``await producer.send_and_wait()``: once
it returns, the job is durable. The worker is a share-group member (queue mode): it awaits jobs
without polling, does each one, and acknowledges it; a job it fails is released and tried again.
Run it twice: jobs finished in the first run are not done again.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile

import sqlog
import sqlog.aio


async def service(log: sqlog.aio.AIOLog, jobs: int) -> None:
    async with log.producer(value_serializer=sqlog.JSON) as producer:
        for n in range(jobs):
            md = await producer.send_and_wait("jobs", {"job": n, "task": "resize", "image": f"img-{n}.png"})
            print(f"service: enqueued job {n} at {md.topic}-{md.partition}@{md.offset}")
            await asyncio.sleep(0.01)  # requests arrive over time


async def worker(log: sqlog.aio.AIOLog, done: list[int], jobs: int) -> None:
    async with log.share_consumer("workers", value_deserializer=sqlog.JSON, auto_offset_reset="earliest",
                                  record_lock_duration_ms=30_000) as queue:
        queue.subscribe(["jobs"])
        failed_once = False
        while len(done) < jobs:
            batch = await queue.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    if record.value["job"] == 3 and not failed_once:  # a flaky job: released, retried
                        failed_once = True
                        queue.acknowledge(record, "release")
                        print(f"worker: job 3 failed (delivery {record.delivery_count}); released")
                        continue
                    await asyncio.sleep(0.002)  # the work
                    queue.acknowledge(record, "accept")
                    done.append(record.value["job"])
                    print(f"worker: done job {record.value['job']} (delivery {record.delivery_count})")
            await queue.commit()


async def main(path: str, jobs: int = 10) -> list[int]:
    async with sqlog.aio.open(path) as log:
        if "jobs" not in await log.list_topics():
            await log.create_topic("jobs", partitions=2)
        done: list[int] = []
        await asyncio.gather(service(log, jobs), worker(log, done, jobs))
        print(f"all {len(done)} jobs done: {sorted(done)}")
        return done


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mktemp(suffix=".db")))
