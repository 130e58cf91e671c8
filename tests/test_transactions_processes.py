"""Exactly-once across real processes: consume-transform-produce workers SIGKILLed and restarted,
a paused zombie fenced by its replacement, and dedupe by message id from several processes at once.

Default run: one crash trial of 600 inputs with 5 SIGKILLs (a few seconds); ``pytest -m slow``
runs 5 trials of 3000 inputs with 15 SIGKILLs each.
"""

from __future__ import annotations

import collections
import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import read_all

import sqlog

PROCS = Path(__file__).resolve().parent / "procs"
IN_PARTITIONS = 4


def _wait(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _ctp_trial(tmp_path: Path, seed: int, inputs: int, kills: int) -> None:
    rng = random.Random(seed)
    db = str(tmp_path / f"ctp-{seed}.db")
    log = sqlog.open(db)
    log.create_topic("in", partitions=IN_PARTITIONS)
    log.create_topic("out", partitions=2)
    producer = log.producer()
    sent = 0

    def produce(upto: int) -> None:  # inputs keep arriving while workers are killed
        nonlocal sent
        for i in range(sent, upto):
            producer.send("in", b"%d" % i, partition=i % IN_PARTITIONS)
        producer.flush()
        sent = upto

    produce(inputs // (kills + 1))
    workers = {
        tid: subprocess.Popen([sys.executable, str(PROCS / "ctp_worker.py"), db, tid]) for tid in ("etl-0", "etl-1")
    }
    try:
        for k in range(kills):
            time.sleep(rng.uniform(0.05, 0.4))
            produce(inputs * (k + 2) // (kills + 1))
            tid = rng.choice(sorted(workers))
            workers[tid].send_signal(signal.SIGKILL)
            workers[tid].wait()
            workers[tid] = subprocess.Popen([sys.executable, str(PROCS / "ctp_worker.py"), db, tid])

        def done() -> bool:
            try:
                return log.describe_group("ctp").lag == 0
            except sqlog.GroupIdNotFoundError:
                return False

        _wait(done, 60, "the workers to finish the input")
    finally:
        for proc in workers.values():
            proc.send_signal(signal.SIGTERM)
        for proc in workers.values():
            proc.wait(timeout=30)
    outputs = collections.Counter(r.value for p in range(2) for r in read_all(log, "out", p))
    expected = {b"%d:%d" % (i % IN_PARTITIONS, i // IN_PARTITIONS) for i in range(inputs)}
    assert set(outputs) == expected
    assert [v for v, n in outputs.items() if n != 1] == []  # exactly one output per input
    description = log.describe_group("ctp")
    assert {(p.partition, p.committed_offset) for p in description.partitions} == {
        (p, inputs // IN_PARTITIONS + (p < inputs % IN_PARTITIONS)) for p in range(IN_PARTITIONS)
    }
    assert log.check().ok
    log.close()


def test_ctp_workers_killed_and_restarted_produce_exactly_once(tmp_path: Path) -> None:
    _ctp_trial(tmp_path, seed=1, inputs=600, kills=5)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_ctp_workers_killed_and_restarted_many_times(tmp_path: Path, seed: int) -> None:
    _ctp_trial(tmp_path, seed=100 + seed, inputs=3000, kills=15)


ZOMBIE = textwrap.dedent("""
    import json, sys, time
    import sqlog
    log = sqlog.open(sys.argv[1])
    producer = log.producer(transactional_id="etl")
    producer.init_transactions()
    producer.begin_transaction()
    producer.send("out", b"zombie-1")
    print("ready", flush=True)
    sys.stdin.readline()  # paused here (SIGSTOP) while the replacement takes over
    outcome = {}
    for step, call in (("send", lambda: producer.send("out", b"zombie-2")), ("commit", producer.commit_transaction)):
        try:
            call()
            outcome[step] = "ok"
        except sqlog.SqlogError as exc:
            outcome[step] = type(exc).__name__
    print(json.dumps(outcome), flush=True)
""")


def test_paused_zombie_is_fenced_by_its_replacement(tmp_path: Path) -> None:
    db = str(tmp_path / "zombie.db")
    log = sqlog.open(db)
    log.create_topic("out")
    zombie = subprocess.Popen([sys.executable, "-c", ZOMBIE, db], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert zombie.stdout is not None and zombie.stdin is not None
    assert zombie.stdout.readline().strip() == b"ready"
    zombie.send_signal(signal.SIGSTOP)
    replacement = log.producer(transactional_id="etl")
    replacement.init_transactions()
    time.sleep(0.15)  # a send looks at the epoch at most every 100 ms (commit_transaction() always does)
    replacement.begin_transaction()
    replacement.send("out", b"replacement")
    replacement.commit_transaction()
    zombie.send_signal(signal.SIGCONT)
    zombie.stdin.write(b"go\n")
    zombie.stdin.flush()
    outcome = json.loads(zombie.stdout.readline())
    zombie.wait(timeout=30)
    assert outcome == {"send": "ProducerFencedError", "commit": "ProducerFencedError"}
    assert [r.value for r in read_all(log, "out")] == [b"replacement"]


SENDER = textwrap.dedent("""
    import json, random, sys
    import sqlog
    log = sqlog.open(sys.argv[1])
    ids = [f"id-{i}" for i in range(int(sys.argv[2]))]
    random.Random(int(sys.argv[3])).shuffle(ids)
    producer = log.producer(linger_ms=0)
    futures = [(i, producer.send("q", i.encode(), message_id=i)) for i in ids]
    out = {}
    for i, f in futures:
        md = f.get(timeout=60)
        out[i] = [md.partition, md.offset, md.duplicate]
    print(json.dumps(out), flush=True)
""")


def test_dedupe_from_several_processes_at_once(tmp_path: Path) -> None:
    db = str(tmp_path / "dedupe.db")
    log = sqlog.open(db)
    log.create_topic("q", partitions=3, dedupe_window_ms=600_000)
    n, senders = 300, 4
    procs = [subprocess.Popen([sys.executable, "-c", SENDER, db, str(n), str(seed)], stdout=subprocess.PIPE)
             for seed in range(senders)]
    results = [json.loads(proc.communicate(timeout=120)[0]) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    stored = [r for p in range(3) for r in read_all(log, "q", p)]
    assert sorted(r.value for r in stored) == sorted(f"id-{i}".encode() for i in range(n))  # one record per id
    where = {r.value.decode(): [r.partition, r.offset] for r in stored}
    for i in where:
        answers = [res[i] for res in results]
        assert sum(not dup for _, _, dup in answers) == 1  # exactly one sender stored it
        assert all([p, o] == where[i] for p, o, _ in answers)  # the others got the original's metadata
    assert log.check().ok
