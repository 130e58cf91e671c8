"""The installed ``sqlog`` console script, run as a subprocess: every command, its errors, --help.

Setup that is not under test (topics, records with chosen timestamps) goes through the API in
this process, which is much faster than a subprocess per step; independent invocations run
in parallel (see ``run_many``).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import apsw
import pytest

import sqlog

SQLOG = Path(sys.executable).parent / "sqlog"
pytestmark = pytest.mark.skipif(
    not SQLOG.exists(), reason=f"console script {SQLOG} not installed: run pip install -e '.[test]'"
)

ENV = {k: v for k, v in os.environ.items() if k != "SQLOG_DB"}
TIMEOUT = 30


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    return {**ENV, **(extra or {})}


def run(*args: str, input: bytes | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``sqlog ARGS``; stdout and stderr as text (undecodable bytes replaced)."""
    done = subprocess.run([str(SQLOG), *args], input=input, capture_output=True, env=_env(env), timeout=TIMEOUT)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(errors="replace"),
                                       done.stderr.decode(errors="replace"))


def run_many(*argvs: list[str], env: dict[str, str] | None = None,
             envs: list[dict[str, str] | None] | None = None) -> list[subprocess.CompletedProcess[str]]:
    """Start every invocation at once (they are independent), then collect them in order.

    ``env`` adds to the environment of all of them, ``envs`` (one per invocation) of each.
    """
    envs = envs or [None] * len(argvs)
    procs = [subprocess.Popen([str(SQLOG), *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=_env({**(env or {}), **(extra or {})}))
             for argv, extra in zip(argvs, envs)]
    out = []
    for argv, proc in zip(argvs, procs):
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
        out.append(subprocess.CompletedProcess(argv, proc.returncode, stdout.decode(errors="replace"),
                                               stderr.decode(errors="replace")))
    return out


def one_line_error(done: subprocess.CompletedProcess[str], status: int = 1) -> str:
    """Assert a user mistake: the status, no traceback, one ``sqlog: error:`` line; return it."""
    assert done.returncode == status, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    if status == 1:
        assert len(lines) == 1 and lines[0].startswith("sqlog: error: "), done.stderr
    return lines[-1]


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "log.db")


def seed(db: str, topic: str = "orders", partitions: int = 1, records: list[bytes] | None = None, **kw: object) -> None:
    with sqlog.open(db) as log:
        log.create_topic(topic, partitions=partitions, **kw)  # type: ignore[arg-type]
        if records:
            with log.producer() as producer:
                for value in records:
                    producer.send(topic, value, partition=0)


def consume_json(db: str, *args: str) -> list[dict[str, object]]:
    done = run("--db", db, "consume", "orders", *args, "--format", "json", "--timeout-ms", "0")
    assert done.returncode == 0, done
    return [json.loads(line) for line in done.stdout.splitlines()]


# -- help ----------------------------------------------------------------------------------------
def test_help_at_every_level_says_what_each_command_does() -> None:
    top, topics, create, consume, groups, reset = run_many(
        ["--help"], ["topics", "--help"], ["topics", "create", "--help"], ["consume", "--help"], ["groups", "--help"],
        ["groups", "reset-offsets", "--help"], env={"COLUMNS": "80"})  # argparse wraps to the terminal width
    for done in (top, topics, create, consume, groups, reset):
        assert done.returncode == 0 and done.stderr == "", done
        assert done.stdout.startswith("usage: sqlog")
    # Each command is listed with a one-line summary of what it does.
    for name, summary in [("topics", "create, list"), ("produce", "stdin line"), ("consume", "following"),
                          ("groups", "consumer groups"), ("sweep", "retention"), ("stats", "WAL"),
                          ("check", "exit 1")]:
        assert any(line.split()[:1] == [name] and summary in line for line in top.stdout.splitlines()), name
    assert "SQLOG_DB" in top.stdout
    for name in ("create", "list", "describe", "alter", "delete"):
        assert any(line.split()[:1] == [name] and len(line.split()) > 2 for line in topics.stdout.splitlines())
    assert "--partitions N" in create.stdout and "keep forever" in " ".join(create.stdout.split())
    assert "--from-beginning" in consume.stdout and "base64" in consume.stdout
    for name in ("list", "describe", "reset-offsets", "delete"):  # each summary on its name's line
        assert any(line.split()[:1] == [name] and len(line.split()) > 2 for line in groups.stdout.splitlines()), name
    assert "kafka-consumer-groups" in groups.stdout and "share groups" in groups.stdout
    for option in ("--to-earliest", "--to-latest", "--to-offset N", "--to-datetime", "--shift-by N", "--dry-run",
                   "--execute", "--partition N"):
        assert option in reset.stdout, option
    words = " ".join(reset.stdout.split())
    assert "dry run" in words and "live members" in words and "clamped to [log start, log end]" in words
    assert "Consumer groups only" in words


# -- topics --------------------------------------------------------------------------------------
def test_topics_create_list_describe_alter_delete(db: str) -> None:
    done = run("--db", db, "topics", "create", "orders", "--partitions", "3", "--retention-ms", "604800000")
    assert done.returncode == 0 and "orders" in done.stdout, done
    with sqlog.open(db) as log, log.producer() as producer:
        log.create_topic("audit", retention_bytes=1000)
        for i in range(5):
            producer.send("orders", b"v%d" % i, partition=1)

    listed, listed_json, described, described_json = run_many(
        ["--db", db, "topics", "list"], ["--db", db, "topics", "list", "--format", "json"],
        ["--db", db, "topics", "describe", "orders"], ["--db", db, "topics", "describe", "orders", "--format", "json"])
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["TOPIC", "PARTITIONS", "RECORDS", "BYTES", "RETENTION-MS", "RETENTION-BYTES"]
    assert [line.split() for line in lines[1:]] == [["audit", "1", "0", "0", "forever", "1000"],
                                                    ["orders", "3", "5", "10", "604800000", "forever"]]
    assert lines[0].index("PARTITIONS") == lines[1].index("1") == lines[2].index("3")
    data = json.loads(listed_json.stdout)
    assert [(t["name"], len(t["partitions"]), t["records"]) for t in data] == [("audit", 1, 0), ("orders", 3, 5)]

    assert "retention.ms=604800000" in described.stdout and "retention.bytes=forever" in described.stdout
    table = [line.split() for line in described.stdout.splitlines()[1:]]
    assert table == [["PARTITION", "LOG-START", "HIGH-WATERMARK", "RECORDS", "BYTES"],
                     ["0", "0", "0", "0", "0"], ["1", "0", "5", "5", "10"], ["2", "0", "0", "0", "0"]]
    desc = json.loads(described_json.stdout)
    assert desc["retention_ms"] == 604800000 and desc["retention_bytes"] is None
    assert desc["partitions"][1] == {"partition": 1, "log_start_offset": 0, "high_watermark": 5,
                                     "records": 5, "bytes": 10}

    done = run("--db", db, "topics", "alter", "orders", "--partitions", "4", "--retention-ms", "-1",
               "--retention-bytes", "2048")
    assert done.returncode == 0, done
    with sqlog.open(db) as log:
        d = log.describe_topic("orders")
    assert (len(d.partitions), d.retention_ms, d.retention_bytes) == (4, None, 2048)

    shrink, nothing, duplicate = run_many(["--db", db, "topics", "alter", "orders", "--partitions", "2"],
                                          ["--db", db, "topics", "alter", "orders"],
                                          ["--db", db, "topics", "create", "orders"])
    assert "only grow" in one_line_error(shrink)
    assert "nothing to alter" in one_line_error(nothing, 2)
    assert "already exists" in one_line_error(duplicate)

    done = run("--db", db, "topics", "delete", "orders")
    assert done.returncode == 0 and "orders" in done.stdout
    with sqlog.open(db) as log:
        assert log.list_topics() == ["audit"]
    assert "unknown topic 'orders'" in one_line_error(run("--db", db, "topics", "delete", "orders"))


def test_topics_create_if_not_exists(db: str) -> None:
    assert run("--db", db, "topics", "create", "orders", "--partitions", "2").returncode == 0
    err = one_line_error(run("--db", db, "topics", "create", "orders", "--partitions", "2"))
    assert "already exists" in err and "--if-not-exists" in err
    again = run("--db", db, "topics", "create", "orders", "--partitions", "2", "--if-not-exists")
    assert again.returncode == 0 and again.stdout == "Topic orders already exists.\n"
    assert "not 3" in one_line_error(run("--db", db, "topics", "create", "orders", "--partitions", "3",
                                         "--if-not-exists"))


def test_sqlog_db_environment_variable(tmp_path: Path) -> None:
    env_db, flag_db = str(tmp_path / "env.db"), str(tmp_path / "flag.db")
    assert run("topics", "create", "from-env", env={"SQLOG_DB": env_db}).returncode == 0
    seed(flag_db, "from-flag")
    via_env, flag_wins, neither = run_many(["topics", "list"], ["--db", flag_db, "topics", "list"], ["topics", "list"],
                                           envs=[{"SQLOG_DB": env_db}, {"SQLOG_DB": env_db}, None])
    assert via_env.stdout.splitlines()[1].split()[0] == "from-env"
    assert flag_wins.stdout.splitlines()[1].split()[0] == "from-flag"
    assert "--db PATH or set SQLOG_DB" in one_line_error(neither, 2)


def test_user_mistakes_are_one_line_errors(tmp_path: Path, db: str) -> None:
    seed(db)
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a database at all\n" * 100)
    other_db = str(tmp_path / "other.db")
    conn = apsw.Connection(other_db)
    conn.execute("CREATE TABLE t(x)")
    conn.close()
    missing = str(tmp_path / "missing.db")
    empty = tmp_path / "empty.db"
    empty.touch()
    cases = [
        (["--db", missing, "topics", "list"], "no such log: " + missing),
        (["--db", missing, "consume", "orders"], "no such log: " + missing),
        (["--db", missing, "produce", "orders"], "no such log: " + missing),
        (["--db", missing, "groups", "list"], "no such log: " + missing),
        (["--db", str(empty), "stats"], "an empty file, not a sqlog log"),
        (["--db", str(tmp_path), "topics", "list"], "is a directory"),
        (["--db", str(text_file), "topics", "list"], "not a sqlog log"),
        (["--db", other_db, "stats"], "not a sqlog log"),
        (["--db", db, "topics", "describe", "nope"], "unknown topic 'nope'"),
        (["--db", db, "produce", "nope"], "unknown topic 'nope'"),
        (["--db", db, "topics", "create", "bad name!"], "invalid topic name 'bad name!'"),
        (["--db", db, "consume", "orders", "--partition", "5"], "partitions 0..0, not 5"),
    ]
    usage = [
        ["--db", db, "topics", "create", "x", "--partitions", "many"],
        ["--db", db, "frobnicate"],
        ["--db", db, "topics"],
        ["--db", db, "consume", "orders", "--offset", "3"],
        ["--db", db, "produce", "orders", "--header", "novalue"],
    ]
    results = run_many(*[argv for argv, _ in cases], *usage)
    for done, (_, text) in zip(results, cases):
        assert text in one_line_error(done), (done.args, done.stderr)
    assert not os.path.exists(missing) and empty.stat().st_size == 0  # reading commands never make a log
    assert text_file.read_text().startswith("not a database")
    for done in results[len(cases):]:
        one_line_error(done, 2)
        assert "error:" in done.stderr and done.stdout == "", (done.args, done.stderr)


# -- produce and consume ---------------------------------------------------------------------------
def test_produce_consume_round_trip_with_keys_and_headers(db: str) -> None:
    seed(db, partitions=2)
    lines = "user-1:first\nuser-2:sécond:with:colons\nuser-1:\n:no key text\n".encode()
    done = run("--db", db, "produce", "orders", "--key-separator", ":", "--header", "source=cli",
               "--header", "trace=a=b", input=lines)
    assert done.returncode == 0 and done.stderr == "4 records produced\n", done

    records = consume_json(db, "--from-beginning")
    got = sorted((r["key"], r["value"]) for r in records)
    assert got == [("", "no key text"), ("user-1", ""), ("user-1", "first"), ("user-2", "sécond:with:colons")]
    for r in records:
        assert set(r) == {"topic", "partition", "offset", "timestamp", "key", "value", "headers"}
        assert r["topic"] == "orders" and r["headers"] == [["source", "cli"], ["trace", "a=b"]]
        assert r["partition"] == sqlog.partition_for_key(r["key"].encode(), 2)
    user1 = [r for r in records if r["key"] == "user-1"]
    assert [r["value"] for r in sorted(user1, key=lambda r: r["offset"])] == ["first", ""]

    text, keyed = run_many(["--db", db, "consume", "orders", "--from-beginning", "--timeout-ms", "0"],
                           ["--db", db, "consume", "orders", "--from-beginning", "--timeout-ms", "0", "--print-key"])
    assert sorted(text.stdout.splitlines()) == ["", "first", "no key text", "sécond:with:colons"]
    assert "user-2\tsécond:with:colons" in keyed.stdout.splitlines()

    # No separator: the whole line is the value, no key; --partition pins the partition; \r\n is stripped.
    done = run("--db", db, "produce", "orders", "--partition", "1", input=b"plain\r\nline two\n")
    assert done.returncode == 0 and done.stderr == "2 records produced\n"
    with sqlog.open(db) as log:
        hw = log.describe_topic("orders").partitions[1].high_watermark
    pinned, latest = run_many(
        ["--db", db, "consume", "orders", "--partition", "1", "--offset", str(hw - 2), "--format", "json",
         "--timeout-ms", "0"],
        ["--db", db, "consume", "orders", "--partition", "1", "--offset", "latest", "--timeout-ms", "0"])
    assert [(r["key"], r["value"], r["headers"]) for r in map(json.loads, pinned.stdout.splitlines())] == [
        (None, "plain", []), (None, "line two", [])]
    assert (latest.returncode, latest.stdout) == (0, "")


def test_produce_errors_keep_what_came_before(db: str) -> None:
    seed(db)
    done = run("--db", db, "produce", "orders", "--key-separator", "=", input=b"k=v\nno separator here\nk=w\n")
    assert "line 2 has no key separator '='" in done.stderr
    assert done.returncode == 1 and "1 record produced" in done.stderr and "Traceback" not in done.stderr
    too_big = run("--db", db, "produce", "orders", input=b"ok\n" + b"x" * (2 << 20) + b"\n")
    assert too_big.returncode == 1 and "line 2:" in too_big.stderr and "max_record_bytes" in too_big.stderr
    assert [r["value"] for r in consume_json(db, "--from-beginning")] == ["v", "ok"]


def test_consume_json_marks_bytes_that_are_not_utf8(db: str) -> None:
    seed(db)
    with sqlog.open(db) as log, log.producer() as producer:
        producer.send("orders", b"\xff\x00bin", key=b"\xfe", headers=[("h", b"\x80"), ("empty", None)],
                      timestamp_ms=1234)
        producer.send("orders", None, key=b"k")
    as_json, as_text = run_many(
        ["--db", db, "consume", "orders", "--from-beginning", "--timeout-ms", "0", "--format", "json"],
        ["--db", db, "consume", "orders", "--from-beginning", "--timeout-ms", "0", "--print-key"])
    first, tombstone = map(json.loads, as_json.stdout.splitlines())
    assert first["timestamp"] == 1234 and first["offset"] == 0
    assert base64.b64decode(first["value"]["base64"]) == b"\xff\x00bin"
    assert base64.b64decode(first["key"]["base64"]) == b"\xfe"
    assert first["headers"] == [["h", {"base64": base64.b64encode(b"\x80").decode()}], ["empty", None]]
    assert tombstone["value"] is None and tombstone["key"] == "k"
    # Text format writes the bytes as stored (shown here after the test's decoding with "replace").
    assert as_text.stdout == b"\xfe\t\xff\x00bin\nk\tnull\n".decode(errors="replace")


def test_consume_group_commits_what_it_printed(db: str) -> None:
    seed(db, records=[b"a", b"b", b"c"])
    consume = ["--db", db, "consume", "orders", "--from-beginning"]
    first, capped = run_many([*consume, "--group", "g", "--timeout-ms", "0"],
                             [*consume, "--group", "h", "--max-messages", "2"])
    assert first.stdout.split() == ["a", "b", "c"] and capped.stdout.split() == ["a", "b"]
    with sqlog.open(db) as log, log.producer() as producer:
        producer.send("orders", b"d")
    again, rest, no_group = run_many([*consume, "--group", "g", "--timeout-ms", "0"],
                                     ["--db", db, "consume", "orders", "--group", "h", "--timeout-ms", "0"],
                                     [*consume, "--timeout-ms", "0"])
    assert again.stdout.split() == ["d"]
    assert rest.stdout.split() == ["c", "d"]
    assert no_group.stdout.split() == ["a", "b", "c", "d"]  # without --group nothing is stored or used
    with sqlog.open(db) as log:
        consumer = log.consumer(group_id="g")
        assert consumer.committed(sqlog.TopicPartition("orders", 0)) == 4
        consumer.close()


def test_consume_follows_new_records(db: str) -> None:
    seed(db, records=[b"old"])
    proc = subprocess.Popen([str(SQLOG), "--db", db, "consume", "orders", "--partition", "0", "--offset", "1",
                             "--max-messages", "2", "--timeout-ms", "10000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    with sqlog.open(db) as log, log.producer() as producer:
        producer.send("orders", b"new-1")
        producer.send("orders", b"new-2")
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert (proc.returncode, stdout, stderr) == (0, b"new-1\nnew-2\n", b"")
    idle = run("--db", db, "consume", "orders", "--timeout-ms", "100")  # latest, nothing new: exits
    assert (idle.returncode, idle.stdout, idle.stderr) == (0, "", "")


@pytest.mark.parametrize("records", [5, 20_000], ids=["idle-after-head-exits", "write-after-head-exits"])
def test_consume_piped_to_head_exits_quietly(db: str, tmp_path: Path, records: int) -> None:
    seed(db, records=[b"record-%06d" % i for i in range(records)])
    err = tmp_path / "stderr.txt"
    script = (f"set +o pipefail; '{SQLOG}' --db '{db}' consume orders --from-beginning 2>'{err}'"
              " | head -n 2; echo \"status=${PIPESTATUS[0]}\"")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=ENV, timeout=TIMEOUT)
    assert done.stdout == "record-000000\nrecord-000001\nstatus=0\n", done
    assert err.read_text() == ""


def test_consume_ctrl_c_exits_quietly(db: str) -> None:
    seed(db, records=[b"one"])
    proc = subprocess.Popen([str(SQLOG), "--db", db, "consume", "orders", "--group", "g", "--from-beginning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"one\n"  # printed; committed next, then following
    tp = sqlog.TopicPartition("orders", 0)
    with sqlog.open(db) as log:
        consumer = log.consumer(group_id="g")
        deadline = time.monotonic() + 10
        while consumer.committed(tp) != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        consumer.close()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130 and stdout == b"" and stderr == b""


# -- groups --------------------------------------------------------------------------------------
def table(text: str) -> list[list[str]]:
    """The whitespace-split rows of the first table in ``text`` (up to its first blank line)."""
    rows = []
    for line in text.splitlines():
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def committed(db: str, group: str) -> dict[int, int | None]:
    with sqlog.open(db) as log:
        return {p.partition: p.committed_offset for p in log.describe_group(group).partitions if p.topic == "orders"}


def test_groups_list_and_describe_show_lag_after_consume_group(db: str) -> None:
    seed(db, partitions=2)
    with sqlog.open(db) as log, log.producer() as producer:
        for i in range(4):
            producer.send("orders", b"p0-%d" % i, partition=0)
        for i in range(2):
            producer.send("orders", b"p1-%d" % i, partition=1)
    empty = run("--db", db, "groups", "list")
    assert (empty.returncode, empty.stdout, empty.stderr) == (0, "", "")
    billing, audit = run_many(
        ["--db", db, "consume", "orders", "--group", "billing", "--from-beginning", "--timeout-ms", "0"],
        ["--db", db, "consume", "orders", "--group", "audit", "--partition", "1", "--offset", "earliest",
         "--max-messages", "1"])
    assert len(billing.stdout.split()) == 6 and audit.stdout.split() == ["p1-0"], (billing, audit)
    with sqlog.open(db) as log, log.producer() as producer:
        for i in range(3):
            producer.send("orders", b"new-%d" % i, partition=0)

    listed, listed_json, text, as_json, other, unknown, unknown_json = run_many(
        ["--db", db, "groups", "list"], ["--db", db, "groups", "list", "--format", "json"],
        ["--db", db, "groups", "describe", "billing"],
        ["--db", db, "groups", "describe", "billing", "--format", "json"],
        ["--db", db, "groups", "describe", "audit"], ["--db", db, "groups", "describe", "nope"],
        ["--db", db, "groups", "describe", "nope", "--format", "json"])
    assert listed.returncode == 0 and table(listed.stdout) == [["GROUP", "TYPE"], ["audit", "consumer"],
                                                               ["billing", "consumer"]]
    assert [(g["group"], g["type"], g["state"], g["members"], g["lag"]) for g in json.loads(listed_json.stdout)] == [
        ("audit", "consumer", "Empty", 0, 1), ("billing", "consumer", "Empty", 0, 3)]

    assert text.returncode == 0 and text.stderr == "", text
    lines = text.stdout.splitlines()
    header = "GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID HOST CLIENT-ID".split()
    assert table(text.stdout) == [header, ["billing", "orders", "0", "4", "7", "3", "-", "-", "-"],
                                  ["billing", "orders", "1", "2", "2", "0", "-", "-", "-"]]
    assert lines[0].index("LAG") == lines[1].index("3")  # aligned
    assert "Consumer group 'billing' has no active members." in lines
    assert lines[-1].startswith("Group billing: state=Empty  generation=") and "lag=3" in lines[-1]
    data = json.loads(as_json.stdout)
    assert (data["group"], data["type"], data["state"], data["lag"], data["members"]) == (
        "billing", "consumer", "Empty", 3, [])
    assert data["partitions"][0] == {"topic": "orders", "partition": 0, "committed_offset": 4, "log_end_offset": 7,
                                     "lag": 3, "member_id": None, "host": None, "client_id": None,
                                     "metadata": "", "skipped": 0}
    # A group that committed only partition 1 (consume --partition, outside any membership).
    assert table(other.stdout)[1:] == [["audit", "orders", "1", "1", "2", "1", "-", "-", "-"]]
    for done in (unknown, unknown_json):
        assert "unknown group 'nope'" in one_line_error(done) and done.stdout == ""


def test_groups_live_member_is_described_and_blocks_reset_and_delete(db: str) -> None:
    seed(db, partitions=2, records=[b"a", b"b", b"c"])
    tp0, tp1 = sqlog.TopicPartition("orders", 0), sqlog.TopicPartition("orders", 1)
    log = sqlog.open(db)
    log.alter_group_offsets("live", {tp0: 1})  # committed while the group is empty
    consumer = log.consumer(group_id="live", client_id="cli-test", enable_auto_commit=False)
    consumer.subscribe(["orders"])
    stop = threading.Event()

    def keep_polling() -> None:  # a live member: polls (and its heartbeat thread beats) while the CLI runs
        while not stop.is_set():
            consumer.poll(timeout_ms=50)

    poller = threading.Thread(target=keep_polling, daemon=True)
    poller.start()
    try:
        deadline = time.monotonic() + 10
        while True:
            d = log.describe_group("live")
            if d.state == "Stable" and d.members and len(d.members[0].assignment) == 2:
                break
            assert time.monotonic() < deadline, d
            time.sleep(0.02)
        member = d.members[0]
        described, as_json, dry, execute, shift, delete = run_many(
            ["--db", db, "groups", "describe", "live"], ["--db", db, "groups", "describe", "live", "--format", "json"],
            ["--db", db, "groups", "reset-offsets", "live", "--topic", "orders", "--to-earliest"],
            ["--db", db, "groups", "reset-offsets", "live", "--topic", "orders", "--to-latest", "--execute"],
            ["--db", db, "groups", "reset-offsets", "live", "--topic", "orders", "--shift-by", "1", "--execute"],
            ["--db", db, "groups", "delete", "live"])
        host = socket.gethostname()
        assert table(described.stdout)[1:] == [
            ["live", "orders", "0", "1", "3", "2", member.member_id, host, "cli-test"],
            ["live", "orders", "1", "-", "0", "-", member.member_id, host, "cli-test"]]  # nothing committed: "-"
        members = described.stdout.split("\n\n")[1].splitlines()
        assert members[0].split() == ["CONSUMER-ID", "HOST", "PID", "CLIENT-ID", "ASSIGNMENT", "TARGET",
                                      "LAST-HEARTBEAT"]
        row = members[1].split()
        assert row[:6] == [member.member_id, host, str(os.getpid()), "cli-test", "orders(0,1)", "orders(0,1)"]
        assert row[6].endswith("s") and row[7] == "ago" and float(row[6][:-1]) < 45
        assert "state=Stable" in described.stdout.splitlines()[-1] and "members=1" in described.stdout
        data = json.loads(as_json.stdout)
        assert data["state"] == "Stable" and [m["member_id"] for m in data["members"]] == [member.member_id]
        m = data["members"][0]
        assert (m["client_id"], m["host"], m["pid"], m["subscription"]) == ("cli-test", host, os.getpid(), ["orders"])
        assert m["assignment"] == m["target_assignment"] == [{"topic": "orders", "partition": 0},
                                                             {"topic": "orders", "partition": 1}]
        assert 0 <= m["heartbeat_age_ms"] < 45_000 and data["partitions"][1]["committed_offset"] is None
        for done in (dry, execute, shift):  # refused as in Kafka, even the dry run
            assert "live member" in one_line_error(done) and done.stdout == ""
        assert "live member" in one_line_error(delete)
        assert committed(db, "live") == {0: 1, 1: None}
    finally:
        stop.set()
        poller.join(timeout=TIMEOUT)
        consumer.close()  # leaves the group
    executed = run("--db", db, "groups", "reset-offsets", "live", "--topic", "orders", "--to-latest", "--execute")
    assert executed.returncode == 0 and committed(db, "live") == {0: 3, 1: 0}, executed
    deleted = run("--db", db, "groups", "delete", "live")
    assert (deleted.returncode, deleted.stdout) == (0, "Deleted consumer group live.\n")
    with sqlog.open(db) as other:
        assert other.list_groups() == []


def _seed_reset(db: str, groups: list[str]) -> None:
    """orders-0 holds offsets [2, 10) with timestamps 3000..10000 ms, orders-1 [2, 4) with 3000..4000;
    each group has committed orders-0 at 5 and orders-1 at 3."""
    with sqlog.open(db, retention_check_interval_ms=None) as log:
        log.create_topic("orders", partitions=2, retention_ms=1000)
        with log.producer() as producer:
            for partition, count in ((0, 10), (1, 4)):
                for i in range(count):
                    producer.send("orders", b"x", partition=partition, timestamp_ms=1000 * (i + 1))
        log.sweep(now_ms=3500)  # drops the records older than 2500 ms: log start 2 in both partitions
        log.alter_topic("orders", retention_ms=None)
        assert [(p.log_start_offset, p.high_watermark) for p in log.describe_topic("orders").partitions] == [
            (2, 10), (2, 4)]
        for group in groups:
            log.alter_group_offsets(group, {sqlog.TopicPartition("orders", 0): 5,
                                            sqlog.TopicPartition("orders", 1): 3})


# mode arguments -> the new offsets of (orders-0, orders-1); see _seed_reset
RESET_MODES: list[tuple[list[str], dict[int, int]]] = [
    (["--to-earliest"], {0: 2, 1: 2}),
    (["--to-latest"], {0: 10, 1: 4}),
    (["--to-offset", "7"], {0: 7, 1: 4}),  # clamped to the log end
    (["--to-offset", "0", "--partition", "0"], {0: 2}),  # clamped to the log start; one partition
    (["--shift-by", "-4"], {0: 2, 1: 2}),  # 5-4 and 3-4 clamped to the log start
    (["--shift-by", "2"], {0: 7, 1: 4}),
    (["--to-datetime", "1970-01-01T00:00:05.500Z"], {0: 5, 1: 4}),  # first ts >= 5500; none in orders-1: end
    (["--to-datetime", "1970-01-01T02:00:08+02:00"], {0: 7, 1: 4}),  # 8000 ms
    (["--to-datetime", "1970-01-01T05:30:03"], {0: 2, 1: 2}),  # naive = local time (TZ below: UTC+5:30) = 3000 ms
    (["--to-datetime", "1970-01-01"], {0: 2, 1: 2}),  # local midnight, before every record: log start
    (["--to-datetime", "2999-01-01T00:00:00"], {0: 10, 1: 4}),  # past every record: log end
]
LOCAL_TZ = {"TZ": "XXX-05:30"}  # POSIX: local time is UTC+5:30, no zoneinfo needed


def test_groups_reset_offsets_dry_run_changes_nothing(db: str) -> None:
    _seed_reset(db, ["g"])
    argvs = [["--db", db, "groups", "reset-offsets", "g", "--topic", "orders", *mode] for mode, _ in RESET_MODES]
    explicit = ["--db", db, "groups", "reset-offsets", "g", "--topic", "orders", "--to-latest", "--dry-run"]
    as_json = ["--db", db, "groups", "reset-offsets", "g", "--topic", "orders", "--shift-by", "-1", "--format", "json"]
    results = run_many(*argvs, explicit, as_json, env=LOCAL_TZ)
    for done, (mode, expected) in zip(results, RESET_MODES):
        assert done.returncode == 0, done
        assert "Dry run" in done.stderr and "--execute" in done.stderr, done.stderr
        assert table(done.stdout) == [["GROUP", "TOPIC", "PARTITION", "NEW-OFFSET"]] + [
            ["g", "orders", str(p), str(o)] for p, o in expected.items()], (mode, done.stdout)
    assert table(results[-2].stdout)[1:] == [["g", "orders", "0", "10"], ["g", "orders", "1", "4"]]
    assert json.loads(results[-1].stdout) == {"group": "g", "executed": False, "offsets": [
        {"topic": "orders", "partition": 0, "new_offset": 4}, {"topic": "orders", "partition": 1, "new_offset": 2}]}
    assert committed(db, "g") == {0: 5, 1: 3}  # nothing changed


def test_groups_reset_offsets_execute_applies_each_mode(db: str) -> None:
    names = [f"e{i}" for i in range(len(RESET_MODES))]
    _seed_reset(db, names)
    results = run_many(*[["--db", db, "groups", "reset-offsets", name, "--topic", "orders", *mode, "--execute"]
                         for name, (mode, _) in zip(names, RESET_MODES)], env=LOCAL_TZ)
    with sqlog.open(db) as log:
        for name, done, (mode, expected) in zip(names, results, RESET_MODES):
            assert done.returncode == 0, done
            # Only the notes of offsets clamped to the log (--to-offset, --shift-by past either end).
            assert all(line.startswith("Note: ") and "clamped to" in line for line in done.stderr.splitlines()), done
            assert table(done.stdout)[1:] == [[name, "orders", str(p), str(o)] for p, o in expected.items()]
            got = {p.partition: p.committed_offset for p in log.describe_group(name).partitions}
            assert got == {0: 5, 1: 3, **expected}, (mode, got)


def test_groups_reset_offsets_and_delete_errors(db: str) -> None:
    _seed_reset(db, ["g"])
    with sqlog.open(db) as log:
        log.alter_group_offsets("half", {sqlog.TopicPartition("orders", 0): 4})
    reset = ["--db", db, "groups", "reset-offsets"]
    errors = [
        ([*reset, "half", "--topic", "orders", "--partition", "1", "--shift-by", "1"],
         "no committed offset on orders-1"),
        ([*reset, "fresh", "--topic", "orders", "--shift-by", "1"], "no committed offset on topic 'orders'"),
        ([*reset, "g", "--topic", "nope", "--to-earliest"], "unknown topic 'nope'"),
        ([*reset, "g", "--topic", "orders", "--partition", "5", "--to-earliest"], "partitions 0..1, not 5"),
        (["--db", db, "groups", "delete", "nope"], "unknown group 'nope'"),
        (["--db", db, "groups", "delete", "nope", "--type", "consumer"], "unknown consumer group 'nope'"),
        (["--db", db, "groups", "describe", ""], "group_id"),
    ]
    usage = [
        [*reset, "g", "--topic", "orders"],  # no mode
        [*reset, "g", "--topic", "orders", "--to-earliest", "--to-latest"],
        [*reset, "g", "--topic", "orders", "--to-earliest", "--dry-run", "--execute"],
        [*reset, "g", "--topic", "orders", "--to-datetime", "yesterday"],
        [*reset, "g", "--topic", "orders", "--to-offset", "-1"],
    ]
    fresh = [*reset, "fresh", "--topic", "orders", "--partition", "1", "--to-earliest", "--execute"]
    # Without --partition, --shift-by moves only what the group has committed on the topic.
    shift_half = [*reset, "half", "--topic", "orders", "--shift-by", "-1", "--execute"]
    results = run_many(*[argv for argv, _ in errors], *usage, shift_half)
    assert run(*fresh).returncode == 0  # after the error for 'fresh' above: as in Kafka, a reset creates a group
    for done, (argv, text) in zip(results, errors):
        assert text in one_line_error(done), (argv, done.stderr)
    for done in results[len(errors):-1]:
        one_line_error(done, 2)
        assert done.stdout == "", done
    assert "ISO 8601" in results[len(errors) + 3].stderr
    assert results[-1].returncode == 0 and table(results[-1].stdout)[1:] == [["half", "orders", "0", "3"]]
    assert committed(db, "g") == {0: 5, 1: 3} and committed(db, "half") == {0: 3}
    assert committed(db, "fresh") == {1: 2}
    deleted = run("--db", db, "groups", "delete", "g")
    assert (deleted.returncode, deleted.stdout) == (0, "Deleted consumer group g.\n")
    listed = run("--db", db, "groups", "list")
    assert table(listed.stdout) == [["GROUP", "TYPE"], ["fresh", "consumer"], ["half", "consumer"]]


# -- share groups (queue mode) under `groups` ----------------------------------------------------
def _seed_share(db: str) -> None:
    """jobs-0 holds offsets [0, 5). Share group jobs-g took 0..2 and released 0, rejected 1 (archived),
    accepted 2: start 0, in flight 3 (1 available, 1 archived). "both" is a share group (it accepted
    offset 0) and a consumer group (committed offset 4)."""
    seed(db, "jobs", records=None)
    with sqlog.open(db, retention_check_interval_ms=None) as log:
        with log.producer() as producer:
            for i in range(5):
                producer.send("jobs", b"job-%d" % i, partition=0)
        jobs = log.share_consumer("jobs-g", max_poll_records=3)
        jobs.subscribe(["jobs"])
        records = jobs.poll(timeout_ms=5000)
        assert [r.offset for r in records] == [0, 1, 2]
        for record, ack in zip(records, ("release", "reject", "accept")):
            jobs.acknowledge(record, type=ack)
        jobs.commit()
        jobs.close()
        both = log.share_consumer("both", max_poll_records=1)
        both.subscribe(["jobs"])
        (record,) = both.poll(timeout_ms=5000)
        both.acknowledge(record)
        both.commit()
        both.close()
        log.alter_group_offsets("both", {sqlog.TopicPartition("jobs", 0): 4})
        log.alter_group_offsets("billing", {sqlog.TopicPartition("jobs", 0): 5})


SHARE_HEADER = ("GROUP TOPIC PARTITION START-OFFSET LOG-END-OFFSET IN-FLIGHT ACQUIRED AVAILABLE ACKNOWLEDGED ARCHIVED "
                "DEAD-LETTERED LAG").split()


def test_groups_list_describe_and_delete_share_groups(db: str) -> None:
    _seed_share(db)
    g = ["--db", db, "groups"]
    listed, listed_json, share, share_json, both, both_json, both_share, wrong_type, reset, reset_both = run_many(
        [*g, "list"], [*g, "list", "--format", "json"],
        [*g, "describe", "jobs-g"], [*g, "describe", "jobs-g", "--format", "json"],
        [*g, "describe", "both"], [*g, "describe", "both", "--format", "json"],
        [*g, "describe", "both", "--type", "share", "--format", "json"],
        [*g, "describe", "jobs-g", "--type", "consumer"],
        [*g, "reset-offsets", "jobs-g", "--topic", "jobs", "--to-latest", "--execute"],
        [*g, "reset-offsets", "both", "--topic", "jobs", "--to-earliest"])
    assert listed.returncode == 0 and listed.stderr == "", listed
    assert table(listed.stdout) == [["GROUP", "TYPE"], ["billing", "consumer"], ["both", "consumer"],
                                    ["both", "share"], ["jobs-g", "share"]]
    assert json.loads(listed_json.stdout) == [
        {"group": "billing", "type": "consumer", "state": "Empty", "generation": -1, "members": 0, "lag": 0},
        {"group": "both", "type": "consumer", "state": "Empty", "generation": -1, "members": 0, "lag": 1},
        {"group": "both", "type": "share", "state": "Empty", "generation": None, "members": None, "lag": 4},
        {"group": "jobs-g", "type": "share", "state": "Empty", "generation": None, "members": None, "lag": 3}]

    assert share.returncode == 0 and share.stderr == "", share
    assert table(share.stdout) == [SHARE_HEADER, ["jobs-g", "jobs", "0", "0", "5", "3", "0", "1", "1", "1", "1", "3"]]
    assert share.stdout.splitlines()[-1] == "Share group jobs-g: state=Empty  lag=3"
    assert json.loads(share_json.stdout) == {"group": "jobs-g", "type": "share", "state": "Empty", "lag": 3,
                                             "partitions": [{
                                                 "topic": "jobs", "partition": 0, "start_offset": 0,
                                                 "log_end_offset": 5, "in_flight": 3, "acquired": 0, "available": 1,
                                                 "acknowledged": 1, "archived": 1, "dead_lettered": 1, "lag": 3}]}
    # One id, both kinds: the consumer group's section, then the share group's.
    assert both.returncode == 0, both
    consumer_part, share_part = both.stdout.split("\n\nGROUP ")
    assert table(consumer_part)[1:] == [["both", "jobs", "0", "4", "5", "1", "-", "-", "-"]]
    assert consumer_part.splitlines()[-1].startswith("Group both: state=Empty")
    assert table("GROUP " + share_part) == [SHARE_HEADER, ["both", "jobs", "0", "1", "5", "0", "0", "0", "0", "0", "0", "4"]]
    assert share_part.splitlines()[-1] == "Share group both: state=Empty  lag=4"
    assert [(d["type"], d["lag"]) for d in json.loads(both_json.stdout)] == [("consumer", 1), ("share", 4)]
    assert json.loads(both_share.stdout)["type"] == "share"
    assert "unknown consumer group 'jobs-g'" in one_line_error(wrong_type)

    # reset-offsets is for consumer groups: a share group's id is refused (no consumer group appears).
    assert "'jobs-g' is a share group, not a consumer group" in one_line_error(reset) and reset.stdout == ""
    assert reset_both.returncode == 0 and table(reset_both.stdout)[1:] == [["both", "jobs", "0", "0"]], reset_both

    only_consumer, deleted_share = run_many([*g, "delete", "both", "--type", "consumer"], [*g, "delete", "jobs-g"])
    assert (only_consumer.returncode, only_consumer.stdout) == (0, "Deleted consumer group both.\n")
    assert (deleted_share.returncode, deleted_share.stdout) == (0, "Deleted share group jobs-g.\n"), deleted_share
    with sqlog.open(db) as log:
        assert log.list_groups() == ["billing"] and log.list_share_groups() == ["both"]
        log.alter_group_offsets("both", {sqlog.TopicPartition("jobs", 0): 1})
    deleted_both = run(*g, "delete", "both")
    assert (deleted_both.returncode, deleted_both.stdout) == (
        0, "Deleted consumer group both.\nDeleted share group both.\n"), deleted_both
    with sqlog.open(db) as log:
        assert log.list_groups() == ["billing"] and log.list_share_groups() == []


def test_groups_share_group_with_a_held_record_is_stable_and_not_deleted(db: str) -> None:
    seed(db, "jobs", records=[b"a", b"b", b"c"])
    log = sqlog.open(db, retention_check_interval_ms=None)
    log.alter_group_offsets("held", {sqlog.TopicPartition("jobs", 0): 3})  # a consumer group of that id too
    worker = log.share_consumer("held", record_lock_duration_ms=120_000, max_poll_records=2)
    try:
        worker.subscribe(["jobs"])
        assert len(worker.poll(timeout_ms=5000)) == 2  # acquired, not acknowledged: locked for 2 min
        described, delete_share = run_many(["--db", db, "groups", "describe", "held", "--type", "share"],
                                           ["--db", db, "groups", "delete", "held", "--type", "share"])
        assert table(described.stdout)[1:] == [["held", "jobs", "0", "0", "3", "2", "2", "0", "0", "0", "0", "3"]], described
        assert "state=Stable" in described.stdout.splitlines()[-1]
        assert "locked by live consumers" in one_line_error(delete_share) and delete_share.stdout == ""
        # Both kinds: the consumer group goes, the share group's refusal is the one error line.
        delete_both = run("--db", db, "groups", "delete", "held")
        assert delete_both.stdout == "Deleted consumer group held.\n"
        assert "share group 'held' has records locked" in one_line_error(delete_both)
        assert log.list_groups() == [] and log.list_share_groups() == ["held"]
    finally:
        worker.close()  # releases its records
        log.close()
    deleted = run("--db", db, "groups", "delete", "held")
    assert (deleted.returncode, deleted.stdout) == (0, "Deleted share group held.\n"), deleted


# -- upkeep --------------------------------------------------------------------------------------
def test_sweep_stats_and_check(db: str) -> None:
    seed(db, retention_ms=60_000)
    seed(db, "kept")
    with sqlog.open(db) as log, log.producer() as producer:
        for i in range(10):
            producer.send("orders", b"x" * 100, timestamp_ms=1000 + i)  # long expired
        producer.send("orders", b"fresh")
        producer.send("kept", b"forever", timestamp_ms=1)

    swept, stats, stats_json, checked = run_many(["--db", db, "sweep"], ["--db", db, "stats"],
                                                 ["--db", db, "stats", "--format", "json"], ["--db", db, "check"])
    lines = swept.stdout.splitlines()
    assert swept.returncode == 0 and lines[0].split() == ["TOPIC", "PARTITION", "RECORDS", "BYTES"]
    assert lines[1].split() == ["orders", "0", "10", "1000"]
    assert "pages freed" in lines[-1]
    again = json.loads(run("--db", db, "sweep", "--format", "json").stdout)
    assert again["deleted"] == [] and again["records"] == 0 and again["pages_freed"] >= 0

    labels = [line.split(":")[0] for line in stats.stdout.splitlines()]
    assert {"file", "file size", "WAL size", "free pages", "topics", "records"} <= set(labels)
    data = json.loads(stats_json.stdout)
    assert data["topics"] == 2 and data["partitions"] == 2
    assert data["records"] in (2, 12)  # the sweep ran concurrently
    assert data["db_bytes"] > 0 and data["wal_bytes"] >= 0 and data["freelist_count"] >= 0
    assert data["file"] == os.path.abspath(db)
    assert (checked.returncode, checked.stdout) == (0, "ok\n")

    conn = apsw.Connection(db)  # corrupt it through apsw (never the stdlib sqlite3 in this process)
    (topic_id,) = conn.execute("SELECT topic_id FROM topics WHERE name = 'orders'").fetchone()
    with sqlog.open(db) as log:
        assert log.describe_topic("orders").partitions[0].records == 1
    conn.execute(f"DELETE FROM p{int(topic_id)}_0")
    conn.close()
    broken = run("--db", db, "check")
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    assert broken.stdout.strip() and all("orders-0" in line for line in broken.stdout.splitlines()), broken.stdout


# -- the first hour: kcat-like output, describe every topic, clamped resets say so ------------
def test_consume_prints_partition_offset_headers_and_templates(db: str) -> None:
    with sqlog.open(db) as log:
        log.create_topic("orders", partitions=2)
        with log.producer() as producer:
            producer.send("orders", b"v0", key=b"k0", headers=[("source", b"web"), ("n", b"1")], partition=1,
                          timestamp_ms=1000).get(timeout=5)
            producer.send("orders", b"v1", partition=1, timestamp_ms=2000).get(timeout=5)
    base = ["--db", db, "consume", "orders", "--from-beginning", "--timeout-ms", "0"]
    text, template, bad_code, bad_format = run_many(
        [*base, "--print-partition", "--print-offset", "--print-headers", "--print-key", "--print-timestamp"],
        [*base, "--format", r"%t/%p@%o [%k] %s (%S) {%h} %T%%\n"],
        [*base, "--format", "%x"], [*base, "--format", "yaml"])
    assert text.returncode == 0, text
    assert text.stdout.splitlines() == [
        "CreateTime:1000\tPartition:1\tOffset:0\tsource:web,n:1\tk0\tv0",
        "CreateTime:2000\tPartition:1\tOffset:1\tNO_HEADERS\tnull\tv1",
    ]
    assert template.returncode == 0, template
    assert template.stdout == "orders/1@0 [k0] v0 (2) {source=web,n=1} 1000%\norders/1@1 [] v1 (2) {} 2000%\n"
    assert "unknown %x" in one_line_error(bad_code)
    assert bad_format.returncode == 2 and "yaml" in bad_format.stderr


def test_topics_describe_without_a_name_describes_every_topic(db: str) -> None:
    seed(db, "orders", partitions=2, records=[b"a"])
    seed(db, "audit")
    text, as_json, one = run_many(["--db", db, "topics", "describe"],
                                  ["--db", db, "topics", "describe", "--format", "json"],
                                  ["--db", db, "topics", "describe", "orders", "--format", "json"])
    assert text.returncode == 0, text
    assert [line.split()[1] for line in text.stdout.splitlines() if line.startswith("Topic:")] == ["audit", "orders"]
    assert [t["name"] for t in json.loads(as_json.stdout)] == ["audit", "orders"]
    assert json.loads(one.stdout)["name"] == "orders"


def test_reset_offsets_to_offset_says_when_it_clamps(db: str) -> None:
    seed(db, "orders", records=[b"a", b"b", b"c"])
    g = ["--db", db, "groups", "reset-offsets", "billing", "--topic", "orders"]
    clamped, inside = run_many([*g, "--to-offset", "100", "--execute"], [*g, "--to-offset", "1"])
    assert clamped.returncode == 0, clamped
    assert table(clamped.stdout)[1:] == [["billing", "orders", "0", "3"]]
    assert "orders-0: offset 100 is outside its log [0, 3]; clamped to 3" in clamped.stderr
    assert "clamped" not in inside.stderr
