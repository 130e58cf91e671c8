"""Log compaction (cleanup_policy "compact"): Kafka's guarantees, each through the public API on
real files, and the table view over a compacted topic."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest

import sqlog
from sqlog import TopicPartition as TP

T0 = 1_700_000_000_000  # record timestamps in these tests
DAY = 86_400_000
LATER = T0 + 10 * DAY  # a sweep's now_ms long after every record


def _open(path: Path) -> sqlog.Log:
    return sqlog.open(path, retention_check_interval_ms=None)


def _compacted(log: sqlog.Log, name: str = "c", **config: object) -> None:
    log.create_topic(name, cleanup_policy="compact", min_cleanable_dirty_ratio=0.0, **config)  # type: ignore[arg-type]


def _send(log: sqlog.Log, items: list[tuple[bytes, bytes | None]], topic: str = "c", ts: int = T0,
          partition: int | None = 0) -> list[int]:
    with log.producer() as producer:
        futures = [producer.send(topic, v, key=k, timestamp_ms=ts + i, partition=partition)
                   for i, (k, v) in enumerate(items)]
        return [f.get().offset for f in futures]


def _read_all(log: sqlog.Log, topic: str = "c", partition: int = 0, start: int = 0) -> list[sqlog.Record]:
    consumer = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
    consumer.assign([TP(topic, partition)])
    consumer.seek(TP(topic, partition), start)
    out: list[sqlog.Record] = []
    while batch := consumer.poll(timeout_ms=0, max_records=1000):
        out.extend(batch)
    consumer.close()
    return out


def test_compaction_settings_at_create_alter_and_describe(tmp_path: Path) -> None:
    log = _open(tmp_path / "log.db")
    d = log.create_topic("c", cleanup_policy="compact", delete_retention_ms=1000, min_compaction_lag_ms=5,
                         max_compaction_lag_ms=60_000, min_cleanable_dirty_ratio=0.25)
    assert (d.cleanup_policy, d.delete_retention_ms, d.min_compaction_lag_ms, d.max_compaction_lag_ms,
            d.min_cleanable_dirty_ratio) == ("compact", 1000, 5, 60_000, 0.25)
    plain = log.create_topic("d")
    assert (plain.cleanup_policy, plain.delete_retention_ms, plain.min_compaction_lag_ms,
            plain.max_compaction_lag_ms, plain.min_cleanable_dirty_ratio) == ("delete", 86_400_000, 0, None, 0.5)
    d = log.alter_topic("d", cleanup_policy="compact,delete", min_compaction_lag_ms=7)
    assert (d.cleanup_policy, d.min_compaction_lag_ms) == ("compact,delete", 7)
    for bad in ({"cleanup_policy": "compacted"}, {"min_cleanable_dirty_ratio": 1.5},
                {"delete_retention_ms": -2}, {"max_compaction_lag_ms": 0}, {"min_compaction_lag_ms": "1"}):
        with pytest.raises(sqlog.InvalidConfigError):
            log.create_topic("x", **bad)  # type: ignore[arg-type]
        with pytest.raises(sqlog.InvalidConfigError):
            log.alter_topic("c", **bad)
    assert "x" not in log.list_topics()
    log.close()
    with _open(tmp_path / "log.db") as again:  # stored in the file
        assert again.describe_topic("c").min_cleanable_dirty_ratio == 0.25


def test_keyless_records_are_refused_on_compacted_topics(tmp_path: Path) -> None:
    log = _open(tmp_path / "log.db")
    _compacted(log)
    producer = log.producer()
    with pytest.raises(sqlog.InvalidRecordError, match="needs a key"):
        producer.send("c", b"no key")
    with pytest.raises(sqlog.InvalidRecordError):
        producer.send_batch("c", [b"a", b"b"])
    assert issubclass(sqlog.InvalidRecordError, sqlog.SqlogError)
    producer.send("c", None, key=b"k").get()  # a tombstone is fine
    log.create_topic("d")
    producer.send("d", b"no key").get()  # delete policy: keys optional
    log.alter_topic("d", cleanup_policy="compact")
    with pytest.raises(sqlog.InvalidRecordError):
        producer.send("d", b"no key")


def test_latest_record_of_every_key_kept_offsets_and_order_unchanged(tmp_path: Path) -> None:
    log = _open(tmp_path / "log.db")
    _compacted(log)
    items = [(f"k{i % 5}".encode(), f"v{i}".encode()) for i in range(50)]
    offsets = _send(log, items)
    assert offsets == list(range(50))
    result = log.sweep(now_ms=LATER)
    assert result.deleted[TP("c", 0)].compacted_records == 45
    assert result.compacted_records == 45 and result.deleted[TP("c", 0)].records == 0
    got = _read_all(log)
    assert [(r.offset, r.key, r.value) for r in got] == [(o, k, v) for o, (k, v) in enumerate(items) if o >= 45]
    d = log.describe_topic("c").partitions[0]
    assert (d.log_start_offset, d.high_watermark, d.records) == (0, 50, 5)
    assert d.bytes == sum(len(k) + len(v) for k, v in items[45:])
    assert log.check().ok, log.check().violations
    # Offsets go on from the high watermark; a second sweep with nothing dirty removes nothing.
    assert _send(log, [(b"k0", b"new")]) == [50]
    assert log.sweep(now_ms=LATER).deleted[TP("c", 0)].compacted_records == 1
    assert log.sweep(now_ms=LATER).compacted_records == 0
    assert [(r.offset, r.value) for r in _read_all(log)][-1] == (50, b"new")


def test_space_is_given_back(tmp_path: Path) -> None:
    log = _open(tmp_path / "log.db")
    _compacted(log)
    _send(log, [(f"k{i % 10}".encode(), bytes(2000)) for i in range(2000)])
    before = log.stats()["db_bytes"]
    result = log.sweep(now_ms=LATER)
    assert result.compacted_records == 1990 and result.pages_freed > 0
    log.checkpoint()
    assert log.stats()["db_bytes"] < before / 10


def test_consumer_near_the_head_sees_every_record(tmp_path: Path) -> None:
    log = _open(tmp_path / "log.db")
    _compacted(log)
    consumer = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
    consumer.assign([TP("c", 0)])
    seen: list[int] = []
    for round_ in range(20):
        _send(log, [(f"k{i % 3}".encode(), f"{round_}-{i}".encode()) for i in range(7)], ts=T0 + round_ * 100)
        seen.extend(r.offset for r in consumer.poll(timeout_ms=1000, max_records=1000))
        log.sweep(now_ms=LATER)  # compacts everything the consumer has read (and nothing else is there)
    assert seen == list(range(140))
    assert len(_read_all(log)) == 3


def test_from_start_sees_final_state_with_young_tombstones(tmp_path: Path) -> None:
    log = _open(tmp_path / "log.db")
    _compacted(log, delete_retention_ms=DAY)
    _send(log, [(b"a", b"1"), (b"b", b"1"), (b"a", b"2"), (b"c", b"1"), (b"b", None), (b"c", b"2")])
    now = T0 + DAY // 2  # the tombstone of b is half a day old: kept
    log.sweep(now_ms=now)
    final = {r.key: r.value for r in _read_all(log)}
    assert final == {b"a": b"2", b"b": None, b"c": b"2"}
    assert [(r.offset, r.key) for r in _read_all(log)] == [(2, b"a"), (4, b"b"), (5, b"c")]
    _send(log, [(b"d", b"1")], ts=now)  # something dirty, so the next pass runs
    log.sweep(now_ms=T0 + 2 * DAY)  # now older than delete_retention_ms: the tombstone goes
    assert {r.key: r.value for r in _read_all(log)} == {b"a": b"2", b"c": b"2", b"d": b"1"}
    assert log.check().ok


def test_records_younger_than_min_compaction_lag_are_never_removed(tmp_path: Path) -> None:
    log = _open(tmp_path / "log.db")
    _compacted(log, min_compaction_lag_ms=60_000)
    _send(log, [(b"k", b"old1"), (b"k", b"old2"), (b"j", b"only")], ts=T0)
    _send(log, [(b"k", b"young1"), (b"k", b"young2")], ts=T0 + 100_000)
    log.sweep(now_ms=T0 + 120_000)  # the young ones are 20 s old: untouched
    # The old ones are past the lag and superseded, if only by a young record (Kafka's cleaner
    # would keep old2 until young1 is cleanable; sqlog lets it go, within Kafka's guarantees).
    assert [r.value for r in _read_all(log)] == [b"only", b"young1", b"young2"]
    log.sweep(now_ms=T0 + 200_000)
    assert [r.value for r in _read_all(log)] == [b"only", b"young2"]


def test_dirty_ratio_and_max_compaction_lag(tmp_path: Path) -> None:
    log = _open(tmp_path / "log.db")
    log.create_topic("c", cleanup_policy="compact", min_cleanable_dirty_ratio=0.9, max_compaction_lag_ms=DAY)
    _send(log, [(f"k{i}".encode(), b"x" * 10) for i in range(100)])
    assert log.sweep(now_ms=T0 + 1000).compacted_records == 0  # all dirty, nothing superseded
    _send(log, [(b"k0", b"y" * 10)], ts=T0 + 2000)
    # 1 dirty record of 101: under the ratio, and not waiting for max_compaction_lag_ms yet.
    assert log.sweep(now_ms=T0 + 3000).compacted_records == 0
    assert log.sweep(now_ms=T0 + 2000 + DAY).compacted_records == 1


def test_consumer_on_a_removed_offset_moves_to_the_next_surviving_one(tmp_path: Path) -> None:
    log = _open(tmp_path / "log.db")
    _compacted(log)
    _send(log, [(b"a", b"1"), (b"a", b"2"), (b"a", b"3"), (b"b", b"1"), (b"a", b"4")])
    log.sweep(now_ms=LATER)
    consumer = log.consumer(group_id="g", auto_offset_reset="none", enable_auto_commit=False)
    consumer.assign([TP("c", 0)])
    consumer.seek(TP("c", 0), 1)  # removed
    assert [r.offset for r in consumer.poll(timeout_ms=1000)] == [3, 4]
    consumer.commit({TP("c", 0): sqlog.OffsetAndMetadata(2)})  # a committed offset on a hole
    consumer.close()
    again = log.consumer(group_id="g", auto_offset_reset="none", enable_auto_commit=False)
    again.assign([TP("c", 0)])
    assert [r.offset for r in again.poll(timeout_ms=1000)] == [3, 4]
    assert again.position(TP("c", 0)) == 5


def test_offsets_for_times_on_a_compacted_topic(tmp_path: Path) -> None:
    log = _open(tmp_path / "log.db")
    _compacted(log)
    _send(log, [(b"a", b"1"), (b"a", b"2"), (b"b", b"1"), (b"a", b"3")])  # ts T0 .. T0+3
    log.sweep(now_ms=LATER)  # leaves offsets 2 (ts T0+2) and 3 (ts T0+3)
    consumer = log.consumer()
    found = consumer.offsets_for_times({TP("c", 0): T0})[TP("c", 0)]
    assert (found.offset, found.timestamp_ms) == (2, T0 + 2)
    assert consumer.offsets_for_times({TP("c", 0): T0 + 3})[TP("c", 0)].offset == 3
    assert consumer.offsets_for_times({TP("c", 0): T0 + 4})[TP("c", 0)] is None


def test_check_understands_compaction_and_still_finds_damage(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    log = _open(path)
    _compacted(log)
    _send(log, [(f"k{i % 4}".encode(), f"v{i}".encode()) for i in range(40)])
    log.sweep(now_ms=LATER)  # keeps 36..39, watermark 40
    _send(log, [(f"k{i % 4}".encode(), b"head") for i in range(4)])  # 40..43: above the watermark
    assert log.check().ok, log.check().violations
    log.close()
    conn = apsw.Connection(str(path))
    conn.execute("DELETE FROM p1_0 WHERE offset = 37")  # lost below the watermark: only the count tells
    conn.close()
    with _open(path) as damaged:
        assert any("records missing" in v for v in damaged.check().violations), damaged.check().violations
    conn = apsw.Connection(str(path))
    conn.execute("DELETE FROM p1_0 WHERE offset = 41")  # lost above it: a reader sees damage too
    conn.close()
    with _open(path) as damaged:
        assert any("not dense above the compaction watermark" in v for v in damaged.check().violations)
        consumer = damaged.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
        consumer.assign([TP("c", 0)])
        consumer.seek(TP("c", 0), 40)
        with pytest.raises(sqlog.StorageError, match="missing"):
            consumer.poll(timeout_ms=0)


def test_compact_only_ignores_retention_compact_delete_applies_both(tmp_path: Path) -> None:
    log = sqlog.open(tmp_path / "log.db", retention_check_interval_ms=None, retention_ms=1000)
    _compacted(log, "c")
    log.create_topic("cd", cleanup_policy="compact,delete", min_cleanable_dirty_ratio=0.0, retention_ms=DAY)
    for topic in ("c", "cd"):
        _send(log, [(b"a", b"1"), (b"b", b"1"), (b"a", b"2")], topic=topic, ts=T0)
        _send(log, [(b"b", b"2")], topic=topic, ts=T0 + 2 * DAY)
    log.sweep(now_ms=T0 + 2 * DAY + 1)
    assert [r.offset for r in _read_all(log, "c")] == [2, 3]  # retention_ms of the log: not for "compact"
    assert [r.offset for r in _read_all(log, "cd")] == [3]  # a day old: retention cut it, compaction the rest
    d = log.describe_topic("cd").partitions[0]
    assert (d.log_start_offset, d.records) == (3, 1)
    assert log.check().ok, log.check().violations


def test_share_group_record_compacted_away_while_in_flight(tmp_path: Path) -> None:
    log = _open(tmp_path / "log.db")
    _compacted(log)
    _send(log, [(b"a", b"1"), (b"b", b"1")])
    worker = log.share_consumer("w", record_lock_duration_ms=60_000)
    worker.subscribe(["c"])
    held = worker.poll(timeout_ms=1000, max_records=1)
    assert [(r.offset, r.value) for r in held] == [(0, b"1")]
    _send(log, [(b"a", b"2"), (b"b", b"2")])
    log.sweep(now_ms=LATER)  # removes offsets 0 (held by the worker) and 1 (never delivered)
    assert log.check().ok, log.check().violations
    # The held record stays held: its acknowledgement applies; released, it is not delivered again.
    worker.acknowledge(held[0], type="release")
    worker.commit()
    got = worker.poll(timeout_ms=1000)
    assert [(r.offset, r.value) for r in got] == [(2, b"2"), (3, b"2")]
    for r in got:
        worker.acknowledge(r)
    worker.commit()
    assert worker.poll(timeout_ms=0) == []
    state = log.describe_share_group("w").partitions[0]
    assert state.start_offset == 4 and state.in_flight == 0
    assert log.check().ok, log.check().violations
    worker.close()


def test_alter_to_compact_and_back_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    log = _open(path)
    log.create_topic("c")
    _send(log, [(b"a", b"1"), (b"a", b"2")])
    log.alter_topic("c", cleanup_policy="compact", min_cleanable_dirty_ratio=0.0)
    assert log.sweep(now_ms=LATER).compacted_records == 1
    log.alter_topic("c", cleanup_policy="delete")
    _send(log, [(b"a", b"3")])
    assert log.sweep(now_ms=LATER).compacted_records == 0
    assert [r.offset for r in _read_all(log)] == [1, 2]
    assert log.table("c")[b"a"] == b"3"
    assert log.check().ok


def test_compaction_runs_in_the_background_sweeper(tmp_path: Path) -> None:
    log = sqlog.open(tmp_path / "log.db", retention_check_interval_ms=50)
    _compacted(log)
    _send(log, [(b"k", b"1"), (b"k", b"2")], ts=1000)
    import time
    deadline = time.monotonic() + 10
    while log.describe_topic("c").partitions[0].records != 1:
        assert time.monotonic() < deadline, "the sweeper did not compact"
        time.sleep(0.02)


# -- the table view ----------------------------------------------------------------------------
def test_table_view_latest_value_per_key(tmp_path: Path) -> None:
    log = _open(tmp_path / "log.db")
    log.create_topic("settings", partitions=3, cleanup_policy="compact", min_cleanable_dirty_ratio=0.0)
    with log.producer(key_serializer=sqlog.STRING, value_serializer=sqlog.JSON) as producer:
        producer.send("settings", {"v": 1}, key="theme", timestamp_ms=T0)
        producer.send("settings", {"v": 2}, key="theme", timestamp_ms=T0 + 1)
        producer.send("settings", "en", key="lang", timestamp_ms=T0 + 2)
        producer.send("settings", 1, key="gone", timestamp_ms=T0 + 3)
        producer.send("settings", None, key="gone", timestamp_ms=T0 + 4)  # a tombstone deletes it
        producer.send("settings", None, key="null-json", timestamp_ms=T0 + 5)
        producer.send("settings", None, key="null-json", timestamp_ms=T0 + 6)
    table = log.table("settings", key_serializer=sqlog.STRING, value_deserializer=sqlog.JSON)

    def answers() -> tuple[object, ...]:
        return (table["theme"], table.get("lang"), "gone" in table, table.get("gone", "-"), len(table),
                sorted(table), sorted(table.items()))

    before = answers()
    assert before == ({"v": 2}, "en", False, "-", 2, ["lang", "theme"], [("lang", "en"), ("theme", {"v": 2})])
    with pytest.raises(KeyError):
        table["never"]
    log.sweep(now_ms=T0 + 1000)  # tombstones young: kept, and still read as absent
    assert answers() == before
    log.sweep(now_ms=LATER)
    assert answers() == before
    assert log.check().ok
    table.close()
    with pytest.raises(sqlog.LogClosedError):
        table.get("theme")


def _parameters(sql: str) -> int:
    numbered = re.findall(r"\?(\d+)", sql)
    return max(map(int, numbered)) if numbered else sql.count("?")


def test_table_operations_read_no_partition_by_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every statement the table runs on a compacted topic, asked for its query plan: lookups and
    len() search by key or offset only; iteration walks the latest-record table, never a partition."""
    log = _open(tmp_path / "log.db")
    log.create_topic("c", partitions=2, cleanup_policy="compact")
    with log.producer() as producer:
        for i in range(200):
            producer.send("c", b"v%d" % i, key=b"k%d" % (i % 20))
        producer.send("c", None, key=b"k3")
    seen: list[str] = []

    def trace(conn: apsw.Connection) -> None:
        conn.exec_trace = lambda _cursor, sql, _bindings: seen.append(sql) or True

    monkeypatch.setattr(apsw, "connection_hooks", [*apsw.connection_hooks, trace])
    table = log.table("c")

    def plans(call: Callable[[], object]) -> list[str]:
        seen.clear()
        call()
        with log.engine.read() as conn:
            return [row[3] for sql in dict.fromkeys(seen) if sql.lstrip().upper().startswith("SELECT")
                    for row in conn.execute("EXPLAIN QUERY PLAN " + sql, [None] * _parameters(sql))]

    for call in (lambda: table[b"k1"], lambda: table.get(b"k3"), lambda: b"k5" in table, lambda: len(table)):
        found = plans(call)
        assert found and not [p for p in found if re.match(r"SCAN [pl]\d", p)], found
    assert (table[b"k1"], table.get(b"k3"), len(table)) == (b"v181", None, 19)
    for call in (lambda: list(table), lambda: table.items()):
        found = plans(call)
        assert found and not [p for p in found if re.match(r"SCAN p\d", p)], found
    assert sorted(table) == sorted(b"k%d" % i for i in range(20) if i != 3)
    table.close()
    log.create_topic("plain")
    _send(log, [(b"a", b"1"), (b"a", b"2")], topic="plain")
    assert log.table("plain")[b"a"] == b"2"  # a delete-policy topic reads too (by a scan)
    with pytest.raises(sqlog.UnknownTopicOrPartitionError):
        log.table("nope")
    log.close()


def test_cli_topic_config_and_get(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sqlog.cli import main
    db = str(tmp_path / "log.db")
    assert main(["--db", db, "topics", "create", "cfg", "--config", "cleanup.policy=compact",
                 "--config", "delete.retention.ms=1000"]) == 0
    with _open(Path(db)) as log:
        d = log.describe_topic("cfg")
        assert (d.cleanup_policy, d.delete_retention_ms) == ("compact", 1000)
        _send(log, [(b"theme", b"dark"), (b"theme", b"light")], topic="cfg")
    capsys.readouterr()
    assert main(["--db", db, "get", "cfg", "theme"]) == 0
    assert capsys.readouterr().out == "light\n"
    assert main(["--db", db, "get", "cfg", "nope"]) == 1
    assert "no key 'nope'" in capsys.readouterr().err
    assert main(["--db", db, "topics", "alter", "cfg", "--config", "min.compaction.lag.ms=5"]) == 0
    assert "min.compaction.lag.ms=5" in capsys.readouterr().out
    assert main(["--db", db, "topics", "alter", "cfg", "--config", "cleanup.policy=nope"]) == 1
    assert main(["--db", db, "topics", "alter", "cfg", "--config", "bogus=1"]) == 1


def test_keyless_dead_letter_copy_into_a_compacted_topic_is_refused(tmp_path: Path) -> None:
    log = _open(tmp_path / "log.db")
    log.create_topic("jobs")
    log.create_topic("jobs.dlq", cleanup_policy="compact")
    with log.producer() as producer:
        producer.send("jobs", b"keyless")
        producer.send("jobs", b"keyed", key=b"k")
    worker = log.share_consumer("w", dead_letter_topic="jobs.dlq")
    worker.subscribe(["jobs"])
    first, second = worker.poll(timeout_ms=1000)
    worker.acknowledge(second, "reject")
    worker.commit()  # a keyed record's dead-letter copy is fine
    assert [(r.key, r.value) for r in _read_all(log, "jobs.dlq")] == [(b"k", b"keyed")]
    worker.acknowledge(first, "reject")
    with pytest.raises(sqlog.InvalidRecordError, match="compacted.*dead_letter_topic"):
        worker.commit()
    # Nothing of that acknowledgement was written: the record is not archived, no copy landed.
    assert [r.value for r in _read_all(log, "jobs.dlq")] == [b"keyed"]
    assert log.describe_share_group("w").partitions[0].start_offset == 0
    assert log.check().ok, log.check().violations
    log.alter_topic("jobs.dlq", cleanup_policy="delete")
    worker.commit()  # the rejection is still pending: it goes through now
    assert [(r.key, r.value) for r in _read_all(log, "jobs.dlq")] == [(b"k", b"keyed"), (None, b"keyless")]
    worker.close()
    log.close()


def test_interest_retention_on_a_compact_delete_topic(tmp_path: Path) -> None:
    """retention_policy="interest" holds retention back on a compacted topic too; compaction is not
    held back (as in Kafka, it ignores consumers): a group behind reads on past its holes."""
    log = sqlog.open(tmp_path / "log.db", retention_check_interval_ms=None)
    log.create_topic("cd", cleanup_policy="compact,delete", retention_ms=DAY, retention_policy="interest",
                     min_cleanable_dirty_ratio=0.0)
    _send(log, [(b"a", b"1"), (b"b", b"1"), (b"a", b"2"), (b"c", b"1"), (b"b", b"2")], topic="cd", ts=T0)
    reader = log.consumer(group_id="g", auto_offset_reset="earliest", enable_auto_commit=False)
    reader.assign([TP("cd", 0)])
    assert [r.offset for r in reader.poll(timeout_ms=1000, max_records=1)] == [0]
    reader.commit()  # the group needs offsets 1 and up
    result = log.sweep(now_ms=T0 + 2 * DAY)
    d = log.describe_topic("cd").partitions[0]
    assert d.log_start_offset == 1  # retention stopped at the group's committed offset
    assert [r.offset for r in _read_all(log, "cd")] == [2, 3, 4]  # compaction took b@1 (b@4 supersedes it)
    assert (result.deleted[TP("cd", 0)].records, result.compacted_records) == (1, 1)
    table = log.table("cd")
    assert (len(table), dict(table.items())) == (3, {b"a": b"2", b"b": b"2", b"c": b"1"})
    assert [r.offset for r in reader.poll(timeout_ms=1000)] == [2, 3, 4]  # from 1, on past the hole
    reader.commit()
    log.sweep(now_ms=T0 + 2 * DAY)
    assert log.describe_topic("cd").partitions[0].log_start_offset == 5
    assert len(table) == 0 and dict(table.items()) == {}
    assert log.check().ok, log.check().violations
    reader.close()
    log.close()


def test_passes_over_many_chunks_keep_the_latest_of_every_key(tmp_path: Path) -> None:
    """More records than one transaction's chunk, compacted twice: the second pass goes over the
    part the first cleaned (sparse, chunked by records) and the new part (chunked by offsets)."""
    log = _open(tmp_path / "log.db")
    _compacted(log)
    latest: dict[bytes, tuple[int, bytes]] = {}
    offset = 0
    for rnd in range(2):
        with log.producer(batch_size=1 << 20) as producer:
            for i in range(45_000):
                key, value = b"k%d" % ((i * 7919 + rnd) % 25_000), b"%d-%d" % (rnd, i)
                producer.send("c", value, key=key, partition=0, timestamp_ms=T0)
                latest[key] = (offset, value)
                offset += 1
        result = log.sweep(now_ms=LATER)
        assert result.compacted_records > 0
        survivors = [(r.offset, r.key, r.value) for r in _read_all(log)]
        assert survivors == sorted((o, k, v) for k, (o, v) in latest.items())
        assert log.describe_topic("c").partitions[0].records == len(latest)
        assert log.check().ok, log.check().violations
    log.close()
