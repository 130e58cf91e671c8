"""Topic admin (create / list / describe / alter / delete) and the Log's own lifecycle."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sqlog
from sqlog import TopicPartition
from helpers import read_all

VALID_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


def send_all(log: sqlog.Log, topic: str, values: list[bytes], **kwargs: object) -> list[sqlog.RecordMetadata]:
    with log.producer(**kwargs) as producer:
        futures = [producer.send(topic, v) for v in values]
        producer.flush()
        return [f.get(timeout=5) for f in futures]


# -- create_topic -------------------------------------------------------------------------


def test_create_topic_exist_ok(log: sqlog.Log) -> None:
    first = log.create_topic("orders", partitions=3, retention_ms=60_000)
    send_all(log, "orders", [b"a"])
    again = log.create_topic("orders", partitions=3, exist_ok=True)  # quietly: nothing changes
    assert again == log.describe_topic("orders") and again.retention_ms == first.retention_ms
    assert sum(p.records for p in again.partitions) == 1
    with pytest.raises(sqlog.TopicAlreadyExistsError, match="exist_ok=True"):
        log.create_topic("orders", partitions=3)
    with pytest.raises(sqlog.TopicAlreadyExistsError, match="with 3 partition.*not 4"):
        log.create_topic("orders", partitions=4, exist_ok=True)
    with pytest.raises(sqlog.InvalidConfigError, match="exist_ok"):
        log.create_topic("other", exist_ok="yes")  # type: ignore[arg-type]
    assert log.create_topic("new", exist_ok=True).name == "new"



def test_create_topic_defaults(log: sqlog.Log) -> None:
    desc = log.create_topic("orders")
    assert desc == sqlog.TopicDescription(
        name="orders",
        partitions=[sqlog.PartitionDescription(partition=0, log_start_offset=0, high_watermark=0, bytes=0, records=0)],
        retention_ms=None,
        retention_bytes=None,
    )
    assert log.describe_topic("orders") == desc


def test_create_topic_with_partitions_and_retention(log: sqlog.Log) -> None:
    desc = log.create_topic("orders", partitions=3, retention_ms=7 * 86_400_000, retention_bytes=1 << 20)
    assert desc.name == "orders"
    assert [p.partition for p in desc.partitions] == [0, 1, 2]
    assert all((p.log_start_offset, p.high_watermark, p.bytes, p.records) == (0, 0, 0, 0) for p in desc.partitions)
    assert desc.retention_ms == 7 * 86_400_000
    assert desc.retention_bytes == 1 << 20
    assert log.describe_topic("orders") == desc


@pytest.mark.parametrize("forever", [None, -1])
def test_retention_minus_one_or_none_means_forever(log: sqlog.Log, forever: int | None) -> None:
    desc = log.create_topic("t", retention_ms=forever, retention_bytes=forever)
    assert (desc.retention_ms, desc.retention_bytes) == (None, None)


@pytest.mark.parametrize("bad", [0, -2, -1000, 1.5, -1.0, "1000", True, b"1"])
@pytest.mark.parametrize("which", ["retention_ms", "retention_bytes"])
def test_create_topic_bad_retention(log: sqlog.Log, which: str, bad: object) -> None:
    with pytest.raises(sqlog.InvalidConfigError, match=which):
        log.create_topic("t", **{which: bad})
    assert log.list_topics() == []


@pytest.mark.parametrize("bad", [0, -1, 1.0, "3", True, None, 4097, 10**9])
def test_create_topic_bad_partitions(log: sqlog.Log, bad: object) -> None:
    with pytest.raises(sqlog.InvalidPartitionsError):
        log.create_topic("t", partitions=bad)  # type: ignore[arg-type]
    assert log.list_topics() == []


def test_create_existing_topic_fails_and_keeps_it(log: sqlog.Log) -> None:
    log.create_topic("orders", partitions=2, retention_ms=60_000)
    with log.producer() as producer:
        producer.send("orders", b"a", partition=1).get(timeout=5)
    with pytest.raises(sqlog.TopicAlreadyExistsError, match="orders"):
        log.create_topic("orders")
    with pytest.raises(sqlog.TopicAlreadyExistsError):
        log.create_topic("orders", partitions=5, retention_ms=1)
    desc = log.describe_topic("orders")
    assert len(desc.partitions) == 2
    assert desc.retention_ms == 60_000
    assert desc.partitions[1].high_watermark == 1
    assert [r.value for r in read_all(log, "orders", 1)] == [b"a"]


def test_topic_names_are_case_sensitive(log: sqlog.Log) -> None:
    log.create_topic("Orders")
    log.create_topic("orders")
    assert log.list_topics() == ["Orders", "orders"]


@pytest.mark.parametrize("name", ["a", "A.b_c-9", "...", "-", "_", ".a", "a..", "x" * 249])
def test_valid_edge_case_names(log: sqlog.Log, name: str) -> None:
    log.create_topic(name)
    assert log.list_topics() == [name]
    send_all(log, name, [b"v"])
    assert [r.value for r in read_all(log, name)] == [b"v"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.one_of(st.text(max_size=260), st.from_regex(VALID_NAME, fullmatch=True), st.sampled_from([".", ".."])))
def test_any_string_creates_a_topic_or_raises_invalid_topic(log: sqlog.Log, name: str) -> None:
    try:
        log.create_topic(name)
    except sqlog.InvalidTopicError as exc:
        assert not VALID_NAME.fullmatch(name) or name in (".", "..")
        assert "topic name" in str(exc)
        assert name not in log.list_topics()
    else:
        assert VALID_NAME.fullmatch(name) and name not in (".", "..")
        assert name in log.list_topics()
        assert log.describe_topic(name).name == name
        log.delete_topic(name)


# -- list_topics --------------------------------------------------------------------------


def test_list_topics_empty_then_sorted(log: sqlog.Log) -> None:
    assert log.list_topics() == []
    names = ["zeta", "alpha", "Beta", "alpha-2", "alpha.2", "alpha_2", "9", "m"]
    for name in names:
        log.create_topic(name)
    assert log.list_topics() == sorted(names)


# -- describe_topic -----------------------------------------------------------------------


def test_describe_counts_records_offsets_and_bytes(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=3)
    with log.producer() as producer:
        for _ in range(5):
            producer.send("t", b"v" * 10, key=b"k" * 4, partition=0)
        for _ in range(2):
            producer.send("t", b"w" * 100, partition=2)
        producer.flush()
    desc = log.describe_topic("t")
    p0, p1, p2 = desc.partitions
    assert (p0.partition, p0.log_start_offset, p0.high_watermark, p0.records) == (0, 0, 5, 5)
    assert (p1.partition, p1.log_start_offset, p1.high_watermark, p1.records, p1.bytes) == (1, 0, 0, 0, 0)
    assert (p2.partition, p2.log_start_offset, p2.high_watermark, p2.records) == (2, 0, 2, 2)
    assert p0.bytes >= 5 * 14
    assert p2.bytes >= 200
    before = p2.bytes
    send_all(log, "t", [b"x" * 1000])
    # keyless record may land anywhere: total bytes grow by at least its size
    after = sum(p.bytes for p in log.describe_topic("t").partitions)
    assert after >= p0.bytes + before + 1000


def test_describe_unknown_topic(log: sqlog.Log) -> None:
    log.create_topic("known")
    with pytest.raises(sqlog.UnknownTopicOrPartitionError, match="nope"):
        log.describe_topic("nope")


def test_value_types_are_frozen(log: sqlog.Log) -> None:
    desc = log.create_topic("t")
    with pytest.raises(AttributeError):
        desc.name = "u"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        desc.partitions[0].high_watermark = 5  # type: ignore[misc]


# -- alter_topic --------------------------------------------------------------------------


def test_alter_grows_partitions_keeping_data(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=1)
    send_all(log, "t", [b"a", b"b"])
    desc = log.alter_topic("t", partitions=4)
    assert [p.partition for p in desc.partitions] == [0, 1, 2, 3]
    assert desc.partitions[0].high_watermark == 2
    assert all(p.high_watermark == 0 and p.log_start_offset == 0 for p in desc.partitions[1:])
    assert log.describe_topic("t") == desc
    assert [r.value for r in read_all(log, "t", 0)] == [b"a", b"b"]
    # the new partitions are usable, and keys now hash over 4 partitions
    with log.producer() as producer:
        md = producer.send("t", b"x", partition=3).get(timeout=5)
        assert (md.partition, md.offset) == (3, 0)
        key = b"some-key"
        md = producer.send("t", b"y", key=key).get(timeout=5)
        assert md.partition == sqlog.partition_for_key(key, 4)


def test_alter_cannot_shrink(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=3)
    with pytest.raises(sqlog.InvalidPartitionsError, match="grow"):
        log.alter_topic("t", partitions=2)
    with pytest.raises(sqlog.InvalidPartitionsError):
        log.alter_topic("t", partitions=0)
    assert len(log.describe_topic("t").partitions) == 3


def test_alter_retention_and_none_clears(log: sqlog.Log) -> None:
    log.create_topic("t", retention_ms=1000)
    desc = log.alter_topic("t", retention_bytes=4096)
    assert (desc.retention_ms, desc.retention_bytes) == (1000, 4096)  # untouched setting kept
    desc = log.alter_topic("t", retention_ms=5000)
    assert (desc.retention_ms, desc.retention_bytes) == (5000, 4096)
    desc = log.alter_topic("t", retention_ms=None)
    assert (desc.retention_ms, desc.retention_bytes) == (None, 4096)
    desc = log.alter_topic("t", retention_bytes=-1)
    assert (desc.retention_ms, desc.retention_bytes) == (None, None)
    desc = log.alter_topic("t", retention_ms=1, retention_bytes=2, partitions=2)
    assert (desc.retention_ms, desc.retention_bytes, len(desc.partitions)) == (1, 2, 2)
    assert log.describe_topic("t") == desc


def test_alter_with_no_change_keeps_everything(log: sqlog.Log) -> None:
    before = log.create_topic("t", partitions=2, retention_ms=10, retention_bytes=20)
    assert log.alter_topic("t") == before


@pytest.mark.parametrize("bad", [0, -5, "10", 2.5])
def test_alter_bad_retention_changes_nothing(log: sqlog.Log, bad: object) -> None:
    log.create_topic("t", retention_ms=1000, retention_bytes=2000)
    with pytest.raises(sqlog.InvalidConfigError):
        log.alter_topic("t", retention_ms=bad)
    with pytest.raises(sqlog.InvalidConfigError):
        log.alter_topic("t", partitions=3, retention_bytes=bad)
    desc = log.describe_topic("t")
    assert (desc.retention_ms, desc.retention_bytes, len(desc.partitions)) == (1000, 2000, 1)


def test_alter_unknown_topic(log: sqlog.Log) -> None:
    with pytest.raises(sqlog.UnknownTopicOrPartitionError):
        log.alter_topic("ghost", partitions=2)


# -- delete_topic -------------------------------------------------------------------------


def test_delete_topic(log: sqlog.Log) -> None:
    log.create_topic("a")
    log.create_topic("b", partitions=2)
    send_all(log, "b", [b"1", b"2"])
    log.delete_topic("b")
    assert log.list_topics() == ["a"]
    with pytest.raises(sqlog.UnknownTopicOrPartitionError):
        log.describe_topic("b")
    with pytest.raises(sqlog.UnknownTopicOrPartitionError):
        log.delete_topic("b")
    assert log.describe_topic("a").partitions[0].high_watermark == 0


def test_recreated_topic_starts_at_offset_zero_without_old_data_or_commits(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=2)
    send_all(log, "t", [b"old"] * 5)
    tp = TopicPartition("t", 0)
    c = log.consumer(group_id="g", enable_auto_commit=False)
    c.commit({tp: 0, TopicPartition("t", 1): 0})
    assert c.committed(tp) == 0
    c.close()
    log.delete_topic("t")
    desc = log.create_topic("t", partitions=1)
    assert desc.partitions[0].high_watermark == 0
    mds = send_all(log, "t", [b"new1", b"new2"])
    assert [(m.partition, m.offset) for m in mds] == [(0, 0), (0, 1)]
    assert [r.value for r in read_all(log, "t")] == [b"new1", b"new2"]
    c = log.consumer(group_id="g", enable_auto_commit=False)
    assert c.committed(tp) is None


def test_producer_sees_deleted_topic_gone(log: sqlog.Log) -> None:
    log.create_topic("t")
    producer = log.producer()
    producer.send("t", b"x").get(timeout=5)
    log.delete_topic("t")
    with pytest.raises(sqlog.UnknownTopicOrPartitionError):
        producer.send("t", b"y")
    log.create_topic("t")
    md = producer.send("t", b"z").get(timeout=5)
    assert (md.partition, md.offset) == (0, 0)
    producer.close()


def test_pending_records_of_a_deleted_topic_fail(log: sqlog.Log) -> None:
    log.create_topic("t")
    log.create_topic("other")
    producer = log.producer(linger_ms=60_000)
    doomed = producer.send("t", b"x")
    fine = producer.send("other", b"y")
    log.delete_topic("t")
    producer.flush()
    with pytest.raises(sqlog.UnknownTopicOrPartitionError):
        doomed.get(timeout=5)
    assert isinstance(doomed.exception(timeout=5), sqlog.UnknownTopicOrPartitionError)
    assert fine.get(timeout=5).offset == 0
    producer.close()


def test_subscribed_consumer_drops_deleted_topic(log: sqlog.Log) -> None:
    log.create_topic("a")
    log.create_topic("b", partitions=2)
    send_all(log, "a", [b"a0"])
    c = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
    c.subscribe(["a", "b"])
    assert [r.value for r in c.poll(timeout_ms=500)] == [b"a0"]
    assert c.assignment() == {TopicPartition("a", 0), TopicPartition("b", 0), TopicPartition("b", 1)}
    log.delete_topic("b")
    assert c.poll(timeout_ms=50) == []
    assert c.assignment() == {TopicPartition("a", 0)}
    send_all(log, "a", [b"a1"])
    assert [r.value for r in c.poll(timeout_ms=500)] == [b"a1"]


def _send_to(log: sqlog.Log, tp: TopicPartition, values: list[bytes]) -> None:
    with log.producer() as producer:
        for v in values:
            producer.send(tp.topic, v, partition=tp.partition).get(timeout=5)


@pytest.mark.parametrize("reset", ["earliest", "latest"])
def test_assigned_consumer_resumes_on_a_recreated_topic(log: sqlog.Log, reset: str) -> None:
    """As Kafka: raising while the topic is gone is fine; once it is back, poll(), end_offsets(),
    seek_to_end() and position() work on the new topic, from offset 0."""
    tp = TopicPartition("t", 1)
    log.create_topic("t", partitions=2)
    _send_to(log, tp, [b"old0", b"old1", b"old2"])
    c = log.consumer(group_id="g", auto_offset_reset=reset, enable_auto_commit=False)
    c.assign([tp])
    c.seek_to_beginning(tp)
    assert [r.value for r in c.poll(timeout_ms=500)] == [b"old0", b"old1", b"old2"]
    c.commit()
    log.delete_topic("t")
    with pytest.raises(sqlog.UnknownTopicOrPartitionError, match="once it is created"):
        c.poll(timeout_ms=50)
    with pytest.raises(sqlog.UnknownTopicOrPartitionError):
        c.end_offsets([tp])
    log.create_topic("t", partitions=2)
    assert c.end_offsets([tp]) == {tp: 0} and c.beginning_offsets([tp]) == {tp: 0}
    c.seek_to_end(tp)
    assert c.position(tp) == 0
    _send_to(log, tp, [b"new0", b"new1"])
    assert [(r.offset, r.value) for r in c.poll(timeout_ms=500)] == [(0, b"new0"), (1, b"new1")]
    # A second round, this time without any call between the delete and the re-creation.
    log.delete_topic("t")
    log.create_topic("t", partitions=2)
    _send_to(log, tp, [b"again"])
    got = c.poll(timeout_ms=500)
    assert [(r.offset, r.value) for r in got] == ([(0, b"again")] if reset == "earliest" else [])
    c.assign([tp])  # assign() again keeps the (now current) partition
    assert c.position(tp) == 1
    c.close()


def test_assigned_consumer_gets_unknown_topic_after_delete(log: sqlog.Log) -> None:
    log.create_topic("t")
    send_all(log, "t", [b"x"])
    c = log.consumer(auto_offset_reset="earliest")
    c.assign([TopicPartition("t", 0)])
    assert len(c.poll(timeout_ms=500)) == 1
    log.delete_topic("t")
    with pytest.raises(sqlog.UnknownTopicOrPartitionError):
        c.poll(timeout_ms=50)


# -- the Log ------------------------------------------------------------------------------


def test_open_as_context_manager_closes(log_path: str) -> None:
    with sqlog.open(log_path) as log:
        assert isinstance(log, sqlog.Log)
        log.create_topic("t")
    assert log.closed
    with pytest.raises(sqlog.LogClosedError):
        log.list_topics()


def test_close_is_idempotent(log: sqlog.Log) -> None:
    log.close()
    log.close()
    assert log.closed


def test_close_flushes_lingering_records(log_path: str) -> None:
    log = sqlog.open(log_path)
    log.create_topic("t")
    producer = log.producer(linger_ms=60_000)
    futures = [producer.send("t", bytes([i])) for i in range(3)]
    log.close()
    assert [f.get(timeout=5).offset for f in futures] == [0, 1, 2]
    with sqlog.open(log_path) as again:
        assert again.describe_topic("t").partitions[0].high_watermark == 3


def test_reopen_keeps_topics_records_offsets_and_commits(log_path: str) -> None:
    log = sqlog.open(log_path)
    log.create_topic("b", partitions=2, retention_ms=123_456)
    log.create_topic("a", retention_bytes=999_999)
    with log.producer() as producer:
        for i in range(4):
            producer.send("b", b"v%d" % i, key=b"k", headers=[("h", b"%d" % i)], timestamp_ms=1000 + i)
    c = log.consumer(group_id="g", enable_auto_commit=False)
    tp = TopicPartition("b", sqlog.partition_for_key(b"k", 2))
    c.commit({tp: 3})
    before = (log.list_topics(), log.describe_topic("a"), log.describe_topic("b"))
    log.close()

    log = sqlog.open(log_path)
    assert (log.list_topics(), log.describe_topic("a"), log.describe_topic("b")) == before
    records = read_all(log, "b", tp.partition)
    assert [(r.offset, r.timestamp_ms, r.key, r.value, r.headers) for r in records] == [
        (i, 1000 + i, b"k", b"v%d" % i, (("h", b"%d" % i),)) for i in range(4)
    ]
    c = log.consumer(group_id="g", enable_auto_commit=False)
    assert c.committed(tp) == 3
    # offsets continue, never reused across restarts (invariant 1)
    with log.producer() as producer:
        assert producer.send("b", b"v4", key=b"k").get(timeout=5).offset == 4


def test_durability_full_round_trip(log_path: str) -> None:
    with sqlog.open(log_path, durability="full") as log:
        assert log.durability == "full"
        log.create_topic("t")
        with log.producer() as producer:
            assert [producer.send("t", b"%d" % i).get(timeout=5).offset for i in range(3)] == [0, 1, 2]
        assert [r.value for r in read_all(log, "t")] == [b"0", b"1", b"2"]
    with sqlog.open(log_path) as log:
        assert log.describe_topic("t").partitions[0].high_watermark == 3


def test_open_accepts_pathlike(tmp_path: os.PathLike[str]) -> None:
    import pathlib

    path = pathlib.Path(tmp_path) / "p.db"
    with sqlog.open(path) as log:
        log.create_topic("t")
    assert path.exists()
    with sqlog.open(str(path)) as log:
        assert log.list_topics() == ["t"]


def test_stats_keys(log: sqlog.Log) -> None:
    log.create_topic("t")
    send_all(log, "t", [b"x" * 100] * 10)
    stats = log.stats()
    assert {"db_bytes", "wal_bytes", "shm_bytes", "page_size", "page_count", "freelist_count"} <= set(stats)
    assert all(type(v) is int and v >= 0 for v in stats.values())
    assert stats["page_size"] > 0 and stats["page_count"] > 0
    assert stats["db_bytes"] + stats["wal_bytes"] > 0


def test_two_logs_on_one_file_see_each_other(log_path: str) -> None:
    a = sqlog.open(log_path)
    b = sqlog.open(log_path)
    a.create_topic("t")
    assert b.list_topics() == ["t"]
    with b.producer() as producer:
        producer.send("t", b"from-b").get(timeout=5)
    assert [r.value for r in read_all(a, "t")] == [b"from-b"]
