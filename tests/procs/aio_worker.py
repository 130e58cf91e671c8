"""Child-process programs for tests/test_aio.py: ``python aio_worker.py ROLE PATH ARGS...``.

- ``produce PATH TOPIC COUNT DELAY_S``: after DELAY_S, a sync producer sends COUNT records
  (values ``0``, ``1``, ...) and flushes; prints ``sent``.
- ``group PATH TOPIC GROUP STOP_AT``: an async consumer in GROUP prints ``own P...`` whenever its
  assignment changes and ``rec P O`` for each record (committing after each batch), until it read
  a record valued STOP_AT; then it stops (leaves the group) and prints ``done``.
"""

from __future__ import annotations

import asyncio
import sys
import time

import sqlog
import sqlog.aio


def say(*parts: object) -> None:
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()


def produce(path: str, topic: str, count: str, delay_s: str) -> None:
    time.sleep(float(delay_s))
    with sqlog.open(path) as log, log.producer() as producer:
        for i in range(int(count)):
            producer.send(topic, str(i).encode())
        producer.flush()
    say("sent")


async def group(path: str, topic: str, group_id: str, stop_at: str) -> None:
    async with sqlog.aio.open(path) as log:
        consumer = log.consumer(topic, group_id=group_id, auto_offset_reset="earliest", enable_auto_commit=False,
                                session_timeout_ms=6000)
        await consumer.start()
        owned: set[sqlog.TopicPartition] = set()
        done = False
        while not done:
            batch = await consumer.getmany(timeout_ms=100)
            if consumer.assignment() != owned:
                owned = consumer.assignment()
                say("own", *(tp.partition for tp in sorted(owned)))
            for tp, records in batch.items():
                for r in records:
                    say("rec", tp.partition, r.offset)
                    done = done or r.value == stop_at.encode()
            if batch:
                await consumer.commit()
        await consumer.stop()
    say("done")


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    if role == "produce":
        produce(*args)
    elif role == "group":
        asyncio.run(group(*args))
    else:
        raise SystemExit(f"unknown role {role!r}")
