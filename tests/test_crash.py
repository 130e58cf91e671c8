"""Crash tests with real processes killed by SIGKILL (invariants 1, 2, 4 and 6 under kill -9).

a. Producer processes killed at random moments (during start-up, mid-batch, mid-commit,
   mid-checkpoint): several at once, several partitions, batch_size / linger_ms / ack styles /
   durability / checkpoint pressure varied per trial; in some trials the file does not exist
   yet (the producers race to create log and topic: this found the first-open race, see
   test_first_open_race_with_another_opener), in others an admin process creating, growing,
   filling, sweeping and deleting topics is killed alongside. Each child prints every acknowledged record (its get() returned, or a flush()
   returned after its send). After the kill the file must pass ``log.check()``, offsets must
   be dense, every acknowledged record must be at its offset with its value and headers, no
   record may be stored twice, each producer's records must be in its send order within a
   partition, and the next append must continue at the high watermark.
b. A consumer committing in a tight loop (one commit = every partition of the topic at one
   offset) killed mid-commit, again and again: the committed offset never goes backwards
   (watched live from the parent and across restarts), never loses a commit the child saw
   return, and is never torn across partitions.
c. A sweeper deleting a backlog of hundreds of thousands of records killed mid-delete: the log
   passes ``check()``, ``log_start_offset`` only moved forward, the high watermark is
   unchanged, every record above the log start is intact, and a new sweep finishes the job.

Default run: a short version of each (10 producer trials, 4 commit kills, 1 backlog of 200k
records killed up to 3 times). The long versions (220 producer trials, 60 commit kills, 15
backlogs of 600k records killed 3 times each) are marked ``slow``:

    .venv/bin/python -m pytest -m slow tests/test_crash.py

Set SQLOG_CRASH_SEED to replay a trial plan (the kill timing itself stays real-time).
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import apsw
import pytest

import sqlog

sys.path.insert(0, str(Path(__file__).resolve().parent / "procs"))
from rel_harness import Child, headers_for, parse_value, read_all, value_for  # noqa: E402

TOPIC = "events"


def _seed() -> int:
    return int(os.environ.get("SQLOG_CRASH_SEED", time.time_ns() % 2**32))


@pytest.fixture
def children(tmp_path: Path):
    started: list[Child] = []

    def spawn(role: str, args: dict[str, Any], stdin: bool = False) -> Child:
        child = Child(role, args, tmp_path, stdin=stdin)
        started.append(child)
        return child

    yield spawn
    for child in started:
        child.cleanup()


# -- a. producers killed at random moments ---------------------------------------------------

BATCH_SIZES = [1, 64, 1024, 16_384, 131_072]
LINGERS = [0, 0, 1, 5, 20]
MODES = ["get", "every:7", "every:50", "flush:10", "flush:200", "threads:3"]


def _producer_config(rng: random.Random, path: str, pid: str, partitions: int) -> dict[str, Any]:
    return {
        "path": path,
        "pid": pid,
        "topic": TOPIC,
        "partitions": partitions,
        "seed": rng.randrange(2**32),
        "batch_size": rng.choice(BATCH_SIZES),
        "linger_ms": rng.choice(LINGERS),
        "mode": rng.choice(MODES),
        "open": {
            "durability": rng.choice(["normal", "normal", "full"]),
            # frequent, small-threshold checkpoints put TRUNCATE checkpoints in the kill window
            "wal_checkpoint_interval_ms": rng.choice([5, 50, 1000]),
            "wal_limit_bytes": rng.choice([32 * 1024, 64 * 1024 * 1024]),
        },
    }


def _kill_at_random(children: list[Child], rng: random.Random, max_delay: float) -> list[str]:
    """SIGKILL each child at its own random moment: some during start-up (before or while
    opening the log), most a random while after their first report (ack, or admin step)."""
    now = time.monotonic()
    plan = []
    for child in children:
        if rng.random() < 0.2:
            plan.append(["early", now + rng.uniform(0, 0.4), child])
        else:
            plan.append(["after-ack", rng.uniform(0, max_delay), child])
    hard_deadline = now + 30
    kinds = []
    while plan:
        assert time.monotonic() < hard_deadline, "children never acknowledged anything in 30 s"
        for entry in list(plan):
            kind, when, child = entry
            if kind == "after-ack" and (child.count("ack") or child.count("admin")):
                entry[0], entry[1] = "acked", time.monotonic() + when
                continue
            if kind == "after-ack" and child.proc.poll() is not None:
                child.drain()
                raise AssertionError(f"{child.role} exited before acknowledging: {child.stderr()}")
            if kind in ("early", "acked") and time.monotonic() >= when:
                exited = child.proc.poll() is not None
                child.kill9()
                kinds.append("exited" if exited else kind)
                plan.remove(entry)
        time.sleep(0.002)
    return kinds


def _acks(child: Child) -> list[tuple[str, int, int, int]]:
    out = []
    for line in child.lines:
        if line.startswith("ack "):
            _, pid, seq, part, offset = line.split()
            out.append((pid, int(seq), int(part), int(offset)))
    return out


def verify_after_crash(path: str, acks: list[tuple[str, int, int, int]], context: str) -> int:
    """Everything (a) promises, on a fresh open of the file. Returns the records stored."""
    if not os.path.exists(path):  # killed before any of them created it
        assert not acks, context
        return 0
    with sqlog.open(path, retention_check_interval_ms=None) as log:
        report = log.check()
        assert report.ok, f"{context}: check() after the kill: {report.violations}"
        if TOPIC not in log.list_topics():  # killed before any of them created it
            assert not acks, context
            return 0
        desc = log.describe_topic(TOPIC)
        stored = read_all(log, TOPIC, len(desc.partitions))
        where: dict[tuple[str, int], tuple[int, int]] = {}
        for part in desc.partitions:
            records = stored[part.partition]
            assert part.log_start_offset == 0, context
            assert [r.offset for r in records] == list(range(part.high_watermark)), (
                f"{context}: partition {part.partition} offsets not dense up to {part.high_watermark}"
            )
            last_seq: dict[str, int] = {}
            for r in records:
                pid, seq = parse_value(r.value)
                assert r.value == value_for(pid, seq), f"{context}: damaged value at {part.partition}/{r.offset}"
                assert r.headers == tuple(headers_for(seq) or ()), f"{context}: headers at {part.partition}/{r.offset}"
                assert (pid, seq) not in where, (
                    f"{context}: record {pid}:{seq} stored twice: at {where[(pid, seq)]} and "
                    f"{(part.partition, r.offset)}"
                )
                where[(pid, seq)] = (part.partition, r.offset)
                assert seq > last_seq.get(pid, -1), (
                    f"{context}: producer {pid}'s records out of send order in partition {part.partition}: "
                    f"seq {seq} at offset {r.offset} after seq {last_seq[pid]}"
                )
                last_seq[pid] = seq
        lost = [(pid, seq, part, off) for pid, seq, part, off in acks if where.get((pid, seq)) != (part, off)]
        assert not lost, (
            f"{context}: {len(lost)} of {len(acks)} acknowledged records are missing or moved, e.g. "
            f"{lost[:5]} (found at {[where.get(x[:2]) for x in lost[:5]]})"
        )
        # offsets are never reused: the next append continues at each high watermark
        with log.producer() as producer:
            for part in desc.partitions:
                md = producer.send(TOPIC, b"after-crash", partition=part.partition).get(timeout=30)
                assert md.offset == part.high_watermark, context
        assert log.check().ok
        return sum(len(v) for v in stored.values())


def run_producer_crash_trials(tmp_path: Path, spawn, trials: int, max_producers: int, max_delay: float) -> dict:
    seed = _seed()
    rng = random.Random(seed)
    stats: dict[str, Any] = defaultdict(int)
    for trial in range(trials):
        path = str(tmp_path / f"crash-{trial}.db")
        partitions = rng.randint(1, 4)
        # a fresh file: the producers race to create the log and the topic (and die doing it)
        fresh = rng.random() < 0.2
        if not fresh:
            with sqlog.open(path) as log:
                log.create_topic(TOPIC, partitions=partitions)
        n = rng.randint(1, max_producers)
        configs = [_producer_config(rng, path, f"p{i}", partitions) for i in range(n)]
        for cfg in configs:
            cfg["create"] = fresh
        kids = [spawn("produce", cfg) for cfg in configs]
        # an admin creating, growing, filling and deleting topics alongside, killed too
        admin = not fresh and rng.random() < 0.3
        if admin:
            kids.append(spawn("admin_churn", {"path": path, "topic": TOPIC, "pid": "admin",
                                              "seed": rng.randrange(2**32)}))
        kinds = _kill_at_random(kids, rng, max_delay)
        acks = [a for kid in kids for a in _acks(kid)]
        for kid in kids:  # a child that died on its own (not by our SIGKILL) is a failure
            assert kid.proc.returncode == -9, f"{kid.role} exited with {kid.proc.returncode}: {kid.stderr()}"
        context = (f"seed {seed} trial {trial}: {n} producers, {partitions} partitions, fresh={fresh}, "
                   f"admin={admin}, configs "
                   f"{[{k: c[k] for k in ('batch_size', 'linger_ms', 'mode', 'open')} for c in configs]}")
        stats["records"] += verify_after_crash(path, acks, context)
        stats["acked"] += len(acks)
        stats["producers"] += n
        stats["fresh_file_trials"] += fresh
        stats["admin_trials"] += admin
        for kind in kinds:
            stats[f"killed_{kind}"] += 1
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    return dict(stats)


def test_producers_killed_at_random_moments_lose_no_acknowledged_record(tmp_path: Path, children) -> None:
    stats = run_producer_crash_trials(tmp_path, children, trials=10, max_producers=3, max_delay=0.25)
    assert stats["acked"] > 0
    print(f"producer crash trials: 10, {stats}")


@pytest.mark.slow
def test_producers_killed_at_random_moments_many_trials(tmp_path: Path, children) -> None:
    stats = run_producer_crash_trials(tmp_path, children, trials=220, max_producers=4, max_delay=0.6)
    assert stats["acked"] > 0
    print(f"producer crash trials: 220, {stats}")


def test_first_open_race_with_another_opener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the fresh-file crash trials (producer processes racing to create one log; fixed in
    ce60316): storage._check_file read application_id, user_version and the table count in three
    snapshots, so a log created by another process between them was taken for a foreign database.
    Deterministic here: another opener creates the log between those statements."""
    path = str(tmp_path / "new.db")
    raced = []

    class Racing(apsw.Connection):
        def execute(self, sql: str, *args: Any, **kwargs: Any) -> Any:
            if not raced and sql.startswith("SELECT count(*) FROM sqlite_schema"):
                raced.append(sql)
                sqlog.open(path).close()  # the other process, finishing its first open right now
            return super().execute(sql, *args, **kwargs)

    monkeypatch.setattr(apsw, "Connection", Racing)
    with sqlog.open(path) as log:
        assert raced
        log.create_topic(TOPIC)


# -- b. a consumer killed mid-commit ---------------------------------------------------------


def _committed_snapshot(conn: apsw.Connection, group: str) -> dict[int, int]:
    """All of the group's committed offsets in one statement (one snapshot), through apsw."""
    return dict(conn.execute(
        "SELECT c.partition, c.offset FROM committed_offsets c JOIN topics t USING (topic_id)"
        " WHERE c.group_id = ? AND t.name = ?", (group, TOPIC),
    ).fetchall())


def run_commit_kill_rounds(tmp_path: Path, spawn, rounds: int, per_partition: int) -> dict:
    seed = _seed()
    rng = random.Random(seed)
    path = str(tmp_path / "commits.db")
    partitions = 3
    group = "billing"
    with sqlog.open(path) as log:
        log.create_topic(TOPIC, partitions=partitions)
        with log.producer(batch_size=1 << 20, linger_ms=1000) as producer:
            for p in range(partitions):
                for _ in range(per_partition):
                    producer.send(TOPIC, None, partition=p)
    watcher = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    watcher.set_busy_timeout(5000)
    highest_acked = 0  # the highest commit a child saw return
    highest_seen = 0  # the highest committed offset ever observed in the file
    total_commits = 0
    mid_commit_kills = 0
    for rnd in range(rounds):
        durability = rng.choice(["normal", "full"])
        child = spawn("commit_loop", {"path": path, "topic": TOPIC, "partitions": partitions, "group": group,
                                      "limit": per_partition, "open": {"durability": durability}})
        start = int(child.wait_line("ready", timeout=30).split()[1])
        context = f"seed {seed} round {rnd} ({durability})"
        assert start >= highest_acked, f"{context}: restarted at {start}, below the acknowledged commit {highest_acked}"
        kill_at = time.monotonic() + rng.uniform(0.02, 0.4)
        while time.monotonic() < kill_at:
            snap = _committed_snapshot(watcher, group)
            if snap:
                assert len(set(snap.values())) == 1 and len(snap) == partitions, f"{context}: torn commit {snap}"
                value = next(iter(snap.values()))
                assert value >= highest_seen, f"{context}: committed offset went back from {highest_seen} to {value}"
                highest_seen = value
            time.sleep(rng.choice([0, 0.001, 0.005]))
        alive = child.proc.poll() is None
        child.kill9()
        assert alive and child.proc.returncode == -9, f"{context}: commit loop died on its own: {child.stderr()}"
        commits = [int(line.split()[1]) for line in child.lines if line.startswith("committed ")]
        assert commits == list(range(start + 1, start + 1 + len(commits))), f"{context}: commits out of order"
        total_commits += len(commits)
        last = commits[-1] if commits else start
        with sqlog.open(path, retention_check_interval_ms=None) as log:
            report = log.check()
            assert report.ok, f"{context}: {report.violations}"
            consumer = log.consumer(group_id=group, enable_auto_commit=False)
            committed = {p: consumer.committed(sqlog.TopicPartition(TOPIC, p)) for p in range(partitions)}
            consumer.close()
        snap = _committed_snapshot(watcher, group)
        assert set(committed.values()) == {snap[0]} and snap == committed, f"{context}: torn commit {committed}"
        value = committed[0]
        # every commit that returned is kept; at most the one in flight (unreported) went further
        assert last <= value <= last + 1, f"{context}: last acknowledged commit {last}, file holds {value}"
        assert value >= highest_seen, f"{context}: committed offset went back from {highest_seen} to {value}"
        mid_commit_kills += value == last + 1
        highest_seen = highest_acked = value if value == last + 1 else last
    watcher.close()
    return {"rounds": rounds, "commits": total_commits, "kills_after_unreported_commit": mid_commit_kills}


def test_consumer_killed_mid_commit_never_goes_back_or_loses_a_commit(tmp_path: Path, children) -> None:
    stats = run_commit_kill_rounds(tmp_path, children, rounds=4, per_partition=20_000)
    assert stats["commits"] > 0
    print(f"commit kills: {stats}")


@pytest.mark.slow
def test_consumer_killed_mid_commit_many_rounds(tmp_path: Path, children) -> None:
    stats = run_commit_kill_rounds(tmp_path, children, rounds=60, per_partition=400_000)
    assert stats["commits"] > 0
    print(f"commit kills: {stats}")


# -- c. a sweeper killed mid-delete ----------------------------------------------------------

BACKLOG_PARTITIONS = 2


def _build_backlog(path: str, per_partition: int) -> None:
    """``per_partition`` records in each partition of topic "events" (to be swept away), plus a
    topic "keep" without retention that no sweep may touch."""
    with sqlog.open(path, retention_check_interval_ms=None) as log:
        log.create_topic(TOPIC, partitions=BACKLOG_PARTITIONS, retention_ms=3_600_000)
        log.create_topic("keep")
        with log.producer(batch_size=1 << 20, linger_ms=1000) as producer:
            for i in range(per_partition):
                for p in range(BACKLOG_PARTITIONS):
                    producer.send(TOPIC, b"%d:%d" % (p, i), partition=p, timestamp_ms=1_000 + i)
            for i in range(100):
                producer.send("keep", b"keep-%d" % i, timestamp_ms=0)
        log.checkpoint()
        db = apsw.Connection(path)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        db.close()


def _partition_bounds(conn: apsw.Connection) -> dict[int, tuple[int, int]]:
    return {p: (s, e) for p, s, e in conn.execute(
        "SELECT p.partition, p.log_start_offset, p.next_offset FROM partitions p JOIN topics t USING (topic_id)"
        " WHERE t.name = ?", (TOPIC,))}


def _verify_swept_prefix(path: str, per_partition: int, context: str, expect_done: bool = False) -> dict[int, int]:
    with sqlog.open(path, retention_check_interval_ms=None) as log:
        report = log.check()
        assert report.ok, f"{context}: {report.violations}"
        starts = {}
        stored = read_all(log, TOPIC, BACKLOG_PARTITIONS)
        for part in log.describe_topic(TOPIC).partitions:
            assert part.high_watermark == per_partition, f"{context}: high watermark moved: {part}"
            assert 0 <= part.log_start_offset <= per_partition, context
            records = stored[part.partition]
            assert [r.offset for r in records] == list(range(part.log_start_offset, per_partition)), context
            bad = [r.offset for r in records if r.value != b"%d:%d" % (part.partition, r.offset)]
            assert not bad, f"{context}: damaged records at {bad[:5]}"
            if expect_done:
                assert part.log_start_offset == per_partition, f"{context}: sweep left {part}"
            starts[part.partition] = part.log_start_offset
        keep = read_all(log, "keep", 1)[0]
        assert [r.value for r in keep] == [b"keep-%d" % i for i in range(100)], f"{context}: 'keep' damaged"
    return starts


def run_sweep_kill_trials(tmp_path: Path, spawn, trials: int, per_partition: int) -> dict:
    seed = _seed()
    rng = random.Random(seed)
    template = str(tmp_path / "backlog.db")
    _build_backlog(template, per_partition)
    stats: dict[str, int] = defaultdict(int)
    huge = 2**62
    for trial in range(trials):
        path = str(tmp_path / f"sweep-{trial}.db")
        shutil.copyfile(template, path)
        context = f"seed {seed} trial {trial}"
        previous = dict.fromkeys(range(BACKLOG_PARTITIONS), 0)
        kills = 0
        # kill the sweeper again and again on the same file, each time somewhere mid-delete
        while kills < 3:
            watcher = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
            watcher.set_busy_timeout(5000)
            before = _partition_bounds(watcher)
            child = spawn("sweep", {"path": path, "now_ms": huge})
            child.wait_line("sweeping", timeout=30)
            # wait until the log start has moved (the delete is under way), then a random while
            deadline = time.monotonic() + 30
            while _partition_bounds(watcher) == before and child.proc.poll() is None:
                assert time.monotonic() < deadline, f"{context}: the sweep made no progress in 30 s"
                time.sleep(0.001)
            if kills:  # the first kill lands as soon as the delete is under way, later ones anywhere
                time.sleep(rng.choice([0, 0, rng.uniform(0, 0.05), rng.uniform(0, 0.3)]))
            watcher.close()
            child.kill9()
            # the exit status says which came first: our SIGKILL (-9) or the end of the sweep (0)
            assert child.proc.returncode in (-9, 0), f"{context}: sweeper died on its own: {child.stderr()}"
            alive = child.proc.returncode == -9
            kills += 1
            stats["kills" if alive else "finished_before_kill"] += 1
            starts = _verify_swept_prefix(path, per_partition, f"{context} kill {kills}")
            for p, start in starts.items():
                assert start >= previous[p], f"{context}: log start of partition {p} went back {previous[p]} -> {start}"
            stats["mid_delete"] += alive and any(0 < s < per_partition for s in starts.values())
            previous = starts
            if all(s == per_partition for s in starts.values()):
                break
        # a new sweep finishes the job and gives the pages back
        with sqlog.open(path, retention_check_interval_ms=None) as log:
            log.sweep(now_ms=huge)
            stats_after = log.stats()
        _verify_swept_prefix(path, per_partition, f"{context} final sweep", expect_done=True)
        assert stats_after["freelist_count"] == 0, f"{context}: {stats_after}"
        stats["trials"] += 1
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    return dict(stats)


def test_sweeper_killed_mid_delete_leaves_a_consistent_log(tmp_path: Path, children) -> None:
    stats = run_sweep_kill_trials(tmp_path, children, trials=1, per_partition=100_000)
    assert stats.get("kills", 0) >= 1, stats
    print(f"sweep kills: {stats}")


@pytest.mark.slow
def test_sweeper_killed_mid_delete_many_trials(tmp_path: Path, children) -> None:
    stats = run_sweep_kill_trials(tmp_path, children, trials=15, per_partition=300_000)
    assert stats.get("mid_delete", 0) >= 10, stats
    print(f"sweep kills: {stats}")
