"""The table view over compacted topics (the latest-record table behind it): keys in more than one
partition, grown partitions, retention on "compact,delete" topics, a policy switched back and
forth, an older file's key indexes migrated, damage to the table found by check(), and a table
used in a forked child. Through the public API, on real files."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import apsw
import pytest

import sqlog
from sqlog import storage

T0 = 1_700_000_000_000
DAY = 86_400_000


def _open(path: Path) -> sqlog.Log:
    return sqlog.open(path, retention_check_interval_ms=None)


def _send(log: sqlog.Log, topic: str, items: list[tuple[bytes, bytes | None, int | None]], ts: int = T0) -> None:
    with log.producer() as producer:
        for i, (key, value, partition) in enumerate(items):
            producer.send(topic, value, key=key, partition=partition, timestamp_ms=ts + i)


def _answers(table: sqlog.Table, keys: list[bytes]) -> tuple[object, ...]:
    return (len(table), sorted(table), sorted(table.items()), {k: table.get(k) for k in keys},
            [k in table for k in keys])


def test_keys_in_more_than_one_partition_merge_by_timestamp(tmp_path: Path) -> None:
    log = _open(tmp_path / "log.db")
    log.create_topic("c", partitions=3, cleanup_policy="compact", min_cleanable_dirty_ratio=0.0)
    _send(log, "c", [(b"a", b"a0", 0), (b"b", b"b0", 0), (b"c", b"c0", 0), (b"d", b"d0", 0)])
    table = log.table("c")
    assert _answers(table, [b"a"]) == (4, [b"a", b"b", b"c", b"d"],
                                       [(b"a", b"a0"), (b"b", b"b0"), (b"c", b"c0"), (b"d", b"d0")],
                                       {b"a": b"a0"}, [True])
    # Later records of the same keys in other partitions: a newer value, a tombstone, and an
    # older timestamp that loses to the record already there.
    _send(log, "c", [(b"a", b"a1", 1), (b"b", None, 2)], ts=T0 + 100)
    _send(log, "c", [(b"c", b"c-old", 1)], ts=T0 - 100)
    keys = [b"a", b"b", b"c", b"d", b"e"]
    expected = (3, [b"a", b"c", b"d"], [(b"a", b"a1"), (b"c", b"c0"), (b"d", b"d0")],
                {b"a": b"a1", b"b": None, b"c": b"c0", b"d": b"d0", b"e": None}, [True, False, True, True, False])
    assert _answers(table, keys) == expected
    assert log.sweep(now_ms=T0 + 1000).compacted_records == 0  # one record per key and partition
    assert _answers(table, keys) == expected
    # A tombstone in the first partition too, newest: b stays deleted; a new live value revives d.
    _send(log, "c", [(b"b", None, 0), (b"d", b"d1", 2)], ts=T0 + 200)
    expected = (3, [b"a", b"c", b"d"], [(b"a", b"a1"), (b"c", b"c0"), (b"d", b"d1")],
                {b"a": b"a1", b"b": None, b"c": b"c0", b"d": b"d1", b"e": None}, [True, False, True, True, False])
    assert _answers(table, keys) == expected
    log.sweep(now_ms=T0 + 10 * DAY)  # the old tombstones go, and the superseded b0
    assert _answers(table, keys) == expected
    report = log.check()
    assert report.ok, report.violations


def test_grown_partitions_keep_every_key(tmp_path: Path) -> None:
    log = _open(tmp_path / "log.db")
    log.create_topic("c", cleanup_policy="compact", min_cleanable_dirty_ratio=0.0)
    with log.producer() as producer:
        for i in range(50):
            producer.send("c", b"old%d" % i, key=b"k%d" % i)
    log.alter_topic("c", partitions=4)  # the keys now hash elsewhere: their new records go there
    with log.producer() as producer:
        for i in range(0, 50, 2):
            producer.send("c", b"new%d" % i, key=b"k%d" % i)
        producer.send("c", None, key=b"k1")
    table = log.table("c")
    expected = {b"k%d" % i: (b"new%d" if i % 2 == 0 else b"old%d") % i for i in range(50) if i != 1}
    assert dict(table.items()) == expected and len(table) == 49 and set(table) == set(expected)
    log.sweep(now_ms=T0 + 10 * DAY)
    assert dict(table.items()) == expected and len(table) == 49
    assert log.check().ok


def test_retention_on_a_compact_delete_topic_forgets_the_keys_it_cuts(tmp_path: Path) -> None:
    log = _open(tmp_path / "log.db")
    log.create_topic("cd", cleanup_policy="compact,delete", retention_ms=DAY, min_cleanable_dirty_ratio=0.0)
    _send(log, "cd", [(b"a", b"1", 0), (b"b", b"1", 0), (b"c", None, 0)], ts=T0)
    _send(log, "cd", [(b"b", b"2", 0), (b"d", b"1", 0)], ts=T0 + 2 * DAY)
    table = log.table("cd")
    assert (len(table), dict(table.items())) == (3, {b"a": b"1", b"b": b"2", b"d": b"1"})
    log.sweep(now_ms=T0 + 2 * DAY + 1)  # a, the first b and the tombstone of c are a day old: cut
    assert (len(table), dict(table.items()), b"a" in table) == (2, {b"b": b"2", b"d": b"1"}, False)
    assert log.check().ok, log.check().violations
    # Size retention on append, in the producer's transaction, keeps it too.
    log.alter_topic("cd", retention_bytes=40)
    _send(log, "cd", [(b"k%d" % i, b"x" * 10, 0) for i in range(20)], ts=T0 + 3 * DAY)
    live = dict(table.items())
    assert len(table) == len(live) < 20 and all(table[k] == v for k, v in live.items())
    assert log.check().ok, log.check().violations


def test_policy_switched_to_delete_and_back_rebuilds_the_table(tmp_path: Path) -> None:
    log = _open(tmp_path / "log.db")
    log.create_topic("c", partitions=2)
    _send(log, "c", [(b"a", b"1", 0), (b"a", b"2", 0), (b"b", b"1", 1), (b"b", None, 1), (b"c", b"1", 1)])
    log.alter_topic("c", cleanup_policy="compact")
    table = log.table("c")
    assert (len(table), dict(table.items())) == (2, {b"a": b"2", b"c": b"1"})
    log.alter_topic("c", cleanup_policy="delete")
    _send(log, "c", [(b"d", b"1", 0)])
    assert (len(table), table[b"d"]) == (3, b"1")  # read by a scan now
    log.alter_topic("c", cleanup_policy="compact")
    assert (len(table), dict(table.items())) == (3, {b"a": b"2", b"c": b"1", b"d": b"1"})
    assert log.check().ok


def _as_before_latest_tables(path: Path) -> None:
    """Turn a log file back into what sqlog wrote before the latest-record table: a (key, offset)
    index per compacted partition, no latest-record tables, no key counts."""
    conn = apsw.Connection(str(path))
    with conn:
        for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'trigger' AND name LIKE 'p%'").fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        for topic_id, parts in conn.execute("SELECT topic_id, count(*) FROM partitions GROUP BY topic_id").fetchall():
            conn.execute(f"DROP TABLE IF EXISTS l{topic_id}")
            for p in range(parts):
                conn.execute(f"CREATE INDEX k{topic_id}_{p} ON p{topic_id}_{p}(key, offset) WHERE key IS NOT NULL")
        conn.execute("ALTER TABLE topics DROP COLUMN live_keys")
        conn.execute("ALTER TABLE topics DROP COLUMN shared_keys")
        version = next(i for i, m in enumerate(storage.MIGRATIONS) if m is storage.migrate_latest_tables)
        conn.execute(f"PRAGMA user_version = {version}")
    conn.close()


def test_an_older_file_gets_latest_record_tables(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    with _open(path) as log:
        log.create_topic("c", partitions=2, cleanup_policy="compact", min_cleanable_dirty_ratio=0.0)
        _send(log, "c", [(b"a", b"1", 0), (b"a", b"2", 0), (b"b", b"1", 1), (b"b", None, 1), (b"c", b"1", 1),
                         (b"c", b"2", 0)])
    _as_before_latest_tables(path)
    with _open(path) as log:
        table = log.table("c")
        assert (len(table), dict(table.items())) == (2, {b"a": b"2", b"c": b"2"})
        assert log.sweep(now_ms=T0 + 10 * DAY).compacted_records == 3  # a1, b1 and the old tombstone
        assert (len(table), dict(table.items())) == (2, {b"a": b"2", b"c": b"2"})
        report = log.check()
        assert report.ok, report.violations
        with log.engine.read() as conn:
            assert not conn.execute("SELECT name FROM sqlite_schema WHERE name GLOB 'k[0-9]*'").fetchall()


def test_check_finds_a_damaged_latest_record_table(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    log = _open(path)
    log.create_topic("c", cleanup_policy="compact")
    _send(log, "c", [(b"a", b"1", 0), (b"b", b"1", 0), (b"a", b"2", 0)])
    assert log.check().ok
    conn = apsw.Connection(str(path))
    with conn:
        conn.execute("UPDATE l1 SET offset = 0 WHERE key = ?", (b"a",))  # points at a superseded record
    report = log.check()
    assert not report.ok and any("latest-record table" in v for v in report.violations), report.violations
    with conn:
        conn.execute("UPDATE l1 SET offset = 2 WHERE key = ?", (b"a",))
        conn.execute("UPDATE topics SET live_keys = 5")
    report = log.check()
    assert not report.ok and any("live_keys 5" in v for v in report.violations), report.violations
    conn.close()
    log.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_table_used_in_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    log = _open(tmp_path / "log.db")
    log.create_topic("c", cleanup_policy="compact")
    _send(log, "c", [(b"a", b"1", 0)])
    table = log.table("c")
    assert table[b"a"] == b"1"  # the parent's connection is open now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it reads, never return into pytest
        code = 1
        try:
            _send(log, "c", [(b"a", b"child", 0), (b"b", b"1", 0)])
            out = {"a": table[b"a"].decode(), "len": len(table)}
            log.close()  # closes the table too: it is the child's engine's client now
            try:
                table.get(b"a")
            except sqlog.LogClosedError:
                out["closed"] = True
            os.write(write, json.dumps(out).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        got = json.loads(f.read() or "{}")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and got == {"a": "child", "len": 2, "closed": True}
    # The parent's table still reads through its own connection.
    assert (table[b"a"], len(table)) == (b"child", 2)
    assert sys.platform != "win32"
    log.close()


def test_policy_changed_by_another_process_is_followed(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    log = _open(path)
    log.create_topic("c", cleanup_policy="compact")
    _send(log, "c", [(b"a", b"1", 0), (b"a", b"2", 0)])
    tables = [log.table("c") for _ in range(4)]
    assert all(t[b"a"] == b"2" for t in tables)  # each has read the metadata: "compacted"
    with _open(path) as other:  # another handle: this log's cached metadata does not hear of it
        other.alter_topic("c", cleanup_policy="delete")
    by_len, by_iter, by_items, by_get = tables
    assert len(by_len) == 1 and list(by_iter) == [b"a"] and by_items.items() == [(b"a", b"2")]
    assert (by_get[b"a"], by_get.get(b"b")) == (b"2", None)
    log.close()
