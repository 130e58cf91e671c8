"""The sparse batch index (Kafka's index.interval.bytes): small appends (durable one-record
sends) leave their records in the partition's tail, carried by the partition row, until the tail
reaches partitions.INDEX_INTERVAL_BYTES. Everything that reads the index must see the tail:
offsets_for_times, time and size retention, compaction, the check, and files from before it."""

from __future__ import annotations

import time

import apsw
from helpers import open_log, read_all

import sqlog
from sqlog.partitions import INDEX_INTERVAL_BYTES

DAY_MS = 86_400_000
TP = sqlog.TopicPartition("t", 0)


def _send_each(log: sqlog.Log, topic: str, values: list[bytes], stamps: list[int], key: bytes | None = None) -> None:
    """One transaction per record, as durable single sends commit them."""
    with log.producer() as producer:
        for value, ts in zip(values, stamps):
            producer.send(topic, value, key=key, partition=0, timestamp_ms=ts).get()


def _offsets_for_times(log: sqlog.Log, ts: int) -> int | None:
    consumer = log.consumer()
    try:
        found = consumer.offsets_for_times({TP: ts})[TP]
        return None if found is None else found.offset
    finally:
        consumer.close()


def test_offsets_for_times_and_check_see_records_across_index_flushes(log_path: str) -> None:
    log = open_log(log_path)
    log.create_topic("t", partitions=1)
    n = 3 * INDEX_INTERVAL_BYTES // 100 + 7  # several index rows, then a tail
    base = 1_700_000_000_000
    _send_each(log, "t", [b"x" * 100] * n, [base + 10 * i for i in range(n)])
    assert log.check().ok, log.check().violations
    for i in (0, 1, 40, 41, n - 8, n - 2, n - 1):  # in index rows, at their edges, and in the tail
        assert _offsets_for_times(log, base + 10 * i) == i
        assert _offsets_for_times(log, base + 10 * i - 5) == i
    assert _offsets_for_times(log, base + 10 * n) is None
    assert log.describe_topic("t").partitions[0].bytes == 100 * n
    log.close()


def test_time_retention_deletes_records_still_in_the_tail(log_path: str) -> None:
    log = open_log(log_path)
    log.create_topic("t", partitions=1, retention_ms=DAY_MS)
    now = int(time.time() * 1000)
    _send_each(log, "t", [b"old-%d" % i for i in range(3)] + [b"new-%d" % i for i in range(2)],
               [now - 10 * DAY_MS] * 3 + [now] * 2)
    result = log.sweep()
    assert result.records == 3
    assert [r.value for r in read_all(log, "t")] == [b"new-0", b"new-1"]
    assert log.describe_topic("t").partitions[0].log_start_offset == 3
    assert log.check().ok, log.check().violations
    _send_each(log, "t", [b"later"], [now])  # the tail goes on after the cut
    assert [r.offset for r in read_all(log, "t")] == [3, 4, 5]
    assert _offsets_for_times(log, now) == 3
    assert log.check().ok, log.check().violations
    log.close()


def test_size_retention_on_append_cuts_into_the_tail(log_path: str) -> None:
    log = open_log(log_path)
    log.create_topic("t", partitions=1, retention_bytes=1_000)
    now = int(time.time() * 1000)
    _send_each(log, "t", [b"%03d" % i + b"v" * 97 for i in range(50)], [now] * 50)
    part = log.describe_topic("t").partitions[0]
    assert part.high_watermark == 50 and part.bytes <= 1_000 and part.log_start_offset >= 40
    records = read_all(log, "t")
    assert [r.offset for r in records] == list(range(part.log_start_offset, 50))
    assert log.check().ok, log.check().violations
    log.close()


def test_compaction_sees_keys_in_the_tail(log_path: str) -> None:
    log = open_log(log_path)
    log.create_topic("t", partitions=1, cleanup_policy="compact", min_cleanable_dirty_ratio=0.0)
    now = int(time.time() * 1000)
    _send_each(log, "t", [b"1", b"2", b"3"], [now] * 3, key=b"k")
    log.sweep()
    assert [(r.offset, r.value) for r in read_all(log, "t")] == [(2, b"3")]
    assert log.check().ok, log.check().violations
    log.close()


def test_a_file_from_before_the_sparse_index_opens_and_keeps_every_record(log_path: str) -> None:
    log = open_log(log_path)
    log.create_topic("t", partitions=1)
    base = 1_700_000_000_000
    _send_each(log, "t", [b"a", b"b", b"c"], [base, base + 1, base + 2])
    log.close()
    # Take the file back to schema 10: no tail columns, every record in batches (as that
    # version wrote them), the version number set back.
    conn = apsw.Connection(log_path)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO batches SELECT topic_id, partition, tail_offset, next_offset - 1, tail_max_timestamp,"
                 " tail_bytes FROM partitions WHERE next_offset > tail_offset")
    for column in ("tail_offset", "tail_max_timestamp", "tail_bytes"):
        conn.execute(f"ALTER TABLE partitions DROP COLUMN {column}")
    conn.execute("PRAGMA user_version = 10")
    conn.execute("COMMIT")
    conn.close()
    log = open_log(log_path)
    assert log.check().ok, log.check().violations
    _send_each(log, "t", [b"d"], [base + 3])
    assert [r.value for r in read_all(log, "t")] == [b"a", b"b", b"c", b"d"]
    assert _offsets_for_times(log, base + 1) == 1 and _offsets_for_times(log, base + 3) == 3
    assert log.check().ok, log.check().violations
    log.close()
