"""Record checksums: a byte flipped on disk is never handed back as good data.

SQLite checksums nothing inside a cell, so each record stores a checksum (Adler-32) of its key,
value and headers with its timestamp folded in. These tests flip bits in the file itself (closed, as a
failing disk would), in every part of a record, and read it back through the public API.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import apsw
import pytest

import sqlog
from helpers import read_all

TP = sqlog.TopicPartition("t", 0)
N = 40


def _value(i: int) -> bytes:
    return b"value-%04d-" % i + bytes(range(64))


def _write(path: Path) -> list[tuple[bytes, bytes, tuple[tuple[str, bytes], ...], int]]:
    """N records with a key, a value, a header and a timestamp each; what was sent."""
    sent = []
    with sqlog.open(path) as log:
        log.create_topic("t")
        with log.producer() as producer:
            for i in range(N):
                key, headers, ts = b"key-%04d" % i, (("h", b"hdr-%04d" % i),), 1_700_000_000_000 + i
                producer.send("t", _value(i), key=key, headers=list(headers), timestamp_ms=ts)
                sent.append((key, _value(i), headers, ts))
        log.checkpoint()
    return sent


def _int_bytes(n: int) -> bytes:
    """``n`` as SQLite stores an integer in a record: big-endian, in the smallest of its sizes."""
    for size in (1, 2, 3, 4, 6, 8):
        if -(1 << (8 * size - 1)) <= n < 1 << (8 * size - 1):
            return n.to_bytes(size, "big", signed=True)
    raise AssertionError(n)


def _regions(path: Path, data: bytes, i: int) -> dict[str, range]:
    """Where record ``i``'s parts lie in the file (cell layout: ..., ts, key, value, headers, crc).

    Only the table's leaf pages count: other pages may hold stale copies of old cells."""
    conn = apsw.Connection(str(path))
    (crc,) = conn.execute("SELECT crc FROM p1_0 WHERE offset = ?", (i,)).fetchone()
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    leaves = [n for (n,) in conn.execute("SELECT pageno FROM dbstat WHERE name = 'p1_0' AND pagetype = 'leaf'")]
    conn.close()
    found = [
        (n - 1) * page_size + at
        for n in leaves
        if (at := data[(n - 1) * page_size:n * page_size].find(b"key-%04d" % i)) >= 0
    ]
    assert len(found) == 1, found
    key_at = found[0]
    value_at = key_at + 8
    assert data[value_at:value_at + 11] == b"value-%04d-" % i
    headers_at = value_at + len(_value(i))
    header_end = data.index(b"hdr-%04d" % i, headers_at) + 8
    stored = _int_bytes(crc)
    assert data[header_end:header_end + len(stored)] == stored, "the cell layout is not the one this test expects"
    return {
        "timestamp": range(key_at - 6, key_at),
        "key": range(key_at, value_at),
        "value": range(value_at, headers_at),
        "headers": range(headers_at, header_end),
        "checksum": range(header_end, header_end + len(stored)),
    }


def _read_all(path: Path, **config: object) -> list[sqlog.Record]:
    with sqlog.open(path) as log:
        return read_all(log, TP.topic, TP.partition, **config)


def test_records_round_trip_with_checks_on(tmp_path: Path) -> None:
    sent = _write(tmp_path / "log.db")
    got = _read_all(tmp_path / "log.db")
    assert [(r.key, r.value, r.headers, r.timestamp_ms) for r in got] == sent
    with sqlog.open(tmp_path / "log.db") as log:
        report = log.check()
    assert report.ok and report.unverified == {}


def test_random_bit_flips_are_all_caught(tmp_path: Path) -> None:
    """Flip one bit at a random place of a random record's timestamp, key, value, headers or
    checksum, 200 times: every poll() raises CorruptRecordError naming that record, after
    returning the records before it, and check() lists exactly that offset. With
    ``check_crcs=False`` the damaged record is handed back changed (what the check prevents)."""
    pristine = tmp_path / "pristine.db"
    sent = _write(pristine)
    data = pristine.read_bytes()
    regions = [_regions(pristine, data, i) for i in range(N)]
    rng = random.Random(20261130)
    tried = caught = 0
    for trial in range(200):
        i = rng.randrange(N)
        part = rng.choice(["timestamp", "key", "value", "headers", "checksum"])
        at = rng.choice(regions[i][part])
        damaged = bytearray(data)
        damaged[at] ^= 1 << rng.randrange(8)
        path = tmp_path / f"flip{trial}.db"
        path.write_bytes(bytes(damaged))
        tried += 1
        with sqlog.open(path) as log:
            consumer = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
            consumer.assign([TP])
            if i:  # the records before the damaged one come first
                before = consumer.poll(max_records=1000)
                assert [r.offset for r in before] == list(range(i)), (part, at)
            with pytest.raises(sqlog.CorruptRecordError) as info:
                consumer.poll(max_records=1000)
            assert (info.value.topic, info.value.partition, info.value.offset) == ("t", 0, i)
            assert f"t-0 offset {i}" in str(info.value) and "sqlog check" in str(info.value)
            consumer.seek(TP, i + 1)  # what the error says to do: read on past it
            after = consumer.poll(max_records=1000)
            assert [r.offset for r in after] == list(range(i + 1, N))
            consumer.close()
            report = log.check()
            expected = f"t-0 offset {i}: the record does not match its checksum (damaged)"
            assert expected in report.violations  # (a changed timestamp may break the batch index too)
            assert all(v == expected or "batch" in v for v in report.violations), report.violations
        caught += 1
        if trial < 20 and part != "checksum":
            unchecked = _read_all(path, check_crcs=False)
            assert (unchecked[i].key, unchecked[i].value, unchecked[i].headers, unchecked[i].timestamp_ms) != sent[i]
        path.unlink()
    assert caught == tried == 200


def test_share_consumer_rejects_a_damaged_record(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    _write(path)
    data = bytearray(path.read_bytes())
    at = _regions(path, bytes(data), 5)["value"][10]
    data[at] ^= 0x10
    path.write_bytes(bytes(data))
    with sqlog.open(path) as log:
        log.create_topic("dlq")
        jobs = log.share_consumer("workers", dead_letter_topic="dlq", acknowledgement_mode="implicit")
        jobs.subscribe(["t"])
        first = jobs.poll(max_records=1000)
        assert [r.offset for r in first] == list(range(5))
        with pytest.raises(sqlog.CorruptRecordError) as info:
            jobs.poll(max_records=1000)
        assert info.value.offset == 5
        rest = jobs.poll(max_records=1000)
        assert [r.offset for r in rest] == list(range(6, N))
        jobs.close()
        state = log.describe_share_group("workers").partitions[0]
        assert state.start_offset == N  # the damaged record is done (archived), the rest accepted
        dead = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
        dead.assign([sqlog.TopicPartition("dlq", 0)])
        copies = dead.poll(timeout_ms=100)
        assert len(copies) == 1 and dict(copies[0].headers)["__dlq.errors.offset"] == b"5"
        dead.close()


def _drop_checksums(path: Path) -> None:
    """Make ``path`` a file as sqlog wrote it before checksums (schema 3, no crc column)."""
    conn = apsw.Connection(str(path))
    for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'").fetchall():
        if re.fullmatch(r"p\d+_\d+", name):
            conn.execute(f"ALTER TABLE {name} DROP COLUMN crc")
    conn.execute("PRAGMA user_version = 3")
    conn.close()


def test_files_from_before_checksums_stay_readable(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    sent = _write(path)
    _drop_checksums(path)
    old = tmp_path / "old.db"
    shutil.copy(path, old)
    with sqlog.open(path) as log:
        with log.producer() as producer:  # new records get checksums beside the old ones
            producer.send("t", b"new", key=b"k", timestamp_ms=1_800_000_000_000).get()
        report = log.check()
        assert report.ok, report.violations
        assert report.unverified == {TP: N}
    got = _read_all(path)
    assert [(r.key, r.value, r.headers, r.timestamp_ms) for r in got[:N]] == sent
    assert got[N].value == b"new"
    # An old record damaged by a changed type (as a damaged cell can read back) is still refused.
    conn = apsw.Connection(str(old))
    conn.execute("UPDATE p1_0 SET value = 12345 WHERE offset = 7")
    conn.close()
    with sqlog.open(old) as log:
        report = log.check()
        assert "t-0 offset 7: the record does not match its checksum (damaged)" in report.violations
        consumer = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
        consumer.assign([TP])
        assert len(consumer.poll(max_records=1000)) == 7
        with pytest.raises(sqlog.CorruptRecordError):
            consumer.poll(max_records=1000)
        consumer.close()


def test_check_crcs_must_be_a_bool(tmp_path: Path) -> None:
    with sqlog.open(tmp_path / "log.db") as log:
        with pytest.raises(sqlog.InvalidConfigError, match="check_crcs"):
            log.consumer(check_crcs="yes")
        with pytest.raises(sqlog.InvalidConfigError, match="check_crcs"):
            log.share_consumer("g", check_crcs=1)
