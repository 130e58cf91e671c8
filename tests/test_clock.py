"""Liveness against a stepped wall clock, a reboot and an older file's wall-clock times.

Heartbeats, session expiry and share-group record locks are durations: a wall-clock step (NTP,
a laptop waking up) must neither expire live members and locks nor keep dead ones alive. Each
test steps this process's wall clock (``time.time`` / ``time.time_ns``) by hours, as a step would.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sqlog
import sqlog.clock
import sqlog.storage as storage
from sqlog import TopicPartition as TP
from helpers import fill, member, open_log, settle

HOURS_3 = 3 * 3_600


def step_wall_clock(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Step this process's wall clock by ``seconds`` (forward if positive), as NTP would."""
    real_time, real_time_ns = time.time, time.time_ns
    monkeypatch.setattr(time, "time", lambda: real_time() + seconds)
    monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + int(seconds * 1e9))


def _open(path: str) -> sqlog.Log:
    return open_log(path, wal_checkpoint_interval_ms=None)


# -- consumer groups -------------------------------------------------------------------------
def test_forward_wall_clock_step_does_not_expire_live_members(log_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _open(log_path)
    fill(log, "t", 4, 2, create=True)
    # Heartbeats every 10 s: none falls inside the test, so the member's last one predates the step.
    a = member(log, enable_auto_commit=False, session_timeout_ms=30_000, heartbeat_interval_ms=10_000)
    settle([a], lambda: {tp.partition for tp in a.assignment()} == {0, 1}, timeout=5)
    a_id = a.group_metadata().member_id
    step_wall_clock(monkeypatch, HOURS_3)
    b = member(log, enable_auto_commit=False, session_timeout_ms=30_000, heartbeat_interval_ms=10_000)
    b.poll(timeout_ms=0)  # joins, expiring dead members first: a is not one
    members = {m.member_id: m for m in log.describe_group("g").members}
    assert a_id in members and len(members) == 2
    # Shown as wall-clock ms: the heartbeat before the step reads as moments ago on the stepped clock.
    age = time.time_ns() // 1_000_000 - members[a_id].last_heartbeat_ms
    assert 0 <= age < 5_000
    a.commit({TP("t", 0): 1})  # still a member owning its partitions: not refused
    assert a.committed(TP("t", 0)) == 1


_HUNG_MEMBER = """
import sys, sqlog
log = sqlog.open(sys.argv[1], retention_check_interval_ms=None)
c = log.consumer(group_id="g", auto_offset_reset="earliest", session_timeout_ms=1000, heartbeat_interval_ms=100)
c.subscribe(["t"])
while len(c.assignment()) < 2:
    c.poll(timeout_ms=10)
print("ready", flush=True)
while True:
    c.poll(timeout_ms=100)
"""


def test_backward_wall_clock_step_still_expires_a_hung_member_on_time(
    log_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _open(log_path)
    fill(log, "t", 4, 2, create=True)
    child = subprocess.Popen([sys.executable, "-c", _HUNG_MEMBER, log_path], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        # Hung, not dead: its pid and start time still match, so only its session timeout can expire it.
        child.send_signal(signal.SIGSTOP)
        step_wall_clock(monkeypatch, -HOURS_3)
        began = time.monotonic()
        b = member(log, enable_auto_commit=False, session_timeout_ms=1000, heartbeat_interval_ms=100)
        settle([b], lambda: {tp.partition for tp in b.assignment()} == {0, 1}, timeout=6)
        assert time.monotonic() - began < 4  # the 1 s session timeout, plus a heartbeat and a poll
        assert [m.member_id for m in log.describe_group("g").members] == [b.group_metadata().member_id]
    finally:
        child.kill()
        child.wait()


def test_members_of_a_previous_boot_have_expired(log_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlog.clock, "CLOCK_ID", "boottime:a-previous-boot")
    before = _open(log_path)  # its liveness times are stamped as the previous boot's
    fill(before, "t", 2, 1, create=True)
    a = member(before, enable_auto_commit=False, session_timeout_ms=60_000, heartbeat_interval_ms=20_000)
    settle([a], lambda: len(a.assignment()) == 1, timeout=5)
    held = before.share_consumer("workers", record_lock_duration_ms=60_000)
    held.subscribe(["t"])
    assert [r.offset for r in held.poll(timeout_ms=1000, max_records=1)] == [0]
    monkeypatch.undo()  # this boot: the file's times are another boot's, so they have all run out
    after = _open(log_path)
    assert after.describe_group("g").members == ()
    assert after.describe_share_group("workers").partitions[0].acquired == 0
    worker = after.share_consumer("workers")
    worker.subscribe(["t"])
    assert [(r.offset, r.delivery_count) for r in worker.poll(timeout_ms=1000)] == [(0, 2), (1, 1)]


def test_wall_clock_times_of_an_older_file_have_expired(log_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A schema-3 file, plus the compaction columns (migration 6, which adds only what is missing),
    # the Kafka protocol's tables (created only if missing) and the batch index's tail columns
    # (storage.add_index_tail, likewise), because today's code that stands in for the old sqlog reads them.
    protocol_state = next(m for m in storage.MIGRATIONS if isinstance(m, str) and "protocol_members" in m)
    monkeypatch.setattr(storage, "MIGRATIONS", (*storage.MIGRATIONS[:3], storage.MIGRATIONS[5], protocol_state,
                                                storage.add_index_tail))
    monkeypatch.setattr(storage, "SCHEMA_VERSION", 4)
    old = _open(log_path)
    old.engine.conn.execute("PRAGMA user_version = 3")
    fill(old, "t", 1, 1, create=True)
    a = member(old, enable_auto_commit=False, session_timeout_ms=60_000, heartbeat_interval_ms=20_000)
    settle([a], lambda: len(a.assignment()) == 1, timeout=5)
    with old.engine.write() as conn:  # as sqlog before schema 5 stamped them: the wall clock
        conn.execute("UPDATE group_members SET joined_ms = ?1, heartbeat_ms = ?1", (time.time_ns() // 1_000_000,))
    monkeypatch.undo()
    log = _open(log_path)
    assert log.engine.conn.execute("PRAGMA user_version").fetchone()[0] == storage.SCHEMA_VERSION
    assert log.describe_group("g").members == ()  # not "alive" until the clock since boot reaches 2070


# -- share groups ------------------------------------------------------------------------------
def test_forward_wall_clock_step_does_not_expire_record_locks(log_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _open(log_path)
    fill(log, "t", 1, 1, create=True)
    holder = log.share_consumer("workers", record_lock_duration_ms=30_000)
    holder.subscribe(["t"])
    (record,) = holder.poll(timeout_ms=1000)
    step_wall_clock(monkeypatch, HOURS_3)
    other = log.share_consumer("workers", record_lock_duration_ms=30_000)
    other.subscribe(["t"])
    assert other.poll(timeout_ms=200) == []  # the lock still has its 30 s
    assert log.describe_share_group("workers").partitions[0].acquired == 1
    holder.acknowledge(record)
    holder.commit()  # applied: the lock had not expired
    assert log.describe_share_group("workers").lag == 0


def test_backward_wall_clock_step_still_expires_record_locks_on_time(
    log_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _open(log_path)
    fill(log, "t", 1, 1, create=True)
    holder = log.share_consumer("workers", record_lock_duration_ms=1000)
    holder.subscribe(["t"])
    (record,) = holder.poll(timeout_ms=1000)
    began = time.monotonic()
    step_wall_clock(monkeypatch, -HOURS_3)
    other = log.share_consumer("workers")
    other.subscribe(["t"])
    # A blocked poll wakes when the lock comes due, 1 s after it was taken, not 3 hours later.
    again = other.poll(timeout_ms=5000)
    assert [(r.offset, r.delivery_count) for r in again] == [(0, 2)]
    assert 0.9 <= time.monotonic() - began < 3
    holder.acknowledge(record)
    with pytest.raises(sqlog.InvalidRecordStateError):
        holder.commit()  # its lock expired and the record went to the other consumer


def test_liveness_clock_is_steady_and_recorded(log_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    first = sqlog.clock.monotonic_ms()
    step_wall_clock(monkeypatch, -HOURS_3)
    assert 0 <= sqlog.clock.monotonic_ms() - first < 1_000
    log = _open(log_path)
    row = log.engine.conn.execute("SELECT value FROM settings WHERE key = 'liveness_clock'").fetchone()
    assert row == (sqlog.clock.CLOCK_ID,)
    if sys.platform.startswith("linux"):  # the boot the pid check already compares
        assert sqlog.clock.CLOCK_ID == "boottime:" + Path("/proc/sys/kernel/random/boot_id").read_text().strip()
