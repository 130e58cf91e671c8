"""Model-based test: random sequences of producer, consumer and log operations against a
simple in-memory model of Kafka's log.

The model keeps every send in order with its future. A record's partition is known at send
time when it is keyed (Kafka's partitioner) or explicit; a keyless record's partition (sticky)
and every record's offset are learnt from ``RecordMetadata`` once its future is done. What a
consumer reads is checked against that: each partition read in offset order, contiguous from
the consumer's position, with exactly the bytes, key, headers and timestamp that were sent.

Invariants checked: offsets are dense from 0 per partition and follow send order; poll returns
records in offset order, contiguous, with the model's contents, and returns something when
known-written records lie ahead; draining after a flush returns everything; committed offsets
match the model after every step and persist across close and reopen, where a new consumer in
the group resumes at them; seeks in range read from there, seeks out of range reset to the
earliest offset (auto_offset_reset="earliest").
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import sqlog
from sqlog import TopicPartition

TOPICS = {"a": 3, "b": 1}
ALL_TPS = [TopicPartition(t, p) for t, n in TOPICS.items() for p in range(n)]
FAR = 10**9  # an offset no example ever reaches: always out of range
GROUP = "model-group"

keys = st.one_of(st.none(), st.binary(max_size=8))
values = st.one_of(st.none(), st.binary(max_size=64))
headers = st.lists(st.tuples(st.text(max_size=4), st.one_of(st.none(), st.binary(max_size=6))), max_size=3)
timestamps = st.one_of(st.none(), st.integers(min_value=0, max_value=2**41))
tps = st.sampled_from(ALL_TPS)
tp_subsets = st.lists(tps, unique=True, max_size=len(ALL_TPS))


class Sent:
    """One send: what was sent, where the model expects it, and (once known) where it went."""

    __slots__ = ("topic", "key", "value", "headers", "ts", "partition", "future", "md")

    def __init__(self, topic: str, key: bytes | None, value: bytes | None, headers: list[Any],
                 ts: int | None, partition: int | None, future: sqlog.RecordFuture) -> None:
        self.topic = topic
        self.key = key
        self.value = value
        self.headers = tuple(headers)
        self.ts = ts
        self.partition = partition  # None: keyless without an explicit partition (sticky)
        self.future = future
        self.md: sqlog.RecordMetadata | None = None


class LogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="sqlog-model-")
        self.path = os.path.join(self.dir, "log.db")
        self.log: sqlog.Log | None = None
        self.sent: list[Sent] = []
        self.at: dict[tuple[TopicPartition, int], Sent] = {}  # (tp, offset) -> the send stored there
        self.written = {tp: 0 for tp in ALL_TPS}  # offsets below this are known to be stored
        self.committed: dict[TopicPartition, int] = {}
        self.pos: dict[TopicPartition, int | None] = {}  # None: not resolved yet (committed or earliest)
        self.assigned = False

    # -- set-up -------------------------------------------------------------------------------
    @initialize(mode=st.sampled_from(["assign", "subscribe"]), linger_ms=st.sampled_from([0, 5, 600_000]),
                batch_size=st.sampled_from([1, 200, 1 << 20]))
    def open_log(self, mode: str, linger_ms: int, batch_size: int) -> None:
        self.mode = mode
        self.producer_config = {"linger_ms": linger_ms, "batch_size": batch_size}
        self.log = sqlog.open(self.path)
        for topic, n in TOPICS.items():
            self.log.create_topic(topic, partitions=n)
        self._open_clients()

    def _open_clients(self) -> None:
        assert self.log is not None
        self.producer = self.log.producer(**self.producer_config)
        self.consumer = self.log.consumer(group_id=GROUP, enable_auto_commit=False, auto_offset_reset="earliest")
        if self.mode == "assign":
            self.consumer.assign(ALL_TPS)
            self.pos = {tp: None for tp in ALL_TPS}
            self.assigned = True
        else:
            self.consumer.subscribe(list(TOPICS))
            self.pos = {}
            self.assigned = False  # partitions arrive with the first poll

    def teardown(self) -> None:
        try:
            if self.log is not None:
                self.log.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- the model's bookkeeping ------------------------------------------------------------
    def _learn(self, force: bool = False) -> None:
        """Record where sends went: those whose future is done (all of them with ``force``)."""
        for s in self.sent:
            if s.md is None and (force or s.future.done()):
                md = s.future.get(timeout=10)
                tp = TopicPartition(md.topic, md.partition)
                assert md.topic == s.topic
                assert 0 <= md.partition < TOPICS[s.topic]
                if s.partition is not None:
                    assert md.partition == s.partition, "keyed/explicit record on the wrong partition"
                if s.ts is not None:
                    assert md.timestamp_ms == s.ts
                assert (tp, md.offset) not in self.at, f"offset {md.offset} of {tp} handed out twice"
                s.md = md
                self.at[(tp, md.offset)] = s
                self.written[tp] = max(self.written[tp], md.offset + 1)
        self._check_offsets()

    def _check_offsets(self) -> None:
        """Per partition: offsets follow send order, and are exactly 0..n-1 once all are known."""
        everything_known = all(s.md is not None for s in self.sent)
        for tp in ALL_TPS:
            offsets = [s.md.offset for s in self.sent
                       if s.md is not None and (s.md.topic, s.md.partition) == (tp.topic, tp.partition)]
            assert offsets == sorted(offsets), f"{tp}: offsets not in send order: {offsets}"
            if everything_known:
                assert offsets == list(range(len(offsets))), f"{tp}: offsets not dense from 0: {offsets}"

    def _count(self, tp: TopicPartition) -> int:
        return sum(1 for (t, _) in self.at if t == tp)

    def _start(self, tp: TopicPartition) -> int:
        """Where the next fetch of ``tp`` begins."""
        p = self.pos[tp]
        if p is None:
            p = self.committed.get(tp, 0)
        return 0 if p >= FAR else p  # out of range: auto_offset_reset="earliest"

    def _expect(self, record: sqlog.Record) -> Sent:
        tp = TopicPartition(record.topic, record.partition)
        s = self.at.get((tp, record.offset))
        if s is None:  # stored, but its future has not said so yet: ask every future
            self._learn(force=True)
            s = self.at.get((tp, record.offset))
        assert s is not None, f"poll returned {tp}@{record.offset}, which no send produced"
        return s

    # -- producer rules -----------------------------------------------------------------------
    @rule(topic=st.sampled_from(sorted(TOPICS)), key=keys, value=values, hdrs=headers, ts=timestamps,
          explicit=st.one_of(st.none(), st.integers(0, 2)), wait=st.booleans())
    def send(self, topic: str, key: bytes | None, value: bytes | None, hdrs: list[Any], ts: int | None,
             explicit: int | None, wait: bool) -> None:
        n = TOPICS[topic]
        partition = None if explicit is None else explicit % n
        future = self.producer.send(topic, value, key=key, headers=hdrs, partition=partition, timestamp_ms=ts)
        if partition is None and key is not None:
            partition = sqlog.partition_for_key(key, n)
        self.sent.append(Sent(topic, key, value, hdrs, ts, partition, future))
        if wait:
            md = future.get(timeout=10)
            assert future.done()
            self._learn()
            assert self.sent[-1].md == md

    @rule(batch=st.lists(st.tuples(st.sampled_from(sorted(TOPICS)), keys, values, headers,
                                   st.one_of(st.none(), st.integers(0, 2))), min_size=1, max_size=12))
    def send_many(self, batch: list[tuple[Any, ...]]) -> None:
        for topic, key, value, hdrs, explicit in batch:
            self.send(topic, key, value, hdrs, None, explicit, False)

    @rule()
    def flush(self) -> None:
        self.producer.flush(timeout=10)
        assert all(s.future.done() for s in self.sent)
        self._learn(force=True)

    # -- consumer rules -----------------------------------------------------------------------
    def _poll_checked(self, max_records: int) -> list[sqlog.Record]:
        if not self.assigned:  # subscribe: the first poll assigns every partition
            self.pos = {tp: None for tp in ALL_TPS}
            self.assigned = True
        starts = {tp: self._start(tp) for tp in ALL_TPS}
        self._learn()
        available = {tp for tp in ALL_TPS if self.written[tp] > starts[tp]}
        records = self.consumer.poll(timeout_ms=0, max_records=max_records)
        assert self.consumer.assignment() == set(ALL_TPS)
        assert len(records) <= max_records
        if available:
            assert records, f"poll returned nothing though {sorted(available)} have records to read"
        by_tp: dict[TopicPartition, list[sqlog.Record]] = {}
        for record in records:
            by_tp.setdefault(TopicPartition(record.topic, record.partition), []).append(record)
        for tp, got in by_tp.items():
            offsets = [r.offset for r in got]
            assert offsets == list(range(starts[tp], starts[tp] + len(got))), (
                f"{tp}: expected offsets from {starts[tp]}, got {offsets}")
            for record in got:
                s = self._expect(record)
                assert (record.key, record.value, record.headers) == (s.key, s.value, s.headers)
                assert record.timestamp_ms == s.md.timestamp_ms
            self.written[tp] = max(self.written[tp], offsets[-1] + 1)
            self.pos[tp] = offsets[-1] + 1
        for tp in ALL_TPS:
            position = self.consumer.position(tp)
            if tp in by_tp:
                assert position == self.pos[tp]
            elif self.pos[tp] is not None and self.pos[tp] >= FAR:
                # reset to the earliest offset if the fetch reached it, else still pending
                assert position in (self.pos[tp], 0)
                self.pos[tp] = position
            else:
                assert position == starts[tp]
                self.pos[tp] = position
        return records

    @rule(max_records=st.integers(1, 10))
    def poll(self, max_records: int) -> None:
        self._poll_checked(max_records)

    @rule(max_records=st.integers(1, 10))
    def drain(self, max_records: int) -> None:
        """After a flush, polling until nothing is left returns every record from the positions on."""
        self.producer.flush(timeout=10)
        self._learn(force=True)
        counts = {tp: self._count(tp) for tp in ALL_TPS}
        if not self.assigned:
            self.pos = {tp: None for tp in ALL_TPS}
            self.assigned = True
        starts = {tp: self._start(tp) for tp in ALL_TPS}
        got: dict[TopicPartition, list[int]] = {tp: [] for tp in ALL_TPS}
        for _ in range(sum(counts.values()) + len(ALL_TPS) + 2):
            records = self._poll_checked(max_records)
            for r in records:
                got[TopicPartition(r.topic, r.partition)].append(r.offset)
            if not records:
                break
        assert got == {tp: list(range(starts[tp], counts[tp])) for tp in ALL_TPS}
        assert self.consumer.poll(timeout_ms=0) == []

    @rule()
    def commit_positions(self) -> None:
        resolved = {tp: p for tp, p in self.pos.items() if p is not None}
        valid = {tp: p for tp, p in resolved.items() if p < FAR}
        if len(valid) == len(resolved):
            self.consumer.commit()
            self.committed.update(valid)
            return
        # A position sought beyond the high watermark (not yet reset by a fetch) must never be
        # stored. The contract allows either answer: refuse the whole commit (CommitFailedError,
        # nothing stored) or store the valid positions and leave that one out.
        try:
            self.consumer.commit()
        except sqlog.CommitFailedError:
            return
        self.committed.update(valid)

    def _offset(self, tp: TopicPartition, data: st.DataObject, far: st.SearchStrategy[int]) -> int:
        """An offset known to be stored (or the end), or one far out of range.

        What is known stored depends on thread timing (the linger thread), so the drawn choice
        must not: draw a number and scale it, never a range bounded by the model's state.
        """
        if data.draw(st.booleans(), label="out of range"):
            return data.draw(far, label="far offset")
        return data.draw(st.integers(0, 1 << 16), label="raw offset") % (self.written[tp] + 1)

    @rule(tp=tps, data=st.data())
    def commit_offset(self, tp: TopicPartition, data: st.DataObject) -> None:
        offset = self._offset(tp, data, far=st.just(FAR))
        if offset >= FAR:
            with pytest.raises(sqlog.CommitFailedError):
                self.consumer.commit({tp: offset})
        else:
            self.consumer.commit({tp: sqlog.OffsetAndMetadata(offset, "note")})
            self.committed[tp] = offset

    @precondition(lambda self: self.assigned)
    @rule(tp=tps, data=st.data())
    def seek(self, tp: TopicPartition, data: st.DataObject) -> None:
        offset = self._offset(tp, data, far=st.integers(FAR, FAR + 10))
        self.consumer.seek(tp, offset)
        self.pos[tp] = offset

    @precondition(lambda self: self.assigned)
    @rule(which=tp_subsets)
    def seek_to_beginning(self, which: list[TopicPartition]) -> None:
        self.consumer.seek_to_beginning(*which)
        for tp in which or ALL_TPS:
            self.pos[tp] = 0  # nothing is ever deleted here: the log starts at 0
            assert self.consumer.position(tp) == 0

    @precondition(lambda self: self.assigned)
    @rule(which=tp_subsets)
    def seek_to_end(self, which: list[TopicPartition]) -> None:
        self.consumer.seek_to_end(*which)
        self._learn()
        for tp in which or ALL_TPS:
            end = self.consumer.position(tp)
            assert end >= self.written[tp], f"{tp}: end {end} below a known-stored offset"
            self.written[tp] = end  # the high watermark: every offset below it is stored
            self.pos[tp] = end

    @rule()
    def reopen(self) -> None:
        """Close everything and open the file again: a new consumer in the group resumes at its commits."""
        assert self.log is not None
        self.consumer.close()
        self.producer.close(timeout=10)
        self.log.close()
        self._learn(force=True)
        self.log = sqlog.open(self.path)
        report = self.log.check()
        assert report.ok, report.violations
        description = {t: self.log.describe_topic(t) for t in TOPICS}
        for tp in ALL_TPS:
            part = description[tp.topic].partitions[tp.partition]
            assert (part.log_start_offset, part.high_watermark) == (0, self._count(tp))
            self.written[tp] = self._count(tp)
        self._open_clients()

    # -- invariants ---------------------------------------------------------------------------
    @invariant()
    def committed_offsets_match_the_model(self) -> None:
        if self.log is None:
            return
        for tp in ALL_TPS:
            assert self.consumer.committed(tp) == self.committed.get(tp)


LogMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLogModel = LogMachine.TestCase
