"""Producer.send_batch(): the bulk path."""

from __future__ import annotations

import pytest

import sqlog
from helpers import read_all


def test_send_batch_appends_in_order_with_dense_offsets(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=2)
    producer = log.producer(batch_size=1_000)  # several transactions
    values = [b"%05d" % i for i in range(3_000)]
    future = producer.send_batch("t", values[:10], partition=1, timestamp_ms=42)
    producer.send("t", b"single", partition=1)
    later = producer.send_batch("t", values[10:], partition=1)
    producer.flush()
    metas = future.get(timeout=5)
    assert [(m.partition, m.offset, m.timestamp_ms) for m in metas] == [(1, i, 42) for i in range(10)]
    assert [m.offset for m in later.get(timeout=5)] == list(range(11, 3_001))
    records = read_all(log, "t", 1)
    assert [r.offset for r in records] == list(range(3_001))
    assert [r.value for r in records] == values[:10] + [b"single"] + values[10:]
    assert log.check().ok


def test_send_batch_serializes_and_keeps_tombstones(log: sqlog.Log) -> None:
    log.create_topic("t")
    producer = log.producer(value_serializer=sqlog.JSON)
    producer.send_batch("t", [{"a": 1}, None, [2]]).get(timeout=5)
    assert [r.value for r in read_all(log, "t", 0)] == [b'{"a":1}', None, b"[2]"]
    assert log.describe_topic("t").partitions[0].bytes == len(b'{"a":1}') + len(b"[2]")


def test_send_batch_refuses_bad_input_without_storing_anything(log: sqlog.Log) -> None:
    log.create_topic("t")
    producer = log.producer(max_record_bytes=100)
    with pytest.raises(sqlog.RecordTooLarge):
        producer.send_batch("t", [b"ok", b"x" * 101])
    with pytest.raises(sqlog.SerializationError, match="value_serializer"):
        producer.send_batch("t", [b"ok", "text"])
    with pytest.raises(sqlog.SerializationError):
        producer.send_batch("t", 5)  # type: ignore[arg-type]
    with pytest.raises(sqlog.SerializationError):
        producer.send_batch("t", [])
    with pytest.raises(sqlog.UnknownTopicOrPartitionError):
        producer.send_batch("t", [b"x"], partition=3)
    with pytest.raises(sqlog.UnknownTopicOrPartitionError):
        producer.send_batch("missing", [b"x"])
    producer.flush()
    assert log.describe_topic("t").partitions[0].high_watermark == 0
    producer.close()
    with pytest.raises(sqlog.LogClosedError):
        producer.send_batch("t", [b"x"])


def test_send_batch_future_reports_a_failed_write(log_path: str) -> None:
    log = sqlog.open(log_path, max_db_bytes=172 * 1024)  # schemas 6 and 12 added three pages each
    log.create_topic("t")
    producer = log.producer()
    future = producer.send_batch("t", [b"x" * 10_000] * 50)
    assert isinstance(future.exception(timeout=5), sqlog.DiskFullError)
    assert future.done()
    with pytest.raises(sqlog.DiskFullError):
        future.get(timeout=5)
    assert log.describe_topic("t").partitions[0].high_watermark == 0
