"""Share groups (queue mode, KIP-932) in one process: every rule of acquisition, acknowledgement,
lock expiry, delivery counts, dead letters, compact state, retention, admin, and threads."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import apsw
import pytest
from helpers import open_log

import sqlog
from sqlog import ShareRecord, TopicPartition
from sqlog.share_groups import (
    DLQ_DELIVERY_COUNT,
    DLQ_GROUP,
    DLQ_MESSAGE,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TOPIC,
)


def _fill(log: sqlog.Log, n: int, topic: str = "jobs", partitions: int = 1, create: bool = True) -> None:
    if create:
        log.create_topic(topic, partitions=partitions)
    with log.producer() as producer:
        for i in range(n):
            producer.send(topic, f"job-{i}".encode(), partition=i % partitions)


def _share(log: sqlog.Log, topics: tuple[str, ...] = ("jobs",), group: str = "workers",
           **config: Any) -> sqlog.ShareConsumer:
    consumer = log.share_consumer(group, **config)
    consumer.subscribe(list(topics))
    return consumer


def _rows(log: sqlog.Log) -> int:
    return log.engine.conn.execute("SELECT count(*) FROM share_records").fetchone()[0]


def _dead(log: sqlog.Log, topic: str = "jobs.dlq") -> list[sqlog.Record]:
    reader = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
    reader.subscribe([topic])
    out = reader.poll(timeout_ms=200, max_records=10_000)
    reader.close()
    return out


def _ids(records: list[ShareRecord]) -> list[tuple[int, int, int]]:
    return [(r.partition, r.offset, r.delivery_count) for r in records]


@pytest.fixture
def log(log_path: str) -> sqlog.Log:
    return open_log(log_path)


# -- delivery and acknowledgement ------------------------------------------------------------
def test_first_delivery_counts_one_and_accept_finishes(log: sqlog.Log) -> None:
    _fill(log, 3)
    consumer = _share(log)
    records = consumer.poll(timeout_ms=500)
    assert all(isinstance(r, ShareRecord) and isinstance(r, sqlog.Record) for r in records)
    # Record's fields first, in Record's order, then delivery_count: never equal to a Record.
    assert ShareRecord._fields == sqlog.Record._fields + ("delivery_count",)
    assert tuple(records[0]) == ("jobs", 0, 0, records[0].timestamp_ms, None, b"job-0", (), 1)
    assert records[0] != sqlog.Record(*records[0][:7])
    assert _ids(records) == [(0, 0, 1), (0, 1, 1), (0, 2, 1)]
    assert [r.value for r in records] == [b"job-0", b"job-1", b"job-2"]
    for r in records:
        consumer.acknowledge(r)  # "accept" is the default
    consumer.commit()
    assert consumer.poll(timeout_ms=50) == []
    part = log.describe_share_group("workers").partitions[0]
    assert (part.start_offset, part.end_offset, part.in_flight, part.lag) == (3, 3, 0, 0)
    assert _rows(log) == 0, "finished records leave no rows behind"


def test_a_record_is_held_by_one_consumer_at_a_time(log: sqlog.Log) -> None:
    _fill(log, 10, partitions=2)
    a, b = _share(log), _share(log)
    ra = a.poll(timeout_ms=200, max_records=3)
    rb = b.poll(timeout_ms=200, max_records=100)
    assert len(ra) == 3 and len(rb) == 7
    assert not {(r.partition, r.offset) for r in ra} & {(r.partition, r.offset) for r in rb}
    desc = log.describe_share_group("workers")
    assert sum(p.acquired for p in desc.partitions) == 10 and desc.state == "Stable"


def test_release_makes_the_record_available_again_at_once(log: sqlog.Log) -> None:
    _fill(log, 2)
    a, b = _share(log), _share(log)
    first = a.poll(timeout_ms=200, max_records=1)
    a.acknowledge(first[0], type="release")
    a.commit()
    again = b.poll(timeout_ms=200)
    assert _ids(again) == [(0, 0, 2), (0, 1, 1)], "released records first (lowest offset), with the next count"


def test_poll_applies_pending_acknowledgements_in_its_transaction(log: sqlog.Log) -> None:
    _fill(log, 2)
    a = _share(log, max_poll_records=1)
    r = a.poll(timeout_ms=200)
    a.acknowledge(r[0], "release")
    assert _ids(a.poll(timeout_ms=200)) == [(0, 0, 2)]


def test_reject_archives_to_the_dead_letter_topic_with_headers(log: sqlog.Log) -> None:
    log.create_topic("jobs.dlq", partitions=2)
    log.create_topic("jobs", partitions=3)
    with log.producer() as producer:
        producer.send("jobs", b"bad", key=b"k", headers=[("trace", b"42")], partition=2)
    consumer = _share(log, dead_letter_topic="jobs.dlq")
    (record,) = consumer.poll(timeout_ms=200)
    consumer.acknowledge(record, "reject")
    consumer.commit()
    assert consumer.poll(timeout_ms=50) == []
    (dead,) = _dead(log)
    assert (dead.partition, dead.key, dead.value) == (2 % 2, b"k", b"bad")
    headers = dict(dead.headers)
    assert headers["trace"] == b"42", "the original headers come first"
    assert headers[DLQ_TOPIC] == b"jobs" and headers[DLQ_PARTITION] == b"2" and headers[DLQ_OFFSET] == b"0"
    assert headers[DLQ_GROUP] == b"workers" and headers[DLQ_DELIVERY_COUNT] == b"1"
    assert headers[DLQ_REASON] == b"rejected" and headers[DLQ_MESSAGE] == b"Offset rejected by client."
    part = [p for p in log.describe_share_group("workers").partitions if p.partition == 2][0]
    assert part.start_offset == 1 and part.lag == 0
    assert log.check().ok


def test_release_at_the_delivery_count_limit_archives(log: sqlog.Log) -> None:
    log.create_topic("jobs.dlq")
    _fill(log, 1)
    consumer = _share(log, delivery_count_limit=3, dead_letter_topic="jobs.dlq")
    seen = []
    for _ in range(5):
        records = consumer.poll(timeout_ms=100)
        seen.extend(r.delivery_count for r in records)
        for r in records:
            consumer.acknowledge(r, "release")
        consumer.commit()
    assert seen == [1, 2, 3]
    (dead,) = _dead(log)
    assert dict(dead.headers)[DLQ_DELIVERY_COUNT] == b"3"
    assert dict(dead.headers)[DLQ_REASON] == b"delivery_count_exceeded"


def test_acknowledge_reason_lands_in_the_dead_letter_message(log: sqlog.Log) -> None:
    log.create_topic("jobs.dlq")
    _fill(log, 3)
    consumer = _share(log, delivery_count_limit=1, dead_letter_topic="jobs.dlq")
    a, b, c = consumer.poll(timeout_ms=200)
    with pytest.raises(sqlog.InvalidConfigError, match="reason goes with type='reject' or 'release'"):
        consumer.acknowledge(a, "accept", reason="fine")
    with pytest.raises(sqlog.InvalidConfigError, match="reason must be a str"):
        consumer.acknowledge(a, "reject", reason=b"bytes")  # type: ignore[arg-type]
    consumer.acknowledge(a, "reject", reason="invalid order: missing 'item' (schema v2)")
    consumer.acknowledge(b, "release", reason="payment service timed out")  # at the limit: archived
    consumer.acknowledge(c, "reject")
    consumer.commit()
    messages = {dict(d.headers)[DLQ_OFFSET]: dict(d.headers)[DLQ_MESSAGE] for d in _dead(log)}
    assert messages == {b"0": b"invalid order: missing 'item' (schema v2)", b"1": b"payment service timed out",
                        b"2": b"Offset rejected by client."}
    consumer.close()


def test_archived_without_a_dead_letter_topic_is_just_done(log: sqlog.Log) -> None:
    _fill(log, 2)
    consumer = _share(log)
    records = consumer.poll(timeout_ms=100)
    consumer.acknowledge(records[0], "reject")
    consumer.acknowledge(records[1], "accept")
    consumer.commit()
    part = log.describe_share_group("workers").partitions[0]
    assert part.start_offset == 2 and _rows(log) == 0


def test_window_rows_stay_until_the_lowest_record_is_done(log: sqlog.Log) -> None:
    _fill(log, 5)
    consumer = _share(log)
    records = consumer.poll(timeout_ms=100)
    for r in records[1:]:
        consumer.acknowledge(r)
    consumer.acknowledge(records[0], "release")
    consumer.commit()
    part = log.describe_share_group("workers").partitions[0]
    assert (part.start_offset, part.end_offset, part.available, part.acknowledged, part.lag) == (0, 5, 1, 4, 1)
    assert _rows(log) == 5
    (again,) = consumer.poll(timeout_ms=100)
    consumer.acknowledge(again)
    consumer.commit()
    part = log.describe_share_group("workers").partitions[0]
    assert (part.start_offset, part.in_flight) == (5, 0) and _rows(log) == 0


# -- locks -----------------------------------------------------------------------------------
def test_an_expired_lock_redelivers_and_the_late_commit_fails(log: sqlog.Log) -> None:
    _fill(log, 2)
    slow = _share(log, record_lock_duration_ms=150)
    fast = _share(log, record_lock_duration_ms=150)
    held = slow.poll(timeout_ms=100)
    assert fast.poll(timeout_ms=0) == []
    started = time.monotonic()
    taken = fast.poll(timeout_ms=2000)  # wakes when the lock comes due, no commit needed
    assert 0.1 <= time.monotonic() - started < 1.5
    assert _ids(taken) == [(0, 0, 2), (0, 1, 2)]
    for r in held:
        slow.acknowledge(r)
    with pytest.raises(sqlog.CommitFailedError) as failure:
        slow.commit()
    assert isinstance(failure.value, sqlog.InvalidRecordStateError)
    assert sorted(failure.value.records) == [("jobs", 0, 0), ("jobs", 0, 1)]
    desc = log.describe_share_group("workers").partitions[0]
    assert desc.acquired == 2 and desc.acknowledged == 0, "nothing of the late acknowledgements was applied"
    for r in taken:
        fast.acknowledge(r)
    fast.commit()
    assert log.describe_share_group("workers").lag == 0
    assert slow.poll(timeout_ms=0) == [], "the refused records are forgotten by the slow consumer"


def test_an_acknowledgement_after_expiry_without_redelivery_applies(log: sqlog.Log) -> None:
    _fill(log, 1)
    consumer = _share(log, record_lock_duration_ms=50)
    (record,) = consumer.poll(timeout_ms=100)
    time.sleep(0.1)
    idle = _share(log, topics=("other",))  # same group, polls a topic with nothing: only expires locks
    log.create_topic("other")
    assert idle.poll(timeout_ms=0) == []
    (jobs,) = [p for p in log.describe_share_group("workers").partitions if p.topic == "jobs"]
    assert jobs.available == 1 and jobs.acquired == 0
    consumer.acknowledge(record)
    consumer.commit()
    assert log.describe_share_group("workers").lag == 0


def test_expiry_at_the_limit_archives_to_the_dead_letter_topic(log: sqlog.Log) -> None:
    log.create_topic("jobs.dlq")
    _fill(log, 1)
    counts = []
    for _ in range(3):
        consumer = _share(log, record_lock_duration_ms=30, delivery_count_limit=2, dead_letter_topic="jobs.dlq")
        counts.extend(r.delivery_count for r in consumer.poll(timeout_ms=200))
        time.sleep(0.06)
        log.engine.untrack(consumer)  # vanish without releasing, like a crash (never closed)
    assert counts == [1, 2]
    probe = _share(log, delivery_count_limit=2, dead_letter_topic="jobs.dlq")
    assert probe.poll(timeout_ms=0) == []
    (dead,) = _dead(log)
    assert dict(dead.headers)[DLQ_REASON] == b"delivery_count_exceeded"
    assert dict(dead.headers)[DLQ_DELIVERY_COUNT] == b"2"


def test_renew_extends_the_lock(log: sqlog.Log) -> None:
    _fill(log, 1)
    worker = _share(log, record_lock_duration_ms=300)
    thief = _share(log, record_lock_duration_ms=300)
    (record,) = worker.poll(timeout_ms=100)
    for _ in range(4):
        time.sleep(0.15)
        worker.acknowledge(record, "renew")
        worker.commit()
        assert thief.poll(timeout_ms=0) == []
    # Still held: a renewed record needs its final acknowledgement before the next poll.
    with pytest.raises(sqlog.IllegalStateError):
        worker.poll()
    worker.acknowledge(record, "accept")
    worker.commit()
    assert log.describe_share_group("workers").lag == 0


def test_renew_of_an_expired_lock_taken_by_another_fails(log: sqlog.Log) -> None:
    _fill(log, 1)
    worker = _share(log, record_lock_duration_ms=40)
    thief = _share(log, record_lock_duration_ms=5_000)
    (record,) = worker.poll(timeout_ms=100)
    time.sleep(0.08)
    assert len(thief.poll(timeout_ms=0)) == 1
    worker.acknowledge(record, "renew")
    with pytest.raises(sqlog.InvalidRecordStateError):
        worker.commit()


# -- modes and rules of the API ---------------------------------------------------------------
def test_explicit_mode_refuses_a_poll_before_every_record_is_acknowledged(log: sqlog.Log) -> None:
    _fill(log, 3)
    consumer = _share(log)
    records = consumer.poll(timeout_ms=100)
    consumer.acknowledge(records[0])
    with pytest.raises(sqlog.IllegalStateError, match="must be acknowledged"):
        consumer.poll()
    consumer.acknowledge(records[1], "release")
    consumer.acknowledge(records[2], "reject")
    assert _ids(consumer.poll(timeout_ms=100)) == [(0, 1, 2)]


def test_acknowledge_rejects_bad_calls(log: sqlog.Log) -> None:
    _fill(log, 2)
    consumer = _share(log)
    records = consumer.poll(timeout_ms=100)
    with pytest.raises(sqlog.InvalidConfigError):
        consumer.acknowledge(records[0], "maybe")
    with pytest.raises(sqlog.InvalidConfigError):
        consumer.acknowledge(sqlog.Record("jobs", 0, 0, 0, None, None))  # type: ignore[arg-type]
    forged = ShareRecord("jobs", 0, 1, 0, None, None, (), 7)
    with pytest.raises(sqlog.IllegalStateError):
        consumer.acknowledge(forged)
    consumer.acknowledge(records[0])
    with pytest.raises(sqlog.IllegalStateError, match="already acknowledged"):
        consumer.acknowledge(records[0], "reject")
    consumer.acknowledge(records[1])
    consumer.commit()
    with pytest.raises(sqlog.IllegalStateError):
        consumer.acknowledge(records[0])
    other = _share(log)
    with pytest.raises(sqlog.IllegalStateError):
        other.acknowledge(records[1])
    assert all(issubclass(e, sqlog.SqlogError) for e in (sqlog.InvalidRecordStateError, sqlog.IllegalStateError))


def test_implicit_mode_accepts_what_the_last_poll_returned(log: sqlog.Log) -> None:
    _fill(log, 6)
    consumer = _share(log, acknowledgement_mode="implicit", max_poll_records=2)
    assert len(consumer.poll(timeout_ms=100)) == 2
    with pytest.raises(sqlog.IllegalStateError, match="implicit"):
        consumer.acknowledge(ShareRecord("jobs", 0, 0, 0, None, None, (), 1))
    assert len(consumer.poll(timeout_ms=100)) == 2  # accepted the first two
    assert log.describe_share_group("workers").partitions[0].start_offset == 2
    consumer.commit()  # accepts the second two
    assert log.describe_share_group("workers").partitions[0].start_offset == 4
    assert len(consumer.poll(timeout_ms=100)) == 2
    consumer.close()  # and close accepts the last ones
    assert log.describe_share_group("workers").lag == 0


def test_close_releases_what_it_holds(log: sqlog.Log) -> None:
    _fill(log, 4)
    a = _share(log)
    records = a.poll(timeout_ms=100)
    a.acknowledge(records[0])
    a.close()
    a.close()  # idempotent
    b = _share(log)
    assert _ids(b.poll(timeout_ms=100)) == [(0, 1, 2), (0, 2, 2), (0, 3, 2)]
    with pytest.raises(sqlog.LogClosedError):
        a.poll()


def test_log_close_closes_share_consumers_and_releases(log_path: str) -> None:
    log = open_log(log_path)
    _fill(log, 2)
    consumer = _share(log)
    assert len(consumer.poll(timeout_ms=100)) == 2
    log.close()
    with pytest.raises(sqlog.LogClosedError):
        consumer.poll()
    with open_log(log_path) as again:
        assert _ids(_share(again).poll(timeout_ms=100)) == [(0, 0, 2), (0, 1, 2)]


def test_close_at_the_limit_archives(log: sqlog.Log) -> None:
    log.create_topic("jobs.dlq")
    _fill(log, 1)
    consumer = _share(log, delivery_count_limit=1, dead_letter_topic="jobs.dlq")
    assert len(consumer.poll(timeout_ms=100)) == 1
    consumer.close()
    assert len(_dead(log)) == 1
    assert log.describe_share_group("workers").lag == 0


def test_a_new_share_group_starts_at_the_log_start_by_default(log: sqlog.Log) -> None:
    _fill(log, 3)
    assert len(_share(log, group="early").poll(timeout_ms=100)) == 3
    late = _share(log, group="late", auto_offset_reset="latest")
    assert late.poll(timeout_ms=50) == []
    _fill(log, 2, create=False)
    assert [r.offset for r in late.poll(timeout_ms=100)] == [3, 4], "records sent after subscribe() are delivered"


def test_share_groups_are_independent_of_each_other_and_of_consumer_groups(log: sqlog.Log) -> None:
    _fill(log, 3)
    a, b = _share(log, group="a"), _share(log, group="b")
    assert len(a.poll(timeout_ms=100)) == 3 and len(b.poll(timeout_ms=100)) == 3
    reader = log.consumer(group_id="a", auto_offset_reset="earliest", enable_auto_commit=False)
    reader.subscribe(["jobs"])
    assert len(reader.poll(timeout_ms=100)) == 3
    assert log.list_share_groups() == ["a", "b"]


def test_deserialization_failure_releases_and_ends_in_the_dead_letter_topic(log: sqlog.Log) -> None:
    log.create_topic("jobs.dlq")
    log.create_topic("jobs")
    with log.producer() as producer:
        producer.send("jobs", b'{"ok": 1}')
        producer.send("jobs", b"not json")
        producer.send("jobs", b'{"ok": 2}')
    consumer = _share(log, value_deserializer=sqlog.JSON, delivery_count_limit=2, dead_letter_topic="jobs.dlq")
    first = consumer.poll(timeout_ms=100)
    assert [r.value for r in first] == [{"ok": 1}], "what precedes the bad record is returned"
    consumer.acknowledge(first[0])
    with pytest.raises(sqlog.SerializationError, match="released"):
        consumer.poll(timeout_ms=100)
    rest = consumer.poll(timeout_ms=100)
    assert [r.value for r in rest] == [{"ok": 2}]
    consumer.acknowledge(rest[0])
    with pytest.raises(sqlog.SerializationError):
        consumer.poll(timeout_ms=100)  # second delivery of the bad one: released at the limit
    assert consumer.poll(timeout_ms=50) == []
    (dead,) = _dead(log)
    assert dead.value == b"not json" and dict(dead.headers)[DLQ_DELIVERY_COUNT] == b"2"


def test_iteration_yields_one_record_at_a_time(log: sqlog.Log) -> None:
    _fill(log, 5)
    consumer = _share(log, consumer_timeout_ms=200, max_poll_records=2)
    seen = []
    for record in consumer:
        seen.append(record.offset)
        consumer.acknowledge(record)
    assert seen == [0, 1, 2, 3, 4]
    consumer.commit()
    assert log.describe_share_group("workers").lag == 0


def test_acknowledgement_commit_callback_reports_refusals_of_a_poll(log: sqlog.Log) -> None:
    _fill(log, 1)
    reports: list[tuple[dict[TopicPartition, set[int]], Any]] = []
    slow = _share(log, record_lock_duration_ms=30, acknowledgement_commit_callback=lambda o, e: reports.append((o, e)))
    (record,) = slow.poll(timeout_ms=100)
    time.sleep(0.06)
    assert len(_share(log).poll(timeout_ms=0)) == 1
    slow.acknowledge(record)
    assert slow.poll(timeout_ms=0) == []
    ((offsets, error),) = reports
    assert offsets == {TopicPartition("jobs", 0): {0}}
    assert isinstance(error, sqlog.InvalidRecordStateError)


def test_config_is_checked(log: sqlog.Log) -> None:
    log.create_topic("jobs")
    for bad in ({"acknowledgement_mode": "auto"}, {"auto_offset_reset": "none"}, {"delivery_count_limit": 0},
                {"record_lock_duration_ms": 0}, {"max_poll_records": 0}, {"partition_max_record_locks": 0},
                {"nope": 1}, {"acknowledgement_commit_callback": 3}, {"consumer_timeout_ms": -1}):
        with pytest.raises(sqlog.InvalidConfigError):
            log.share_consumer("g", **bad)
    with pytest.raises(sqlog.UnknownTopicOrPartitionError):
        log.share_consumer("g", dead_letter_topic="missing")
    with pytest.raises(sqlog.InvalidConfigError):
        log.share_consumer("")
    consumer = log.share_consumer("g")
    with pytest.raises(sqlog.IllegalStateError):
        consumer.poll()
    with pytest.raises(sqlog.InvalidTopicError):
        consumer.subscribe(["bad name"])
    with pytest.raises(sqlog.InvalidConfigError):
        consumer.subscribe("jobs")
    consumer.subscribe(["jobs"])
    for bad_timeout in (-1, float("nan"), "1"):
        with pytest.raises(sqlog.InvalidConfigError):
            consumer.poll(timeout_ms=bad_timeout)  # type: ignore[arg-type]
    with pytest.raises(sqlog.InvalidConfigError):
        consumer.poll(max_records=0)


def test_subscribing_to_a_topic_created_later(log: sqlog.Log) -> None:
    consumer = _share(log, topics=("later",))
    assert consumer.poll(timeout_ms=20) == []
    got: list[ShareRecord] = []
    thread = threading.Thread(target=lambda: got.extend(consumer.poll(timeout_ms=8000)))
    thread.start()
    time.sleep(0.1)
    _fill(log, 1, topic="later")
    thread.join()
    assert _ids(got) == [(0, 0, 1)]


def test_unsubscribe_releases_and_stops(log: sqlog.Log) -> None:
    _fill(log, 2)
    consumer = _share(log)
    assert len(consumer.poll(timeout_ms=100)) == 2
    consumer.unsubscribe()
    assert consumer.subscription() == set()
    with pytest.raises(sqlog.IllegalStateError):
        consumer.poll()
    assert log.describe_share_group("workers").partitions[0].available == 2


# -- waking ----------------------------------------------------------------------------------
def test_a_blocked_poll_wakes_at_once_for_an_append_in_this_process(log: sqlog.Log) -> None:
    log.create_topic("jobs")
    consumer = _share(log)
    producer = log.producer(linger_ms=0)
    woke: list[float] = []

    def wait() -> None:
        consumer.poll(timeout_ms=10_000)
        woke.append(time.monotonic())

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.2)
    sent = time.monotonic()
    producer.send("jobs", b"x").get()
    thread.join(5)
    assert woke and woke[0] - sent < 0.1, woke and woke[0] - sent


def test_a_blocked_poll_wakes_when_another_consumer_releases(log: sqlog.Log) -> None:
    _fill(log, 1)
    holder = _share(log)
    waiter = _share(log)
    (record,) = holder.poll(timeout_ms=100)
    got: list[ShareRecord] = []
    thread = threading.Thread(target=lambda: got.extend(waiter.poll(timeout_ms=10_000)))
    thread.start()
    time.sleep(0.2)
    released = time.monotonic()
    holder.acknowledge(record, "release")
    holder.commit()
    thread.join(5)
    assert _ids(got) == [(0, 0, 2)]
    assert time.monotonic() - released < 0.5


def test_an_idle_blocked_poll_takes_no_write_lock(log: sqlog.Log) -> None:
    _fill(log, 0)
    consumer = _share(log)
    other = log.producer(linger_ms=0)
    log.create_topic("noise")
    writes = []
    original = log.engine.write

    def counting() -> Any:
        writes.append(1)
        return original()

    log.engine.write = counting  # type: ignore[method-assign]
    thread = threading.Thread(target=lambda: consumer.poll(timeout_ms=600))
    thread.start()
    time.sleep(0.05)
    for _ in range(20):  # commits to another topic wake the poll, which only looks
        other.send("noise", b"n").get()
        time.sleep(0.01)
    thread.join()
    del log.engine.write
    assert len(writes) <= 2, len(writes)


# -- compact state and the in-flight window ---------------------------------------------------
def test_a_long_drain_keeps_the_state_small(log: sqlog.Log) -> None:
    _fill(log, 20_000, partitions=2)
    consumers = [_share(log, max_poll_records=100) for _ in range(3)]
    peak = 0
    done = 0
    while done < 20_000:
        for consumer in consumers:
            records = consumer.poll(timeout_ms=0)
            for r in records:
                consumer.acknowledge(r)
            done += len(records)
            peak = max(peak, _rows(log))
        for consumer in consumers:
            consumer.commit()
    assert peak <= 300, peak
    assert _rows(log) == 0
    assert log.describe_share_group("workers").lag == 0
    assert log.check().ok


def test_the_in_flight_window_is_capped_per_partition(log: sqlog.Log) -> None:
    _fill(log, 50)
    stuck = _share(log, max_poll_records=1, partition_max_record_locks=10)
    fast = _share(log, partition_max_record_locks=10)
    (head,) = stuck.poll(timeout_ms=100)
    total = 0
    for _ in range(5):
        records = fast.poll(timeout_ms=0)
        total += len(records)
        for r in records:
            fast.acknowledge(r)
        fast.commit()
    assert total == 9, "the window [0, 10) holds the stuck record and nine done ones"
    assert _rows(log) == 10
    stuck.acknowledge(head)
    stuck.commit()
    assert len(fast.poll(timeout_ms=100)) == 10


# -- retention and topics --------------------------------------------------------------------
def test_retention_removes_records_from_the_queue_too(log: sqlog.Log) -> None:
    log.create_topic("jobs", retention_bytes=100)
    consumer = _share(log, max_poll_records=2)
    held = consumer.poll(timeout_ms=0)
    assert held == []
    with log.producer() as producer:
        producer.send("jobs", b"x" * 60)
    held = consumer.poll(timeout_ms=100)
    with log.producer(batch_size=1) as producer:
        for _ in range(5):
            producer.send("jobs", b"y" * 60)
    start = log.describe_topic("jobs").partitions[0].log_start_offset
    assert start >= 1
    part = log.describe_share_group("workers").partitions[0]
    assert part.start_offset == start and part.end_offset >= start, "the share group follows the log start"
    assert log.check().ok
    consumer.acknowledge(held[0])
    with pytest.raises(sqlog.InvalidRecordStateError):
        consumer.commit()  # its record is gone
    assert [r.offset for r in consumer.poll(timeout_ms=100)] == [start, start + 1][: 6 - start]


def test_deleting_a_topic_deletes_its_share_state(log: sqlog.Log) -> None:
    _fill(log, 3)
    consumer = _share(log)
    held = consumer.poll(timeout_ms=100)
    assert len(held) == 3
    log.delete_topic("jobs")
    assert _rows(log) == 0
    assert log.engine.conn.execute("SELECT count(*) FROM share_partitions").fetchone()[0] == 0
    for r in held:
        consumer.acknowledge(r)
    with pytest.raises(sqlog.InvalidRecordStateError):
        consumer.commit()  # the records went with the topic
    _fill(log, 2)
    assert _ids(consumer.poll(timeout_ms=200)) == [(0, 0, 1), (0, 1, 1)], "a new topic of the same name starts anew"


# -- admin -----------------------------------------------------------------------------------
def test_describe_counts_and_states(log: sqlog.Log) -> None:
    _fill(log, 10)
    assert log.describe_share_group("nobody") == sqlog.ShareGroupDescription("nobody", "Dead", ())
    consumer = _share(log, max_poll_records=4, record_lock_duration_ms=60_000)
    records = consumer.poll(timeout_ms=100)
    consumer.acknowledge(records[1])
    consumer.acknowledge(records[2], "reject")
    consumer.acknowledge(records[3], "release")
    consumer.acknowledge(records[0], "renew")
    consumer.commit()
    desc = log.describe_share_group("workers")
    assert desc.state == "Stable"
    (part,) = desc.partitions
    assert part == sqlog.SharePartitionState("jobs", 0, start_offset=0, log_end_offset=10, in_flight=4, acquired=1,
                                             available=1, acknowledged=1, archived=1, dead_lettered=1, lag=8)
    assert (part.high_watermark, part.end_offset) == (10, 4)  # the former names, as properties
    assert desc.lag == 8
    consumer.acknowledge(records[0])
    consumer.close()
    assert log.describe_share_group("workers").state == "Empty"
    # dead_lettered is a running count: it stays after the archived record fell behind the start offset.
    drain = _share(log, acknowledgement_mode="implicit")
    while drain.poll(timeout_ms=100):
        pass
    drain.close()
    (part,) = log.describe_share_group("workers").partitions
    assert (part.start_offset, part.in_flight, part.archived, part.dead_lettered, part.lag) == (10, 0, 0, 1, 0)


def test_delete_share_group(log: sqlog.Log) -> None:
    _fill(log, 2)
    consumer = _share(log)
    consumer.poll(timeout_ms=100)
    with pytest.raises(sqlog.GroupNotEmptyError, match="locked"):
        log.delete_share_group("workers")
    consumer.close()
    log.delete_share_group("workers")
    assert log.list_share_groups() == []
    with pytest.raises(sqlog.GroupIdNotFoundError):
        log.delete_share_group("workers")
    assert len(_share(log).poll(timeout_ms=100)) == 2, "a deleted group starts over"


# -- threads ---------------------------------------------------------------------------------
def test_threads_drain_every_record_exactly_once(log: sqlog.Log) -> None:
    n = 3000
    _fill(log, n, partitions=3)
    accepted: list[tuple[int, int]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            consumer = _share(log, max_poll_records=7)
            idle = 0
            while idle < 5:
                records = consumer.poll(timeout_ms=50)
                if not records:
                    idle += 1
                    continue
                idle = 0
                for r in records:
                    consumer.acknowledge(r)
                consumer.commit()
                with lock:
                    accepted.extend((r.partition, r.offset) for r in records)
            consumer.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    counts = Counter(accepted)
    assert len(counts) == n and set(counts.values()) == {1}
    assert _rows(log) == 0


# -- schema ----------------------------------------------------------------------------------
def test_a_schema_1_file_is_migrated(log_path: str) -> None:
    from sqlog.storage import APPLICATION_ID, MIGRATIONS

    conn = apsw.Connection(log_path)
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(MIGRATIONS[0])
    conn.execute(
        "INSERT INTO topics(name, retention_ms, retention_bytes, created_ms) VALUES ('old', NULL, NULL, 0);"
        "INSERT INTO partitions(topic_id, partition) VALUES (1, 0);"
        "CREATE TABLE p1_0(offset INTEGER PRIMARY KEY, ts INTEGER NOT NULL, key BLOB, value BLOB, headers BLOB);"
        f"PRAGMA application_id={APPLICATION_ID}; PRAGMA user_version=1;"
    )
    conn.close()
    with open_log(log_path) as log:
        assert log.describe_topic("old").retention_policy == "limits"
        _fill(log, 2, topic="old", create=False)
        assert len(_share(log, topics=("old",)).poll(timeout_ms=100)) == 2
        assert log.engine.conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_check_finds_broken_share_state(log: sqlog.Log) -> None:
    _fill(log, 3)
    consumer = _share(log)
    consumer.poll(timeout_ms=100)
    assert log.check().ok
    with log.engine.write() as conn:
        conn.execute("DELETE FROM share_records WHERE offset = 1")
        conn.execute("UPDATE share_partitions SET end_offset = 9")
    violations = log.check().violations
    assert any("outside the log" in v for v in violations) and any("rows in" in v for v in violations)


def test_a_locked_file_waits_busy_timeout_ms_then_fails(log_path: str) -> None:
    log = open_log(log_path, busy_timeout_ms=300)
    log.create_topic("jobs")
    holder = apsw.Connection(log_path)
    holder.execute("BEGIN IMMEDIATE")  # another process's write lock, held
    consumer = log.share_consumer("workers")
    started = time.monotonic()
    with pytest.raises(sqlog.DatabaseLockedError):
        consumer.subscribe(["jobs"])
    assert 0.25 <= time.monotonic() - started < 2
    released_at: list[float] = []

    def release() -> None:
        time.sleep(0.1)
        holder.execute("COMMIT")
        released_at.append(time.monotonic())

    thread = threading.Thread(target=release)
    thread.start()
    consumer.subscribe(["jobs"])  # gets the lock within a few ms of its release (short retries)
    done = time.monotonic()
    thread.join()
    assert done - released_at[0] < 0.05
    holder.close()
