"""retention_policy="interest": retention removes only what every group reading a topic is done with."""

from __future__ import annotations

import time

import pytest

import sqlog
from sqlog import TopicPartition
from helpers import open_log

TP = TopicPartition("t", 0)
LATER = int(time.time() * 1000) + 3_600_000  # a sweep "an hour from now": every record is past retention_ms


def _send(log: sqlog.Log, n: int, size: int = 10) -> None:
    with log.producer() as producer:
        for _ in range(n):
            producer.send("t", b"x" * size)


def _start(log: sqlog.Log) -> int:
    return log.describe_topic("t").partitions[0].log_start_offset


def _accept(consumer: sqlog.ShareConsumer, n: int) -> None:
    records = consumer.poll(timeout_ms=100, max_records=n)
    assert len(records) == n
    for r in records:
        consumer.acknowledge(r)
    consumer.commit()


def test_time_retention_waits_for_share_and_consumer_groups(log_path: str) -> None:
    log = open_log(log_path)
    log.create_topic("t", retention_ms=1000, retention_policy="interest")
    assert log.describe_topic("t").retention_policy == "interest"
    _send(log, 10)
    share = log.share_consumer("jobs")
    share.subscribe(["t"])
    reader = log.consumer(group_id="audit", enable_auto_commit=False)
    reader.assign([TP])
    reader.commit({TP: 6})
    assert log.sweep(LATER).records == 0, "the share group has done nothing yet"
    _accept(share, 8)
    log.sweep(LATER)
    assert _start(log) == 6, "the consumer group's committed offset holds the rest"
    reader.commit({TP: 10})
    log.sweep(LATER)
    assert _start(log) == 8
    _accept(share, 2)
    log.sweep(LATER)
    assert _start(log) == 10
    assert log.check().ok


def test_limits_policy_cuts_regardless_and_the_share_group_follows(log_path: str) -> None:
    log = open_log(log_path)
    log.create_topic("t", retention_ms=1000)
    assert log.describe_topic("t").retention_policy == "limits"
    _send(log, 10)
    share = log.share_consumer("jobs")
    share.subscribe(["t"])
    log.sweep(LATER)
    assert _start(log) == 10
    part = log.describe_share_group("jobs").partitions[0]
    assert part.start_offset == 10 and part.lag == 0
    assert share.poll(timeout_ms=20) == []


def test_size_retention_on_append_respects_interest(log_path: str) -> None:
    log = open_log(log_path)
    log.create_topic("t", retention_bytes=100, retention_policy="interest")
    share = log.share_consumer("jobs")
    share.subscribe(["t"])
    _send(log, 30)  # 300 bytes for a 100-byte budget, but nobody is done with any of it
    assert _start(log) == 0
    _accept(share, 15)
    _send(log, 1)  # the next append cuts, as far as the share group is done
    assert _start(log) == 15
    assert log.describe_topic("t").partitions[0].bytes == 160
    _accept(share, 16)
    _send(log, 1)  # now the budget binds first: the newest 100 bytes stay
    assert _start(log) == 22
    assert log.describe_topic("t").partitions[0].bytes == 100


def test_nobody_reading_means_plain_retention(log_path: str) -> None:
    log = open_log(log_path)
    log.create_topic("t", retention_ms=1000, retention_policy="interest")
    _send(log, 5)
    log.sweep(LATER)
    assert _start(log) == 5


def test_alter_and_delete_share_group_release_the_cap(log_path: str) -> None:
    log = open_log(log_path)
    log.create_topic("t", retention_ms=1000)
    with pytest.raises(sqlog.InvalidConfigError):
        log.alter_topic("t", retention_policy="forever")
    with pytest.raises(sqlog.InvalidConfigError):
        log.create_topic("u", retention_policy="limit")
    log.alter_topic("t", retention_policy="interest")
    _send(log, 5)
    share = log.share_consumer("jobs")
    share.subscribe(["t"])
    log.sweep(LATER)
    assert _start(log) == 0
    share.close()
    log.delete_share_group("jobs")
    log.sweep(LATER)
    assert _start(log) == 5
    log.alter_topic("t", retention_policy="limits")
    assert log.describe_topic("t").retention_policy == "limits"
