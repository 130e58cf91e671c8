"""Transactions (one SQLite transaction at commit_transaction()) and idempotent sends by message id,
in one process; test_transactions_processes.py has the crash, zombie and concurrency tests."""

from __future__ import annotations

import time

import pytest
from helpers import FAST, raises_sqlog_error, read_all, settle

import sqlog
from sqlog import TopicPartition as TP


def _values(log: sqlog.Log, topic: str, partition: int = 0) -> list[bytes]:
    return [r.value for r in read_all(log, topic, partition)]


def _inputs(log: sqlog.Log, n: int, partitions: int = 2) -> None:
    log.create_topic("in", partitions=partitions)
    log.create_topic("out")
    with log.producer() as p:
        for i in range(n):
            p.send("in", b"%d" % i, partition=i % partitions)


def test_commit_makes_records_and_offsets_visible_together(log: sqlog.Log) -> None:
    _inputs(log, 10)
    consumer = log.consumer(group_id="g", auto_offset_reset="earliest", enable_auto_commit=False, **FAST)
    consumer.subscribe(["in"])
    producer = log.producer(transactional_id="etl")
    assert isinstance(producer, sqlog.TransactionalProducer)
    producer.init_transactions()
    records = consumer.poll(timeout_ms=2000)
    assert len(records) == 10
    producer.begin_transaction()
    futures = [producer.send("out", b"out-" + r.value) for r in records]
    assert not futures[0].done()
    # Nothing is in the file until the commit: readers see nothing, offsets are not committed.
    assert _values(log, "out") == []
    offsets = {TP(r.topic, r.partition): r.offset + 1 for r in records}
    producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
    assert consumer.committed(TP("in", 0)) is None
    producer.commit_transaction()
    assert [f.get(timeout=1).offset for f in futures] == list(range(10))
    assert _values(log, "out") == [b"out-" + r.value for r in records]
    assert consumer.committed(TP("in", 0)) == 5 and consumer.committed(TP("in", 1)) == 5
    producer.close()
    consumer.close()


def test_abort_leaves_no_trace_and_offsets_stay_dense(log: sqlog.Log) -> None:
    _inputs(log, 4)
    producer = log.producer(transactional_id="etl")
    producer.init_transactions()
    producer.begin_transaction()
    aborted = producer.send("out", b"aborted")
    producer.send_offsets_to_transaction({TP("in", 0): 2}, "g")
    producer.abort_transaction()
    raises_sqlog_error(lambda: aborted.get(timeout=1), sqlog.TransactionAbortedError)
    producer.begin_transaction()
    kept = producer.send("out", b"kept")
    producer.commit_transaction()
    assert kept.get().offset == 0  # the aborted record left no hole
    assert _values(log, "out") == [b"kept"]
    assert "g" not in log.list_groups()  # the aborted offsets were never stored
    assert log.check().ok


def test_close_inside_a_transaction_aborts(log_path: str) -> None:
    log = sqlog.open(log_path)
    log.create_topic("out")
    producer = log.producer(transactional_id="etl")
    producer.init_transactions()
    producer.begin_transaction()
    future = producer.send("out", b"x")
    producer.close()
    raises_sqlog_error(lambda: future.get(timeout=1), sqlog.TransactionAbortedError)
    producer2 = log.producer(transactional_id="etl2")
    producer2.init_transactions()
    producer2.begin_transaction()
    producer2.send("out", b"y")
    log.close()  # closing the log with an open transaction: nothing written either
    log = sqlog.open(log_path)
    assert _values(log, "out") == []


def test_state_errors_are_clear(log: sqlog.Log) -> None:
    log.create_topic("out")
    producer = log.producer(transactional_id="etl")
    raises_sqlog_error(producer.begin_transaction, sqlog.IllegalStateError)
    raises_sqlog_error(lambda: producer.send("out", b"x"), sqlog.IllegalStateError)
    producer.init_transactions()
    raises_sqlog_error(lambda: producer.send("out", b"x"), sqlog.IllegalStateError)
    raises_sqlog_error(producer.commit_transaction, sqlog.IllegalStateError)
    raises_sqlog_error(producer.abort_transaction, sqlog.IllegalStateError)
    producer.begin_transaction()
    raises_sqlog_error(producer.begin_transaction, sqlog.IllegalStateError)
    raises_sqlog_error(lambda: producer.send_offsets_to_transaction({TP("out", 0): 0}, 42), sqlog.InvalidConfigError)
    raises_sqlog_error(lambda: producer.send_offsets_to_transaction({TP("out", 0): -1}, "g"), sqlog.InvalidConfigError)
    raises_sqlog_error(lambda: producer.send_acknowledgements_to_transaction(object()), sqlog.InvalidConfigError)
    producer.abort_transaction()
    raises_sqlog_error(lambda: log.producer(transactional_id=""), sqlog.InvalidConfigError)
    raises_sqlog_error(lambda: log.producer(transactional_id="x", transaction_timeout_ms=0), sqlog.InvalidConfigError)
    raises_sqlog_error(lambda: log.consumer(isolation_level="serializable"), sqlog.InvalidConfigError)
    for level in ("read_committed", "read_uncommitted"):
        log.consumer(isolation_level=level).close()


def test_zombie_is_fenced(log: sqlog.Log) -> None:
    log.create_topic("out")
    old = log.producer(transactional_id="etl")
    old.init_transactions()
    old.begin_transaction()
    old.send("out", b"zombie")
    new = log.producer(transactional_id="etl")
    new.init_transactions()
    new.begin_transaction()
    new.send("out", b"new")
    new.commit_transaction()
    raises_sqlog_error(old.commit_transaction, sqlog.ProducerFencedError)
    raises_sqlog_error(old.begin_transaction, sqlog.ProducerFencedError)
    raises_sqlog_error(lambda: old.send("out", b"again"), sqlog.ProducerFencedError)
    assert _values(log, "out") == [b"new"]
    # Another id is not affected.
    other = log.producer(transactional_id="other")
    other.init_transactions()
    other.begin_transaction()
    other.send("out", b"other")
    other.commit_transaction()
    assert _values(log, "out") == [b"new", b"other"]


def test_send_of_a_paused_zombie_is_fenced(log: sqlog.Log) -> None:
    log.create_topic("out")
    old = log.producer(transactional_id="etl")
    old.init_transactions()
    old.begin_transaction()
    old.send("out", b"zombie")
    log.producer(transactional_id="etl").init_transactions()
    time.sleep(0.15)  # past the send's epoch check interval
    raises_sqlog_error(lambda: old.send("out", b"more"), sqlog.ProducerFencedError)
    raises_sqlog_error(old.commit_transaction, sqlog.ProducerFencedError)
    assert _values(log, "out") == []


def test_commit_failed_when_the_member_lost_the_partition(log: sqlog.Log) -> None:
    _inputs(log, 8)
    first = log.consumer(group_id="g", auto_offset_reset="earliest", enable_auto_commit=False, **FAST)
    first.subscribe(["in"])
    records = first.poll(timeout_ms=2000)
    assert {r.partition for r in records} == {0, 1}
    stale = first.group_metadata()
    second = log.consumer(group_id="g", auto_offset_reset="earliest", enable_auto_commit=False, **FAST)
    second.subscribe(["in"])
    settle([first, second], lambda: len(first.assignment()) == 1 and len(second.assignment()) == 1)
    producer = log.producer(transactional_id="etl")
    producer.init_transactions()
    producer.begin_transaction()
    producer.send("out", b"result")
    producer.send_offsets_to_transaction({TP("in", 0): 4, TP("in", 1): 4}, stale)
    raises_sqlog_error(producer.commit_transaction, sqlog.CommitFailedError)
    assert _values(log, "out") == []
    assert first.committed(TP("in", 0)) is None and first.committed(TP("in", 1)) is None
    # With fresh metadata, the partition it still owns commits.
    mine = next(iter(first.assignment()))
    producer.begin_transaction()
    producer.send("out", b"result")
    producer.send_offsets_to_transaction({mine: 4}, first.group_metadata())
    producer.commit_transaction()
    assert first.committed(mine) == 4 and _values(log, "out") == [b"result"]
    # A plain group id is a standalone commit: refused while the group has live members.
    producer.begin_transaction()
    producer.send_offsets_to_transaction({mine: 4}, "g")
    raises_sqlog_error(producer.commit_transaction, sqlog.CommitFailedError)
    first.close()
    second.close()


def test_transaction_timeout_aborts(log: sqlog.Log) -> None:
    log.create_topic("out")
    producer = log.producer(transactional_id="etl", transaction_timeout_ms=50)
    producer.init_transactions()
    producer.begin_transaction()
    future = producer.send("out", b"late")
    time.sleep(0.1)
    raises_sqlog_error(producer.commit_transaction, sqlog.TransactionAbortedError)
    raises_sqlog_error(lambda: future.get(timeout=1), sqlog.TransactionAbortedError)
    producer.begin_transaction()  # a new one works
    producer.send("out", b"on time")
    producer.commit_transaction()
    assert _values(log, "out") == [b"on time"]


def test_transaction_larger_than_max_transaction_bytes_is_refused(log: sqlog.Log) -> None:
    log.create_topic("out")
    producer = log.producer(transactional_id="etl", max_transaction_bytes=10_000)
    producer.init_transactions()
    producer.begin_transaction()
    for _ in range(10):
        producer.send("out", b"x" * 1000)
    error = raises_sqlog_error(lambda: producer.send("out", b"x" * 1000), sqlog.TransactionTooLargeError)
    assert "max_transaction_bytes" in str(error)
    producer.commit_transaction()  # what it held commits
    assert len(_values(log, "out")) == 10


def test_many_partitions_and_topics_in_one_transaction(log: sqlog.Log) -> None:
    log.create_topic("a", partitions=3)
    log.create_topic("b", partitions=2)
    producer = log.producer(transactional_id="etl")
    producer.init_transactions()
    producer.begin_transaction()
    for i in range(30):
        producer.send("a", b"%d" % i, key=b"%d" % i)
        producer.send("b", b"%d" % i, partition=i % 2)
    producer.send_batch("b", [b"bulk"] * 5, partition=0)
    producer.commit_transaction()
    assert sum(len(read_all(log, "a", p)) for p in range(3)) == 30
    assert len(read_all(log, "b", 0)) == 20 and len(read_all(log, "b", 1)) == 15


# -- share consumers -------------------------------------------------------------------------
def test_share_worker_accepts_and_writes_in_one_transaction(log: sqlog.Log) -> None:
    log.create_topic("jobs")
    log.create_topic("results")
    with log.producer() as p:
        for i in range(5):
            p.send("jobs", b"%d" % i)
    jobs = log.share_consumer("workers")
    jobs.subscribe(["jobs"])
    producer = log.producer(transactional_id="worker-1")
    producer.init_transactions()
    records = jobs.poll(timeout_ms=2000)
    assert len(records) == 5
    # An aborted transaction: the jobs are this worker's again, unacknowledged.
    producer.begin_transaction()
    for r in records:
        producer.send("results", r.value + b" done")
        jobs.acknowledge(r)
    producer.send_acknowledgements_to_transaction(jobs)
    producer.abort_transaction()
    assert _values(log, "results") == []
    raises_sqlog_error(lambda: jobs.poll(timeout_ms=0), sqlog.IllegalStateError)  # explicit mode: not acknowledged
    producer.begin_transaction()
    for r in records:
        producer.send("results", r.value + b" done")
        jobs.acknowledge(r)
    producer.send_acknowledgements_to_transaction(jobs)
    producer.commit_transaction()
    assert _values(log, "results") == [b"%d done" % i for i in range(5)]
    state = log.describe_share_group("workers").partitions[0]
    assert state.start_offset == 5 and state.in_flight == 0
    assert jobs.poll(timeout_ms=0) == []
    jobs.close()


def test_share_acknowledgement_refused_aborts_the_whole_transaction(log: sqlog.Log) -> None:
    log.create_topic("jobs")
    log.create_topic("results")
    with log.producer() as p:
        p.send("jobs", b"job")
    slow = log.share_consumer("workers", record_lock_duration_ms=50)
    slow.subscribe(["jobs"])
    (record,) = slow.poll(timeout_ms=2000)
    time.sleep(0.1)  # the lock expires; another worker takes the job
    other = log.share_consumer("workers")
    other.subscribe(["jobs"])
    assert len(other.poll(timeout_ms=2000)) == 1
    producer = log.producer(transactional_id="slow")
    producer.init_transactions()
    producer.begin_transaction()
    producer.send("results", b"duplicate work")
    slow.acknowledge(record)
    producer.send_acknowledgements_to_transaction(slow)
    raises_sqlog_error(producer.commit_transaction, sqlog.InvalidRecordStateError)
    assert _values(log, "results") == []
    other.close()
    slow.close()


# -- dedupe window -------------------------------------------------------------------------------
def test_message_id_dedupes_within_the_window(log_path: str) -> None:
    log = sqlog.open(log_path)
    log.create_topic("orders", partitions=3, dedupe_window_ms=60_000)
    assert log.describe_topic("orders").dedupe_window_ms == 60_000
    producer = log.producer()
    first = producer.send("orders", b"a", message_id="order-17").get()
    again = producer.send("orders", b"a, retried", message_id="order-17", partition=(first.partition + 1) % 3).get()
    assert not first.duplicate and again.duplicate
    assert (again.topic, again.partition, again.offset, again.timestamp_ms) == (
        first.topic, first.partition, first.offset, first.timestamp_ms)
    # In one batch too, mixed with records without ids, order kept.
    futures = [producer.send("orders", b"%d" % i, partition=0, message_id=None if i % 2 else f"b-{i // 4}")
               for i in range(8)]
    results = [f.get() for f in futures]
    assert [r.duplicate for r in results] == [False, False, True, False, False, False, True, False]
    assert results[2].offset == results[0].offset and results[6].offset == results[4].offset
    log.close()
    log = sqlog.open(log_path)  # across restarts
    assert log.producer().send("orders", b"x", message_id="order-17").get().duplicate
    total = sum(p.records for p in log.describe_topic("orders").partitions)
    assert total == 1 + 6
    assert log.check().ok


def test_message_id_duplicates_name_each_original(log: sqlog.Log) -> None:
    """A large chunk whose rows all carry ids (one statement remembers them all), then every id
    again: each duplicate reports its own original's offset and timestamp."""
    log.create_topic("q", partitions=2, dedupe_window_ms=60_000)
    producer = log.producer(linger_ms=1000)
    base_ts = 1_600_000_000_000
    firsts = [producer.send("q", b"%d" % i, partition=i % 2, timestamp_ms=base_ts + 7 * i, message_id=f"id-{i}")
              for i in range(3000)]
    producer.flush()
    originals = [f.get() for f in firsts]
    assert not any(m.duplicate for m in originals)
    assert [m.timestamp_ms for m in originals] == [base_ts + 7 * i for i in range(3000)]
    agains = [producer.send("q", b"again", timestamp_ms=base_ts - 1, message_id=f"id-{i}") for i in range(3000)]
    producer.flush()
    for original, again in zip(originals, (f.get() for f in agains)):
        assert again.duplicate
        assert (again.partition, again.offset, again.timestamp_ms) == (
            original.partition, original.offset, original.timestamp_ms)
    assert sum(p.records for p in log.describe_topic("q").partitions) == 3000
    assert log.check().ok


def test_message_id_forgotten_after_the_window(log: sqlog.Log) -> None:
    log.create_topic("q", dedupe_window_ms=50)
    producer = log.producer()
    assert not producer.send("q", b"1", message_id="m").get().duplicate
    time.sleep(0.1)
    assert not producer.send("q", b"2", message_id="m").get().duplicate  # the old id expired and was purged
    assert _values(log, "q") == [b"1", b"2"]
    producer.send("q", b"3", message_id="n").get()
    log.create_topic("long", dedupe_window_ms=3_600_000)
    for i in range(30):
        producer.send("long", b"x", message_id=f"keep-{i}").get()
    time.sleep(0.1)
    log.sweep()  # the sweep forgets expired ids too: the state stays bounded
    assert not producer.send("q", b"4", message_id="n").get().duplicate
    with log.engine.read() as conn:  # only the ids still inside their window are left (and the one just sent)
        left = conn.execute("SELECT t.name, count(*) FROM message_ids JOIN topics t USING (topic_id)"
                            " GROUP BY t.name ORDER BY t.name").fetchall()
    assert left == [("long", 30), ("q", 1)]
    assert producer.send("long", b"x", message_id="keep-7").get().duplicate


def test_message_id_needs_a_window(log: sqlog.Log) -> None:
    log.create_topic("plain")
    producer = log.producer()
    error = raises_sqlog_error(lambda: producer.send("plain", b"x", message_id="m"), sqlog.InvalidConfigError)
    assert "dedupe_window_ms" in str(error)
    raises_sqlog_error(lambda: log.create_topic("bad", dedupe_window_ms=0), sqlog.InvalidConfigError)
    log.alter_topic("plain", dedupe_window_ms=1000)
    assert log.describe_topic("plain").dedupe_window_ms == 1000
    assert not producer.send("plain", b"x", message_id="m").get().duplicate
    raises_sqlog_error(lambda: producer.send("plain", b"x", message_id=""), sqlog.InvalidConfigError)
    raises_sqlog_error(lambda: producer.send("plain", b"x", message_id=17), sqlog.InvalidConfigError)  # type: ignore[arg-type]
    log.alter_topic("plain", dedupe_window_ms=None)
    assert log.describe_topic("plain").dedupe_window_ms is None
    raises_sqlog_error(lambda: producer.send("plain", b"x", message_id="m"), sqlog.InvalidConfigError)


def test_message_id_inside_a_transaction(log: sqlog.Log) -> None:
    log.create_topic("q", dedupe_window_ms=60_000)
    producer = log.producer(transactional_id="t")
    producer.init_transactions()
    producer.begin_transaction()
    a = producer.send("q", b"a", message_id="1")
    b = producer.send("q", b"b", message_id="1")
    producer.commit_transaction()
    assert not a.get().duplicate and b.get().duplicate and b.get().offset == a.get().offset
    producer.begin_transaction()
    aborted = producer.send("q", b"c", message_id="2")
    producer.abort_transaction()
    raises_sqlog_error(aborted.get, sqlog.TransactionAbortedError)
    assert not log.producer().send("q", b"c", message_id="2").get().duplicate  # the abort stored no id


@pytest.mark.parametrize("window", [None, 1000])
def test_plain_sends_unchanged(log: sqlog.Log, window: int | None) -> None:
    log.create_topic("t", dedupe_window_ms=window)
    producer = log.producer()
    md = [producer.send("t", b"%d" % i).get() for i in range(3)]
    assert [m.offset for m in md] == [0, 1, 2] and not any(m.duplicate for m in md)


def test_cli_dedupe_window(tmp_path: object) -> None:
    import json
    import subprocess
    import sys

    db = str(tmp_path) + "/cli.db"  # type: ignore[operator]

    def sqlog_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sqlog.cli", "--db", db, *args], capture_output=True, text=True,
                              check=True)

    sqlog_cli("topics", "create", "q", "--dedupe-window-ms", "60000")
    assert "dedupe.window.ms=60000" in sqlog_cli("topics", "describe", "q").stdout
    sqlog_cli("topics", "alter", "q", "--dedupe-window-ms", "-1")
    assert json.loads(sqlog_cli("topics", "describe", "q", "--format", "json").stdout)["dedupe_window_ms"] is None
    sqlog_cli("topics", "alter", "q", "--dedupe-window-ms", "5000")
    assert json.loads(sqlog_cli("topics", "describe", "q", "--format", "json").stdout)["dedupe_window_ms"] == 5000
