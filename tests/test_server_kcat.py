"""`sqlog serve` with kcat (the Debian package; librdkafka's command-line client): metadata (-L),
produce (-P) and consume (-C, and -G for a group). Skipped when kcat is not on PATH."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

pytest.importorskip("cramjam")
KCAT = shutil.which("kcat")
pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat is not on PATH (Debian: apt-get install kcat; "
                                                      ".ci/run installs it when apt-get can)")

import sqlog  # noqa: E402

from server_helpers import served  # noqa: E402


def kcat(bootstrap: str, *args: str, stdin: str | None = None, timeout: float = 30) -> str:
    assert KCAT is not None
    done = subprocess.run([KCAT, "-b", bootstrap, *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_kcat_metadata(log_path: str) -> None:
    with sqlog.open(log_path) as log:
        log.create_topic("orders", partitions=3)
        log.create_topic("audit")
    with served(log_path) as s:
        md = json.loads(kcat(s.bootstrap, "-L", "-J"))
        text = kcat(s.bootstrap, "-L", "-t", "orders")
    assert [(b["id"], b["name"]) for b in md["brokers"]] == [(0, s.bootstrap)]
    got = {t["topic"]: t for t in md["topics"]}
    assert set(got) == {"orders", "audit"}
    assert [p["partition"] for p in got["orders"]["partitions"]] == [0, 1, 2]
    assert all(p["leader"] == 0 and [r["id"] for r in p["replicas"]] == [0] for p in got["orders"]["partitions"])
    assert 'topic "orders" with 3 partitions' in text and "audit" not in text


def test_kcat_produce_is_read_natively(log_path: str) -> None:
    with sqlog.open(log_path) as log:
        log.create_topic("t", partitions=2)
    lines = "".join(f"user-{i}:value-{i}\n" for i in range(50))
    with served(log_path) as s:
        kcat(s.bootstrap, "-P", "-t", "t", "-K", ":", "-H", "source=kcat", "-z", "lz4", stdin=lines)
        kcat(s.bootstrap, "-P", "-t", "t", "-p", "1", stdin="to-one\n")
    with sqlog.open(log_path) as log:
        c = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
        c.subscribe(["t"])
        records: list[sqlog.Record] = []
        for _ in range(50):
            records += c.poll(timeout_ms=200)
            if len(records) == 51:
                break
        c.close()
    got = {r.value: r for r in records}
    assert len(got) == 51
    for i in range(50):
        r = got[b"value-%d" % i]
        assert r.key == b"user-%d" % i and r.headers == (("source", b"kcat"),)
    assert got[b"to-one"].partition == 1 and got[b"to-one"].key is None


def test_kcat_consumes_native_records(log_path: str) -> None:
    with sqlog.open(log_path) as log:
        log.create_topic("t", partitions=2)
        with log.producer() as producer:
            for i in range(20):
                producer.send("t", b"v%d" % i, key=b"k%d" % i, headers=[("n", b"%d" % i)], partition=i % 2,
                              timestamp_ms=1_700_000_000_000 + i)
    with served(log_path) as s:
        out = kcat(s.bootstrap, "-C", "-t", "t", "-e", "-f", "%p|%o|%k|%s|%h|%T\n")
        one = kcat(s.bootstrap, "-C", "-t", "t", "-p", "1", "-o", "-2", "-e", "-f", "%o %s\n")
    rows = {tuple(line.split("|")) for line in out.splitlines()}
    assert rows == {(str(i % 2), str(i // 2), "k%d" % i, "v%d" % i, "n=%d" % i, str(1_700_000_000_000 + i))
                    for i in range(20)}
    assert one.splitlines() == ["8 v17", "9 v19"]  # -o -2: the last two of partition 1


def test_kcat_group_consume_commits_offsets(log_path: str) -> None:
    with sqlog.open(log_path) as log:
        log.create_topic("t", partitions=2)
        with log.producer() as producer:
            for i in range(10):
                producer.send("t", b"v%d" % i, partition=i % 2)
    with served(log_path) as s:
        out = kcat(s.bootstrap, "-G", "kgroup", "t", "-o", "beginning", "-e", "-q", "-f", "%s\n")
    assert sorted(out.split()) == sorted("v%d" % i for i in range(10))
    with sqlog.open(log_path) as log:
        d = log.describe_group("kgroup")
        assert {(p.partition, p.committed_offset, p.lag) for p in d.partitions} == {(0, 5, 0), (1, 5, 0)}
