"""The mirror's remotes and record checks: librdkafka's mock cluster, `sqlog serve`, Tansu; records
with keys, headers and timestamps; everything a remote topic holds, read with confluent-kafka."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import sqlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bench_server import tansu_broker  # noqa: E402  (one way to start Tansu, shared with the benchmark)

from confluent_kafka import Consumer as KafkaConsumer  # noqa: E402
from confluent_kafka import KafkaError  # noqa: E402
from confluent_kafka import TopicPartition as KafkaTP  # noqa: E402

T0 = 1_700_000_000_000


def write_records(log: sqlog.Log, topic: str, n: int, partitions: int, start: int = 0, create: bool = False) -> None:
    """``n`` records numbered from ``start``, round-robin over ``partitions``, each with a key, two
    headers (one null) and its own timestamp."""
    if create:
        log.create_topic(topic, partitions=partitions)
    with log.producer() as producer:
        for i in range(start, start + n):
            producer.send(topic, b"value-%d" % i, key=b"key-%d" % i, partition=i % partitions,
                          headers=[("n", b"%d" % i), ("empty", None)], timestamp_ms=T0 + i)


def local_rows(log: sqlog.Log, topic: str) -> list[tuple[Any, ...]]:
    """(partition, key, value, headers, timestamp) of every stored record, by partition and offset."""
    consumer = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=10_000)
    try:
        consumer.assign([sqlog.TopicPartition(topic, p) for p in range(len(log.describe_topic(topic).partitions))])
        out = []
        while batch := consumer.poll(timeout_ms=100):
            out.extend((r.partition, r.offset, r.key, r.value, tuple(r.headers), r.timestamp_ms) for r in batch)
        return [(p, k, v, h, t) for p, _, k, v, h, t in sorted(out)]
    finally:
        consumer.close()


def remote_rows(bootstrap: str, topic: str, partitions: int, timeout: float = 20,
                isolation: str = "read_committed") -> list[tuple[Any, ...]]:
    """Every record of the remote topic (partition, key, value, headers, timestamp), by partition
    and offset, read to the end offsets with confluent-kafka."""
    c = KafkaConsumer({"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False,
                       "enable.partition.eof": True, "isolation.level": isolation, "log_level": 0})
    try:
        c.assign([KafkaTP(topic, p, 0) for p in range(partitions)])  # offset 0 (OFFSET_BEGINNING is -2)
        eof: set[int] = set()
        out = []
        deadline = time.monotonic() + timeout
        while len(eof) < partitions:
            assert time.monotonic() < deadline, f"reading {topic} from {bootstrap} did not reach its end"
            for m in c.consume(10_000, 0.2):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        eof.add(m.partition())
                    continue
                eof.discard(m.partition())
                headers = tuple((k, v) for k, v in (m.headers() or []))
                out.append((m.partition(), m.offset(), m.key(), m.value(), headers, m.timestamp()[1]))
        return [(p, k, v, h, t) for p, _, k, v, h, t in sorted(out)]
    finally:
        c.close()


def wait_for(check: Any, timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@contextmanager
def tansu() -> Iterator[str]:
    """A Tansu broker's bootstrap address, or the test skipped with the reason it cannot run."""
    try:
        ctx = tansu_broker()
        bootstrap = ctx.__enter__()
    except RuntimeError as exc:
        pytest.skip(f"Tansu cannot run here: {exc}")
    try:
        yield bootstrap
    finally:
        ctx.__exit__(None, None, None)
