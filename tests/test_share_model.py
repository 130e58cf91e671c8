"""A hypothesis state machine: share consumers against a model of KIP-932 record states.

The model holds, per offset of the in-flight window, Kafka's record state (AVAILABLE, ACQUIRED,
ACKNOWLEDGED, ARCHIVED), delivery count, holder and lock deadline, and applies each share
transaction in sqlog's order: acknowledgements, releases on close, lock expiry, acquisition
(available records first, then new ones within the window cap), start-offset advance. Time is a
fake clock, so lock expiry is exact. After every step the file's state must equal the model's.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import sqlog
import sqlog.clock
from sqlog.share_groups import ACKNOWLEDGED, ACQUIRED, ARCHIVED, AVAILABLE

LOCK_MS = 100
LIMIT = 3
MAX_LOCKS = 6


class _Rec:
    def __init__(self) -> None:
        self.state = ACQUIRED
        self.dc = 1
        self.holder: str | None = None
        self.until: int | None = None


class ShareModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="sqlog-model-")
        self.clock = [1_000_000]
        self._real_now = sqlog.clock.monotonic_ms
        sqlog.clock.monotonic_ms = lambda: self.clock[0]  # type: ignore[assignment]
        self.log = sqlog.open(f"{self.dir}/m.db", retention_check_interval_ms=None, wal_checkpoint_interval_ms=None)
        self.log.create_topic("jobs")
        self.log.create_topic("dlq")
        self.producer = self.log.producer(linger_ms=0)
        self.high = 0
        self.start = 0
        self.end = 0
        self.recs: dict[int, _Rec] = {}
        self.dead: list[tuple[int, int, str]] = []
        self.consumers: dict[str, dict[str, Any]] = {}  # name -> {"sc", "delivered": {offset: [dc, ack]}}
        self.names = 0

    def teardown(self) -> None:
        sqlog.clock.monotonic_ms = self._real_now  # type: ignore[assignment]
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the model's transaction ---------------------------------------------------------
    def _end_hold(self, offset: int, rec: _Rec, reason: str, archive: bool) -> None:
        rec.holder = rec.until = None
        if archive:
            rec.state = ARCHIVED
            self.dead.append((offset, rec.dc, reason))
        else:
            rec.state = AVAILABLE

    def _txn(self, name: str, acquire: int = 0, release_all: bool = False) -> tuple[list[tuple[int, int]], set[int]]:
        now = self.clock[0]
        c = self.consumers[name]
        failed: set[int] = set()
        for offset, entry in list(c["delivered"].items()):
            dc, ack = entry
            if ack is None:
                continue
            rec = self.recs.get(offset)
            ok = (rec is not None and rec.dc == dc and rec.state in (AVAILABLE, ACQUIRED)
                  and (rec.state == AVAILABLE or rec.holder == name))
            if not ok:
                failed.add(offset)
                del c["delivered"][offset]
                continue
            assert rec is not None
            if ack == "renew":
                rec.state, rec.holder, rec.until = ACQUIRED, name, now + LOCK_MS
                entry[1] = None
                continue
            del c["delivered"][offset]
            if ack == "accept":
                rec.state, rec.holder, rec.until = ACKNOWLEDGED, None, None
            elif ack == "reject":
                rec.holder = rec.until = None
                rec.state = ARCHIVED
                self.dead.append((offset, rec.dc, "rejected"))
            else:
                self._end_hold(offset, rec, "delivery_count_exceeded", rec.dc >= LIMIT)
        if release_all:
            for offset, rec in sorted(self.recs.items()):
                if rec.state == ACQUIRED and rec.holder == name:
                    self._end_hold(offset, rec, "delivery_count_exceeded", rec.dc >= LIMIT)
        for offset, rec in sorted(self.recs.items()):
            if rec.state == ACQUIRED and rec.until is not None and rec.until <= now:
                self._end_hold(offset, rec, "delivery_count_exceeded", rec.dc >= LIMIT)
        got: list[tuple[int, int]] = []
        if acquire:
            for offset, rec in sorted(self.recs.items()):
                if len(got) >= acquire:
                    break
                if rec.state == AVAILABLE:
                    rec.state, rec.holder, rec.until = ACQUIRED, name, now + LOCK_MS
                    rec.dc += 1
                    got.append((offset, rec.dc))
            room = min(acquire - len(got), self.high - self.end, self.start + MAX_LOCKS - self.end)
            for offset in range(self.end, self.end + max(room, 0)):
                rec = self.recs[offset] = _Rec()
                rec.holder, rec.until = name, now + LOCK_MS
                got.append((offset, 1))
            self.end += max(room, 0)
        open_offsets = [o for o, r in self.recs.items() if r.state in (AVAILABLE, ACQUIRED)]
        self.start = min(open_offsets) if open_offsets else self.end
        self.recs = {o: r for o, r in self.recs.items() if o >= self.start}
        for offset, dc in got:
            c["delivered"][offset] = [dc, None]
        return got, failed

    # -- rules ---------------------------------------------------------------------------
    @rule(n=st.integers(1, 3))
    def produce(self, n: int) -> None:
        for _ in range(n):
            self.producer.send("jobs", b"v").get()
        self.high += n

    @rule(ms=st.sampled_from([10, 40, 60, 100, 150]))
    def tick(self, ms: int) -> None:
        self.clock[0] += ms

    @precondition(lambda self: len(self.consumers) < 3)
    @rule()
    def new_consumer(self) -> None:
        self.names += 1
        name = f"c{self.names}"
        sc = self.log.share_consumer("g", record_lock_duration_ms=LOCK_MS, delivery_count_limit=LIMIT,
                                     partition_max_record_locks=MAX_LOCKS, dead_letter_topic="dlq")
        self.consumers[name] = {"sc": sc, "delivered": {}}
        sc.subscribe(["jobs"])  # a transaction: expires locks
        self._txn(name)

    @precondition(lambda self: self.consumers)
    @rule(data=st.data(), n=st.integers(1, 4))
    def poll(self, data: st.DataObject, n: int) -> None:
        name = data.draw(st.sampled_from(sorted(self.consumers)))
        c = self.consumers[name]
        if any(ack in (None, "renew") for _, ack in c["delivered"].values()):
            with pytest.raises(sqlog.IllegalStateError):
                c["sc"].poll(timeout_ms=0, max_records=n)
            return
        records = c["sc"].poll(timeout_ms=0, max_records=n)
        got, _ = self._txn(name, acquire=n)
        assert [(r.offset, r.delivery_count) for r in records] == got

    @precondition(lambda self: any(any(a is None or a == "renew" for _, a in c["delivered"].values())
                                   for c in self.consumers.values()))
    @rule(data=st.data(), kind=st.sampled_from(["accept", "accept", "release", "reject", "renew"]))
    def acknowledge(self, data: st.DataObject, kind: str) -> None:
        choices = sorted((name, o) for name, c in self.consumers.items()
                         for o, (_, a) in c["delivered"].items() if a is None or a == "renew")
        name, offset = data.draw(st.sampled_from(choices))
        c = self.consumers[name]
        dc = c["delivered"][offset][0]
        c["sc"].acknowledge(sqlog.ShareRecord("jobs", 0, offset, 0, None, b"v", (), dc), kind)
        c["delivered"][offset][1] = kind

    @precondition(lambda self: self.consumers)
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.consumers)))
        c = self.consumers[name]
        if not any(a is not None for _, a in c["delivered"].values()):
            c["sc"].commit()  # nothing pending: no transaction at all
            return
        _, failed = self._txn(name)
        if failed:
            with pytest.raises(sqlog.InvalidRecordStateError) as info:
                c["sc"].commit()
            assert {o for _, _, o in info.value.records} == failed
        else:
            c["sc"].commit()

    @precondition(lambda self: self.consumers)
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.consumers)))
        self.consumers[name]["sc"].close()
        self._txn(name, release_all=True)
        del self.consumers[name]

    # -- the file equals the model ----------------------------------------------------------
    @invariant()
    def same_state(self) -> None:
        conn = self.log.engine.conn
        members = {c["sc"].member_id: name for name, c in self.consumers.items()}
        part = conn.execute("SELECT start_offset, end_offset FROM share_partitions").fetchall()
        if not part:
            assert self.start == self.end == 0
            return
        assert part == [(self.start, self.end)]
        rows = conn.execute(
            "SELECT offset, state, delivery_count, member_id, lock_until_ms FROM share_records ORDER BY offset"
        ).fetchall()
        expected = [(o, r.state, r.dc, r.holder, r.until) for o, r in sorted(self.recs.items())]
        got = [(o, s, dc, None if m is None else members.get(m, "closed:" + m), u) for o, s, dc, m, u in rows]
        assert got == expected
        held = sum(1 for r in self.recs.values() if r.state == ACQUIRED)
        assert len(rows) <= MAX_LOCKS and held <= MAX_LOCKS
        desc = self.log.describe_share_group("g").partitions[0]
        assert desc.start_offset == self.start and desc.end_offset == self.end and desc.in_flight == len(rows)
        done = sum(1 for r in self.recs.values() if r.state in (ACKNOWLEDGED, ARCHIVED))
        assert desc.lag == self.high - self.start - done

    @invariant()
    def file_is_sound(self) -> None:
        report = self.log.check()
        assert report.ok, report.violations

    @invariant()
    def dead_letters_match(self) -> None:
        hw = self.log.describe_topic("dlq").partitions[0].high_watermark
        assert hw == len(self.dead)


ShareModel.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_share_model = ShareModel.TestCase
