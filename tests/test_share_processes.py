"""Share groups with real OS processes: exactly-once draining, SIGKILL redelivery, dead letters,
an audit of every acquisition (never two holders at once), bounded state, cross-process wake-up."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import apsw

import sqlog
import sqlog.clock
from sqlog.share_groups import DLQ_DELIVERY_COUNT, DLQ_OFFSET, DLQ_REASON, DLQ_TOPIC

WORKER = Path(__file__).resolve().parent / "procs" / "share_worker.py"

# Logs every change of a share_records row, in commit order (write transactions are serialized),
# with SQLite's wall clock; lock deadlines are sqlog.clock.monotonic_ms readings, which
# _check_audit moves to the wall clock (nothing steps the clock during these tests).
AUDIT_DDL = """
CREATE TABLE audit(
    id INTEGER PRIMARY KEY, partition INT, offset INT, event TEXT, member TEXT, dc INT,
    lock_until INT, old_lock_until INT, old_state INT, new_state INT, t INT);
CREATE TRIGGER audit_insert AFTER INSERT ON share_records BEGIN
    INSERT INTO audit(partition, offset, event, member, dc, lock_until, old_state, new_state, t)
    VALUES (new.partition, new.offset, 'acquire', new.member_id, new.delivery_count, new.lock_until_ms,
            NULL, new.state, CAST(unixepoch('subsec') * 1000 AS INTEGER));
END;
CREATE TRIGGER audit_update AFTER UPDATE ON share_records BEGIN
    INSERT INTO audit(partition, offset, event, member, dc, lock_until, old_lock_until, old_state, new_state, t)
    VALUES (new.partition, new.offset,
            CASE WHEN new.state = 1 AND new.delivery_count > old.delivery_count THEN 'acquire'
                 WHEN new.state = 1 THEN 'renew' WHEN old.state = 1 THEN 'exit' ELSE 'other' END,
            coalesce(new.member_id, old.member_id), new.delivery_count, new.lock_until_ms, old.lock_until_ms,
            old.state, new.state, CAST(unixepoch('subsec') * 1000 AS INTEGER));
END;
"""


def _setup(path: str, n: int, partitions: int = 2, poison: set[int] | None = None, audit: bool = False,
           dlq: bool = False) -> None:
    with sqlog.open(path) as log:
        log.create_topic("jobs", partitions=partitions)
        if dlq:
            log.create_topic("jobs.dlq")
        with log.producer() as producer:
            for i in range(n):
                value = b"poison" if poison and i in poison else f"job-{i}".encode()
                producer.send("jobs", value, partition=i % partitions)
    if audit:
        conn = apsw.Connection(path)
        conn.set_busy_timeout(10_000)
        conn.execute(AUDIT_DDL)
        conn.close()


def _spawn(tmp: Path, path: str, name: str, **cfg: Any) -> tuple[subprocess.Popen[bytes], Path]:
    out = tmp / f"{name}.jsonl"
    cfg = {"path": path, "out": str(out), "mode": "drain", **cfg}
    proc = subprocess.Popen([sys.executable, str(WORKER), json.dumps(cfg)], stderr=subprocess.PIPE)
    return proc, out


def _events(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def _wait(procs: list[subprocess.Popen[bytes]], timeout: float = 90) -> None:
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else proc.returncode


def _wait_for(out: Path, event: str, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = _events(out)
        if any(e["e"] == event for e in events):
            return events
        time.sleep(0.02)
    raise AssertionError(f"no {event!r} from {out}: {_events(out)}")


def _audit(path: str) -> list[tuple[Any, ...]]:
    conn = apsw.Connection(path)
    conn.set_busy_timeout(10_000)
    rows = conn.execute(
        "SELECT partition, offset, event, member, dc, lock_until, old_lock_until, old_state, new_state, t"
        " FROM audit ORDER BY id"
    ).fetchall()
    conn.close()
    return rows


def _check_audit(rows: list[tuple[Any, ...]], acks: dict[tuple[str, int], set[tuple[int, int, int]]],
                 dead: frozenset[str] = frozenset()) -> int:
    """No record is ever held by two consumers at once: per record, acquisitions and ends of
    holding alternate; a hold ends before its lock deadline only by its holder's acknowledgement
    (or because its holder, one of ``dead``, was killed on this machine); the next acquisition
    comes after the end. Returns the number of acquisitions checked."""
    by_record: dict[tuple[int, int], list[tuple[Any, ...]]] = defaultdict(list)
    for row in rows:
        by_record[(row[0], row[1])].append(row)
    acquisitions = 0
    to_wall = sqlog.clock.wall_offset_ms()
    for (partition, offset), events in by_record.items():
        holder: tuple[str, int, int, int] | None = None  # (member, dc, lock_until, acquired at)
        for _, _, event, member, dc, lock_until, old_lock_until, _, _, t in events:
            if event == "acquire":
                assert holder is None, f"{partition}@{offset} acquired by {member} while {holder} held it"
                holder = (member, dc, lock_until, t)
                acquisitions += 1
            elif event == "renew":
                assert holder is not None and holder[0] == member and holder[1] == dc
                holder = (member, dc, lock_until, holder[3])
            elif event == "exit":
                assert holder is not None, f"{partition}@{offset}: an exit without a holder"
                if t < old_lock_until + to_wall and holder[0] not in dead:  # early: only the holder's ack
                    assert (partition, offset, dc) in acks.get(holder[0], set()), (
                        f"{partition}@{offset} delivery {dc} left {holder[0]} at {t} before its deadline "
                        f"{old_lock_until} without its acknowledgement"
                    )
                holder = None
    return acquisitions


def _acks_by_member(outs: list[Path]) -> dict[str, set[tuple[int, int, int]]]:
    acks: dict[str, set[tuple[int, int, int]]] = {}
    for out in outs:
        events = _events(out)
        member = next(e["member"] for e in events if e["e"] == "start")
        acks[member] = {(e["p"], e["o"], e["dc"]) for e in events if e["e"] == "done"}
    return acks


def test_workers_accept_every_record_exactly_once(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    m = 3000
    _setup(path, m, partitions=3, audit=True)
    procs, outs = zip(*[_spawn(tmp_path, path, f"w{i}", batch=20) for i in range(4)])
    _wait(list(procs))
    done = Counter()
    per_worker = []
    for out in outs:
        events = _events(out)
        assert events[-1]["e"] == "exit"
        mine = [(e["p"], e["o"]) for e in events if e["e"] == "done" and e["ack"] == "accept"]
        assert not [e for e in events if e["e"] == "failed"]
        per_worker.append(len(mine))
        done.update(mine)
    expected = {(i % 3, i // 3) for i in range(m)}
    assert set(done) == expected and all(c == 1 for c in done.values()), "every record accepted exactly once"
    assert sum(1 for c in per_worker if c) >= 2, f"the work was shared: {per_worker}"
    assert _check_audit(_audit(path), _acks_by_member(list(outs))) == m  # one delivery each, no overlap
    with sqlog.open(path) as log:
        desc = log.describe_share_group("workers")
        assert desc.lag == 0 and all(p.start_offset == p.high_watermark == m // 3 for p in desc.partitions)
        assert log.engine.conn.execute("SELECT count(*) FROM share_records").fetchone()[0] == 0
        assert log.check().ok


def test_sigkilled_worker_records_are_redelivered_after_the_lock_expires(tmp_path: Path) -> None:
    """A worker in another pid namespace (a container sharing the file): only its lock deadline
    frees what it held."""
    path = str(tmp_path / "q.db")
    _setup(path, 40, partitions=1, audit=True)
    lock_ms = 1500
    victim, victim_out = _spawn(tmp_path, path, "victim", mode="hold", hold=10, lock_ms=lock_ms,
                                    other_pid_namespace=True)
    events = _wait_for(victim_out, "ready")
    held = {(e["p"], e["o"]) for e in events if e["e"] == "got"}
    assert len(held) == 10
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = time.time()
    survivor, survivor_out = _spawn(tmp_path, path, "survivor", lock_ms=lock_ms, batch=5)
    _wait([survivor])
    got = [e for e in _events(survivor_out) if e["e"] == "got"]
    done = Counter((e["p"], e["o"]) for e in _events(survivor_out) if e["e"] == "done")
    assert set(done) == {(0, o) for o in range(40)} and set(done.values()) == {1}
    again = [e for e in got if (e["p"], e["o"]) in held]
    assert {(e["p"], e["o"]) for e in again} == held
    assert all(e["dc"] == 2 for e in again), "the second delivery of each held record"
    acks = _acks_by_member([survivor_out])
    rows = _audit(path)
    _check_audit(rows, acks)
    # The victim's holds ended by expiry, at or after their deadlines.
    victim_member = next(e["member"] for e in events if e["e"] == "start")
    exits = [r for r in rows if r[2] == "exit" and r[3] == victim_member]
    assert len(exits) == 10 and all(r[9] >= r[6] for r in exits)
    deadline = {(r[0], r[1]): r[5] for r in rows if r[2] == "acquire" and r[3] == victim_member}
    again_at = {(r[0], r[1]): r[9] for r in rows if r[2] == "acquire" and r[4] == 2}
    assert set(again_at) == held and all(again_at[k] >= deadline[k] for k in held)
    assert min(again_at.values()) >= killed_at * 1000 - 50


def test_sigkilled_worker_on_this_machine_frees_its_records_at_once(tmp_path: Path) -> None:
    """A worker killed on this machine (same boot and pid namespace): its locks are released as
    soon as another member looks (liveness.py's pid + start-time rule), not after 60 s; a member
    blocked in poll() wakes for it."""
    path = str(tmp_path / "q.db")
    _setup(path, 10, partitions=1, audit=True)
    victim, victim_out = _spawn(tmp_path, path, "victim", mode="hold", hold=10, lock_ms=60_000, limit=5)
    events = _wait_for(victim_out, "ready")
    assert len([e for e in events if e["e"] == "got"]) == 10
    got: list[sqlog.ShareRecord] = []
    with sqlog.open(path) as log:
        survivor = log.share_consumer("workers", record_lock_duration_ms=60_000)
        survivor.subscribe(["jobs"])
        assert survivor.poll(timeout_ms=100) == []  # all held by the live victim
        waiter = threading.Thread(target=lambda: got.extend(survivor.poll(timeout_ms=20_000)))
        waiter.start()
        time.sleep(0.3)  # the survivor is blocked in poll()
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed = time.monotonic()
        waiter.join(timeout=30)
        woke_s = time.monotonic() - killed
        assert sorted(r.offset for r in got) == list(range(10)) and {r.delivery_count for r in got} == {2}
        assert woke_s < 2.0, f"redelivered {woke_s:.2f} s after the kill; the lock had 60 s left"
        for r in got:
            survivor.acknowledge(r)
        survivor.commit()
        survivor.close()
        acks = {survivor.member_id: {(0, r.offset, 2) for r in got}}
        assert log.describe_share_group("workers").lag == 0
        assert log.engine.conn.execute("SELECT count(*) FROM share_members").fetchone()[0] == 0
    victim_member = next(e["member"] for e in events if e["e"] == "start")
    _check_audit(_audit(path), acks, dead=frozenset({victim_member}))


def test_a_record_that_always_fails_reaches_the_dead_letter_topic_after_the_limit(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    limit = 4
    _setup(path, 60, partitions=2, poison={17}, dlq=True, audit=True)
    procs, outs = zip(*[_spawn(tmp_path, path, f"w{i}", batch=3, limit=limit, dlq="jobs.dlq") for i in range(3)])
    _wait(list(procs))
    poison = (17 % 2, 17 // 2)
    deliveries = sorted(e["dc"] for out in outs for e in _events(out)
                        if e["e"] == "got" and (e["p"], e["o"]) == poison)
    assert deliveries == list(range(1, limit + 1)), "exactly delivery_count_limit deliveries, counted 1..limit"
    accepted = Counter((e["p"], e["o"]) for out in outs for e in _events(out)
                       if e["e"] == "done" and e["ack"] == "accept")
    assert len(accepted) == 59 and set(accepted.values()) == {1}
    with sqlog.open(path) as log:
        reader = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
        reader.subscribe(["jobs.dlq"])
        dead = reader.poll(timeout_ms=1000)
        assert len(dead) == 1
        headers = dict(dead[0].headers)
        assert dead[0].value == b"poison"
        assert headers[DLQ_TOPIC] == b"jobs" and headers["__dlq.errors.partition"] == str(poison[0]).encode()
        assert headers[DLQ_OFFSET] == str(poison[1]).encode()
        assert headers[DLQ_DELIVERY_COUNT] == str(limit).encode()
        assert headers[DLQ_REASON] == b"delivery_count_exceeded"
        desc = log.describe_share_group("workers")
        assert desc.lag == 0
    _check_audit(_audit(path), _acks_by_member(list(outs)))


def test_state_stays_small_over_a_long_drain(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    m = 30_000
    _setup(path, m, partitions=1)
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        conn = apsw.Connection(path)
        conn.set_busy_timeout(10_000)
        while not stop.is_set():
            samples.append(conn.execute("SELECT count(*) FROM share_records").fetchone()[0])
            time.sleep(0.01)
        conn.close()

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        procs, outs = zip(*[_spawn(tmp_path, path, f"w{i}", batch=50, max_locks=300) for i in range(3)])
        _wait(list(procs), timeout=120)
    finally:
        stop.set()
        sampler.join()
    done = Counter((e["p"], e["o"]) for out in outs for e in _events(out) if e["e"] == "done")
    assert len(done) == m and set(done.values()) == {1}
    assert len(samples) > 20
    # One row per record of the in-flight window, which partition_max_record_locks caps (a slow
    # holder of the lowest records makes the others wait rather than grow the state).
    assert max(samples) <= 300, max(samples)
    assert samples[-1] == 0


def test_a_blocked_share_poll_wakes_within_milliseconds_for_another_process(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    with sqlog.open(path) as log:
        log.create_topic("jobs")
        consumer = log.share_consumer("workers")
        consumer.subscribe(["jobs"])
        assert consumer.poll(timeout_ms=50) == []
        code = (
            "import sqlog, sys, time\n"
            "log = sqlog.open(sys.argv[1])\n"
            "p = log.producer(linger_ms=0)\n"
            "time.sleep(0.5)\n"
            "t = time.time(); p.send('jobs', b'x').get(); print(t)\n"
            "log.close()\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code, path], stdout=subprocess.PIPE)
        records = consumer.poll(timeout_ms=10_000)
        woke = time.time()
        sent = float(proc.communicate(timeout=30)[0])
        assert [r.value for r in records] == [b"x"]
        assert woke - sent < 0.5, woke - sent
        consumer.acknowledge(records[0])
        consumer.close()
