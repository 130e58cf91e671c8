"""A group member SIGKILLed in the middle of a rebalance leaves a group that settles.

Default run: 4 trials (the joining member killed while it joins and claims; an old owner
killed while it revokes for the joiner), at random moments. `pytest -m slow` runs 24.
Members are `procs/group_worker.py` processes with audit files (see test_groups_processes.py):
after each trial no partition was ever owned twice, every record was processed, and the
file passes `log.check()`.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

import sqlog
from test_groups_processes import (
    GROUP,
    SESSION_MS,
    Cluster,
    balanced,
    check_audit,
    ownership,
    processed,
    produce,
    wait_for,
)

PARTITIONS = 6


def _trial(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    path = str(tmp_path / f"trial-{seed}.db")
    cluster = Cluster(tmp_path / f"t{seed}", path)
    (tmp_path / f"t{seed}").mkdir()
    log = sqlog.open(path)
    try:
        log.create_topic("jobs", partitions=PARTITIONS)
        expected = produce(log, "pre", 120, PARTITIONS)
        for name in ("w0", "w1"):
            cluster.start(name, process_delay_ms=1)
        wait_for(lambda: balanced(log, {"w0", "w1"}, PARTITIONS), 20, "two members settled")
        expected |= produce(log, "mid", 120, PARTITIONS)
        cluster.start("w2", process_delay_ms=1)
        # Kill once the joiner is a member: while partitions are revoked, released and claimed.
        wait_for(lambda: "w2" in ownership(log), 20, "w2 joining")
        time.sleep(rng.uniform(0.0, 0.15))
        victim = "w2" if seed % 2 == 0 else "w0"
        cluster.kill(victim)
        survivors = {"w0", "w1", "w2"} - {victim}
        wait_for(lambda: balanced(log, survivors, PARTITIONS), SESSION_MS / 1000 + 10, "the group settling")
        expected |= produce(log, "post", 120, PARTITIONS)
        wait_for(lambda: log.describe_group(GROUP).lag == 0, 20, "the survivors catching up")
        for name in sorted(survivors):
            cluster.stop(name)
        names = ["w0", "w1", "w2"]
        check_audit(cluster, names)
        seen = {value for _, _, _, value in processed(cluster, names)}
        assert seen >= expected, f"lost: {sorted(expected - seen)[:10]}"
        report = log.check()
        assert report.ok, report.violations
    finally:
        cluster.stop_all()
        log.close()


@pytest.mark.parametrize("seed", range(4))
def test_member_killed_mid_rebalance_group_settles(tmp_path: Path, seed: int) -> None:
    _trial(tmp_path, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 124))
def test_member_killed_mid_rebalance_many_trials(tmp_path: Path, seed: int) -> None:
    _trial(tmp_path, seed)
