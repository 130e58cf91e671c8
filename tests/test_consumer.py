"""The consumer: assignment, poll, iteration, commits, restarts, positions, seeking, waking up."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import sqlog
from sqlog import OffsetAndMetadata, TopicPartition
from helpers import fill

TP0 = TopicPartition("t", 0)
TP1 = TopicPartition("t", 1)


def produce(log: sqlog.Log, topic: str, values: list[bytes], partition: int | None = None,
            **kwargs: Any) -> list[sqlog.RecordMetadata]:
    with log.producer() as producer:
        futures = [producer.send(topic, v, partition=partition, **kwargs) for v in values]
        producer.flush()
        return [f.get(timeout=5) for f in futures]


def drain(consumer: sqlog.Consumer, timeout_ms: int = 50, **kwargs: Any) -> list[sqlog.Record]:
    out: list[sqlog.Record] = []
    while batch := consumer.poll(timeout_ms=timeout_ms, **kwargs):
        out.extend(batch)
    return out


def values(records: list[sqlog.Record]) -> list[Any]:
    return [r.value for r in records]


@pytest.fixture
def topic(log: sqlog.Log) -> str:
    log.create_topic("t", partitions=2)
    return "t"


# -- subscribe / assign -------------------------------------------------------------------


def test_poll_before_subscribe_or_assign(log: sqlog.Log, topic: str) -> None:
    consumer = log.consumer()
    with pytest.raises(sqlog.IllegalStateError):
        consumer.poll()
    with pytest.raises(sqlog.IllegalStateError):
        next(iter(consumer))
    assert consumer.assignment() == set()


def test_subscribe_assigns_all_partitions_at_poll(log: sqlog.Log, topic: str) -> None:
    log.create_topic("u")
    consumer = log.consumer(auto_offset_reset="earliest")
    consumer.subscribe(["t", "u"])
    assert consumer.subscription() == {"t", "u"}
    consumer.poll(timeout_ms=0)
    assert consumer.assignment() == {TP0, TP1, TopicPartition("u", 0)}
    consumer.unsubscribe()
    assert consumer.assignment() == set() and consumer.subscription() == set()
    with pytest.raises(sqlog.IllegalStateError):
        consumer.poll()


def test_assign_and_unsubscribe(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"p0"], partition=0)
    produce(log, "t", [b"p1"], partition=1)
    consumer = log.consumer(auto_offset_reset="earliest")
    consumer.assign([TP1])
    assert consumer.assignment() == {TP1}
    assert values(drain(consumer)) == [b"p1"]
    consumer.assign([TP0, TP1])
    assert consumer.assignment() == {TP0, TP1}
    assert values(drain(consumer)) == [b"p0"]  # TP1 keeps its position
    consumer.unsubscribe()
    assert consumer.assignment() == set()


def test_mixing_subscribe_and_assign_is_illegal(log: sqlog.Log, topic: str) -> None:
    consumer = log.consumer()
    consumer.subscribe(["t"])
    with pytest.raises(sqlog.IllegalStateError):
        consumer.assign([TP0])
    consumer.unsubscribe()
    consumer.assign([TP0])
    with pytest.raises(sqlog.IllegalStateError):
        consumer.subscribe(["t"])
    consumer.unsubscribe()
    consumer.subscribe(["t"])  # fine after unsubscribe


def test_assign_unknown_partition(log: sqlog.Log, topic: str) -> None:
    consumer = log.consumer()
    with pytest.raises(sqlog.UnknownTopicOrPartitionError):
        consumer.assign([TopicPartition("t", 2)])
    with pytest.raises(sqlog.UnknownTopicOrPartitionError):
        consumer.assign([TopicPartition("nope", 0)])
    assert consumer.assignment() == set()


def test_rebalance_listener_called(log: sqlog.Log, topic: str) -> None:
    events: list[tuple[str, set[TopicPartition]]] = []

    class Listener(sqlog.ConsumerRebalanceListener):
        def on_assigned(self, partitions: set[TopicPartition]) -> None:
            events.append(("assigned", set(partitions)))

        def on_revoked(self, partitions: set[TopicPartition]) -> None:
            events.append(("revoked", set(partitions)))

    consumer = log.consumer()
    consumer.subscribe(["t"], listener=Listener())
    consumer.poll(timeout_ms=0)
    assert events == [("assigned", {TP0, TP1})]
    consumer.close()
    assert events[-1] == ("revoked", {TP0, TP1})


# -- poll -----------------------------------------------------------------------------------


def test_poll_returns_each_partition_in_order_without_gaps(log: sqlog.Log, topic: str) -> None:
    with log.producer(batch_size=500) as producer:
        for i in range(400):
            producer.send("t", b"%d" % i, key=b"k%d" % (i % 5))
    consumer = log.consumer(auto_offset_reset="earliest", max_poll_records=37)
    consumer.subscribe(["t"])
    seen: dict[int, list[int]] = {0: [], 1: []}
    batches = 0
    while batch := consumer.poll(timeout_ms=50):
        assert len(batch) <= 37
        batches += 1
        for r in batch:
            seen[r.partition].append(r.offset)
    assert batches >= 400 // 37
    hws = [p.high_watermark for p in log.describe_topic("t").partitions]
    assert sum(hws) == 400
    for p in (0, 1):
        assert seen[p] == list(range(hws[p]))


def test_poll_max_records(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"%d" % i for i in range(10)], partition=0)
    consumer = log.consumer(auto_offset_reset="earliest")
    consumer.assign([TP0])
    assert [r.offset for r in consumer.poll(timeout_ms=100, max_records=3)] == [0, 1, 2]
    assert [r.offset for r in consumer.poll(timeout_ms=100, max_records=1)] == [3]
    assert [r.offset for r in consumer.poll(timeout_ms=100)] == list(range(4, 10))


def test_record_fields(log: sqlog.Log, topic: str) -> None:
    with log.producer() as producer:
        producer.send("t", b"v", key=b"k", headers=[("h", b"1")], partition=1, timestamp_ms=42)
    consumer = log.consumer(auto_offset_reset="earliest")
    consumer.assign([TP1])
    [record] = consumer.poll(timeout_ms=500)
    assert record == sqlog.Record("t", 1, 0, 42, b"k", b"v", (("h", b"1"),))
    with pytest.raises(AttributeError):
        record.value = b"other"  # type: ignore[misc]
    # A named tuple (as kafka-python's ConsumerRecord): its fields in this order, unpackable.
    topic, partition, offset, ts, key, value, headers = record
    assert (topic, partition, offset, ts, key, value, headers) == ("t", 1, 0, 42, b"k", b"v", (("h", b"1"),))
    assert sqlog.Record._fields == ("topic", "partition", "offset", "timestamp_ms", "key", "value", "headers")
    assert record._replace(value=b"w").value == b"w" and record.value == b"v"


def test_records_with_deserializers_and_without_headers(log: sqlog.Log, topic: str) -> None:
    """The column-wise path: deserialized keys and values, None kept as None, headers ()."""
    with log.producer(value_serializer=sqlog.JSON, key_serializer=sqlog.STRING) as producer:
        producer.send("t", {"n": 1}, key="a", partition=0, timestamp_ms=5)
        producer.send("t", None, key=None, partition=0, timestamp_ms=6)
        producer.send("t", [2], key="b", partition=0, timestamp_ms=7)
    consumer = log.consumer(auto_offset_reset="earliest", value_deserializer=sqlog.JSON,
                            key_deserializer=sqlog.STRING)
    consumer.assign([TP0])
    assert consumer.poll(timeout_ms=500) == [
        sqlog.Record("t", 0, 0, 5, "a", {"n": 1}), sqlog.Record("t", 0, 1, 6, None, None),
        sqlog.Record("t", 0, 2, 7, "b", [2]),
    ]


def test_fetch_buffers_without_moving_positions_and_take_slices_it(log: sqlog.Log, topic: str) -> None:
    """fetch() (sqlog.aio's read ahead) reads without moving positions; take() / take_grouped()
    hand the buffer out in order, across partitions, moving each position past what they hand
    out; iteration continues from the same buffer."""
    with log.producer() as producer:
        for i in range(6):
            producer.send("t", b"a%d" % i, key=b"k", headers=[("h", b"%d" % i)], partition=0, timestamp_ms=100 + i)
        for i in range(4):
            producer.send("t", b"b%d" % i, partition=1, timestamp_ms=200 + i)
    a = [sqlog.Record("t", 0, i, 100 + i, b"k", b"a%d" % i, (("h", b"%d" % i),)) for i in range(6)]
    b = [sqlog.Record("t", 1, i, 200 + i, None, b"b%d" % i, ()) for i in range(4)]
    consumer = log.consumer(auto_offset_reset="earliest")
    consumer.assign([TP0, TP1])  # the first read starts at the first partition assigned
    assert consumer.fetch(100) == 10
    assert consumer.position(TP0) == 0 and consumer.position(TP1) == 0
    assert consumer.fetch(100) == 10  # a full buffer is not read again
    assert consumer.take_grouped(4) == {TP0: a[:4]}
    assert consumer.position(TP0) == 4 and consumer.position(TP1) == 0
    assert consumer.take_grouped(3) == {TP0: a[4:], TP1: b[:1]}  # the end of one run, the start of the next
    assert consumer.position(TP0) == 6 and consumer.position(TP1) == 1
    assert next(consumer) == b[1]  # iteration takes from the same buffer
    assert consumer.position(TP1) == 2
    assert consumer.take(100) == b[2:]
    assert consumer.position(TP1) == 4
    assert consumer.take(100) == [] and consumer.fetch(100) == 0


def test_large_reads_come_whole_and_in_order(log: sqlog.Log, topic: str) -> None:
    """A read of more rows than `partitions.READ_SLICE` at once (read a slice at a time) returns
    them all, in order, through poll() and through fetch()/take()."""
    n = 1300
    with log.producer() as producer:
        producer.send_batch("t", [b"%d" % i for i in range(n)], partition=0)
    consumer = log.consumer(auto_offset_reset="earliest", max_poll_records=5000)
    consumer.assign([TP0])
    assert [r.value for r in consumer.poll(timeout_ms=500)] == [b"%d" % i for i in range(n)]
    consumer.seek(TP0, 7)
    assert consumer.fetch(5000) == n - 7
    assert [r.offset for r in consumer.take(5000)] == list(range(7, n))
    assert consumer.position(TP0) == n


def test_poll_with_nothing_new_waits_then_returns_empty(log: sqlog.Log, topic: str) -> None:
    consumer = log.consumer(auto_offset_reset="earliest")
    consumer.assign([TP0])
    start = time.monotonic()
    assert consumer.poll(timeout_ms=300) == []
    elapsed = time.monotonic() - start
    assert elapsed >= 0.28  # it did wait
    assert elapsed < 5
    assert consumer.poll(timeout_ms=0) == []


def test_blocking_poll_wakes_when_another_thread_sends(log: sqlog.Log, topic: str) -> None:
    consumer = log.consumer(auto_offset_reset="earliest")
    consumer.assign([TP0])
    consumer.poll(timeout_ms=0)  # resolve the position before the send
    out: dict[str, Any] = {}
    started = threading.Event()

    def wait_for_record() -> None:
        started.set()
        t0 = time.monotonic()
        out["records"] = consumer.poll(timeout_ms=2000)
        out["returned"] = time.monotonic()
        out["elapsed"] = out["returned"] - t0

    thread = threading.Thread(target=wait_for_record)
    thread.start()
    started.wait()
    time.sleep(0.1)
    producer = log.producer(linger_ms=600_000)
    producer.send("t", b"wake", partition=0)
    sent = time.monotonic()
    producer.flush()
    thread.join(5)
    assert values(out["records"]) == [b"wake"]
    assert out["returned"] - sent < 1.0
    assert out["elapsed"] < 1.9  # woke before its own timeout
    producer.close()


def test_blocking_poll_wakes_for_another_log_on_the_same_file(log: sqlog.Log, topic: str, log_path: str) -> None:
    other = sqlog.open(log_path)
    consumer = log.consumer(auto_offset_reset="earliest")
    consumer.assign([TP0])
    consumer.poll(timeout_ms=0)
    out: dict[str, Any] = {}

    def wait_for_record() -> None:
        t0 = time.monotonic()
        out["records"] = consumer.poll(timeout_ms=3000)
        out["elapsed"] = time.monotonic() - t0

    thread = threading.Thread(target=wait_for_record)
    thread.start()
    time.sleep(0.1)
    with other.producer() as producer:
        producer.send("t", b"from-other", partition=0).get(timeout=5)
    thread.join(5)
    assert values(out["records"]) == [b"from-other"]
    assert out["elapsed"] < 2.0


def test_subscription_picks_up_topic_created_later(log: sqlog.Log) -> None:
    consumer = log.consumer(auto_offset_reset="earliest")
    consumer.subscribe(["later"])
    assert consumer.poll(timeout_ms=50) == []
    assert consumer.assignment() == set()
    log.create_topic("later", partitions=2)
    produce(log, "later", [b"x"], partition=1)
    assert values(consumer.poll(timeout_ms=2000)) == [b"x"]
    assert consumer.assignment() == {TopicPartition("later", 0), TopicPartition("later", 1)}


def test_subscription_picks_up_topic_created_during_blocking_poll(log: sqlog.Log) -> None:
    consumer = log.consumer(auto_offset_reset="earliest")
    consumer.subscribe(["later"])
    consumer.poll(timeout_ms=0)
    out: dict[str, Any] = {}

    def run() -> None:
        t0 = time.monotonic()
        out["records"] = consumer.poll(timeout_ms=3000)
        out["elapsed"] = time.monotonic() - t0

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.1)
    log.create_topic("later")
    produce(log, "later", [b"x"])
    thread.join(5)
    assert values(out["records"]) == [b"x"]
    assert out["elapsed"] < 2.5


def test_subscription_picks_up_grown_partitions(log: sqlog.Log, topic: str) -> None:
    consumer = log.consumer(auto_offset_reset="earliest")
    consumer.subscribe(["t"])
    consumer.poll(timeout_ms=0)
    assert consumer.assignment() == {TP0, TP1}
    log.alter_topic("t", partitions=3)
    produce(log, "t", [b"new"], partition=2)
    assert values(consumer.poll(timeout_ms=2000)) == [b"new"]
    assert consumer.assignment() == {TP0, TP1, TopicPartition("t", 2)}


# -- iteration ----------------------------------------------------------------------------


def test_iteration_stops_after_consumer_timeout(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"%d" % i for i in range(5)], partition=0)
    consumer = log.consumer(auto_offset_reset="earliest", consumer_timeout_ms=200)
    consumer.assign([TP0])
    start = time.monotonic()
    got = [r.value for r in consumer]
    assert got == [b"%d" % i for i in range(5)]
    assert time.monotonic() - start < 5
    assert list(consumer) == []  # nothing new: stops again


def test_iteration_commits_only_what_was_yielded(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"%d" % i for i in range(20)], partition=0)
    consumer = log.consumer(group_id="g", auto_offset_reset="earliest", enable_auto_commit=False,
                            consumer_timeout_ms=500)
    consumer.assign([TP0])
    got = []
    for record in consumer:
        got.append(record.offset)
        if record.offset == 6:
            break  # mid-batch: the rest of the batch was fetched but not yielded
    assert got == list(range(7))
    assert consumer.position(TP0) == 7
    consumer.commit()
    assert consumer.committed(TP0) == 7
    consumer.close()

    fresh = log.consumer(group_id="g", auto_offset_reset="earliest", enable_auto_commit=False)
    fresh.assign([TP0])
    assert [r.offset for r in drain(fresh)] == list(range(7, 20))


def test_poll_after_partial_iteration_continues_after_last_yielded(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"%d" % i for i in range(10)], partition=0)
    consumer = log.consumer(auto_offset_reset="earliest", consumer_timeout_ms=500)
    consumer.assign([TP0])
    it = iter(consumer)
    assert [next(it).offset for _ in range(3)] == [0, 1, 2]
    assert [r.offset for r in drain(consumer)] == list(range(3, 10))


def test_iteration_blocks_for_the_next_record(log: sqlog.Log, topic: str) -> None:
    consumer = log.consumer(auto_offset_reset="earliest", consumer_timeout_ms=3000)
    consumer.assign([TP0])
    consumer.poll(timeout_ms=0)
    timer = threading.Timer(0.1, lambda: produce(log, "t", [b"late"], partition=0))
    timer.start()
    record = next(iter(consumer))
    timer.join()
    assert record.value == b"late"


# -- commits ------------------------------------------------------------------------------


def test_commit_positions_and_committed(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"a", b"b", b"c"], partition=0)
    consumer = log.consumer(group_id="g", auto_offset_reset="earliest", enable_auto_commit=False)
    consumer.subscribe(["t"])
    assert consumer.committed(TP0) is None
    assert len(drain(consumer)) == 3
    consumer.commit()
    assert consumer.committed(TP0) == 3
    assert consumer.committed(TP1) == 0  # position of an empty partition, resolved at poll


def test_commit_explicit_offsets(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"a", b"b", b"c"], partition=0)
    consumer = log.consumer(group_id="g", enable_auto_commit=False)
    consumer.commit({TP0: 2})
    assert consumer.committed(TP0) == 2
    consumer.commit({TP0: OffsetAndMetadata(1, "note")})
    assert consumer.committed(TP0) == 1
    consumer.commit({TP0: 3, TP1: 0})  # up to the high watermark is fine
    assert (consumer.committed(TP0), consumer.committed(TP1)) == (3, 0)
    other = log.consumer(group_id="other", enable_auto_commit=False)
    assert other.committed(TP0) is None  # groups are independent


def test_commit_without_group_id(log: sqlog.Log, topic: str) -> None:
    consumer = log.consumer(auto_offset_reset="earliest")
    consumer.assign([TP0])
    consumer.poll(timeout_ms=0)
    with pytest.raises(sqlog.IllegalStateError, match="group_id"):
        consumer.commit()
    with pytest.raises(sqlog.IllegalStateError):
        consumer.commit({TP0: 0})
    with pytest.raises(sqlog.IllegalStateError):
        consumer.committed(TP0)


def test_commit_beyond_high_watermark_fails_and_applies_nothing(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"a", b"b"], partition=0)
    consumer = log.consumer(group_id="g", enable_auto_commit=False)
    consumer.commit({TP0: 1})
    with pytest.raises(sqlog.CommitFailedError, match="high watermark"):
        consumer.commit({TP0: 3})
    with pytest.raises(sqlog.CommitFailedError):
        consumer.commit({TP0: 2, TP1: 1})  # TP1 is empty: the whole commit is refused
    assert consumer.committed(TP0) == 1
    assert consumer.committed(TP1) is None


def test_restart_resumes_at_committed_offset(log_path: str) -> None:
    log = sqlog.open(log_path)
    fill(log, "t", 30, 2, create=True)
    consumer = log.consumer(group_id="g", auto_offset_reset="earliest", enable_auto_commit=False)
    consumer.subscribe(["t"])
    first = consumer.poll(timeout_ms=500, max_records=7)
    assert len(first) == 7
    assert consumer.position(TP0) + consumer.position(TP1) == 7  # both resolved, so both committed
    consumer.commit()
    committed = {tp: consumer.committed(tp) for tp in (TP0, TP1)}
    assert sum(committed.values()) == 7  # type: ignore[arg-type]
    extra = consumer.poll(timeout_ms=500, max_records=5)  # read but never committed
    assert len(extra) == 5
    log.close()

    log = sqlog.open(log_path)
    consumer = log.consumer(group_id="g", auto_offset_reset="latest", enable_auto_commit=False)
    consumer.subscribe(["t"])
    rest = drain(consumer)
    for tp in (TP0, TP1):
        offsets = [r.offset for r in rest if r.partition == tp.partition]
        assert offsets == list(range(committed[tp], 15))  # type: ignore[arg-type]
    seen_before = {(r.partition, r.offset) for r in first}
    assert seen_before.isdisjoint({(r.partition, r.offset) for r in rest})
    assert len(seen_before) + len(rest) == 30


def test_auto_commit_on_poll_after_interval(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"%d" % i for i in range(10)], partition=0)
    consumer = log.consumer(group_id="g", auto_offset_reset="earliest", auto_commit_interval_ms=100)
    consumer.assign([TP0])
    assert len(consumer.poll(timeout_ms=500, max_records=4)) == 4
    assert consumer.committed(TP0) is None  # interval not yet elapsed at that poll
    time.sleep(0.15)
    assert len(consumer.poll(timeout_ms=500, max_records=4)) == 4
    assert consumer.committed(TP0) == 4  # positions of records returned before this poll


def test_auto_commit_on_close(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"%d" % i for i in range(10)], partition=0)
    consumer = log.consumer(group_id="g", auto_offset_reset="earliest", auto_commit_interval_ms=600_000)
    consumer.assign([TP0])
    assert len(consumer.poll(timeout_ms=500, max_records=6)) == 6
    assert len(consumer.poll(timeout_ms=500, max_records=1)) == 1
    assert consumer.committed(TP0) is None
    consumer.close()
    checker = log.consumer(group_id="g", enable_auto_commit=False)
    assert checker.committed(TP0) == 7


def test_auto_commit_on_log_close(log_path: str) -> None:
    log = sqlog.open(log_path)
    log.create_topic("t")
    produce(log, "t", [b"a", b"b"])
    consumer = log.consumer(group_id="g", auto_offset_reset="earliest", auto_commit_interval_ms=600_000)
    consumer.subscribe(["t"])
    assert len(drain(consumer)) == 2
    log.close()
    with sqlog.open(log_path) as log:
        assert log.consumer(group_id="g").committed(TP0) == 2


def test_no_auto_commit_when_disabled(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"a"], partition=0)
    consumer = log.consumer(group_id="g", auto_offset_reset="earliest", enable_auto_commit=False,
                            auto_commit_interval_ms=0)
    consumer.assign([TP0])
    assert len(drain(consumer)) == 1
    consumer.close()
    assert log.consumer(group_id="g").committed(TP0) is None


# -- auto_offset_reset --------------------------------------------------------------------


def test_auto_offset_reset_earliest_and_latest(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"old1", b"old2"], partition=0)
    earliest = log.consumer(group_id="e", auto_offset_reset="earliest", enable_auto_commit=False)
    latest = log.consumer(group_id="l", auto_offset_reset="latest", enable_auto_commit=False)
    default = log.consumer(group_id="d", enable_auto_commit=False)  # Kafka's default is latest
    for c in (earliest, latest, default):
        c.assign([TP0])
    assert earliest.position(TP0) == 0
    assert latest.position(TP0) == 2
    assert default.position(TP0) == 2
    produce(log, "t", [b"new"], partition=0)
    assert values(drain(earliest)) == [b"old1", b"old2", b"new"]
    assert values(drain(latest)) == [b"new"]
    assert values(drain(default)) == [b"new"]


def test_committed_offset_wins_over_reset_policy(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"a", b"b", b"c"], partition=0)
    log.consumer(group_id="g", enable_auto_commit=False).commit({TP0: 1})
    for reset in ("earliest", "latest", "none"):
        consumer = log.consumer(group_id="g", auto_offset_reset=reset, enable_auto_commit=False)
        consumer.assign([TP0])
        assert values(drain(consumer)) == [b"b", b"c"]


def test_auto_offset_reset_none_raises_at_poll_not_subscribe(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"a"], partition=0)
    consumer = log.consumer(group_id="g", auto_offset_reset="none", enable_auto_commit=False)
    consumer.subscribe(["t"])  # does not fail
    with pytest.raises(sqlog.OffsetOutOfRange):
        consumer.poll(timeout_ms=0)
    with pytest.raises(sqlog.OffsetOutOfRange):
        consumer.position(TP0)
    consumer.seek(TP0, 0)
    consumer.seek(TP1, 0)
    assert values(drain(consumer)) == [b"a"]

    assigned = log.consumer(auto_offset_reset="none")  # no group: nothing committed either
    assigned.assign([TP0])
    with pytest.raises(sqlog.OffsetOutOfRange):
        assigned.poll(timeout_ms=0)


# -- positions and seeking ----------------------------------------------------------------


def test_position_follows_poll(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"%d" % i for i in range(5)], partition=0)
    consumer = log.consumer(auto_offset_reset="earliest")
    consumer.assign([TP0])
    assert consumer.position(TP0) == 0
    consumer.poll(timeout_ms=100, max_records=2)
    assert consumer.position(TP0) == 2
    drain(consumer)
    assert consumer.position(TP0) == 5
    with pytest.raises(sqlog.IllegalStateError):
        consumer.position(TP1)  # not assigned


def test_seek(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"%d" % i for i in range(10)], partition=0)
    consumer = log.consumer(auto_offset_reset="earliest")
    consumer.assign([TP0])
    consumer.seek(TP0, 7)
    assert consumer.position(TP0) == 7
    assert [r.offset for r in drain(consumer)] == [7, 8, 9]
    consumer.seek(TP0, 2)
    assert [r.offset for r in consumer.poll(timeout_ms=100, max_records=2)] == [2, 3]
    consumer.seek(TP0, 10)  # exactly the end: nothing yet, then the next record
    assert consumer.poll(timeout_ms=0) == []
    produce(log, "t", [b"10"], partition=0)
    assert [r.offset for r in drain(consumer)] == [10]
    with pytest.raises(sqlog.IllegalStateError):
        consumer.seek(TP1, 0)


@pytest.mark.parametrize(("reset", "expected"), [("earliest", [0, 1, 2]), ("latest", [])])
def test_seek_past_the_end_follows_reset_policy(log: sqlog.Log, topic: str, reset: str, expected: list[int]) -> None:
    produce(log, "t", [b"a", b"b", b"c"], partition=0)
    consumer = log.consumer(auto_offset_reset=reset)
    consumer.assign([TP0])
    consumer.seek(TP0, 100)
    assert [r.offset for r in drain(consumer)] == expected
    assert consumer.position(TP0) == 3
    produce(log, "t", [b"d"], partition=0)
    assert [r.offset for r in drain(consumer)] == [3]


def test_seek_past_the_end_with_reset_none_raises(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"a"], partition=0)
    consumer = log.consumer(auto_offset_reset="none")
    consumer.assign([TP0])
    consumer.seek(TP0, 5)
    with pytest.raises(sqlog.OffsetOutOfRange):
        consumer.poll(timeout_ms=0)


def test_seek_to_beginning_and_end(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"a", b"b"], partition=0)
    produce(log, "t", [b"c"], partition=1)
    consumer = log.consumer(auto_offset_reset="earliest")
    consumer.assign([TP0, TP1])
    consumer.seek_to_end()
    assert (consumer.position(TP0), consumer.position(TP1)) == (2, 1)
    assert consumer.poll(timeout_ms=0) == []
    consumer.seek_to_beginning(TP1)
    assert (consumer.position(TP0), consumer.position(TP1)) == (2, 0)
    assert values(drain(consumer)) == [b"c"]
    consumer.seek_to_beginning()
    assert sorted(values(drain(consumer))) == [b"a", b"b", b"c"]
    consumer.seek_to_end(TP0)
    assert consumer.position(TP0) == 2
    with pytest.raises(sqlog.IllegalStateError):
        consumer.seek_to_end(TopicPartition("t", 5))


def test_beginning_and_end_offsets(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"a", b"b", b"c"], partition=1)
    consumer = log.consumer()
    # work without an assignment too
    assert consumer.beginning_offsets([TP0, TP1]) == {TP0: 0, TP1: 0}
    assert consumer.end_offsets([TP0, TP1]) == {TP0: 0, TP1: 3}
    consumer.assign([TP1])
    produce(log, "t", [b"d"], partition=1)
    assert consumer.end_offsets([TP1]) == {TP1: 4}
    with pytest.raises(sqlog.UnknownTopicOrPartitionError):
        consumer.end_offsets([TopicPartition("nope", 0)])


def test_offsets_for_times(log: sqlog.Log, topic: str) -> None:
    now_mds = produce(log, "t", [b"x"] * 5, partition=0)  # stamped now
    stamps = [100, 200, 200, 300, 400]
    with log.producer() as producer:
        for ts in stamps:  # one record per batch
            producer.send("t", b"x", partition=1, timestamp_ms=ts).get(timeout=5)
    consumer = log.consumer()
    ot = sqlog.OffsetAndTimestamp
    assert consumer.offsets_for_times({TP1: 0}) == {TP1: ot(0, 100)}
    assert consumer.offsets_for_times({TP1: 100}) == {TP1: ot(0, 100)}
    assert consumer.offsets_for_times({TP1: 101}) == {TP1: ot(1, 200)}
    assert consumer.offsets_for_times({TP1: 200}) == {TP1: ot(1, 200)}
    assert consumer.offsets_for_times({TP1: 201}) == {TP1: ot(3, 300)}
    assert consumer.offsets_for_times({TP1: 400}) == {TP1: ot(4, 400)}
    assert consumer.offsets_for_times({TP1: 401}) == {TP1: None}
    both = consumer.offsets_for_times({TP0: now_mds[2].timestamp_ms, TP1: 10**15})
    assert both[TP1] is None
    assert both[TP0] is not None and both[TP0].offset <= 2
    assert both[TP0].timestamp_ms == now_mds[both[TP0].offset].timestamp_ms
    assert consumer.offsets_for_times({TP0: now_mds[-1].timestamp_ms + 1}) == {TP0: None}


def test_offsets_for_times_with_out_of_order_timestamps_in_one_batch(log: sqlog.Log, topic: str) -> None:
    stamps = [500, 100, 300, 50, 400, 200]
    with log.producer(linger_ms=600_000) as producer:
        for ts in stamps:
            producer.send("t", b"x", partition=0, timestamp_ms=ts)
        producer.flush()
        for ts in stamps:
            producer.send("t", b"y", partition=0, timestamp_ms=ts + 1000)
        producer.flush()
    all_stamps = stamps + [ts + 1000 for ts in stamps]
    consumer = log.consumer()
    for target in [0, 50, 51, 100, 150, 301, 450, 500, 501, 1050, 1101, 1450, 1500, 1501]:
        expected = next(((o, ts) for o, ts in enumerate(all_stamps) if ts >= target), None)
        got = consumer.offsets_for_times({TP0: target})[TP0]
        assert (None if got is None else (got.offset, got.timestamp_ms)) == expected, target


def test_offsets_for_times_after_retention_cut_inside_a_batch(log: sqlog.Log) -> None:
    log.create_topic("r", retention_bytes=200)
    tp = TopicPartition("r", 0)
    with log.producer(linger_ms=600_000) as producer:
        producer.send("r", b"a" * 100, timestamp_ms=500)  # offset 0 } one batch
        producer.send("r", b"b" * 100, timestamp_ms=100)  # offset 1 }
        producer.flush()
        producer.send("r", b"c" * 100, timestamp_ms=600)  # offset 2: pushes offset 0 out
        producer.flush()
    part = log.describe_topic("r").partitions[0]
    assert (part.log_start_offset, part.high_watermark) == (1, 3)
    consumer = log.consumer()
    ot = sqlog.OffsetAndTimestamp
    assert consumer.offsets_for_times({tp: 50}) == {tp: ot(1, 100)}
    assert consumer.offsets_for_times({tp: 400}) == {tp: ot(2, 600)}


def test_seek_to_offsets_for_times_then_poll(log: sqlog.Log, topic: str) -> None:
    with log.producer() as producer:
        for i in range(10):
            producer.send("t", b"%d" % i, partition=0, timestamp_ms=1000 * i)
    consumer = log.consumer()
    consumer.assign([TP0])
    hit = consumer.offsets_for_times({TP0: 6500})[TP0]
    assert hit is not None
    consumer.seek(TP0, hit.offset)
    assert values(drain(consumer)) == [b"7", b"8", b"9"]


def test_pause_and_resume(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"a0", b"a1"], partition=0)
    produce(log, "t", [b"b0"], partition=1)
    consumer = log.consumer(auto_offset_reset="earliest")
    consumer.assign([TP0, TP1])
    consumer.pause(TP0)
    assert consumer.paused() == {TP0}
    assert values(drain(consumer)) == [b"b0"]
    assert consumer.position(TP0) == 0
    consumer.resume(TP0)
    assert consumer.paused() == set()
    assert values(drain(consumer)) == [b"a0", b"a1"]
    with pytest.raises(sqlog.IllegalStateError):
        consumer.pause(TopicPartition("t", 9))


def test_pause_all_partitions_poll_returns_empty(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"a"], partition=0)
    consumer = log.consumer(auto_offset_reset="earliest")
    consumer.assign([TP0])
    consumer.pause(TP0)
    assert consumer.poll(timeout_ms=50) == []
    consumer.resume(TP0)
    assert values(consumer.poll(timeout_ms=500)) == [b"a"]


# -- deserializers ------------------------------------------------------------------------


def test_key_and_value_deserializers(log: sqlog.Log, topic: str) -> None:
    with log.producer(value_serializer=sqlog.JSON, key_serializer=sqlog.STRING) as producer:
        producer.send("t", {"n": 1}, key="a", partition=0)
        producer.send("t", None, key=None, partition=0)
    consumer = log.consumer(auto_offset_reset="earliest", value_deserializer=sqlog.JSON,
                            key_deserializer=lambda b: b.decode().upper())
    consumer.assign([TP0])
    records = drain(consumer)
    assert [(r.key, r.value) for r in records] == [("A", {"n": 1}), (None, None)]


def _poison(data: bytes) -> int:
    if data == b"bad":
        raise ValueError("poison")
    return int(data)


def test_failing_deserializer_raises_and_does_not_advance(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"bad", b"1", b"2"], partition=0)
    consumer = log.consumer(auto_offset_reset="earliest", value_deserializer=_poison)
    consumer.assign([TP0])
    with pytest.raises(sqlog.SerializationError, match="offset 0"):
        consumer.poll(timeout_ms=100)
    assert consumer.position(TP0) == 0
    with pytest.raises(sqlog.SerializationError):
        consumer.poll(timeout_ms=100)  # still stuck on it
    assert consumer.position(TP0) == 0
    consumer.seek(TP0, 1)  # skip it, as the message says
    assert values(drain(consumer)) == [1, 2]


def test_records_before_a_poison_record_are_not_lost(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"1", b"2", b"bad", b"4"], partition=0)
    consumer = log.consumer(auto_offset_reset="earliest", value_deserializer=_poison)
    consumer.assign([TP0])
    got: list[int] = []
    with pytest.raises(sqlog.SerializationError, match="offset 2"):
        for _ in range(5):
            got.extend(values(consumer.poll(timeout_ms=100)))
    # Kafka returns the good records first, then raises with the position at the poison record.
    assert got == [1, 2]
    assert consumer.position(TP0) == 2
    consumer.seek(TP0, 3)
    assert values(drain(consumer)) == [4]


def test_failing_key_deserializer(log: sqlog.Log, topic: str) -> None:
    with log.producer() as producer:
        producer.send("t", b"v", key=b"\xff\xfe", partition=0)
    consumer = log.consumer(auto_offset_reset="earliest", key_deserializer=sqlog.STRING)
    consumer.assign([TP0])
    with pytest.raises(sqlog.SerializationError):
        consumer.poll(timeout_ms=100)
    assert consumer.position(TP0) == 0


# -- config and closing -------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {"bootstrap_servers": "localhost:9092"},
        {"group": "g"},
        {"group_id": ""},
        {"group_id": 7},
        {"auto_offset_reset": "smallest"},
        {"auto_commit_interval_ms": -1},
        {"max_poll_records": 0},
        {"consumer_timeout_ms": -5},
        {"value_deserializer": "json"},
        {"key_deserializer": 3},
        {"session_timeout_ms": "45s"},
    ],
)
def test_bad_consumer_config(log: sqlog.Log, config: dict[str, Any]) -> None:
    with pytest.raises(sqlog.InvalidConfigError):
        log.consumer(**config)


def test_closed_consumer_raises(log: sqlog.Log, topic: str) -> None:
    consumer = log.consumer(group_id="g")
    consumer.assign([TP0])
    consumer.close()
    consumer.close()  # idempotent
    for call in (
        lambda: consumer.poll(),
        lambda: consumer.commit(),
        lambda: consumer.committed(TP0),
        lambda: consumer.position(TP0),
        lambda: consumer.seek(TP0, 0),
        lambda: consumer.subscribe(["t"]),
        lambda: consumer.assign([TP0]),
        lambda: consumer.unsubscribe(),
        lambda: consumer.seek_to_end(),
        lambda: consumer.end_offsets([TP0]),
        lambda: consumer.offsets_for_times({TP0: 0}),
        lambda: next(iter(consumer)),
    ):
        with pytest.raises(sqlog.LogClosedError):
            call()


def test_consumer_context_manager(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"a"], partition=0)
    with log.consumer(group_id="g", auto_offset_reset="earliest") as consumer:
        consumer.assign([TP0])
        assert len(drain(consumer)) == 1
    with pytest.raises(sqlog.LogClosedError):
        consumer.poll()
    assert log.consumer(group_id="g").committed(TP0) == 1  # auto commit on close


def test_consumers_closed_with_the_log(log: sqlog.Log, topic: str) -> None:
    consumer = log.consumer()
    consumer.assign([TP0])
    log.close()
    with pytest.raises(sqlog.LogClosedError):
        consumer.poll()
    with pytest.raises(sqlog.LogClosedError):
        log.consumer()


def test_seek_past_the_end_with_auto_commit(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"a", b"b", b"c"], partition=0)
    consumer = log.consumer(group_id="g", auto_offset_reset="earliest", auto_commit_interval_ms=0)
    consumer.assign([TP0])
    consumer.seek(TP0, 100)
    try:
        assert [r.offset for r in drain(consumer)] == [0, 1, 2]
        consumer.close()
    finally:
        consumer.close(autocommit=False)  # no-op once closed; keeps the bug out of teardown
    assert log.consumer(group_id="g", enable_auto_commit=False).committed(TP0) == 3


def test_log_close_completes_when_a_consumer_commit_fails(log: sqlog.Log, topic: str) -> None:
    produce(log, "t", [b"a"], partition=0)
    consumer = log.consumer(group_id="g", auto_offset_reset="earliest")
    consumer.assign([TP0])
    assert len(drain(consumer)) == 1
    log.delete_topic("t")
    try:
        log.close()
    except sqlog.SqlogError:
        pass  # reporting the lost commit is fine; staying open is not
    assert log.closed
    with pytest.raises(sqlog.LogClosedError):
        log.list_topics()


def test_commit_after_seek_past_the_end_agrees_with_commit_of_that_offset(log: sqlog.Log) -> None:
    """commit() with no arguments after seek(tp, 50) past the end raises as commit({tp: 50}) does
    (CommitFailedError, nothing stored), never a silent no-op; auto-commit still leaves it out."""
    log.create_topic("t")
    tp = sqlog.TopicPartition("t", 0)
    with log.producer() as producer:
        for i in range(3):
            producer.send("t", b"%d" % i)
    c = log.consumer(group_id="g", enable_auto_commit=False, auto_offset_reset="earliest")
    c.assign([tp])
    c.commit({tp: 1})
    c.seek(tp, 50)
    with pytest.raises(sqlog.CommitFailedError, match="offset 50 for t-0: beyond its high watermark 3") as explicit:
        c.commit({tp: 50})
    with pytest.raises(sqlog.CommitFailedError) as implicit:
        c.commit()
    assert str(implicit.value) == str(explicit.value)
    assert c.committed(tp) == 1
    c.seek(tp, 3)
    c.commit()
    assert c.committed(tp) == 3
    c.close()
    auto = log.consumer(group_id="g", auto_commit_interval_ms=0)
    auto.assign([tp])
    auto.seek(tp, 50)
    auto.close()  # auto-commit on close: not the caller's error, the sought position is left out
    probe = log.consumer(group_id="g")
    probe.assign([tp])
    assert probe.committed(tp) == 3
    probe.close()
