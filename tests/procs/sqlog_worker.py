"""Child-process programs for tests/test_processes.py: ``python sqlog_worker.py ROLE PATH TOPIC [ARGS]``.

Every line of protocol goes to stdout, flushed at once, so a parent that SIGKILLs this
process knows exactly what was acknowledged before the kill.
"""

from __future__ import annotations

import random
import sys
import threading
import time

import sqlog


def say(*parts: object) -> None:
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()


def wait_for_go() -> None:
    say("ready")
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise SystemExit(f"expected 'go' on stdin, got {line!r}")


def produce(path: str, topic: str, producer_id: str, count: str, mode: str, batch_size: str, linger_ms: str) -> None:
    """Send ``count`` records valued ``producer_id:seq`` to partition 0.

    mode "get": wait for each record; "mixed": wait for every 7th; "flush": only flush at the end.
    """
    with sqlog.open(path) as log:
        producer = log.producer(batch_size=int(batch_size), linger_ms=int(linger_ms))
        wait_for_go()
        for seq in range(int(count)):
            future = producer.send(topic, f"{producer_id}:{seq}".encode(), partition=0)
            if mode == "get" or (mode == "mixed" and seq % 7 == 0):
                future.get(timeout=30)
        producer.flush(timeout=30)
        producer.close()
    say("done")


def consume_and_commit(path: str, topic: str, group: str) -> None:
    """Consume with manual commits, printing ``committed OFFSET`` after each successful commit."""
    rng = random.Random(1234)
    tp = sqlog.TopicPartition(topic, 0)
    with sqlog.open(path) as log:
        consumer = log.consumer(group_id=group, enable_auto_commit=False, auto_offset_reset="earliest")
        consumer.subscribe([topic])
        say("ready")
        while True:
            records = consumer.poll(timeout_ms=100, max_records=rng.randint(1, 5))
            if not records:
                continue
            if rng.random() < 0.5:
                for record in records:  # one commit per record
                    consumer.commit({tp: record.offset + 1})
                    say("committed", record.offset + 1)
            else:  # one commit for the batch (the consumer's position)
                consumer.commit()
                say("committed", records[-1].offset + 1)


def ack_produce(path: str, topic: str, threads: str) -> None:
    """Threads each send ``thread:seq`` and print ``acked THREAD SEQ OFFSET`` once get() returns."""
    lock = threading.Lock()
    with sqlog.open(path) as log:
        producer = log.producer()

        def run(t: int) -> None:
            seq = 0
            while True:
                md = producer.send(topic, f"{t}:{seq}".encode(), partition=0).get(timeout=30)
                with lock:
                    say("acked", t, seq, md.offset)
                seq += 1

        workers = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(int(threads))]
        for w in workers:
            w.start()
        for w in workers:
            w.join()


def wake_produce(path: str, topic: str, delay_s: str) -> None:
    """After 'go' and ``delay_s``, send one record and print ``sent WALLCLOCK`` once it is durable."""
    with sqlog.open(path) as log:
        producer = log.producer(linger_ms=0)
        wait_for_go()
        time.sleep(float(delay_s))
        producer.send(topic, b"wake-up", partition=0).get(timeout=30)
        say("sent", repr(time.time()))
        producer.close()


def stream_produce(path: str, topic: str, batch_size: str) -> None:
    """Send ``seq`` values without waiting, flushing every 100 records and printing ``flushed SEQ``."""
    with sqlog.open(path) as log:
        producer = log.producer(batch_size=int(batch_size), linger_ms=1)
        seq = 0
        while True:
            producer.send(topic, str(seq).encode(), partition=0)
            if seq % 100 == 99:
                producer.flush(timeout=30)
                say("flushed", seq)
            seq += 1


def tail(path: str, topic: str, count: str) -> None:
    """Read partition 0 from offset 0 until ``count`` records, checking order; print a digest."""
    import hashlib

    with sqlog.open(path) as log:
        consumer = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
        consumer.assign([sqlog.TopicPartition(topic, 0)])
        say("ready")
        digest = hashlib.sha256()
        expected = 0
        deadline = time.monotonic() + 60
        while expected < int(count) and time.monotonic() < deadline:
            for record in consumer.poll(timeout_ms=200, max_records=97):
                if record.offset != expected:
                    say("gap", expected, record.offset)
                    return
                digest.update(b"%d:%s;" % (record.offset, record.value))
                expected += 1
        say("read", expected, digest.hexdigest())


ROLES = {
    "stream_produce": stream_produce,
    "tail": tail,
    "produce": produce,
    "consume_and_commit": consume_and_commit,
    "ack_produce": ack_produce,
    "wake_produce": wake_produce,
}

if __name__ == "__main__":
    ROLES[sys.argv[1]](*sys.argv[2:])
