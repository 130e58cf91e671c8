"""sqlog.mirror push/pull against librdkafka's mock cluster, `sqlog serve` and Tansu: records
unchanged, cursors in the file, resume, retention skips, partition checks, uplink faults, the CLI."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("confluent_kafka")

import sqlog  # noqa: E402
from sqlog.mirror import MirrorError, MockCluster, pull, push  # noqa: E402

from mirror_helpers import T0, local_rows, remote_rows, tansu, wait_for, write_records  # noqa: E402
from server_helpers import served  # noqa: E402

CLI = [sys.executable, "-m", "sqlog.cli"]


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(3) as mc:
        yield mc


def test_push_then_pull_round_trip_on_the_mock(tmp_path: Path, cluster: MockCluster) -> None:
    src = sqlog.open(str(tmp_path / "edge.db"))
    write_records(src, "readings", 300, 3, create=True)
    progress = push(src, cluster.bootstrap_servers, ["readings"], once=True).join(30)
    assert progress.state == "done" and progress.records == 300 and progress.lag == 0
    want = local_rows(src, "readings")
    assert remote_rows(cluster.bootstrap_servers, "readings", 3) == want
    assert want[0] == (0, b"key-0", b"value-0", (("n", b"0"), ("empty", None)), T0)
    group = src.describe_group("sqlog-mirror")  # the cursor, as `sqlog groups describe` shows it
    assert [(p.partition, p.committed_offset, p.lag) for p in group.partitions] == [(0, 100, 0), (1, 100, 0), (2, 100, 0)]

    dst = sqlog.open(str(tmp_path / "cloud-copy.db"))
    progress = pull(dst, cluster.bootstrap_servers, ["readings"], group="device-1", once=True).join(30)
    assert progress.state == "done" and progress.records == 300
    # The mock auto-created the remote topic with 4 partitions: pull created the local one alike.
    assert len(dst.describe_topic("readings").partitions) == 4
    assert local_rows(dst, "readings") == want
    offsets = {p.partition: p.committed_offset for p in dst.describe_group("device-1").partitions}
    assert offsets == {0: 100, 1: 100, 2: 100}


def test_push_resumes_from_its_cursor_and_pull_from_its_offsets(tmp_path: Path, cluster: MockCluster) -> None:
    cluster.create_topic("jobs", 2)
    src = sqlog.open(str(tmp_path / "edge.db"))
    dst = sqlog.open(str(tmp_path / "copy.db"))
    write_records(src, "jobs", 50, 2, create=True)
    assert push(src, cluster.bootstrap_servers, "jobs", once=True).join(30).records == 50
    assert pull(dst, cluster.bootstrap_servers, "jobs", group="g", once=True).join(30).records == 50
    write_records(src, "jobs", 30, 2, start=50)
    assert push(src, cluster.bootstrap_servers, "jobs", once=True).join(30).records == 30  # not 80
    assert pull(dst, cluster.bootstrap_servers, "jobs", group="g", once=True).join(30).records == 30
    assert remote_rows(cluster.bootstrap_servers, "jobs", 2) == local_rows(src, "jobs") == local_rows(dst, "jobs")
    assert len(local_rows(dst, "jobs")) == 80


def test_push_with_a_prefix_and_follow_mode_until_stop(tmp_path: Path, cluster: MockCluster) -> None:
    src = sqlog.open(str(tmp_path / "edge.db"))
    src.create_topic("a", partitions=2)
    src.create_topic("b")
    with push(src, cluster.bootstrap_servers, ["a", "b"], remote_topic_prefix="site1.") as handle:
        write_records(src, "a", 40, 2)
        write_records(src, "b", 10, 1)
        wait_for(lambda: handle.progress().records == 50, what="50 records pushed")
        assert handle.progress().lag_by_topic() == {"a": 0, "b": 0}
    assert handle.progress().state == "stopped"
    assert remote_rows(cluster.bootstrap_servers, "site1.a", 2) == local_rows(src, "a")
    assert remote_rows(cluster.bootstrap_servers, "site1.b", 1) == local_rows(src, "b")


@pytest.mark.parametrize("exactly_once", [False, True])
def test_push_through_a_tiny_librdkafka_queue_keeps_every_record_once_in_order(
        tmp_path: Path, cluster: MockCluster, exactly_once: bool) -> None:
    # A queue of 7 messages refuses most produce() calls of each batch (BufferError): the push
    # waits for room and goes on from the refused record, neither skipping nor repeating one.
    src = sqlog.open(str(tmp_path / "edge.db"))
    write_records(src, "tiny", 400, 2, create=True)
    with src.producer() as producer:  # headerless and keyless records in the same batches
        for i in range(400, 500):
            producer.send("tiny", b"value-%d" % i, partition=i % 2, timestamp_ms=T0 + i)
    write_records(src, "tiny", 100, 2, start=500)
    progress = push(src, cluster.bootstrap_servers, "tiny", once=True, exactly_once=exactly_once,
                    config={"queue.buffering.max.messages": 7}, max_records=50).join(60)
    assert progress.state == "done" and progress.records == 600
    remote = remote_rows(cluster.bootstrap_servers, "tiny", 4)
    assert remote == local_rows(src, "tiny")
    assert sorted(int(v.split(b"-")[1]) for _, _, v, _, _ in remote) == list(range(600))


def test_a_remote_topic_with_too_few_partitions_is_a_clear_error(tmp_path: Path, cluster: MockCluster) -> None:
    cluster.create_topic("wide", 2)
    src = sqlog.open(str(tmp_path / "edge.db"))
    write_records(src, "wide", 6, 3, create=True)
    with pytest.raises(MirrorError, match=r"'wide' has 2 partitions but local topic 'wide' has 3"):
        push(src, cluster.bootstrap_servers, "wide", once=True).join(30)
    assert "sqlog-mirror" not in src.list_groups()  # nothing was pushed, nothing committed


def test_a_local_topic_with_too_few_partitions_is_a_clear_error_for_pull(tmp_path: Path, cluster: MockCluster) -> None:
    cluster.create_topic("cmds", 3)
    dst = sqlog.open(str(tmp_path / "copy.db"))
    dst.create_topic("cmds", partitions=1)
    with pytest.raises(MirrorError, match="local topic 'cmds' has 1 partitions but the remote one has 3"):
        pull(dst, cluster.bootstrap_servers, "cmds", group="g", once=True).join(30)


def test_records_removed_by_retention_before_the_push_are_warned_and_counted(
        tmp_path: Path, cluster: MockCluster, caplog: pytest.LogCaptureFixture) -> None:
    src = sqlog.open(str(tmp_path / "edge.db"), retention_check_interval_ms=None)
    src.create_topic("r", retention_bytes=4000)
    write_records(src, "r", 10, 1)
    assert push(src, cluster.bootstrap_servers, "r", once=True).join(30).records == 10
    write_records(src, "r", 500, 1, start=10)  # the uplink is "down" while retention cuts the oldest
    start = src.describe_topic("r").partitions[0].log_start_offset
    assert start > 10
    with caplog.at_level(logging.WARNING, logger="sqlog"):
        progress = push(src, cluster.bootstrap_servers, "r", once=True).join(30)
    assert progress.skipped == start - 10
    assert progress.records == 510 - start
    assert f"retention removed r-0 offsets 10 to {start - 1} ({start - 10} records)" in caplog.text
    rows = remote_rows(cluster.bootstrap_servers, "r", 4)
    assert [int(v.split(b"-")[1]) for _, _, v, _, _ in rows] == list(range(10)) + list(range(start, 510))


def test_push_rides_out_the_cluster_going_down_and_coming_back(tmp_path: Path, cluster: MockCluster) -> None:
    src = sqlog.open(str(tmp_path / "edge.db"))
    src.create_topic("t", partitions=2)
    # A short message timeout makes librdkafka give up on queued records: the mirror's own retry path.
    with push(src, cluster.bootstrap_servers, "t", config={"message.timeout.ms": 1500}) as handle:
        write_records(src, "t", 100, 2)
        wait_for(lambda: handle.progress().records == 100, what="first 100 pushed")
        cluster.all_down()
        write_records(src, "t", 200, 2, start=100)
        wait_for(lambda: handle.progress().retries >= 1, what="a retry after delivery timeouts")
        assert handle.progress().lag > 0
        cluster.all_up()
        wait_for(lambda: handle.progress().lag == 0, timeout=40, what="catching up after the outage")
        assert handle.progress().state == "running"
    rows = remote_rows(cluster.bootstrap_servers, "t", 2)
    assert set(rows) == set(local_rows(src, "t"))  # nothing lost (at-least-once: resends allowed)
    assert len(set(rows)) == 300


def test_pull_rides_out_the_cluster_going_down_and_coming_back(tmp_path: Path, cluster: MockCluster) -> None:
    cluster.create_topic("cmds", 2)
    src = sqlog.open(str(tmp_path / "cloud.db"))
    write_records(src, "cmds", 60, 2, create=True)
    push(src, cluster.bootstrap_servers, "cmds", once=True).join(30)
    dst = sqlog.open(str(tmp_path / "edge.db"))
    with pull(dst, cluster.bootstrap_servers, "cmds", group="edge") as handle:
        wait_for(lambda: handle.progress().records == 60, what="first 60 pulled")
        cluster.all_down()
        time.sleep(1.5)
        cluster.all_up()
        write_records(src, "cmds", 40, 2, start=60)
        push(src, cluster.bootstrap_servers, "cmds", once=True).join(30)
        wait_for(lambda: handle.progress().records == 100, timeout=40, what="the next 40 after the outage")
    assert local_rows(dst, "cmds") == local_rows(src, "cmds")  # exactly once: no duplicates


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_cluster_at_start_is_retried_until_it_comes_up(tmp_path: Path) -> None:
    """Against `sqlog serve` started late on the port the mirror was given."""
    port = _free_port()
    src = sqlog.open(str(tmp_path / "edge.db"))
    write_records(src, "t", 30, 1, create=True)
    handle = push(src, f"127.0.0.1:{port}", "t", once=True)
    time.sleep(1.0)
    assert handle.running and handle.progress().state in ("connecting", "retrying")
    assert handle.progress().records == 0
    remote = str(tmp_path / "remote.db")
    sqlog.open(remote).close()
    with served(remote, "--port", str(port)):
        progress = handle.join(60)
        assert progress.state == "done" and progress.records == 30
    with sqlog.open(remote) as log:
        assert local_rows(log, "t") == local_rows(src, "t")


def test_push_and_pull_through_sqlog_serve(tmp_path: Path) -> None:
    """A sqlog file served over the Kafka protocol is a remote like any other."""
    remote = str(tmp_path / "remote.db")
    sqlog.open(remote).close()
    src = sqlog.open(str(tmp_path / "edge.db"))
    write_records(src, "orders", 120, 3, create=True)
    dst = sqlog.open(str(tmp_path / "copy.db"))
    with served(remote) as server:
        assert push(src, server.bootstrap, "orders", once=True).join(30).records == 120  # created the topic
        assert pull(dst, server.bootstrap, "orders", group="copy", once=True).join(30).records == 120
    with sqlog.open(remote) as log:
        assert len(log.describe_topic("orders").partitions) == 3
        assert local_rows(log, "orders") == local_rows(src, "orders") == local_rows(dst, "orders")


def test_push_and_pull_through_tansu(tmp_path: Path) -> None:
    src = sqlog.open(str(tmp_path / "edge.db"))
    write_records(src, "orders", 90, 3, create=True)
    dst = sqlog.open(str(tmp_path / "copy.db"))
    with tansu() as bootstrap:
        assert push(src, bootstrap, "orders", once=True).join(30).records == 90
        assert remote_rows(bootstrap, "orders", 3) == local_rows(src, "orders")
        assert pull(dst, bootstrap, "orders", group="copy", once=True).join(30).records == 90
    assert local_rows(dst, "orders") == local_rows(src, "orders")


# -- the command line ------------------------------------------------------------------------------
def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_cli_push_and_pull_once_with_json_progress(tmp_path: Path, cluster: MockCluster) -> None:
    edge, copy = str(tmp_path / "edge.db"), str(tmp_path / "copy.db")
    with sqlog.open(edge) as log:
        write_records(log, "orders", 40, 2, create=True)
    bs = cluster.bootstrap_servers
    proc = _run("--db", edge, "mirror", "push", "--bootstrap-servers", bs, "--topic", "orders", "--once",
                "--format", "json", "--config", "linger.ms=1")
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["state"] == "done" and last["records"] == 40 and last["lag"] == {"orders": 0}
    proc = _run("--db", copy, "mirror", "pull", "--bootstrap-servers", bs, "--topic", "orders", "--group", "c",
                "--once")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("pull: done, 40 records")
    proc = _run("--db", edge, "groups", "describe", "sqlog-mirror", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert "orders" in proc.stdout
    with sqlog.open(edge) as a, sqlog.open(copy) as b:
        assert local_rows(a, "orders") == local_rows(b, "orders")


def test_cli_exit_codes(tmp_path: Path, cluster: MockCluster) -> None:
    edge = str(tmp_path / "edge.db")
    with sqlog.open(edge) as log:
        write_records(log, "wide", 5, 5, create=True)
    proc = _run("--db", edge, "mirror", "push", "--bootstrap-servers", cluster.bootstrap_servers, "--topic", "wide",
                "--once")
    assert proc.returncode == 1
    assert "has 4 partitions but local topic 'wide' has 5" in proc.stderr
    proc = _run("--db", edge, "mirror", "push", "--topic", "wide")
    assert proc.returncode == 2 and "--bootstrap-servers" in proc.stderr
    proc = _run("--db", edge, "mirror", "push", "--bootstrap-servers", "x:1", "--topic", "wide", "--config", "nokey")
    assert proc.returncode == 2 and "KEY=VALUE" in proc.stderr


def test_cli_push_follows_and_stops_cleanly_on_sigterm(tmp_path: Path, cluster: MockCluster) -> None:
    edge = str(tmp_path / "edge.db")
    with sqlog.open(edge) as log:
        write_records(log, "t", 20, 1, create=True)
    proc = subprocess.Popen([*CLI, "--db", edge, "mirror", "push", "--bootstrap-servers", cluster.bootstrap_servers,
                             "--topic", "t", "--progress-interval", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "20 records" in line:
                break
        with sqlog.open(edge) as log:
            write_records(log, "t", 5, 1, start=20)
            wait_for(lambda: log.describe_group("sqlog-mirror").lag == 0 and
                     log.describe_group("sqlog-mirror").partitions[0].committed_offset == 25, what="25 committed")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.strip().splitlines()[-1].startswith("push: stopped, 25 records")
    assert len(remote_rows(cluster.bootstrap_servers, "t", 1)) == 25


def test_mirror_without_a_log_file_or_with_bad_arguments(tmp_path: Path) -> None:
    proc = _run("--db", str(tmp_path / "missing.db"), "mirror", "push", "--bootstrap-servers", "x:1", "--topic", "t")
    assert proc.returncode == 1 and "no such log" in proc.stderr
    assert not os.path.exists(tmp_path / "missing.db")
    with pytest.raises(MirrorError, match="topics must be"):
        push(sqlog.open(str(tmp_path / "a.db")), "x:1", [])
    with pytest.raises(MirrorError, match="needs a group id"):
        pull(sqlog.open(str(tmp_path / "a.db")), "x:1", ["t"], group="")


# -- exactly-once push ---------------------------------------------------------------------------
def test_exactly_once_push_keeps_its_progress_on_the_cluster(tmp_path: Path) -> None:
    """Tansu stores transactional offsets (TxnOffsetCommit): a restart with the local cursor gone
    resumes from the cluster's progress, read back after init_transactions()."""
    src = sqlog.open(str(tmp_path / "edge.db"))
    write_records(src, "orders", 50, 2, create=True)
    with tansu() as bootstrap:
        def run() -> int:
            return push(src, bootstrap, "orders", exactly_once=True, transactional_id="edge-7", once=True,
                        max_records=20).join(60).records

        assert run() == 50
        src.delete_group("sqlog-mirror")  # the local cursor is only for show: the cluster's progress rules
        assert run() == 0
        write_records(src, "orders", 20, 2, start=50)
        assert run() == 20
        assert remote_rows(bootstrap, "orders", 2) == local_rows(src, "orders")


def test_exactly_once_push_on_the_mock_falls_back_to_the_local_cursor(tmp_path: Path, cluster: MockCluster) -> None:
    """The mock drops TxnOffsetCommit: the cluster shows no progress, and the local cursor (committed
    after each cluster transaction) keeps a restart from sending everything again."""
    cluster.create_topic("orders", 2)
    src = sqlog.open(str(tmp_path / "edge.db"))
    write_records(src, "orders", 30, 2, create=True)
    bs = cluster.bootstrap_servers
    assert push(src, bs, "orders", exactly_once=True, transactional_id="e", once=True).join(60).records == 30
    write_records(src, "orders", 10, 2, start=30)
    assert push(src, bs, "orders", exactly_once=True, transactional_id="e", once=True).join(60).records == 10
    assert remote_rows(bs, "orders", 2) == local_rows(src, "orders")


def test_pull_keeps_remote_offsets_apart_from_local_ones_and_warns_of_remote_retention(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Through `sqlog serve` over a file whose retention moves the remote log start: remote offsets
    differ from local ones (kept in the cursor's metadata), and records the cluster dropped before
    they were pulled are a warning and a count."""
    remote = str(tmp_path / "remote.db")
    with sqlog.open(remote, retention_check_interval_ms=None) as log:
        log.create_topic("cmds", retention_bytes=3000)
        write_records(log, "cmds", 100, 1)
        log.sweep()
        start = log.describe_topic("cmds").partitions[0].log_start_offset
    assert start > 0
    dst = sqlog.open(str(tmp_path / "edge.db"))
    with served(remote) as server:
        assert pull(dst, server.bootstrap, "cmds", group="edge", once=True).join(30).records == 100 - start
        described = dst.describe_group("edge").partitions[0]
        assert (described.committed_offset, described.lag) == (100 - start, 0)
        assert described.metadata.startswith("remote-offset=100 ")
        with sqlog.open(remote, retention_check_interval_ms=None) as log:
            write_records(log, "cmds", 100, 1, start=100)
            log.sweep()
            start2 = log.describe_topic("cmds").partitions[0].log_start_offset
        assert start2 > 100
        with caplog.at_level(logging.WARNING, logger="sqlog"):
            progress = pull(dst, server.bootstrap, "cmds", group="edge", once=True).join(30)
    assert progress.skipped == start2 - 100 and progress.records == 200 - start2
    assert f"retention removed cmds-0 offsets 100 to {start2 - 1}" in caplog.text
    values = [int(v.split(b"-")[1]) for _, _, v, _, _ in local_rows(dst, "cmds")]
    assert values == list(range(start, 100)) + list(range(start2, 200))
