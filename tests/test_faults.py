"""Fault injection (invariant 7 against a sick disk): a full disk, read-only files and
directories, a database locked by another process, truncated, damaged and garbage files, and a
file from a newer sqlog. Each must give a clear `sqlog.SqlogError` subclass (never a raw apsw
error), keep every acknowledged record readable, and let sqlog work again once the fault is gone.

A real full disk is a small tmpfs, which needs root and a kernel that allows mounts; elsewhere
those tests are skipped with the reason, and the in-process page limit
(``sqlog.open(path, max_db_bytes=...)``) covers the full disk everywhere. Read-only files and
directories use chmod for ordinary users; root ignores chmod, so as root they use a read-only
tmpfs remount or a read-only bind mount of the file (skipped with the reason if mounting fails).

All of this runs by default; the slow variant (``pytest -m slow tests/test_faults.py``) damages
a log at many random places.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

import sqlog
from sqlog import TopicPartition
from helpers import raises_sqlog_error, success_or_sqlog_error

sys.path.insert(0, str(Path(__file__).resolve().parent / "procs"))
from rel_harness import Child, read_all, value_for  # noqa: E402

TP0 = TopicPartition("t", 0)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _remove_log(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _fill(log: sqlog.Log, topic: str, n: int, size: int = 100, partitions: int = 1) -> list[bytes]:
    rng = random.Random(n)  # deterministic: the same file layout on every run
    values = [b"%06d:" % i + rng.randbytes(size) for i in range(n)]
    with log.producer(linger_ms=0) as producer:
        for i, v in enumerate(values):
            producer.send(topic, v, partition=i % partitions)
    return values


def _values(log: sqlog.Log, topic: str = "t", partitions: int = 1) -> dict[int, list[bytes]]:
    return {p: [r.value for r in recs] for p, recs in read_all(log, topic, partitions).items()}


# -- mounts (root only) ----------------------------------------------------------------------


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise OSError(f"mount {' '.join(args)}: {result.stderr.strip() or result.returncode}")


def _umount(target: str) -> None:
    result = subprocess.run(["umount", target], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:  # still busy (a leaked descriptor): detach it lazily
        subprocess.run(["umount", "-l", target], capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root (running as uid %d)" % os.geteuid())
    try:
        _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where))
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield where
    finally:
        _umount(str(where))


@contextlib.contextmanager
def read_only(target: Path) -> Iterator[None]:
    """Make ``target`` (a mount point or a single file) read-only, even for root: a read-only
    remount of the tmpfs, or a read-only bind mount of the file over itself."""
    if target.is_dir():
        try:
            _mount("-o", "remount,ro", str(target))
        except OSError as exc:
            pytest.skip(f"cannot remount read-only: {exc}")
        try:
            yield
        finally:
            _mount("-o", "remount,rw", str(target))
    else:
        try:
            _mount("--bind", str(target), str(target))
        except OSError as exc:
            pytest.skip(f"cannot bind-mount a file: {exc}")
        try:
            _mount("-o", "remount,ro,bind", str(target))
        except OSError as exc:
            _umount(str(target))
            pytest.skip(f"cannot remount a bind mount read-only: {exc}")
        try:
            yield
        finally:
            _umount(str(target))


@contextlib.contextmanager
def chmod_read_only(target: Path) -> Iterator[None]:
    mode = target.stat().st_mode
    target.chmod(0o555 if target.is_dir() else 0o444)
    try:
        yield
    finally:
        target.chmod(mode)


@contextlib.contextmanager
def scratch_dir(where: Path) -> Iterator[Path]:
    """A directory that can be made read-only: as root a tmpfs of its own (chmod does not stop
    root; a read-only remount does), else a plain directory (chmod will do)."""
    if IS_ROOT:
        with tmpfs(where, "16m") as mounted:
            yield mounted
    else:
        where.mkdir(parents=True, exist_ok=True)
        yield where


def made_read_only(target: Path) -> contextlib.AbstractContextManager[None]:
    return read_only(target) if IS_ROOT else chmod_read_only(target)


# -- a full disk -------------------------------------------------------------------------------


def _produce_until_full(log: sqlog.Log, partitions: int, limit: int = 200_000) -> tuple[list[tuple[int, int, bytes]], sqlog.SqlogError]:
    """Send (getting each) until a write fails; returns the acknowledged (partition, offset, value)
    and the error. Records vary in size so the last batch is sometimes large."""
    rng = random.Random(7)
    acked: list[tuple[int, int, bytes]] = []
    producer = log.producer(linger_ms=0)
    for i in range(limit):
        batch = []
        for _ in range(rng.choice((1, 1, 3, 20))):
            value = b"%07d:" % i + rng.randbytes(rng.choice((10, 300, 3000)))
            batch.append((value, producer.send("t", value, partition=rng.randrange(partitions))))
        try:
            for value, future in batch:
                md = future.get(timeout=30)
                acked.append((md.partition, md.offset, value))
        except sqlog.SqlogError as exc:
            with contextlib.suppress(sqlog.SqlogError):
                producer.flush(timeout=30)  # the failed write's error is reported once more here
            producer.close()
            return acked, exc
    pytest.fail(f"the disk never filled up after {limit} sends")


def _assert_all_there(log: sqlog.Log, acked: list[tuple[int, int, bytes]], partitions: int,
                      context: str = "") -> None:
    stored = read_all(log, "t", partitions)
    have = {(r.partition, r.offset): r.value for recs in stored.values() for r in recs}
    missing = [(p, o) for p, o, v in acked if have.get((p, o)) != v]
    assert not missing, f"{context}: {len(missing)} acknowledged records lost or changed, e.g. {missing[:5]}"
    # nothing beyond the acknowledged records: the failed write stored nothing
    assert len(have) == len(acked), f"{context}: {len(have)} records stored, {len(acked)} acknowledged"
    for p, recs in stored.items():
        assert [r.offset for r in recs] == list(range(len(recs))), f"{context}: partition {p} not dense"


def test_full_tmpfs_gives_disk_full_keeps_acknowledged_records_and_recovers(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "2m") as disk:
        path = str(disk / "log.db")
        log = sqlog.open(path, wal_checkpoint_interval_ms=20)
        log.create_topic("t", partitions=2)
        consumer = log.consumer(group_id="g", enable_auto_commit=False)
        consumer.commit({TopicPartition("t", 0): 0})
        filler = disk / "filler"
        filler.write_bytes(b"\0" * 700_000)  # what we delete later to make room

        acked, error = _produce_until_full(log, partitions=2)
        assert isinstance(error, sqlog.DiskFullError), f"{type(error).__name__}: {error}"
        assert "disk is full" in str(error) and path in str(error)
        assert len(acked) > 50

        # still full: every other write fails cleanly, every read works
        producer = log.producer(linger_ms=0)
        raises_sqlog_error(lambda: producer.send("t", b"x" * 200_000, partition=0).get(timeout=30), sqlog.DiskFullError)
        raises_sqlog_error(producer.flush, sqlog.DiskFullError)  # flush() reports the failed write once more
        raises_sqlog_error(lambda: log.create_topic("new-topic", partitions=50), sqlog.DiskFullError)
        assert "new-topic" not in log.list_topics()
        ok, _ = success_or_sqlog_error(log.checkpoint)
        report = log.check()
        assert report.ok, report.violations
        _assert_all_there(log, acked, 2, "while the disk is full")
        # a second, fresh open of the full disk reads everything too
        with sqlog.open(path, retention_check_interval_ms=None, wal_checkpoint_interval_ms=None) as other:
            _assert_all_there(other, acked, 2, "fresh open while the disk is full")

        # free space: sqlog works again, on the same Log, producer and consumer
        filler.unlink()
        md = producer.send("t", b"after", partition=0).get(timeout=30)
        acked.append((0, md.offset, b"after"))
        producer.flush(timeout=30)
        consumer.commit({TopicPartition("t", 0): md.offset + 1})
        assert consumer.committed(TopicPartition("t", 0)) == md.offset + 1
        log.create_topic("new-topic")
        log.checkpoint()
        assert log.check().ok
        _assert_all_there(log, acked, 2, "after freeing space")
        log.close()
        with sqlog.open(path) as again:
            assert again.check().ok
            _assert_all_there(again, acked, 2, "after reopening")


def test_full_tmpfs_with_several_producer_processes(tmp_path: Path) -> None:
    """Producer processes hit the full disk together; nothing they were acknowledged is lost."""
    with tmpfs(tmp_path / "disk", "3m") as disk:
        path = str(disk / "log.db")
        with sqlog.open(path) as log:
            log.create_topic("events", partitions=3)
        (disk / "filler").write_bytes(b"\0" * 1_000_000)
        kids = [Child("produce", {"path": path, "pid": f"p{i}", "topic": "events", "partitions": 3,
                                  "seed": i, "batch_size": 4096, "linger_ms": 1, "mode": mode, "count": 100_000},
                      tmp_path)
                for i, mode in enumerate(["get", "flush:20", "threads:2"])]
        try:
            for kid in kids:
                kid.drain(timeout=120)  # each fails (exits non-zero) once the disk is full
            assert all(kid.proc.returncode != 0 for kid in kids)
            for kid in kids:
                assert "DiskFullError" in kid.stderr() and "disk is full" in kid.stderr(), kid.stderr()
        finally:
            for kid in kids:
                kid.cleanup()
        acks = [line.split() for kid in kids for line in kid.lines if line.startswith("ack ")]
        assert acks
        (disk / "filler").unlink()
        with sqlog.open(path) as log:
            assert log.check().ok
            stored = read_all(log, "events", 3)
            have = {(r.partition, r.offset): r.value for recs in stored.values() for r in recs}
            for _, pid, seq, part, off in acks:
                assert have[(int(part), int(off))].startswith(f"{pid}:{seq}:".encode())
            with log.producer() as producer:
                producer.send("events", b"works again").get(timeout=30)


def test_page_limit_gives_disk_full_keeps_acknowledged_records_and_recovers_after_sweep(log_path: str) -> None:
    log = sqlog.open(log_path, max_db_bytes=256 * 1024, retention_check_interval_ms=None)
    log.create_topic("t", partitions=2)
    consumer = log.consumer(group_id="g", enable_auto_commit=False)
    consumer.commit({TopicPartition("t", 0): 0})

    acked, error = _produce_until_full(log, partitions=2)
    assert isinstance(error, sqlog.DiskFullError), f"{type(error).__name__}: {error}"
    assert "disk is full" in str(error) and log_path in str(error)
    assert log.check().ok
    _assert_all_there(log, acked, 2, "at the page limit")
    raises_sqlog_error(lambda: log.create_topic("more", partitions=200), sqlog.DiskFullError)
    assert "more" not in log.list_topics()
    raises_sqlog_error(lambda: log.producer().send("t", b"x" * 100_000).get(timeout=30), sqlog.DiskFullError)

    # a fresh open with the same limit reads everything
    with sqlog.open(log_path, max_db_bytes=256 * 1024, retention_check_interval_ms=None) as other:
        _assert_all_there(other, acked, 2, "fresh open at the page limit")

    # make room the way an operator would: lower retention, sweep
    log.alter_topic("t", retention_bytes=20_000)
    result = log.sweep()
    assert result.records > 0 and result.pages_freed > 0
    before = {p.partition: p.high_watermark for p in log.describe_topic("t").partitions}
    with log.producer() as producer:
        for i in range(50):
            producer.send("t", b"again-%d" % i, partition=i % 2).get(timeout=30)
    assert log.check().ok
    after = read_all(log, "t", 2)
    for part in log.describe_topic("t").partitions:
        recs = after[part.partition]
        # retention cut a prefix, nothing else: the rest is intact and dense
        assert [r.offset for r in recs] == list(range(part.log_start_offset, before[part.partition] + 25))
        kept = {(p, o): v for p, o, v in acked if p == part.partition and o >= part.log_start_offset}
        assert {(part.partition, r.offset): r.value for r in recs if r.offset < before[part.partition]} == kept
        assert [r.value for r in recs[-25:]] == [b"again-%d" % i for i in range(part.partition, 50, 2)]


def test_page_limit_size_retained_topic_keeps_writing_forever(log_path: str) -> None:
    """A topic whose retention fits under the cap never reports a full disk (retention on append)."""
    log = sqlog.open(log_path, max_db_bytes=512 * 1024, retention_check_interval_ms=None)
    log.create_topic("t", partitions=2, retention_bytes=64 * 1024)
    producer = log.producer(linger_ms=0, batch_size=8192)
    value = random.randbytes(200)
    for i in range(20_000):  # 4 MB through a 512 KiB file
        producer.send("t", value)
        if i % 100 == 99:
            producer.flush(timeout=30)
    producer.flush(timeout=30)
    assert log.check().ok
    assert sum(p.high_watermark for p in log.describe_topic("t").partitions) == 20_000


def test_page_limit_reached_by_an_offset_commit_keeps_the_previous_commit(log_path: str) -> None:
    log = sqlog.open(log_path, max_db_bytes=172 * 1024, retention_check_interval_ms=None)  # schemas 6, 12: +3 pages each
    log.create_topic("t", partitions=1)
    with log.producer() as producer:
        producer.send("t", b"r0").get(timeout=30)
    consumer = log.consumer(group_id="g0", enable_auto_commit=False)
    consumer.commit({TP0: 1})
    # fill the file with commits of ever more groups (big metadata), then with records
    failed = None
    for i in range(10_000):
        c = log.consumer(group_id="group-%05d" % i + "x" * 200, enable_auto_commit=False)
        try:
            c.commit({TP0: sqlog.OffsetAndMetadata(1, "m" * 2000)})
        except sqlog.SqlogError as exc:
            failed = exc
            break
        finally:
            c.close()
    assert isinstance(failed, sqlog.DiskFullError), failed
    assert consumer.committed(TP0) == 1
    raises_sqlog_error(lambda: consumer.commit({TP0: sqlog.OffsetAndMetadata(0, "z" * 50_000)}), sqlog.DiskFullError)
    assert consumer.committed(TP0) == 1
    assert log.check().ok


@contextlib.contextmanager
def peak_db_plus_wal(path: str) -> Iterator[list[int]]:
    """Sample the database + WAL bytes on disk every half millisecond; yields [peak] (a stat per
    sample is fine here, in a test thread; the WAL only shrinks by being truncated)."""
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            sizes = [os.stat(path + suffix).st_size if os.path.exists(path + suffix) else 0
                     for suffix in ("", "-wal")]
            peak[0] = max(peak[0], sum(sizes))
            time.sleep(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def live_reader(log: sqlog.Log, topics: list[str]) -> Iterator[list[int]]:
    """A consumer polling nonstop in a thread: its snapshots are what keep a WAL from being reset."""
    read = [0]
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        consumer = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False, metadata_max_age_ms=0)
        consumer.subscribe(topics)
        try:
            while not stop.is_set():
                read[0] += len(consumer.poll(timeout_ms=10, max_records=200))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            consumer.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield read
    finally:
        stop.set()
        thread.join()
    assert not errors, errors


# One transaction's worth of WAL frames (page + 24-byte header) for the writes below: 20 records
# of at most 3 KB (see _produce_until_full), plus the index and b-tree pages they touch (19 pages
# at most, as measured; 24 allowed). The documented bound: database + WAL exceed max_db_bytes by
# at most the transaction being committed.
ONE_TRANSACTION = 24 * (4096 + 24)


def test_page_limit_caps_database_plus_wal_under_a_live_reader(log_path: str) -> None:
    """max_db_bytes used to cap only the database file: a nonstop producer beside a polling
    consumer grew the WAL to 5.5 MB under a 512 KiB cap. Database + WAL must stay within it,
    at full write speed and when writes fill it up (DiskFullError, nothing acknowledged lost)."""
    cap = 512 * 1024
    log = sqlog.open(log_path, max_db_bytes=cap, retention_check_interval_ms=None)
    log.create_topic("r", partitions=2, retention_bytes=64 * 1024)  # stays under the cap forever
    log.create_topic("t", partitions=2)
    with peak_db_plus_wal(log_path) as peak, live_reader(log, ["r", "t"]) as read:
        producer = log.producer(linger_ms=0, batch_size=8192)
        value = random.randbytes(200)
        for i in range(20_000):  # 4 MB through the 512 KiB cap
            producer.send("r", value)
            if i % 100 == 99:
                producer.flush(timeout=30)
        producer.flush(timeout=30)
        producer.close()
        streamed = peak[0]
        acked, error = _produce_until_full(log, partitions=2)
    print(f"cap {cap}: db + WAL peak {streamed} streaming, {peak[0]} filling up; read {read[0]}")
    assert read[0] > 1000, "the reader did not keep up, so it held few snapshots"
    assert streamed <= cap + ONE_TRANSACTION, f"db + WAL reached {streamed} bytes streaming under a {cap} cap"
    assert peak[0] <= cap + ONE_TRANSACTION, f"db + WAL reached {peak[0]} bytes under a {cap} cap"
    assert isinstance(error, sqlog.DiskFullError), f"{type(error).__name__}: {error}"
    assert log_path in str(error)
    assert sum(p.high_watermark for p in log.describe_topic("r").partitions) == 20_000
    _assert_all_there(log, acked, 2, "at the cap")
    assert log.check().ok


def test_page_limit_refuses_writes_while_a_reader_pins_the_wal(log_path: str) -> None:
    """A reader holding one snapshot keeps the WAL from being reset: once the WAL fills its share
    of max_db_bytes, writes fail with DiskFullError (after waiting busy_timeout_ms for the reader)
    instead of growing the WAL past the cap; when the reader ends, writes go through again."""
    cap = 512 * 1024
    log = sqlog.open(log_path, max_db_bytes=cap, busy_timeout_ms=200, retention_check_interval_ms=None,
                     wal_checkpoint_interval_ms=None)
    log.create_topic("t", partitions=2)
    with log.producer() as producer:
        producer.send("t", b"before the reader", partition=0).get(timeout=30)
    reader = apsw.Connection(log_path)  # another process's long read, say
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM topics").fetchone() == (1,)
    try:
        with peak_db_plus_wal(log_path) as peak:
            acked, error = _produce_until_full(log, partitions=2)
        assert peak[0] <= cap + ONE_TRANSACTION, f"db + WAL reached {peak[0]} bytes under a {cap} cap"
        assert isinstance(error, sqlog.DiskFullError), f"{type(error).__name__}: {error}"
        assert "max_db_bytes" in str(error) and "read" in str(error), error
    finally:
        reader.execute("COMMIT")
        reader.close()
    with log.producer() as producer:
        md = producer.send("t", b"after the reader", partition=1).get(timeout=30)
    acked.append((md.partition, md.offset, b"after the reader"))
    acked.append((0, 0, b"before the reader"))
    _assert_all_there(log, acked, 2, "after the reader ended")
    assert log.check().ok


# -- read-only files and directories --------------------------------------------------------------


def _make_log(path: str, n: int = 30) -> list[bytes]:
    with sqlog.open(path) as log:
        log.create_topic("t")
        values = _fill(log, "t", n)
        if n >= 3:
            consumer = log.consumer(group_id="g", enable_auto_commit=False)
            consumer.commit({TP0: 3})
            consumer.close()
    return values


def _assert_read_only_log_behaves(path: str, values: list[bytes], committed: int | None = 3) -> None:
    """Opened read-only: reads see every record and commit, writes raise ReadOnlyError."""
    log = sqlog.open(path, retention_check_interval_ms=None, wal_checkpoint_interval_ms=None)
    try:
        assert _values(log)[0] == values
        consumer = log.consumer(group_id="g", enable_auto_commit=False)
        assert consumer.committed(TP0) == committed
        for call in (
            lambda: log.producer().send("t", b"x").get(timeout=30),
            lambda: log.create_topic("u"),
            lambda: log.alter_topic("t", retention_ms=1000),
            lambda: log.delete_topic("t"),
            lambda: consumer.commit({TP0: 4}),
        ):
            exc = raises_sqlog_error(call, sqlog.ReadOnlyError)
            assert "read-only" in str(exc)
        success_or_sqlog_error(lambda: log.sweep(now_ms=2**62))
        report = log.check()
        assert report.ok, report.violations
        consumer.close()
    finally:
        success_or_sqlog_error(log.close)


def test_read_only_file(tmp_path: Path) -> None:
    with scratch_dir(tmp_path / "disk") as disk:
        path = str(disk / "log.db")
        values = _make_log(path)
        with made_read_only(Path(path)):
            _assert_read_only_log_behaves(path, values)
        with sqlog.open(path) as log:  # writable again: nothing was lost, writes work
            assert _values(log)[0] == values
            log.producer().send("t", b"ok").get(timeout=30)
            assert log.check().ok


def _open_in_read_only_directory(tmp_path: Path) -> tuple[sqlog.SqlogError | None, list[bytes]]:
    with scratch_dir(tmp_path / "disk") as disk:
        path = str(disk / "log.db")
        values = _make_log(path)
        assert sorted(os.listdir(disk)) == ["log.db"]  # closed cleanly: no -wal/-shm to reuse
        with made_read_only(disk):
            ok, result = success_or_sqlog_error(lambda: sqlog.open(path))
            if ok:
                result.close()
                result = None
        with sqlog.open(path) as log:
            assert _values(log)[0] == values
    return result, values


def test_read_only_directory_gives_a_clear_error(tmp_path: Path) -> None:
    error, _ = _open_in_read_only_directory(tmp_path)
    # Opening read-only would also be fine; failing must say what is wrong.
    if error is not None:
        assert any(word in str(error) for word in ("read-only", "writable", "permission")), error


def test_read_only_directory_raises_read_only_error(tmp_path: Path) -> None:
    """Found by this suite (was StorageError 'cannot open the log'); fixed in ce60316."""
    error, _ = _open_in_read_only_directory(tmp_path)
    assert isinstance(error, sqlog.ReadOnlyError), f"{type(error).__name__}: {error}"


def test_read_only_directory_after_a_crash_reads_the_wal(tmp_path: Path) -> None:
    """A writer killed with its records only in the WAL, then the disk goes read-only: the
    records must still be read (the WAL is not silently ignored) and writes refused."""
    with scratch_dir(tmp_path / "disk") as disk:
        path = str(disk / "log.db")
        _make_log(path, n=0)
        child = Child("produce", {"path": path, "pid": "w", "topic": "t", "partitions": 1, "seed": 1,
                                  "batch_size": 1024, "linger_ms": 0, "mode": "get", "count": 100,
                                  "stay_open": True, "open": {"wal_checkpoint_interval_ms": None}}, tmp_path)
        try:
            child.wait_line("finished", timeout=60)
            child.kill9()  # before a close could checkpoint the WAL
        finally:
            child.cleanup()
        assert sum(line.startswith("ack ") for line in child.lines) == 100
        assert os.path.getsize(path + "-wal") > 0
        values = [value_for("w", i) for i in range(100)]
        with made_read_only(disk):
            _assert_read_only_log_behaves(path, values, committed=None)
        with sqlog.open(path) as log:
            assert _values(log)[0] == values


# -- a database locked by another process ------------------------------------------------------


@pytest.mark.parametrize("locking_mode", ["normal", "exclusive"])
def test_database_locked_by_another_process(tmp_path: Path, log_path: str, locking_mode: str) -> None:
    values = _make_log(log_path)
    holder = Child("hold_lock", {"path": log_path, "locking_mode": locking_mode}, tmp_path, stdin=True)
    try:
        holder.wait_line("locked", timeout=30)
        timeout_ms = 300
        if locking_mode == "exclusive":  # nobody else may even read: open itself times out
            started = time.monotonic()
            exc = raises_sqlog_error(lambda: sqlog.open(log_path, busy_timeout_ms=timeout_ms), sqlog.DatabaseLockedError)
            assert time.monotonic() - started >= 0.25
            assert "busy_timeout_ms" in str(exc)
        else:
            log = sqlog.open(log_path, busy_timeout_ms=timeout_ms)
            producer = log.producer(linger_ms=0)
            consumer = log.consumer(group_id="g", enable_auto_commit=False)
            for call in (
                lambda: producer.send("t", b"blocked").get(timeout=30),
                lambda: log.create_topic("u"),
                lambda: consumer.commit({TP0: 5}),
                lambda: log.alter_topic("t", retention_ms=5000),
            ):
                started = time.monotonic()
                exc = raises_sqlog_error(call, sqlog.DatabaseLockedError)
                waited = time.monotonic() - started
                assert 0.25 <= waited < 10, f"waited {waited:.2f} s with busy_timeout_ms={timeout_ms}"
                assert "busy_timeout_ms" in str(exc)
            # reads go on (WAL readers do not wait for the writer)
            assert _values(log)[0] == values
            assert consumer.committed(TP0) == 3
        holder.send("release")
        holder.wait_line("released", timeout=30)
        if locking_mode == "exclusive":
            log = sqlog.open(log_path, busy_timeout_ms=timeout_ms)
            producer = log.producer(linger_ms=0)
            consumer = log.consumer(group_id="g", enable_auto_commit=False)
        md = producer.send("t", b"after").get(timeout=30)
        assert md.offset == len(values)  # the refused record was not stored
        consumer.commit({TP0: 5})
        assert consumer.committed(TP0) == 5
        log.create_topic("u")
        assert log.check().ok
        assert _values(log)[0] == [*values, b"after"]
        log.close()
        holder.finish(timeout=30)
    finally:
        holder.cleanup()


def test_lock_released_within_busy_timeout_is_waited_for(tmp_path: Path, log_path: str) -> None:
    _make_log(log_path)
    holder = Child("hold_lock", {"path": log_path}, tmp_path, stdin=True)
    try:
        holder.wait_line("locked", timeout=30)
        log = sqlog.open(log_path, busy_timeout_ms=20_000)
        producer = log.producer(linger_ms=0)
        future = producer.send("t", b"waits")
        time.sleep(0.3)
        holder.send("release")
        assert future.get(timeout=30).offset == 30
        holder.finish(timeout=30)
    finally:
        holder.cleanup()


def test_a_long_reader_does_not_stall_producers(tmp_path: Path, log_path: str) -> None:
    log = sqlog.open(log_path, busy_timeout_ms=2000, wal_limit_bytes=32 * 1024, wal_checkpoint_interval_ms=20)
    log.create_topic("t")
    producer = log.producer(linger_ms=0)
    for _ in range(100):  # the WAL is now well past wal_limit_bytes
        producer.send("t", random.randbytes(1000)).get(timeout=30)
    reader = Child("hold_lock", {"path": log_path, "locking_mode": "read"}, tmp_path, stdin=True)
    try:
        reader.wait_line("locked", timeout=30)
        errors, worst = [], 0.0
        until = time.monotonic() + 3
        while time.monotonic() < until:
            started = time.monotonic()
            ok, result = success_or_sqlog_error(lambda: producer.send("t", b"x" * 1000).get(timeout=30))
            worst = max(worst, time.monotonic() - started)
            if not ok:
                errors.append(result)
        reader.send("release")
        reader.wait_line("released", timeout=30)
        reader.finish(timeout=30)
    finally:
        reader.cleanup()
    assert not errors and worst < 1.0, f"worst send {worst:.2f} s, errors {errors[:2]}"


# -- truncated, damaged and garbage files ------------------------------------------------------


def _big_log(path: str) -> dict[int, list[bytes]]:
    with sqlog.open(path) as log:
        log.create_topic("t", partitions=2)
        _fill(log, "t", 6000, size=150, partitions=2)
        consumer = log.consumer(group_id="g", enable_auto_commit=False)
        consumer.commit({TP0: 7})
        consumer.close()
        values = _values(log, "t", 2)
    assert sorted(os.listdir(os.path.dirname(path))) == [os.path.basename(path)]  # checkpointed
    return values


def _exercise_damaged(path: str, values: dict[int, list[bytes]], exact_values: bool = True) -> dict[str, str]:
    """Use every part of the API on a damaged file. Every call succeeds or raises a SqlogError;
    no read silently returns less than what is stored (a read either gets all of a partition's
    records, in offset order, or fails) nor, with ``exact_values``, different bytes. Without
    ``exact_values`` such reads are reported as "changed" / "misordered" instead of failing."""
    outcome: dict[str, str] = {}

    def note(name: str, call: Callable[[], Any]) -> tuple[bool, Any]:
        ok, result = success_or_sqlog_error(call)
        outcome[name] = "ok" if ok else type(result).__name__
        return ok, result

    ok, log = note("open", lambda: sqlog.open(path, retention_check_interval_ms=None, wal_checkpoint_interval_ms=None))
    if not ok:
        return outcome
    try:
        ok, report = note("check", log.check)
        outcome["check"] = "ok" if ok and report.ok else ("violations" if ok else outcome["check"])
        for p in (0, 1):
            def read(p: int = p) -> list[bytes]:
                consumer = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
                consumer.assign([TopicPartition("t", p)])
                got = []
                while batch := consumer.poll(max_records=1000):
                    got.extend(batch)
                consumer.close()
                return got

            ok, got = note(f"read{p}", read)
            if ok:
                if [r.offset for r in got] != list(range(len(values[p]))):
                    assert not exact_values, f"partition {p}: offsets lost or misordered silently"
                    outcome[f"read{p}"] = "misordered"
                elif exact_values:
                    assert [r.value for r in got] == values[p], f"partition {p}: values changed silently"
                elif [r.value for r in got] != values[p]:
                    outcome[f"read{p}"] = "changed"
        note("describe", lambda: log.describe_topic("t"))
        note("list", log.list_topics)
        note("committed", lambda: log.consumer(group_id="g").committed(TP0))
        note("offsets_for_times", lambda: log.consumer().offsets_for_times({TP0: 0}))
        producer = log.producer(linger_ms=0)
        note("send", lambda: producer.send("t", b"x", partition=0).get(timeout=30))
        note("flush", lambda: producer.flush(timeout=30))
        note("create", lambda: log.create_topic("u"))
        note("sweep", lambda: log.sweep(now_ms=2**62))
        note("checkpoint", log.checkpoint)
        note("stats", log.stats)
        note("delete", lambda: log.delete_topic("t"))
    finally:
        note("close", log.close)
    return outcome


def _damage_is_reported(outcome: dict[str, str]) -> bool:
    """Somebody said so: open failed, check() found violations or raised, or a read failed."""
    return outcome["open"] != "ok" or outcome["check"] != "ok" or "ok" not in (outcome["read0"], outcome["read1"])


@pytest.mark.parametrize("cut", ["half", "one-page", "50-bytes", "minus-one-page"])
def test_truncated_log(log_path: str, cut: str) -> None:
    values = _big_log(log_path)
    size = os.path.getsize(log_path)
    new_size = {"half": size // 2, "one-page": 4096, "50-bytes": 50, "minus-one-page": size - 4096}[cut]
    os.truncate(log_path, new_size)
    outcome = _exercise_damaged(log_path, values)
    if outcome["open"] == "ok":
        assert _damage_is_reported(outcome), outcome
    else:
        assert outcome["open"] in ("StorageError", "NotASqlogLogError"), outcome


def test_truncated_log_error_message(log_path: str) -> None:
    _big_log(log_path)
    os.truncate(log_path, os.path.getsize(log_path) // 2)
    exc = raises_sqlog_error(lambda: sqlog.open(log_path), sqlog.StorageError)
    assert log_path in str(exc)


@pytest.mark.parametrize("damage", ["zeros", "garbage"])
def test_damaged_pages(log_path: str, damage: str) -> None:
    """Pages in the middle of a real log overwritten: every call a success or a SqlogError,
    and a damaged partition is never read as if it were shorter than it is."""
    values = _big_log(log_path)
    size = os.path.getsize(log_path)
    rng = random.Random(damage)
    with open(log_path, "r+b") as f:
        for _ in range(3):
            f.seek(rng.randrange(2, size // 4096) * 4096)
            f.write(bytes(4096) if damage == "zeros" else rng.randbytes(4096))
    outcome = _exercise_damaged(log_path, values)
    assert _damage_is_reported(outcome), outcome


def test_corrupt_file_error_says_to_run_check_and_restore(log_path: str) -> None:
    """SQLite's bare "database disk image is malformed" leaves a user stuck: the StorageError
    for a damaged page must say what to do next (run `sqlog check`, restore from a copy)."""
    _big_log(log_path)
    size = os.path.getsize(log_path)
    with open(log_path, "r+b") as f:  # a page in the middle of the partition tables
        f.seek(size // 4096 // 2 * 4096)
        f.write(b"\xff" * 4096)
    log = sqlog.open(log_path, retention_check_interval_ms=None, wal_checkpoint_interval_ms=None)
    consumer = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
    consumer.assign([TopicPartition("t", 0), TopicPartition("t", 1)])

    def read() -> None:
        while consumer.poll(max_records=1000):
            pass

    exc = raises_sqlog_error(read, sqlog.StorageError)
    assert isinstance(exc.__cause__, apsw.CorruptError), repr(exc.__cause__)
    message = str(exc)
    assert log_path in message and "malformed" in message
    assert f"sqlog --db {log_path} check" in message and "log.check()" in message
    assert "restore" in message and "copy" in message


@pytest.mark.slow
def test_damaged_pages_at_many_random_places(tmp_path: Path) -> None:
    """150 copies of a log, each damaged at 1-4 random places (whole pages, or a few bytes): no
    call may raise anything but a SqlogError, and no read may return offsets out of order or
    with gaps. Flipped bytes inside a record's value cannot be noticed at all (SQLite keeps no
    checksums and sqlog stores none, unlike Kafka's per-batch CRC): counted and printed."""
    template = str(tmp_path / "template.db")
    values = _big_log(template)
    pristine = Path(template).read_bytes()
    rng = random.Random(1234)
    counts = {"changed": 0, "misordered": 0, "harmless": 0, "reported": 0}
    for trial in range(150):
        path = str(tmp_path / f"damaged-{trial}.db")
        data = bytearray(pristine)
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.5:
                at, n = rng.randrange(len(data) // 4096) * 4096, 4096
            else:
                at, n = rng.randrange(len(data)), rng.choice((1, 8, 100))
            data[at:at + n] = rng.randbytes(n) if rng.random() < 0.7 else bytes(n)
        Path(path).write_bytes(bytes(data[: len(pristine)]))
        outcome = _exercise_damaged(path, values, exact_values=False)  # fails on any raw error
        reads = (outcome.get("read0"), outcome.get("read1"))
        kind = ("misordered" if "misordered" in reads else "changed" if "changed" in reads
                else "reported" if _damage_is_reported(outcome) else "harmless")
        counts[kind] += 1
        _remove_log(path)
    print(f"150 damaged copies: {counts}")
    assert counts["misordered"] == 0
    assert counts["reported"] > 50


def _partition_table(path: str, topic: str, partition: int) -> str:
    conn = apsw.Connection(path)
    try:
        (topic_id,) = conn.execute("SELECT topic_id FROM topics WHERE name = ?", (topic,)).fetchone()
    finally:
        conn.close()
    return f"p{topic_id}_{partition}"


def test_consumer_notices_a_missing_record(log_path: str) -> None:
    """Found by this suite (a missing offset was skipped silently; check() saw it); fixed in ce60316."""
    values = _make_log(log_path)
    conn = apsw.Connection(log_path)
    conn.execute(f"DELETE FROM {_partition_table(log_path, 't', 0)} WHERE offset = 10")
    conn.close()
    with sqlog.open(log_path) as log:
        assert not log.check().ok  # check() sees the hole
        consumer = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
        consumer.assign([TP0])
        got: list[int] = []

        def read() -> None:
            while batch := consumer.poll(max_records=1000):
                got.extend(r.offset for r in batch)

        ok, _ = success_or_sqlog_error(read)
        assert not ok, f"poll() read {len(got)} of {len(values)} records with offset 10 missing, and said nothing"
        assert got == list(range(len(got))), got


def test_consumer_notices_a_damaged_offset(log_path: str) -> None:
    """Found by test_damaged_pages_at_many_random_places; made deterministic: the rowid byte of
    offset 50's cell is set to 0 (cell layout: payload size, rowid, an 8-byte record header, the
    6-byte timestamp, then the value)."""
    with sqlog.open(log_path) as log:
        log.create_topic("t")
        with log.producer() as producer:
            for i in range(100):
                producer.send("t", b"%06d:" % i + bytes(100), timestamp_ms=1_700_000_000_000 + i)
    data = bytearray(Path(log_path).read_bytes())
    at = data.find(b"000050:") - 15
    assert data[at] == 50, "the cell layout is not the one this test expects"
    data[at] = 0
    Path(log_path).write_bytes(bytes(data))
    with sqlog.open(log_path) as log:
        assert not log.check().ok  # integrity_check: "Rowid 49 out of order"
        consumer = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
        consumer.assign([TP0])
        ok, records = success_or_sqlog_error(lambda: consumer.poll(max_records=1000))
        if ok:
            offsets = [r.offset for r in records]
            assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), f"out of order: {offsets[45:55]}"


def test_damaged_value_cell_gives_a_sqlog_error(log_path: str) -> None:
    """Found by test_damaged_pages_at_many_random_places; made deterministic with apsw: the value
    of offset 3 becomes a TEXT of invalid UTF-8, as a damaged cell's type byte can make it."""
    _make_log(log_path)
    conn = apsw.Connection(log_path)
    conn.execute(f"UPDATE {_partition_table(log_path, 't', 0)} SET value = CAST(x'e6bc' AS TEXT) WHERE offset = 3")
    conn.close()
    with sqlog.open(log_path) as log:
        assert not log.check().ok  # the byte count no longer matches
        consumer = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
        consumer.assign([TP0])
        success_or_sqlog_error(lambda: consumer.poll(max_records=1000))  # a StorageError, say


GARBAGE: dict[str, Callable[[], bytes]] = {
    "zeros": lambda: bytes(100_000),
    "sqlite-header-then-garbage": lambda: b"SQLite format 3\x00" + random.randbytes(100_000),
    "sqlite-header-only": lambda: b"SQLite format 3\x00",
    "two-bytes": lambda: b"x\n",
    "one-page-of-ff": lambda: b"\xff" * 4096,
    "a-wal-file": lambda: bytes.fromhex("377f0682002de218") + random.randbytes(5000),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_garbage_files_are_not_opened_nor_touched(tmp_path: Path, kind: str) -> None:
    path = str(tmp_path / "garbage.db")
    Path(path).write_bytes(GARBAGE[kind]())
    before = _sha(path)
    exc = raises_sqlog_error(lambda: sqlog.open(path), sqlog.NotASqlogLogError)
    assert path in str(exc)
    assert _sha(path) == before, "a failed open changed the file"


def test_one_byte_file_is_not_overwritten(tmp_path: Path) -> None:
    """Found by this suite (SQLite takes a 1-byte file for an empty database, and sqlog
    overwrote it with a new log); fixed in ce60316."""
    path = tmp_path / "notes.txt"
    path.write_bytes(b"\n")
    raises_sqlog_error(lambda: sqlog.open(str(path)).close(), sqlog.NotASqlogLogError)
    assert path.read_bytes() == b"\n"


def test_empty_file_becomes_a_log(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    with sqlog.open(str(path)) as log:
        log.create_topic("t")
        assert log.check().ok


@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
def test_garbage_next_to_a_good_log_loses_nothing(log_path: str, suffix: str) -> None:
    values = _make_log(log_path)
    Path(log_path + suffix).write_bytes(random.randbytes(70_000))
    with sqlog.open(log_path) as log:
        assert _values(log)[0] == values
        assert log.consumer(group_id="g").committed(TP0) == 3
        assert log.check().ok
        log.producer().send("t", b"more").get(timeout=30)


# -- a file from a newer sqlog -----------------------------------------------------------------


def _bump_user_version(path: str, by: int = 1) -> int:
    conn = apsw.Connection(path)
    try:
        conn.set_busy_timeout(5000)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        conn.execute(f"PRAGMA user_version={version + by}")
        return version
    finally:
        conn.close()


@pytest.mark.parametrize("options", [{}, {"durability": "full"}, {"max_db_bytes": 1 << 20},
                                     {"retention_ms": 1000}])
def test_newer_schema_is_refused_untouched_with_any_options(log_path: str, options: dict[str, Any]) -> None:
    values = _make_log(log_path)
    version = _bump_user_version(log_path, by=7)
    before = _sha(log_path)
    exc = raises_sqlog_error(lambda: sqlog.open(log_path, **options), sqlog.SchemaTooNewError)
    assert "upgrade" in str(exc) and log_path in str(exc)
    assert _sha(log_path) == before, "the refused open changed the file"
    conn = apsw.Connection(log_path)
    conn.execute(f"PRAGMA user_version={version}")
    conn.close()
    with sqlog.open(log_path) as log:
        assert _values(log)[0] == values


def test_newer_schema_written_while_a_log_is_open(log_path: str) -> None:
    """Another (newer) sqlog upgrades the file under an open Log: new connections of the old one
    refuse it clearly; nothing already stored is lost."""
    log = sqlog.open(log_path)
    log.create_topic("t")
    values = _fill(log, "t", 20)
    _bump_user_version(log_path)
    raises_sqlog_error(lambda: sqlog.open(log_path), sqlog.SchemaTooNewError)
    ok, consumer = success_or_sqlog_error(lambda: log.consumer(auto_offset_reset="earliest"))
    if not ok:
        assert isinstance(consumer, sqlog.SchemaTooNewError), consumer
    log.close()
    conn = apsw.Connection(log_path)
    conn.execute(f"PRAGMA user_version={conn.execute('PRAGMA user_version').fetchone()[0] - 1}")
    conn.close()
    with sqlog.open(log_path) as again:
        assert _values(again)[0] == values


def test_check_reports_on_badly_damaged_files(tmp_path: Path) -> None:
    """log.check() returns a report (never raises) on any file sqlog can open, however damaged:
    here garbage spans written over random pages of a three-partition log, 40 times. Some of
    these files make SQLite fail part way through the check ("database disk image is
    malformed"); that becomes a violation of the report."""
    path = tmp_path / "log.db"
    with sqlog.open(path) as log:
        log.create_topic("t", partitions=3)
        with log.producer() as producer:
            for i in range(3000):
                producer.send("t", random.Random(i).randbytes(200), key=b"k%d" % i)
        log.consumer(group_id="g").close()
    data = path.read_bytes()
    page_size, pages = 4096, len(data) // 4096
    rng = random.Random(1)
    reports = stopped = 0
    for trial in range(40):
        damaged = bytearray(data)
        for _ in range(rng.randrange(1, 6)):
            at = rng.randrange(1, pages) * page_size + rng.randrange(page_size)
            n = rng.randrange(1, 200)
            damaged[at:at + n] = rng.randbytes(n)
        copy = tmp_path / f"damaged{trial}.db"
        copy.write_bytes(bytes(damaged))
        ok, log = success_or_sqlog_error(lambda: sqlog.open(copy))
        if not ok:
            continue  # the schema itself is damaged: SQLite cannot open it as a database
        try:
            report = log.check()
        except sqlog.SqlogError as exc:
            pytest.fail(f"trial {trial}: check() raised {type(exc).__name__}: {exc}")
        finally:
            log.close()
        reports += 1
        stopped += any(v.startswith("SQLite stopped the check") for v in report.violations)
    assert reports >= 30 and stopped >= 1, (reports, stopped)
