"""A live consumer passed by retention: the log start moves between (and during) its reads.

A producer writes at full speed into a topic with a small ``retention_bytes`` (append-time size
cuts) while the background sweeper runs every 150 ms; a consumer polls nonstop. Whatever
retention removed between two reads is retention, never damage: the consumer follows
``auto_offset_reset`` ("earliest"/"latest" jump forward; "none" raises `OffsetOutOfRange`),
its offsets strictly increase, and no other error is raised.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import sqlog

TP = sqlog.TopicPartition("t", 0)


def _race(path: Path, reset: str, seconds: float) -> tuple[int, int]:
    """Run producer, sweeper and a polling consumer for ``seconds``; (records read, resets)."""
    log = sqlog.open(path, retention_check_interval_ms=150)
    log.create_topic("t", partitions=1, retention_bytes=5_000)
    stop = threading.Event()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            with log.producer(linger_ms=0) as producer:
                while not stop.is_set():
                    for _ in range(50):
                        producer.send("t", b"x" * 100, partition=0)
                    producer.flush()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=produce)
    thread.start()
    consumer = log.consumer(auto_offset_reset=reset, enable_auto_commit=False)
    consumer.assign([TP])
    read = resets = 0
    last = -1
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not errors:
            try:
                records = consumer.poll(timeout_ms=20, max_records=20)
            except sqlog.OffsetOutOfRange:
                assert reset == "none"
                resets += 1
                consumer.seek_to_beginning(TP)
                continue
            for record in records:
                assert record.offset > last, f"offset {record.offset} after {last}"
                last = record.offset
            read += len(records)
            time.sleep(0.0005)  # some work per batch: the producer pulls ahead, retention passes the consumer
    finally:
        stop.set()
        thread.join()
        consumer.close()
    assert not errors, errors
    assert log.check().ok, log.check().violations
    log.close()
    return read, resets


@pytest.mark.parametrize("reset", ["earliest", "latest", "none"])
def test_live_consumer_behind_retention(tmp_path: Path, reset: str) -> None:
    read, _ = _race(tmp_path / "log.db", reset, 2.0)
    assert read > 0


@pytest.mark.slow
@pytest.mark.parametrize("reset", ["earliest", "latest", "none"])
def test_live_consumer_behind_retention_long(tmp_path: Path, reset: str) -> None:
    read, _ = _race(tmp_path / "log.db", reset, 30.0)
    assert read > 0
