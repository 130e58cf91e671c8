"""The producer: futures, serializers, headers, timestamps, partitioning, batching, threads."""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sqlog
from sqlog import TopicPartition
from helpers import read_all

MiB = 1 << 20


def high_watermarks(log: sqlog.Log, topic: str) -> list[int]:
    return [p.high_watermark for p in log.describe_topic(topic).partitions]


# -- futures ------------------------------------------------------------------------------


def test_send_returns_future_with_metadata(log: sqlog.Log) -> None:
    log.create_topic("t")
    producer = log.producer()
    future = producer.send("t", b"hello", timestamp_ms=1234)
    assert isinstance(future, sqlog.RecordFuture)
    md = future.get(timeout=5)
    assert md == sqlog.RecordMetadata(topic="t", partition=0, offset=0, timestamp_ms=1234)
    assert future.done()
    assert future.exception(timeout=5) is None
    assert future.get(timeout=5) == md  # get() is repeatable
    assert producer.send("t", b"again").get(timeout=5).offset == 1
    producer.close()


def test_done_is_false_until_written_and_flush_writes(log: sqlog.Log) -> None:
    log.create_topic("t")
    producer = log.producer(linger_ms=60_000)
    futures = [producer.send("t", b"%d" % i) for i in range(5)]
    assert not any(f.done() for f in futures)
    assert high_watermarks(log, "t") == [0]
    producer.flush()
    assert all(f.done() for f in futures)
    assert [f.get(timeout=0) for f in futures] == [
        sqlog.RecordMetadata("t", 0, i, futures[i].get().timestamp_ms) for i in range(5)
    ]
    assert high_watermarks(log, "t") == [5]
    producer.close()


def test_get_writes_a_lingering_record_at_once(log: sqlog.Log) -> None:
    log.create_topic("t")
    producer = log.producer(linger_ms=600_000)
    first = producer.send("t", b"a")
    second = producer.send("t", b"b")
    assert second.get(timeout=5).offset == 1
    assert first.done()  # written in the same transaction
    assert [r.value for r in read_all(log, "t")] == [b"a", b"b"]
    producer.close()


def test_default_linger_writes_without_get_or_flush(log: sqlog.Log) -> None:
    log.create_topic("t")
    producer = log.producer()
    future = producer.send("t", b"x")
    deadline = time.monotonic() + 5
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert future.done(), "the linger thread never wrote the record"
    assert high_watermarks(log, "t") == [1]
    producer.close()


def test_batch_size_makes_the_sender_write(log: sqlog.Log) -> None:
    log.create_topic("t")
    producer = log.producer(linger_ms=600_000, batch_size=1000)
    futures = [producer.send("t", b"x" * 100) for _ in range(9)]
    assert not any(f.done() for f in futures)  # 900 bytes: still collecting
    futures.append(producer.send("t", b"x" * 100))  # 1000 bytes: the batch is full
    assert all(f.done() for f in futures)
    assert [f.get(timeout=0).offset for f in futures] == list(range(10))
    producer.close()


def test_close_flushes(log: sqlog.Log) -> None:
    log.create_topic("t")
    producer = log.producer(linger_ms=600_000)
    futures = [producer.send("t", b"%d" % i) for i in range(3)]
    producer.close()
    assert all(f.done() for f in futures)
    assert [r.value for r in read_all(log, "t")] == [b"0", b"1", b"2"]
    producer.close()  # idempotent


def test_context_manager_flushes_and_closes(log: sqlog.Log) -> None:
    log.create_topic("t")
    with log.producer(linger_ms=600_000) as producer:
        future = producer.send("t", b"x")
    assert future.done() and future.get(timeout=0).offset == 0
    with pytest.raises(sqlog.LogClosedError):
        producer.send("t", b"y")


def test_send_after_close_raises(log: sqlog.Log) -> None:
    log.create_topic("t")
    producer = log.producer()
    producer.send("t", b"x").get(timeout=5)
    producer.close()
    with pytest.raises(sqlog.LogClosedError):
        producer.send("t", b"y")
    assert high_watermarks(log, "t") == [1]


def test_flush_with_nothing_pending_returns(log: sqlog.Log) -> None:
    log.create_topic("t")
    producer = log.producer()
    producer.flush()
    producer.flush(timeout=1)
    producer.close()


# -- serializers --------------------------------------------------------------------------


def test_bytes_pass_through_by_default(log: sqlog.Log) -> None:
    log.create_topic("t")
    with log.producer() as producer:
        producer.send("t", b"raw\x00\xff")
        producer.send("t", bytearray(b"ba"))
        producer.send("t", memoryview(b"mv"))
        producer.send("t", b"")
        producer.send("t", None)  # a tombstone
    assert [r.value for r in read_all(log, "t")] == [b"raw\x00\xff", b"ba", b"mv", b"", None]


def test_json_serializer(log: sqlog.Log) -> None:
    log.create_topic("t")
    doc = {"order_id": 1, "item": "böök", "tags": ["a", None], "price": 9.5}
    with log.producer(value_serializer=sqlog.JSON) as producer:
        producer.send("t", doc)
        producer.send("t", [1, 2, 3])
        producer.send("t", "just a string")
    raw = read_all(log, "t")
    assert all(isinstance(r.value, bytes) for r in raw)
    decoded = read_all(log, "t", value_deserializer=sqlog.JSON)
    assert [r.value for r in decoded] == [doc, [1, 2, 3], "just a string"]


def test_string_serializer(log: sqlog.Log) -> None:
    log.create_topic("t")
    with log.producer(value_serializer=sqlog.STRING, key_serializer=sqlog.STRING) as producer:
        producer.send("t", "héllo ✓", key="clé")
    [record] = read_all(log, "t")
    assert (record.key, record.value) == ("clé".encode(), "héllo ✓".encode())
    [record] = read_all(log, "t", value_deserializer=sqlog.STRING, key_deserializer=sqlog.STRING)
    assert (record.key, record.value) == ("clé", "héllo ✓")


def test_callable_and_custom_serde(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=4)
    ints = sqlog.Serde(lambda n: n.to_bytes(8, "big"), lambda b: int.from_bytes(b, "big"))
    with log.producer(value_serializer=lambda s: s.upper().encode(), key_serializer=ints) as producer:
        md = producer.send("t", "shout", key=42).get(timeout=5)
    assert md.partition == sqlog.partition_for_key((42).to_bytes(8, "big"), 4)
    [record] = read_all(log, "t", md.partition, key_deserializer=ints)
    assert (record.key, record.value) == (42, b"SHOUT")


def test_serializer_is_not_applied_to_none(log: sqlog.Log) -> None:
    log.create_topic("t")
    calls: list[Any] = []

    def ser(obj: Any) -> bytes:
        calls.append(obj)
        return b"s"

    with log.producer(value_serializer=ser, key_serializer=ser) as producer:
        producer.send("t", None, key=None)
    assert calls == []
    [record] = read_all(log, "t")
    assert (record.key, record.value) == (None, None)


# -- headers ------------------------------------------------------------------------------


def test_headers_round_trip_with_duplicates_order_and_none(log: sqlog.Log) -> None:
    log.create_topic("t")
    headers = [("b", b"1"), ("a", None), ("b", b"2"), ("", b""), ("ünï", b"\x00\xff"), ("a", b"3")]
    with log.producer() as producer:
        producer.send("t", b"v", headers=headers)
        producer.send("t", b"w", headers=[])
        producer.send("t", b"x")
    records = read_all(log, "t")
    assert list(records[0].headers) == headers
    assert records[1].headers == () and records[2].headers == ()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=st.one_of(st.none(), st.binary(max_size=300)),
    key=st.one_of(st.none(), st.binary(max_size=40)),
    headers=st.lists(st.tuples(st.text(max_size=12), st.one_of(st.none(), st.binary(max_size=20))), max_size=6),
    timestamp_ms=st.integers(min_value=0, max_value=2**53),
)
def test_record_round_trip(log: sqlog.Log, value: bytes | None, key: bytes | None,
                           headers: list[tuple[str, bytes | None]], timestamp_ms: int) -> None:
    if "rt" not in log.list_topics():
        log.create_topic("rt", partitions=3)
    with log.producer() as producer:
        md = producer.send("rt", value, key=key, headers=headers, timestamp_ms=timestamp_ms).get(timeout=5)
    if key is not None:
        assert md.partition == sqlog.partition_for_key(key, 3)
    assert md.timestamp_ms == timestamp_ms
    consumer = log.consumer(enable_auto_commit=False)
    tp = TopicPartition("rt", md.partition)
    consumer.assign([tp])
    consumer.seek(tp, md.offset)
    [record] = consumer.poll(timeout_ms=500, max_records=1)
    consumer.close()
    assert (record.topic, record.partition, record.offset) == ("rt", md.partition, md.offset)
    assert (record.timestamp_ms, record.key, record.value) == (timestamp_ms, key, value)
    assert list(record.headers) == headers


# -- timestamps ---------------------------------------------------------------------------


def test_default_timestamp_is_now(log: sqlog.Log) -> None:
    log.create_topic("t")
    before = time.time_ns() // 1_000_000
    with log.producer() as producer:
        md = producer.send("t", b"x").get(timeout=5)
    after = time.time_ns() // 1_000_000
    assert before <= md.timestamp_ms <= after
    [record] = read_all(log, "t")
    assert record.timestamp_ms == md.timestamp_ms


def test_explicit_timestamps_kept_even_out_of_order(log: sqlog.Log) -> None:
    log.create_topic("t")
    stamps = [5_000, 0, 2**62, 17, 17]
    with log.producer() as producer:
        mds = [producer.send("t", b"x", timestamp_ms=ts) for ts in stamps]
        producer.flush()
    assert [m.get(timeout=0).timestamp_ms for m in mds] == stamps
    assert [r.timestamp_ms for r in read_all(log, "t")] == stamps


# -- partitioning -------------------------------------------------------------------------


def test_murmur2_matches_kafka() -> None:
    # Values from Kafka's own UtilsTest.testMurmur2 (the Java client's partitioner hash).
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for data, expected in cases.items():
        assert sqlog.murmur2(data) == expected
    assert sqlog.partition_for_key(b"foobar", 3) == (-790332482 & 0x7FFFFFFF) % 3


def test_explicit_partition(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=3)
    with log.producer() as producer:
        mds = [producer.send("t", b"x", key=b"k", partition=p).get(timeout=5) for p in (2, 0, 2, 1)]
    assert [(m.partition, m.offset) for m in mds] == [(2, 0), (0, 0), (2, 1), (1, 0)]
    assert high_watermarks(log, "t") == [1, 1, 2]


def test_keyed_records_go_to_the_key_partition(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=7)
    keys = [b"user-%d" % i for i in range(60)]
    with log.producer() as producer:
        first = [producer.send("t", b"v", key=k) for k in keys]
        second = [producer.send("t", b"v", key=k) for k in keys]
        producer.flush()
    for k, a, b in zip(keys, first, second):
        assert a.get().partition == b.get().partition == sqlog.partition_for_key(k, 7)
    assert len({f.get().partition for f in first}) > 1


def test_keyless_records_stick_to_one_partition_within_a_batch(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=8)
    with log.producer(linger_ms=600_000, batch_size=1_000_000) as producer:
        futures = [producer.send("t", b"x" * 10) for _ in range(50)]
        producer.flush()
    assert len({f.get().partition for f in futures}) == 1


def test_keyless_records_spread_over_batches(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=4)
    with log.producer(batch_size=200) as producer:
        futures = [producer.send("t", b"x" * 100) for _ in range(200)]
        producer.flush()
    counts = collections.Counter(f.get().partition for f in futures)
    assert len(counts) >= 2
    assert max(counts.values()) < 200
    assert sum(counts.values()) == 200
    for p, hw in enumerate(high_watermarks(log, "t")):
        assert hw == counts[p]


# -- size limits --------------------------------------------------------------------------


def test_default_max_record_bytes_is_one_mib(log: sqlog.Log) -> None:
    log.create_topic("t")
    with log.producer() as producer:
        assert producer.send("t", b"x" * MiB).get(timeout=5).offset == 0
        with pytest.raises(sqlog.RecordTooLarge, match="max_record_bytes"):
            producer.send("t", b"x" * (MiB + 1))
        with pytest.raises(sqlog.RecordTooLarge):
            producer.send("t", b"x" * (MiB - 10), key=b"k" * 11)
        with pytest.raises(sqlog.RecordTooLarge):
            producer.send("t", b"x" * (MiB - 10), headers=[("h", b"y" * 20)])
        assert producer.send("t", b"after").get(timeout=5).offset == 1
    assert high_watermarks(log, "t") == [2]


def test_custom_max_record_bytes(log: sqlog.Log) -> None:
    log.create_topic("t")
    with log.producer(max_record_bytes=10) as producer:
        producer.send("t", b"x" * 5, key=b"k" * 5).get(timeout=5)
        with pytest.raises(sqlog.RecordTooLarge):
            producer.send("t", b"x" * 11)
    with log.producer(max_record_bytes=2 * MiB) as producer:
        assert producer.send("t", b"x" * (2 * MiB)).get(timeout=5).offset == 1


# -- threads ------------------------------------------------------------------------------


def _check_dense_and_ordered(log: sqlog.Log, topic: str, per_thread: dict[int, list[sqlog.RecordMetadata]]) -> None:
    by_partition: dict[int, list[int]] = collections.defaultdict(list)
    for mds in per_thread.values():
        last: dict[int, int] = {}
        for md in mds:
            by_partition[md.partition].append(md.offset)
            assert md.offset > last.get(md.partition, -1), "a thread's records were reordered"
            last[md.partition] = md.offset
    hws = high_watermarks(log, topic)
    for p, offsets in by_partition.items():
        assert sorted(offsets) == list(range(len(offsets))), f"partition {p} offsets not dense and unique"
        assert hws[p] == len(offsets)


def test_many_threads_one_producer(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=3)
    producer = log.producer()
    n_threads, n = 6, 300
    results: dict[int, list[sqlog.RecordFuture]] = {}
    barrier = threading.Barrier(n_threads)

    def run(tid: int) -> None:
        barrier.wait()
        results[tid] = [producer.send("t", b"%d:%d" % (tid, i), key=b"k%d" % (tid % 3)) for i in range(n)]

    threads = [threading.Thread(target=run, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    producer.flush()
    per_thread = {tid: [f.get(timeout=5) for f in fs] for tid, fs in results.items()}
    _check_dense_and_ordered(log, "t", per_thread)
    # each record is stored where its future says
    for p in range(3):
        stored = {r.offset: r.value for r in read_all(log, "t", p)}
        for tid, mds in per_thread.items():
            for i, md in enumerate(mds):
                if md.partition == p:
                    assert stored[md.offset] == b"%d:%d" % (tid, i)
    producer.close()


def test_many_threads_many_producers(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=2)
    producers = [log.producer(linger_ms=lg) for lg in (0, 1, 5, 20)]
    n = 250
    results: dict[int, list[sqlog.RecordFuture]] = {}
    barrier = threading.Barrier(8)

    def run(tid: int) -> None:
        producer = producers[tid % len(producers)]
        barrier.wait()
        futures = []
        for i in range(n):
            futures.append(producer.send("t", b"%d:%d" % (tid, i), partition=tid % 2))
            if i % 50 == 0:
                futures[-1].get(timeout=5)
        results[tid] = futures

    threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in producers:
        p.flush()
    per_thread = {tid: [f.get(timeout=5) for f in fs] for tid, fs in results.items()}
    _check_dense_and_ordered(log, "t", per_thread)
    values = {(r.partition, r.offset): r.value for p in (0, 1) for r in read_all(log, "t", p)}
    for tid, mds in per_thread.items():
        assert [values[(m.partition, m.offset)] for m in mds] == [b"%d:%d" % (tid, i) for i in range(n)]
    for p in producers:
        p.close()


def test_group_commit_concurrent_send_get(log: sqlog.Log) -> None:
    log.create_topic("t")
    producer = log.producer(linger_ms=0)
    n_threads, n = 8, 40
    results: dict[int, list[sqlog.RecordMetadata]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def run(tid: int) -> None:
        try:
            barrier.wait()
            results[tid] = [producer.send("t", b"%d:%d" % (tid, i)).get(timeout=10) for i in range(n)]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == n_threads
    _check_dense_and_ordered(log, "t", results)
    assert high_watermarks(log, "t") == [n_threads * n]


def test_producers_on_two_logs_of_one_file(log: sqlog.Log, log_path: str) -> None:
    log.create_topic("t")
    other = sqlog.open(log_path)
    p1, p2 = log.producer(), other.producer()
    results: dict[int, list[sqlog.RecordMetadata]] = {}

    def run(tid: int, producer: sqlog.Producer) -> None:
        results[tid] = [producer.send("t", b"%d" % i).get(timeout=10) for i in range(100)]

    threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate((p1, p2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _check_dense_and_ordered(log, "t", results)
    p1.close()
    p2.close()


# -- waiting on a busy log ------------------------------------------------------------------


def _pending_future_while_busy(log: sqlog.Log, producer: sqlog.Producer) -> tuple[threading.Thread, sqlog.RecordFuture]:
    """Keep the log's writer connection busy (create_topic of 3000 partitions: about a second) and
    return a future that timed out waiting for it, so the record is still pending."""
    creator = threading.Thread(target=lambda: log.create_topic("big", partitions=3000))
    creator.start()
    while creator.is_alive():
        future = producer.send("t", b"x")
        try:
            future.get(timeout=0.05)
        except sqlog.SqlogTimeoutError:
            return creator, future
    pytest.fail("the log was never busy: the test proves nothing")


def test_get_and_flush_time_out_while_the_log_is_busy(log: sqlog.Log) -> None:
    log.create_topic("t")
    producer = log.producer(linger_ms=600_000, metadata_max_age_ms=600_000)
    producer.send("t", b"warm").get(timeout=5)  # topic metadata cached: send() needs no lock
    creator, future = _pending_future_while_busy(log, producer)
    assert not future.done()
    with pytest.raises(TimeoutError):  # SqlogTimeoutError is also a TimeoutError
        producer.flush(timeout=0.05)
    creator.join(30)
    producer.flush()
    assert future.done()
    assert future.get(timeout=5).offset == log.describe_topic("t").partitions[0].high_watermark - 1
    producer.close()


def test_get_returns_soon_after_the_log_stops_being_busy(log: sqlog.Log) -> None:
    log.create_topic("t")
    producer = log.producer(linger_ms=600_000, metadata_max_age_ms=600_000)
    producer.send("t", b"warm").get(timeout=5)
    creator, future = _pending_future_while_busy(log, producer)
    out: dict[str, Any] = {}
    getter = threading.Thread(target=lambda: out.update(md=future.get()), daemon=True)
    getter.start()
    creator.join(30)
    getter.join(3)  # loose bound: the writer has been free for up to 3 s
    assert not getter.is_alive(), "get() still waiting although nothing holds the log"
    assert out["md"].offset == log.describe_topic("t").partitions[0].high_watermark - 1
    producer.close()


# -- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {"acks": "all"},
        {"linger": 5},
        {"linger_ms": -1},
        {"linger_ms": 1.5},
        {"batch_size": 0},
        {"max_record_bytes": 0},
        {"max_record_bytes": "1MB"},
        {"metadata_max_age_ms": -1},
        {"value_serializer": 42},
        {"key_serializer": "json"},
    ],
)
def test_bad_producer_config(log: sqlog.Log, config: dict[str, Any]) -> None:
    with pytest.raises(sqlog.InvalidConfigError):
        log.producer(**config)


def test_unknown_topic(log: sqlog.Log) -> None:
    with log.producer() as producer:
        with pytest.raises(sqlog.UnknownTopicOrPartitionError, match="create_topic"):
            producer.send("missing", b"x")
        log.create_topic("missing")
        assert producer.send("missing", b"x").get(timeout=5).offset == 0
