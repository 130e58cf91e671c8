"""Retention by time and size, disk upkeep, and consumers that fall behind retention."""

from __future__ import annotations

import os
import threading
import time

import pytest

import sqlog
from sqlog import TopicPartition
from helpers import open_log, read_all

TP0 = TopicPartition("t", 0)


def _offsets(log: sqlog.Log, topic: str = "t", partition: int = 0) -> list[int]:
    return [r.offset for r in read_all(log, topic, partition)]


def _disk_bytes(path: str) -> int:
    return sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))


def test_size_retention_keeps_budget_and_disk_bounded(log_path: str) -> None:
    budget = 64 * 1024
    batch = 8 * 1024
    log = open_log(log_path, journal_size_limit=256 * 1024, wal_limit_bytes=512 * 1024)
    log.create_topic("t", retention_bytes=budget)
    value = os.urandom(200)
    producer = log.producer(batch_size=batch, linger_ms=0)
    sent = 0
    peak_disk = 0
    while sent < 100 * budget:
        for _ in range(500):
            producer.send("t", value)
            sent += len(value)
        producer.flush()
        log.sweep()
        log.checkpoint()
        part = log.describe_topic("t").partitions[0]
        assert part.bytes <= budget + batch, part
        peak_disk = max(peak_disk, _disk_bytes(log_path))
    part = log.describe_topic("t").partitions[0]
    assert part.high_watermark == sent // len(value)
    offsets = _offsets(log)
    assert offsets == list(range(part.log_start_offset, part.high_watermark))
    assert part.records == len(offsets)
    assert part.bytes == len(offsets) * len(value)
    # 6.4 MB went through a 64 KiB budget: database plus WAL stay within a small multiple of it.
    assert peak_disk < 2 * 1024 * 1024, peak_disk


def test_size_retention_is_enforced_on_append_without_sweeps(log_path: str) -> None:
    log = open_log(log_path)
    log.create_topic("t", retention_bytes=10_000)
    producer = log.producer(batch_size=2_000)
    for i in range(5_000):
        producer.send("t", i.to_bytes(4, "big") * 25)  # 100 bytes
    producer.flush()
    part = log.describe_topic("t").partitions[0]
    assert part.bytes <= 10_000 + 2_000
    assert part.high_watermark == 5_000
    assert _offsets(log) == list(range(part.log_start_offset, 5_000))


def test_one_batch_larger_than_the_budget_is_cut_inside(log_path: str) -> None:
    log = open_log(log_path)
    log.create_topic("t", retention_bytes=1_000)
    producer = log.producer(batch_size=10**9, linger_ms=60_000)
    for _ in range(100):
        producer.send("t", b"v" * 100)
    producer.flush()  # one transaction, one batch of 10,000 bytes
    part = log.describe_topic("t").partitions[0]
    assert (part.log_start_offset, part.high_watermark, part.bytes, part.records) == (90, 100, 1_000, 10)
    assert _offsets(log) == list(range(90, 100))


def test_time_retention_deletes_exactly_the_expired_prefix(log_path: str) -> None:
    log = open_log(log_path)
    log.create_topic("t", retention_ms=1_000)
    producer = log.producer(batch_size=10**9, linger_ms=60_000)
    # Timestamps out of order within batches: the prefix ends at the first unexpired record.
    stamps = [100, 300, 200, 900, 1_500, 400, 2_000, 600]
    for i, ts in enumerate(stamps):
        producer.send("t", b"%d" % i, timestamp_ms=ts)
        if i in (2, 5):
            producer.flush()  # three batches
    producer.flush()
    result = log.sweep(now_ms=1_950)  # threshold 950: offsets 0..3 expired, 4 (1500) is not
    assert result.deleted == {TP0: sqlog.PartitionSweep(4, 4)}
    assert _offsets(log) == [4, 5, 6, 7]
    assert log.sweep(now_ms=1_950).records == 0  # idempotent
    result = log.sweep(now_ms=2_600)  # threshold 1600: 4 (1500) and 5 (400) go, 6 (2000) stays
    assert result.records == 2
    assert _offsets(log) == [6, 7]
    assert log.sweep(now_ms=10_000).records == 2
    part = log.describe_topic("t").partitions[0]
    assert (part.log_start_offset, part.high_watermark, part.records, part.bytes) == (8, 8, 0, 0)


def test_emptied_partition_continues_at_the_old_high_watermark_after_reopen(log_path: str) -> None:
    log = open_log(log_path)
    log.create_topic("t", retention_ms=1_000)
    with log.producer() as producer:
        for i in range(10):
            producer.send("t", b"x", timestamp_ms=i)
    assert log.sweep(now_ms=1_000_000).records == 10
    log.close()
    log = open_log(log_path)
    part = log.describe_topic("t").partitions[0]
    assert (part.log_start_offset, part.high_watermark, part.records) == (10, 10, 0)
    with log.producer() as producer:
        md = producer.send("t", b"after").get(timeout=5)
    assert md.offset == 10
    assert _offsets(log) == [10]


def test_sweep_gives_pages_back_to_the_disk(log_path: str) -> None:
    log = open_log(log_path)
    log.create_topic("t", retention_ms=1_000)
    with log.producer() as producer:
        for _ in range(2_000):
            producer.send("t", os.urandom(1_000), timestamp_ms=1)
    log.checkpoint()
    before = log.stats()["page_count"]
    result = log.sweep(now_ms=10_000)
    assert result.records == 2_000 and result.bytes == 2_000_000
    assert result.pages_freed > 400
    assert log.stats()["page_count"] < before - 400
    assert log.stats()["freelist_count"] == 0


def test_log_wide_defaults_are_stored_in_the_file(log_path: str) -> None:
    log = open_log(log_path, retention_bytes=500)
    log.create_topic("t")
    log.create_topic("forever", retention_bytes=-1)
    log.close()
    log = open_log(log_path)  # no options: the stored default still applies
    assert log.describe_topic("t").retention_bytes == 500
    assert log.describe_topic("forever").retention_bytes is None
    with log.producer() as producer:
        for _ in range(20):
            producer.send("t", b"x" * 100)
            producer.send("forever", b"x" * 100)
    assert log.describe_topic("t").partitions[0].bytes <= 500
    assert log.describe_topic("forever").partitions[0].bytes == 2_000
    log.close()
    log = open_log(log_path, retention_bytes=-1)  # clears the default
    assert log.describe_topic("t").retention_bytes is None


def test_alter_topic_changes_retention(log: sqlog.Log) -> None:
    log.create_topic("t")
    with log.producer() as producer:
        for i in range(10):
            producer.send("t", b"x", timestamp_ms=i * 1_000)
    assert log.sweep(now_ms=100_000).records == 0
    log.alter_topic("t", retention_ms=50_000)
    assert log.sweep(now_ms=55_500).records == 6  # timestamps 0..5000 are older than 5500
    log.alter_topic("t", retention_ms=None)
    assert log.sweep(now_ms=10**9).records == 0


def _old_records_and_a_commit_below_them(log: sqlog.Log) -> None:
    """Topic t (retention_ms 1000): offsets 0..5 at timestamp 0, 6..9 far in the future, and group
    g committed at 2, so a sweep moves the log start to 6, above the group's offset."""
    log.create_topic("t", retention_ms=1_000)
    with log.producer() as producer:
        for i in range(10):
            producer.send("t", b"%d" % i, timestamp_ms=0 if i < 6 else 10**13)
    committer = log.consumer(group_id="g", enable_auto_commit=False)
    committer.commit({TP0: 2})
    committer.close()


@pytest.mark.parametrize("reset", ["earliest", "latest", "none"])
def test_consumer_below_log_start_follows_auto_offset_reset(log_path: str, reset: str) -> None:
    log = open_log(log_path)
    _old_records_and_a_commit_below_them(log)
    reader = log.consumer(group_id="g", auto_offset_reset="earliest", enable_auto_commit=False)
    reader.assign([TP0])
    assert reader.position(TP0) == 2
    log.sweep(now_ms=1_000_000)  # deletes offsets 0..5

    # A committed offset below the log start, resolved by a new consumer.
    consumer = log.consumer(group_id="g", auto_offset_reset=reset, enable_auto_commit=False)
    consumer.assign([TP0])
    # A live position below the log start, met at the next fetch.
    if reset == "none":
        with pytest.raises(sqlog.OffsetOutOfRange, match=r"t-0|'t', partition=0") as info:
            consumer.poll()
        assert "2" in str(info.value) and "6" in str(info.value)
        reader_none = log.consumer(group_id="h", auto_offset_reset="none", enable_auto_commit=False)
        reader_none.assign([TP0])
        reader_none.seek(TP0, 3)
        with pytest.raises(sqlog.OffsetOutOfRange):
            reader_none.poll()
        return
    expected = [6, 7, 8, 9] if reset == "earliest" else []
    assert [r.offset for r in consumer.poll(max_records=100)] == expected
    assert consumer.position(TP0) == (6 if reset == "earliest" else 10) + (4 if reset == "earliest" else 0)
    assert [r.offset for r in reader.poll(max_records=100)] == [6, 7, 8, 9]  # reader resets earliest


def test_sweeper_producer_and_nonstop_consumer_keep_the_wal_bounded(log_path: str) -> None:
    wal_limit = 2 * 1024 * 1024
    log = sqlog.open(log_path, retention_check_interval_ms=100, wal_checkpoint_interval_ms=100,
                     wal_limit_bytes=wal_limit, journal_size_limit=1024 * 1024)
    log.create_topic("t", retention_bytes=256 * 1024)
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[int] = []
    wal_peak = [0]

    def produce() -> None:
        try:
            with log.producer(batch_size=32 * 1024) as producer:
                while not stop.is_set():
                    producer.send("t", os.urandom(512))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def consume() -> None:
        try:
            consumer = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
            consumer.assign([TP0])
            while not stop.is_set():
                seen.extend(r.offset for r in consumer.poll(timeout_ms=50, max_records=1_000))
            consumer.close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def watch() -> None:
        while not stop.is_set():
            wal_peak[0] = max(wal_peak[0], _disk_bytes(log_path) - os.path.getsize(log_path))
            time.sleep(0.02)

    threads = [threading.Thread(target=f) for f in (produce, consume, watch)]
    for t in threads:
        t.start()
    time.sleep(4)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert len(seen) > 1_000
    assert all(b > a for a, b in zip(seen, seen[1:])), "offsets must strictly increase"
    # The commit that fills the limit truncates the WAL (waiting out the upkeep's checkpoint if
    # one runs), so however the threads are scheduled it passes the limit only by the frames of
    # one transaction: ~20 pages for a 32 KiB batch, a few hundred for a sweep chunk.
    assert wal_peak[0] <= wal_limit + wal_limit // 2, wal_peak[0]
    part = log.describe_topic("t").partitions[0]
    assert part.bytes <= 256 * 1024 + 32 * 1024


def test_skipping_past_retention_is_logged_and_counted(log_path: str, caplog: pytest.LogCaptureFixture) -> None:
    log = open_log(log_path)
    _old_records_and_a_commit_below_them(log)
    log.sweep(now_ms=1_000_000)  # deletes offsets 0..5: the group's committed 2 is below the log start 6

    consumer = log.consumer(group_id="g", auto_offset_reset="earliest", enable_auto_commit=False)
    consumer.subscribe(["t"])
    with caplog.at_level("WARNING", logger="sqlog"):
        assert [r.offset for r in consumer.poll(timeout_ms=1000, max_records=100)] == [6, 7, 8, 9]
    (warning,) = [r for r in caplog.records if r.name == "sqlog"]
    assert warning.levelname == "WARNING"
    assert "t-0" in warning.getMessage() and "skipping 4 record(s), offsets 2 to 5" in warning.getMessage()
    assert consumer.skipped_records() == {TP0: 4}
    assert log.describe_group("g").partitions[0].skipped == 4
    consumer.commit()
    consumer.close()
    assert log.describe_group("g").partitions[0].skipped == 4  # a commit keeps the count

    # A live position that retention passes is counted too, and adds up; a fresh reader is not a skip.
    with log.producer() as producer:
        for i in range(5):
            producer.send("t", b"x", timestamp_ms=0)
    reader = log.consumer(group_id="g", auto_offset_reset="earliest", enable_auto_commit=False)
    reader.assign([TP0])
    assert reader.position(TP0) == 10
    log.sweep(now_ms=10**13 + 10_000)  # 6..14 go
    caplog.clear()
    with caplog.at_level("WARNING", logger="sqlog"):
        assert reader.poll(max_records=100) == []
        assert reader.position(TP0) == 15
    assert reader.skipped_records() == {TP0: 5}
    assert log.describe_group("g").partitions[0].skipped == 9
    assert len([r for r in caplog.records if r.name == "sqlog"]) == 1
    fresh = log.consumer(group_id="other", auto_offset_reset="earliest")
    fresh.assign([TP0])
    fresh.poll()
    assert fresh.skipped_records() == {}
    reader.close(), fresh.close()
    log.close()
