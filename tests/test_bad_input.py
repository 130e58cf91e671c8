"""Invariant 7: bad input gets a sqlog.SqlogError subclass (never a raw apsw error) and loses nothing.

Every test here ends by checking the log still works (a send + poll round trip) and that the
records and committed offsets written before the bad call are intact.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sqlog
from sqlog import OffsetAndMetadata, TopicPartition
from helpers import raises_sqlog_error

KEEP = TopicPartition("keep", 0)
KEEP_VALUES = [b"k0", b"k1", b"k2"]
T0 = TopicPartition("t", 0)

BAD_NAMES: list[Any] = [
    "",
    "x" * 250,
    ".",
    "..",
    "a b",
    " ",
    "a/b",
    "../x",
    "x'; DROP TABLE topics; --",
    'x"; DROP TABLE partitions; --',
    "tópico",
    "日本",
    "a\x00b",
    "a\n",
    "emoji-\U0001f600",
    None,
    5,
    1.5,
    b"bytes",
    ("t",),
]


@pytest.fixture
def seeded(log: sqlog.Log) -> sqlog.Log:
    """A log holding data that must survive every bad call: 3 records and a committed offset."""
    log.create_topic("keep")
    log.create_topic("t", partitions=2)
    with log.producer() as producer:
        for v in KEEP_VALUES:
            producer.send("keep", v)
    consumer = log.consumer(group_id="g", enable_auto_commit=False)
    consumer.commit({KEEP: OffsetAndMetadata(2, "seed")})
    consumer.close()
    return log


def assert_healthy(log: sqlog.Log) -> None:
    """A fresh send + poll round trip works and the seeded data is intact."""
    assert "keep" in log.list_topics()
    with log.producer() as producer:
        md = producer.send("keep", b"probe-%d" % time.monotonic_ns()).get(timeout=5)
    consumer = log.consumer(group_id="g", auto_offset_reset="none", enable_auto_commit=False)
    try:
        assert consumer.committed(KEEP) == 2
        consumer.assign([KEEP])
        assert consumer.position(KEEP) == 2
        consumer.seek(KEEP, 0)
        got: list[sqlog.Record] = []
        while batch := consumer.poll(timeout_ms=0):  # everything is durable already
            got.extend(batch)
    finally:
        consumer.close()
    assert [r.value for r in got[:3]] == KEEP_VALUES
    assert [r.offset for r in got] == list(range(md.offset + 1))
    assert got[-1].value.startswith(b"probe-")


# -- topic names --------------------------------------------------------------------------


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_topic_names_in_admin_calls(seeded: sqlog.Log, name: Any) -> None:
    for call in (
        lambda: seeded.create_topic(name),
        lambda: seeded.describe_topic(name),
        lambda: seeded.alter_topic(name, partitions=3),
        lambda: seeded.delete_topic(name),
    ):
        exc = raises_sqlog_error(call, sqlog.InvalidTopicError)
        assert "letters, digits" in str(exc)  # says what a valid name is
    assert seeded.list_topics() == ["keep", "t"]
    assert_healthy(seeded)


@pytest.mark.parametrize("name", [*BAD_NAMES, ["t"], {"t": 1}], ids=repr)
def test_bad_topic_names_in_producer(seeded: sqlog.Log, name: Any) -> None:
    with seeded.producer() as producer:
        raises_sqlog_error(lambda: producer.send(name, b"x"), sqlog.InvalidTopicError)
    assert_healthy(seeded)


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_topic_names_in_consumer(seeded: sqlog.Log, name: Any) -> None:
    consumer = seeded.consumer(group_id="g2")
    raises_sqlog_error(lambda: consumer.subscribe([name]), sqlog.InvalidTopicError)
    raises_sqlog_error(lambda: consumer.assign([TopicPartition(name, 0)]), sqlog.InvalidTopicError)
    raises_sqlog_error(lambda: consumer.end_offsets([TopicPartition(name, 0)]), sqlog.InvalidTopicError)
    raises_sqlog_error(lambda: consumer.commit({TopicPartition(name, 0): 0}))
    assert consumer.assignment() == set() and consumer.subscription() == set()
    consumer.close()
    assert_healthy(seeded)


def test_sql_injection_name_is_just_rejected(seeded: sqlog.Log) -> None:
    for name in ("x'); DROP TABLE topics; --", "p1_0", "sqlite_schema"):
        try:
            seeded.create_topic(name)
        except sqlog.InvalidTopicError:
            pass
    # "p1_0" is a valid name: it must not collide with the partition tables
    assert "p1_0" in seeded.list_topics()
    with seeded.producer() as producer:
        producer.send("p1_0", b"mine").get(timeout=5)
    assert seeded.describe_topic("keep").partitions[0].high_watermark == 3
    assert_healthy(seeded)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.one_of(st.text(max_size=300), st.binary(max_size=20), st.integers(), st.none()))
def test_arbitrary_names_give_sqlog_errors(seeded: sqlog.Log, name: Any) -> None:
    if name in ("keep", "t"):
        return
    raises_sqlog_error(lambda: seeded.describe_topic(name))
    raises_sqlog_error(lambda: seeded.delete_topic(name))
    with seeded.producer() as producer:
        raises_sqlog_error(lambda: producer.send(name, b"x"))
    assert seeded.describe_topic("keep").partitions[0].high_watermark >= 3


# -- unknown topics and partitions --------------------------------------------------------


def test_unknown_topic_everywhere(seeded: sqlog.Log) -> None:
    ghost = TopicPartition("ghost", 0)
    consumer = seeded.consumer(group_id="g")
    with seeded.producer() as producer:
        for call in (
            lambda: seeded.describe_topic("ghost"),
            lambda: seeded.alter_topic("ghost", retention_ms=5),
            lambda: seeded.delete_topic("ghost"),
            lambda: producer.send("ghost", b"x"),
            lambda: consumer.assign([ghost]),
            lambda: consumer.end_offsets([ghost]),
            lambda: consumer.beginning_offsets([ghost]),
            lambda: consumer.offsets_for_times({ghost: 0}),
            lambda: consumer.commit({ghost: 0}),
            lambda: consumer.committed(ghost),
        ):
            exc = raises_sqlog_error(call, sqlog.UnknownTopicOrPartitionError)
            assert "ghost" in str(exc)
    consumer.close()
    assert_healthy(seeded)


def _partition_cases() -> list[Any]:
    calls = {
        "send": lambda log, c, p: log.producer().send("t", b"x", partition=p),
        "assign": lambda log, c, p: c.assign([TopicPartition("t", p)]),
        "commit": lambda log, c, p: c.commit({TopicPartition("t", p): 0}),
        "end_offsets": lambda log, c, p: c.end_offsets([TopicPartition("t", p)]),
        "offsets_for_times": lambda log, c, p: c.offsets_for_times({TopicPartition("t", p): 0}),
        "committed": lambda log, c, p: c.committed(TopicPartition("t", p)),
    }
    cases = []
    for name, call in calls.items():
        for p in (-1, 2, 2**70, 1.5, "0", None):
            if name == "committed" and p in (-1, 2):
                continue  # committed() of a partition that never existed may just be None
            if name == "send" and p is None:
                continue  # partition=None means "let the partitioner choose"
            cases.append(pytest.param(call, p, id=f"{name}-{p!r}"))
    return cases


@pytest.mark.parametrize(("call", "partition"), _partition_cases())
def test_bad_partition_numbers(seeded: sqlog.Log, call: Any, partition: Any) -> None:
    consumer = seeded.consumer(group_id="g")
    raises_sqlog_error(lambda: call(seeded, consumer, partition))
    consumer.close(autocommit=False)
    assert_healthy(seeded)


def test_bad_partition_counts(seeded: sqlog.Log) -> None:
    for bad in (0, -1, 1.5, "2", None, True, 10**6):
        raises_sqlog_error(lambda: seeded.create_topic("new", partitions=bad), sqlog.InvalidPartitionsError)
        raises_sqlog_error(lambda: seeded.alter_topic("t", partitions=bad), sqlog.InvalidPartitionsError)
    raises_sqlog_error(lambda: seeded.alter_topic("t", partitions=1), sqlog.InvalidPartitionsError)
    assert "new" not in seeded.list_topics()
    assert len(seeded.describe_topic("t").partitions) == 2
    assert_healthy(seeded)


# -- values, keys, serializers ------------------------------------------------------------


@pytest.mark.parametrize("value", ["text", 42, 1.5, {"a": 1}, [b"x"], object(), True], ids=repr)
def test_non_bytes_value_without_serializer(seeded: sqlog.Log, value: Any) -> None:
    with seeded.producer() as producer:
        exc = raises_sqlog_error(lambda: producer.send("t", value), sqlog.SerializationError)
        assert "value_serializer" in str(exc)
        exc = raises_sqlog_error(lambda: producer.send("t", b"ok", key=value), sqlog.SerializationError)
        assert "key_serializer" in str(exc)
    assert [p.high_watermark for p in seeded.describe_topic("t").partitions] == [0, 0]
    assert_healthy(seeded)


def test_serializers_that_fail(seeded: sqlog.Log) -> None:
    def boom(obj: Any) -> bytes:
        raise RuntimeError("cannot encode")

    with seeded.producer(value_serializer=boom) as producer:
        exc = raises_sqlog_error(lambda: producer.send("t", "v"), sqlog.SerializationError)
        assert "cannot encode" in str(exc)
    with seeded.producer(key_serializer=boom) as producer:
        raises_sqlog_error(lambda: producer.send("t", b"v", key="k"), sqlog.SerializationError)
    with seeded.producer(value_serializer=lambda obj: 12345) as producer:  # returns no bytes
        raises_sqlog_error(lambda: producer.send("t", "v"), sqlog.SerializationError)
    with seeded.producer(value_serializer=sqlog.JSON) as producer:
        raises_sqlog_error(lambda: producer.send("t", {"set": {1, 2}}), sqlog.SerializationError)
        raises_sqlog_error(lambda: producer.send("t", object()), sqlog.SerializationError)
    with seeded.producer(value_serializer=sqlog.STRING) as producer:
        raises_sqlog_error(lambda: producer.send("t", b"bytes, not str"), sqlog.SerializationError)
    assert [p.high_watermark for p in seeded.describe_topic("t").partitions] == [0, 0]
    assert_healthy(seeded)


def test_failing_serializer_does_not_poison_the_batch(seeded: sqlog.Log) -> None:
    with seeded.producer(value_serializer=sqlog.JSON, linger_ms=600_000) as producer:
        ok1 = producer.send("t", 1, partition=0)
        raises_sqlog_error(lambda: producer.send("t", {1, 2}, partition=0), sqlog.SerializationError)
        ok2 = producer.send("t", 2, partition=0)
        producer.flush()
        assert [ok1.get(timeout=5).offset, ok2.get(timeout=5).offset] == [0, 1]
    assert_healthy(seeded)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(st.integers(), st.floats(), st.text(), st.lists(st.integers()), st.dictionaries(st.text(), st.integers()),
                       st.binary(), st.none(), st.booleans()))
def test_any_value_is_stored_or_refused_with_serialization_error(seeded: sqlog.Log, value: Any) -> None:
    with seeded.producer() as producer:
        try:
            future = producer.send("t", value, partition=1)
        except sqlog.SerializationError:
            assert not isinstance(value, bytes) and value is not None
            return
        md = future.get(timeout=5)
    assert isinstance(value, bytes) or value is None
    consumer = seeded.consumer()
    consumer.assign([TopicPartition("t", 1)])
    consumer.seek(TopicPartition("t", 1), md.offset)
    [record] = consumer.poll(timeout_ms=500, max_records=1)
    consumer.close()
    assert record.value == value


# -- headers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"key": b"value"},
        "key=value",
        5,
        [("key",)],
        [("key", b"v", b"extra")],
        [("key", "not bytes")],
        [("key", 5)],
        [(b"bytes-key", b"v")],
        [(None, b"v")],
        [["key", b"v"]],
        ["key"],
        [("ok", b"v"), ("bad", 1.5)],
        [("k" * 70_000, b"v")],
    ],
    ids=lambda h: repr(h)[:40],
)
def test_bad_headers(seeded: sqlog.Log, headers: Any) -> None:
    with seeded.producer() as producer:
        raises_sqlog_error(lambda: producer.send("t", b"v", headers=headers), sqlog.SerializationError)
    assert [p.high_watermark for p in seeded.describe_topic("t").partitions] == [0, 0]
    assert_healthy(seeded)


def test_headers_from_a_generator_are_fine(seeded: sqlog.Log) -> None:
    with seeded.producer() as producer:
        md = producer.send("t", b"v", headers=((k, b"1") for k in "ab"), partition=0).get(timeout=5)
    consumer = seeded.consumer(auto_offset_reset="earliest")
    consumer.assign([T0])
    [record] = consumer.poll(timeout_ms=500)
    assert (record.offset, record.headers) == (md.offset, (("a", b"1"), ("b", b"1")))
    consumer.close()


# -- sizes and timestamps -----------------------------------------------------------------


def test_oversized_records(seeded: sqlog.Log) -> None:
    with seeded.producer(max_record_bytes=1000, linger_ms=600_000) as producer:
        ok = producer.send("t", b"x" * 1000, partition=0)
        for kwargs in (
            {"value": b"x" * 1001},
            {"value": b"x" * 600, "key": b"k" * 401},
            {"value": b"x" * 10, "headers": [("h", b"y" * 1000)]},
        ):
            exc = raises_sqlog_error(lambda: producer.send("t", partition=0, **kwargs), sqlog.RecordTooLarge)
            assert "max_record_bytes" in str(exc)
        producer.flush()
        assert ok.get(timeout=5).offset == 0
    assert seeded.describe_topic("t").partitions[0].high_watermark == 1
    assert_healthy(seeded)


@pytest.mark.parametrize("ts", [-1, -(2**63), 1.5, "now", True, float("nan")], ids=repr)
def test_bad_timestamps(seeded: sqlog.Log, ts: Any) -> None:
    with seeded.producer() as producer:
        exc = raises_sqlog_error(lambda: producer.send("t", b"v", timestamp_ms=ts), sqlog.SerializationError)
        assert "timestamp_ms" in str(exc)
    assert_healthy(seeded)


def test_largest_timestamp_is_fine(seeded: sqlog.Log) -> None:
    with seeded.producer() as producer:
        md = producer.send("t", b"v", timestamp_ms=2**63 - 1, partition=0).get(timeout=5)
    assert md.timestamp_ms == 2**63 - 1
    consumer = seeded.consumer(auto_offset_reset="earliest")
    consumer.assign([T0])
    assert [r.timestamp_ms for r in consumer.poll(timeout_ms=500)] == [2**63 - 1]
    consumer.close()


def test_timestamp_beyond_int64_is_refused_without_losing_batch_mates(seeded: sqlog.Log) -> None:
    producer = seeded.producer(linger_ms=600_000)
    before = producer.send("t", b"before", partition=0)
    with pytest.raises(sqlog.SqlogError):
        bad = producer.send("t", b"bad", partition=0, timestamp_ms=2**63)
        bad.get(timeout=5)  # rejected at send() or by its future: either is fine
    after = producer.send("t", b"after", partition=0)
    try:
        producer.flush()
    except sqlog.SqlogError:
        pass
    assert before.get(timeout=5).offset == 0
    assert after.get(timeout=5).offset == 1
    consumer = seeded.consumer(auto_offset_reset="earliest")
    consumer.assign([T0])
    assert [r.value for r in consumer.poll(timeout_ms=500)] == [b"before", b"after"]
    consumer.close()
    producer.close()
    assert_healthy(seeded)


# -- consumer arguments -------------------------------------------------------------------

@pytest.mark.parametrize(
    ("call", "expected"),
    [
        pytest.param(lambda c: c.poll(timeout_ms=-1), sqlog.InvalidConfigError, id="poll-negative-timeout"),
        pytest.param(lambda c: c.poll(timeout_ms="1"), sqlog.InvalidConfigError, id="poll-str-timeout"),
        pytest.param(lambda c: c.poll(timeout_ms=None), sqlog.InvalidConfigError, id="poll-None-timeout"),
        pytest.param(lambda c: c.poll(max_records=0), sqlog.InvalidConfigError, id="poll-zero-max"),
        pytest.param(lambda c: c.poll(max_records=2.5), sqlog.InvalidConfigError, id="poll-float-max"),
        pytest.param(lambda c: c.seek(T0, -1), sqlog.InvalidConfigError, id="seek-negative"),
        pytest.param(lambda c: c.seek(T0, "3"), sqlog.InvalidConfigError, id="seek-str"),
        pytest.param(lambda c: c.seek(T0, None), sqlog.InvalidConfigError, id="seek-None"),
        pytest.param(lambda c: c.seek(("t", 0), 1), sqlog.InvalidConfigError, id="seek-tuple"),
        pytest.param(lambda c: c.position(TopicPartition("t", 1)), sqlog.IllegalStateError, id="position-unassigned"),
        pytest.param(lambda c: c.commit({T0: -1}), sqlog.InvalidConfigError, id="commit-negative"),
        pytest.param(lambda c: c.commit({T0: "1"}), sqlog.InvalidConfigError, id="commit-str"),
        pytest.param(lambda c: c.commit({T0: True}), sqlog.InvalidConfigError, id="commit-bool"),
        pytest.param(lambda c: c.commit({T0: OffsetAndMetadata(0, 5)}), sqlog.InvalidConfigError,  # type: ignore[arg-type]
                     id="commit-int-metadata"),
        pytest.param(lambda c: c.commit({T0: 10**6}), sqlog.CommitFailedError, id="commit-past-end"),
        pytest.param(lambda c: c.commit({("t", 0): 0}), sqlog.InvalidConfigError, id="commit-tuple-key"),
        pytest.param(lambda c: c.offsets_for_times({T0: -1}), sqlog.InvalidConfigError, id="oft-negative"),
        pytest.param(lambda c: c.offsets_for_times({T0: "x"}), sqlog.InvalidConfigError, id="oft-str"),
        pytest.param(lambda c: c.subscribe("t"), sqlog.InvalidConfigError, id="subscribe-str"),
        pytest.param(lambda c: c.assign(["t"]), sqlog.InvalidConfigError, id="assign-str-list"),
        pytest.param(lambda c: c.assign([("t", 0)]), sqlog.InvalidConfigError, id="assign-tuple"),
        pytest.param(lambda c: c.pause(("t", 0)), sqlog.InvalidConfigError, id="pause-tuple"),
        pytest.param(lambda c: c.subscribe(None), sqlog.InvalidConfigError, id="subscribe-None"),
        pytest.param(lambda c: c.subscribe(5), sqlog.InvalidConfigError, id="subscribe-int"),
        pytest.param(lambda c: c.assign(None), sqlog.InvalidConfigError, id="assign-None"),
        pytest.param(lambda c: c.commit([T0]), sqlog.InvalidConfigError, id="commit-list"),
        pytest.param(lambda c: c.offsets_for_times([T0]), sqlog.InvalidConfigError, id="oft-list"),
        pytest.param(lambda c: c.offsets_for_times({("t", 0): 0}), sqlog.SqlogError, id="oft-tuple-key"),
        pytest.param(lambda c: c.offsets_for_times({T0: 2**70}), sqlog.InvalidConfigError, id="oft-huge-ts"),
        pytest.param(lambda c: c.committed(("t", 0)), sqlog.SqlogError, id="committed-tuple"),
        pytest.param(lambda c: c.beginning_offsets(None), sqlog.InvalidConfigError, id="beginning-None"),
        pytest.param(lambda c: (c.seek(T0, 2**70), c.poll(timeout_ms=0)), sqlog.SqlogError, id="seek-huge-then-poll"),
    ],
)
def test_bad_consumer_arguments(seeded: sqlog.Log, call: Callable[[sqlog.Consumer], Any],
                                expected: type[sqlog.SqlogError]) -> None:
    consumer = seeded.consumer(group_id="g", auto_offset_reset="earliest", enable_auto_commit=False)
    consumer.assign([T0])
    raises_sqlog_error(lambda: call(consumer), expected)
    consumer.close()
    assert_healthy(seeded)


def test_poll_with_nan_timeout_does_not_hang(tmp_path: Any) -> None:
    # In a child process: if poll() ever busy-loops on a nan deadline again, it cannot hang the suite.
    script = (
        "import sys, sqlog\n"
        "log = sqlog.open(sys.argv[1]); log.create_topic('t')\n"
        "c = log.consumer(); c.assign([sqlog.TopicPartition('t', 0)])\n"
        "try:\n"
        "    c.poll(timeout_ms=float('nan'))\n"
        "except sqlog.SqlogError:\n"
        "    pass\n"
        "log.close()\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "nan.db")],
                              capture_output=True, timeout=3)
    except subprocess.TimeoutExpired:
        pytest.fail("poll(timeout_ms=nan) never returned")
    assert done.returncode == 0, done.stderr.decode()


# -- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"durability": "fast"},
        {"durability": "FULL"},
        {"durability": None},
        {"busy_timeout_ms": -1},
        {"busy_timeout_ms": "10"},
        {"busy_timeout_ms": 1.5},
        {"journal_size_limit": -1},
        {"journal_size_limit": None},
    ],
    ids=repr,
)
def test_invalid_open_options(tmp_path: Any, kwargs: dict[str, Any]) -> None:
    path = str(tmp_path / "bad.db")
    raises_sqlog_error(lambda: sqlog.open(path, **kwargs), sqlog.InvalidConfigError)
    assert not os.path.exists(path)


def test_unknown_client_config_keys(seeded: sqlog.Log) -> None:
    exc = raises_sqlog_error(lambda: seeded.producer(acks="all"), sqlog.InvalidConfigError)
    assert "acks" in str(exc) and "linger_ms" in str(exc)  # names the bad key and the known ones
    exc = raises_sqlog_error(lambda: seeded.consumer(bootstrap_servers="x:9092"), sqlog.InvalidConfigError)
    assert "bootstrap_servers" in str(exc)
    assert_healthy(seeded)


# -- files that are not sqlog logs --------------------------------------------------------


def test_random_bytes_file(tmp_path: Any) -> None:
    path = tmp_path / "random.db"
    content = os.urandom(8192)
    path.write_bytes(content)
    exc = raises_sqlog_error(lambda: sqlog.open(str(path)), sqlog.NotASqlogLogError)
    assert str(path) in str(exc)
    assert path.read_bytes() == content  # untouched


def test_text_file(tmp_path: Any) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not a database\n" * 100)
    raises_sqlog_error(lambda: sqlog.open(str(path)), sqlog.NotASqlogLogError)
    assert path.read_text().startswith("hello")


def test_plain_sqlite_database_with_its_own_table(tmp_path: Any) -> None:
    path = str(tmp_path / "other.db")
    conn = apsw.Connection(path)
    conn.execute("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers(name) VALUES ('ada'), ('grace')")
    conn.close()
    exc = raises_sqlog_error(lambda: sqlog.open(path), sqlog.NotASqlogLogError)
    assert "not a sqlog log" in str(exc)
    conn = apsw.Connection(path)
    try:
        assert conn.execute("SELECT name FROM customers ORDER BY id").fetchall() == [("ada",), ("grace",)]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
        assert tables == {"customers"}  # sqlog created nothing in it
        assert conn.execute("PRAGMA application_id").fetchone()[0] == 0
    finally:
        conn.close()


@pytest.mark.parametrize("pragma", ["user_version=3", "application_id=1234"])
def test_empty_sqlite_database_stamped_by_another_app(tmp_path: Any, pragma: str) -> None:
    path = str(tmp_path / "stamped.db")
    conn = apsw.Connection(path)
    conn.execute(f"PRAGMA {pragma}")
    conn.close()
    raises_sqlog_error(lambda: sqlog.open(path), sqlog.NotASqlogLogError)


def test_schema_too_new(log_path: str) -> None:
    with sqlog.open(log_path) as log:
        log.create_topic("keep")
        with log.producer() as producer:
            producer.send("keep", b"v").get(timeout=5)
    conn = apsw.Connection(log_path)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    assert version >= 1
    conn.execute(f"PRAGMA user_version={version + 1}")
    conn.close()
    exc = raises_sqlog_error(lambda: sqlog.open(log_path), sqlog.SchemaTooNewError)
    assert "upgrade" in str(exc)
    # nothing was changed: put the version back and the data is all there
    conn = apsw.Connection(log_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == version + 1
    conn.execute(f"PRAGMA user_version={version}")
    conn.close()
    with sqlog.open(log_path) as log:
        assert log.describe_topic("keep").partitions[0].high_watermark == 1


def test_a_directory_or_missing_directory_as_path(tmp_path: Any) -> None:
    raises_sqlog_error(lambda: sqlog.open(str(tmp_path)))
    raises_sqlog_error(lambda: sqlog.open(str(tmp_path / "no" / "such" / "dir" / "log.db")))


def test_a_bad_file_does_not_disturb_an_open_log(seeded: sqlog.Log, tmp_path: Any) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"\x00" * 50 + os.urandom(5000))
    raises_sqlog_error(lambda: sqlog.open(str(path)), sqlog.NotASqlogLogError)
    assert_healthy(seeded)


# -- closed log, producer, consumer -------------------------------------------------------


def test_every_log_call_after_close(seeded: sqlog.Log, log_path: str) -> None:
    seeded.close()
    for call in (
        lambda: seeded.create_topic("x"),
        lambda: seeded.list_topics(),
        lambda: seeded.describe_topic("keep"),
        lambda: seeded.alter_topic("keep", retention_ms=5),
        lambda: seeded.delete_topic("keep"),
        lambda: seeded.producer(),
        lambda: seeded.consumer(),
        lambda: seeded.stats(),
    ):
        exc = raises_sqlog_error(call, sqlog.LogClosedError)
        assert "open" in str(exc)  # says to open it again
    seeded.close()
    with sqlog.open(log_path) as again:
        assert_healthy(again)


def test_producer_calls_after_its_log_is_closed_with_pending_records(seeded: sqlog.Log, log_path: str) -> None:
    producer = seeded.producer(linger_ms=600_000)
    pending = producer.send("t", b"pending", partition=0)
    seeded.close()  # writes what producers have waiting
    assert pending.get(timeout=5).offset == 0
    producer.close()
    raises_sqlog_error(lambda: producer.send("t", b"x"), sqlog.LogClosedError)
    with sqlog.open(log_path) as again:
        assert again.describe_topic("t").partitions[0].high_watermark == 1
        assert_healthy(again)


def test_send_on_a_closed_log_raises(seeded: sqlog.Log) -> None:
    producer = seeded.producer()
    producer.send("t", b"warm the metadata cache", partition=0).get(timeout=5)
    seeded.close()
    raises_sqlog_error(lambda: producer.send("t", b"x", partition=0), sqlog.LogClosedError)


def test_send_on_a_closed_log_never_reports_success(seeded: sqlog.Log, log_path: str) -> None:
    producer = seeded.producer()
    producer.send("t", b"first", partition=0).get(timeout=5)
    seeded.close()
    try:
        future = producer.send("t", b"after close", partition=0)
    except sqlog.LogClosedError:
        pass
    else:
        raises_sqlog_error(lambda: future.get(timeout=5), sqlog.LogClosedError)
        raises_sqlog_error(lambda: producer.flush(), sqlog.LogClosedError)
    with sqlog.open(log_path) as again:
        assert again.describe_topic("t").partitions[0].high_watermark == 1


def test_consumer_calls_after_its_log_is_closed(seeded: sqlog.Log) -> None:
    consumer = seeded.consumer(group_id="g", auto_offset_reset="earliest")
    consumer.assign([KEEP])
    assert len(consumer.poll(timeout_ms=500)) == 1
    seeded.close()
    for call in (
        lambda: consumer.poll(timeout_ms=0),
        lambda: consumer.commit(),
        lambda: consumer.committed(KEEP),
        lambda: consumer.position(KEEP),
        lambda: consumer.seek(KEEP, 0),
        lambda: consumer.seek_to_beginning(),
        lambda: consumer.beginning_offsets([KEEP]),
        lambda: consumer.end_offsets([KEEP]),
        lambda: consumer.offsets_for_times({KEEP: 0}),
        lambda: consumer.subscribe(["keep"]),
        lambda: consumer.unsubscribe(),
        lambda: next(iter(consumer)),
    ):
        raises_sqlog_error(call, sqlog.LogClosedError)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda c: c.poll(), id="poll"),
        pytest.param(lambda c: c.seek_to_end(), id="seek_to_end"),
        pytest.param(lambda c: c.end_offsets([KEEP]), id="end_offsets"),
        pytest.param(lambda c: c.pause(KEEP), id="pause"),
        pytest.param(lambda c: c.resume(KEEP), id="resume"),
        pytest.param(lambda c: c.paused(), id="paused"),
        pytest.param(lambda c: c.assignment(), id="assignment"),
        pytest.param(lambda c: c.subscription(), id="subscription"),
    ],
)
def test_calls_on_a_closed_consumer(seeded: sqlog.Log, call: Callable[[sqlog.Consumer], Any]) -> None:
    consumer = seeded.consumer(group_id="g2")
    consumer.assign([KEEP])
    consumer.close()
    raises_sqlog_error(lambda: call(consumer), sqlog.LogClosedError)
    assert_healthy(seeded)


def test_blocked_poll_when_the_log_closes(seeded: sqlog.Log) -> None:
    consumer = seeded.consumer(auto_offset_reset="latest")
    consumer.assign([KEEP])
    consumer.poll(timeout_ms=0)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["records"] = consumer.poll(timeout_ms=3000)
        except BaseException as exc:  # noqa: BLE001
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.2)
    seeded.close()
    thread.join(5)
    assert not thread.is_alive()
    error = outcome.get("error")
    assert error is None or isinstance(error, sqlog.LogClosedError), repr(error)


# -- the first hour's mistakes: each error says what was wrong and what to do -----------------


def test_open_in_a_missing_directory_says_so(tmp_path: Any) -> None:
    path = str(tmp_path / "nonexistent" / "dir" / "x.db")
    err = raises_sqlog_error(lambda: sqlog.open(path))
    assert "does not exist" in str(err) and str(tmp_path / "nonexistent" / "dir") in str(err)
    assert "read-only" not in str(err)


def test_headers_given_as_a_dict_say_what_to_pass(seeded: sqlog.Log) -> None:
    with seeded.producer() as producer:
        err = raises_sqlog_error(lambda: producer.send("t", b"v", headers={"source": b"web"}),
                                 sqlog.SerializationError)
        assert "got a dict" in str(err) and "list of (str, bytes) pairs" in str(err)
        assert "headers.items()" in str(err)


def test_missing_dead_letter_topic_names_the_option(seeded: sqlog.Log) -> None:
    err = raises_sqlog_error(lambda: seeded.share_consumer("g", dead_letter_topic="jobs.dlq"),
                             sqlog.UnknownTopicOrPartitionError)
    assert "dead_letter_topic='jobs.dlq'" in str(err) and "create" in str(err)


@pytest.mark.parametrize("kind", ["consumer", "share"])
def test_poll_with_seconds_as_a_float_is_refused(seeded: sqlog.Log, kind: str) -> None:
    if kind == "consumer":
        client: Any = seeded.consumer(auto_offset_reset="earliest")
        client.assign([KEEP])
    else:
        client = seeded.share_consumer("g", acknowledgement_mode="implicit")
        client.subscribe(["keep"])
    for value in (1e-3, 0.5, 0.999):
        err = raises_sqlog_error(lambda: client.poll(value), sqlog.InvalidConfigError)
        assert "milliseconds" in str(err) and "timeout_ms=" in str(err)
    err = raises_sqlog_error(lambda: client.poll(timeout_ms=0.5), sqlog.InvalidConfigError)
    assert "timeout_ms=500" in str(err)
    assert len(client.poll(1.0)) == 3 and client.poll(0.0) == [] and client.poll(0) == []  # 1 ms is fine
    client.close()
