"""Crash trials: `sqlog mirror push|pull` killed with SIGKILL at random moments while records keep
arriving, restarted each time, then finished with --once; every record is counted on the other
side: lost (never allowed) and duplicated (allowed for at-least-once push only).

The short trials run by default; ``-m slow`` runs long ones (print their counts with ``-s``).
Remotes: librdkafka's mock cluster for push and pull; Tansu for push --exactly-once (the mock drops
TxnOffsetCommit). Tansu does not filter aborted transactions out of read_committed fetches, so a
duplicate there can be a record of the transaction a kill left open (aborted by the restart's
init_transactions()): the trial reports them, bounded by one transaction per kill.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import Producer as KafkaProducer  # noqa: E402

import sqlog  # noqa: E402
from sqlog.mirror import MockCluster  # noqa: E402

from mirror_helpers import local_rows, remote_rows, tansu  # noqa: E402

CLI = [sys.executable, "-m", "sqlog.cli"]
PARTITIONS = 2


def _feed_local(path: str, n: int, seconds: float) -> None:
    """``n`` records at an even pace over ``seconds``, 100 a transaction."""
    with sqlog.open(path) as log, log.producer() as producer:
        start = time.monotonic()
        for i in range(0, n, 100):
            producer.send_batch("t", [b"%d" % j for j in range(i, min(n, i + 100))], partition=(i // 100) % PARTITIONS)
            producer.flush()
            time.sleep(max(0.0, start + seconds * (i + 100) / n - time.monotonic()))


def _feed_remote(bootstrap: str, n: int, seconds: float) -> None:
    p = KafkaProducer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    start = time.monotonic()
    for i in range(0, n, 100):
        for j in range(i, min(n, i + 100)):
            p.produce("t", b"%d" % j, partition=(i // 100) % PARTITIONS)
        p.flush()
        time.sleep(max(0.0, start + seconds * (i + 100) / n - time.monotonic()))


def crash_trial(tmp_path: Path, mode: str, bootstrap: str, kills: int, n: int, seed: int) -> dict[str, Any]:
    """Run the mirror as a process, SIGKILL it ``kills`` times at random moments while ``n`` records
    arrive, finish with --once; the counts."""
    rng = random.Random(seed)
    edge = str(tmp_path / f"{mode}.db")
    with sqlog.open(edge) as log:
        if mode != "pull":
            log.create_topic("t", partitions=PARTITIONS)
    args = {"push": ["push"], "push-eos": ["push", "--exactly-once", "--transactional-id", "trial"],
            "pull": ["pull", "--group", "trial"]}[mode]
    cmd = [*CLI, "--db", edge, "mirror", *args, "--bootstrap-servers", bootstrap, "--topic", "t",
           "--progress-interval", "60"]
    if mode == "push-eos":
        cmd += ["--config", "transaction.timeout.ms=10000"]
    seconds = kills * 1.0  # the records arrive during the whole trial: kills hit a moving stream
    feeder = threading.Thread(target=_feed_remote if mode == "pull" else _feed_local,
                              args=(bootstrap if mode == "pull" else edge, n, seconds))
    feeder.start()
    done_kills = 0
    try:
        while done_kills < kills:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.4, 1.6))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            done_kills += 1
    finally:
        feeder.join()
    with sqlog.open(edge) as log:  # how far the killed runs got: the kills hit a moving stream
        before = (len(local_rows(log, "t")) if mode == "pull" else
                  sum(p.committed_offset or 0 for p in log.describe_group("sqlog-mirror").partitions)
                  if "sqlog-mirror" in log.list_groups() else 0)
    final = subprocess.run([*cmd, "--once"], capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    with sqlog.open(edge) as log:
        if mode == "pull":
            sent = [r[2] for r in remote_rows(bootstrap, "t", PARTITIONS)]
            got = [r[2] for r in local_rows(log, "t")]
        else:
            sent = [r[2] for r in local_rows(log, "t")]
            got = [r[2] for r in remote_rows(bootstrap, "t", PARTITIONS)]
    counts = Counter(got)
    result = {"mode": mode, "kills": done_kills, "records": len(sent), "mirrored_before_final_run": before,
              "lost": len(set(sent) - set(counts)), "duplicated": sum(c - 1 for c in counts.values())}
    print(f"crash trial {result}")
    return result


def _mock_remote(mc: MockCluster) -> str:
    mc.create_topic("t", PARTITIONS)
    return mc.bootstrap_servers


@pytest.mark.parametrize("mode", ["push", "pull"])
def test_short_crash_trial_on_the_mock(tmp_path: Path, mode: str) -> None:
    with MockCluster(1) as mc:
        r = crash_trial(tmp_path, mode, _mock_remote(mc), kills=3, n=3000, seed=1)
    assert r["records"] == 3000 and r["lost"] == 0
    assert r["mirrored_before_final_run"] > 0  # the killed runs did mirror something
    if mode == "pull":
        assert r["duplicated"] == 0


def test_short_crash_trial_exactly_once_on_tansu(tmp_path: Path) -> None:
    with tansu() as bootstrap:
        _create(bootstrap)
        r = crash_trial(tmp_path, "push-eos", bootstrap, kills=3, n=3000, seed=2)
    assert r["records"] == 3000 and r["lost"] == 0
    assert r["duplicated"] <= r["kills"] * 5000  # at most one open transaction per kill (see the module doc)


def _create(bootstrap: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic("t", PARTITIONS, 1)]).values():
        f.result(30)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["push", "pull", "push-eos"])
def test_long_crash_trial(tmp_path: Path, mode: str) -> None:
    if mode == "push-eos":
        with tansu() as bootstrap:
            _create(bootstrap)
            r = crash_trial(tmp_path, mode, bootstrap, kills=25, n=100_000, seed=3)
    else:
        with MockCluster(1) as mc:
            r = crash_trial(tmp_path, mode, _mock_remote(mc), kills=25, n=100_000, seed=3)
    assert r["lost"] == 0
    if mode == "pull":
        assert r["duplicated"] == 0
