"""Child programs for the reliability suite (test_crash, test_faults, test_stress).

``python rel_worker.py ROLE JSON_ARGS``: every line of protocol goes to stdout, flushed at
once, so a parent that SIGKILLs this process knows exactly what was acknowledged before the
kill. A line is printed only *after* the call it reports has returned.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import sys
import threading
import time
from typing import Any

import sqlog

_OUT = threading.Lock()


def say(*parts: object) -> None:
    line = " ".join(str(p) for p in parts) + "\n"
    with _OUT:
        sys.stdout.write(line)
        sys.stdout.flush()


def say_many(lines: list[str]) -> None:
    if lines:
        with _OUT:
            sys.stdout.write("".join(line + "\n" for line in lines))
            sys.stdout.flush()


# -- the record values every program agrees on ----------------------------------------------


def value_for(producer_id: str, seq: int) -> bytes:
    """A deterministic value of 0..~1.5 KiB, so the parent can check every byte it reads back."""
    digest = hashlib.blake2b(f"{producer_id}/{seq}".encode(), digest_size=8).digest()
    size = digest[0] * 6 if digest[1] < 32 else digest[0] % 40
    return f"{producer_id}:{seq}:".encode() + (digest * (size // 8 + 1))[:size]


def key_for(producer_id: str, seq: int, rng: random.Random) -> bytes | None:
    return None if rng.random() < 0.5 else f"k{rng.randrange(64)}".encode()


def headers_for(seq: int) -> list[tuple[str, bytes | None]] | None:
    return [("seq", str(seq).encode()), ("none", None)] if seq % 3 == 0 else None


def parse_value(value: bytes) -> tuple[str, int]:
    producer_id, seq, _ = value.split(b":", 2)
    return producer_id.decode(), int(seq)


# -- producers killed at random moments -----------------------------------------------------


def produce(args: dict[str, Any]) -> None:
    """Send ``pid:seq`` records forever (or ``count`` of them); print ``ack PID SEQ PART OFFSET``
    once the record is acknowledged: its ``get()`` returned, or a ``flush()`` returned after it.

    mode "get": get() each record; "every:N": get() every Nth, then the (done) ones before it;
    "flush:N": send N, flush(), then report them all; "threads:T": T threads share the
    producer, each a producer id ``PID.T`` of its own get()-ing each of its records.
    """
    pid = args["pid"]
    topic = args["topic"]
    partitions = args["partitions"]
    count = args.get("count")
    rng = random.Random(args["seed"])
    open_opts = args.get("open", {})
    with sqlog.open(args["path"], **open_opts) as log:
        if args.get("create"):  # racing the other producers to create the topic in a fresh file
            try:
                log.create_topic(topic, partitions=partitions)
            except sqlog.TopicAlreadyExistsError:
                pass
        producer = log.producer(batch_size=args["batch_size"], linger_ms=args["linger_ms"])
        say("ready")
        mode = args["mode"]

        def send(pid: str, seq: int, rng: random.Random) -> sqlog.RecordFuture:
            choice = rng.random()
            partition = rng.randrange(partitions) if choice < 0.3 else None
            key = key_for(pid, seq, rng) if choice >= 0.3 else None
            return producer.send(topic, value_for(pid, seq), key=key, headers=headers_for(seq),
                                 partition=partition)

        def report(pending: list[tuple[int, sqlog.RecordFuture]]) -> None:
            lines = []
            for seq, future in pending:
                md = future.get(timeout=0)  # already durable: returns at once
                lines.append(f"ack {pid} {seq} {md.partition} {md.offset}")
            say_many(lines)

        if mode.startswith("threads:"):
            # each thread is a producer id of its own ({pid}.{t}) with its own sequence
            def run(t: int) -> None:
                tpid = f"{pid}.{t}"
                trng = random.Random(f"{args['seed']}/{t}")
                seq = 0
                while count is None or seq < count:
                    md = send(tpid, seq, trng).get(timeout=60)
                    say("ack", tpid, seq, md.partition, md.offset)
                    seq += 1

            workers = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(int(mode[8:]))]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        else:
            every = 1 if mode == "get" else int(mode.split(":")[1])
            pending: list[tuple[int, sqlog.RecordFuture]] = []
            for seq in range(count) if count is not None else itertools.count():
                future = send(pid, seq, rng)
                pending.append((seq, future))
                if len(pending) >= every:
                    if mode.startswith("flush:"):
                        producer.flush(timeout=60)
                    else:
                        future.get(timeout=60)
                    report(pending)
                    pending = []
            producer.flush(timeout=60)
            report(pending)
        if args.get("stay_open"):  # keep the log open (WAL not checkpointed by a close) until killed
            say("finished")
            time.sleep(3600)
        producer.close()
    say("done")


# -- an admin killed mid-change ------------------------------------------------------------


def admin_churn(args: dict[str, Any]) -> None:
    """Create, grow, fill, retain and delete scratch topics, grow ``topic`` and commit offsets in
    a loop (the DDL transactions SIGKILL should be able to interrupt anywhere)."""
    rng = random.Random(args["seed"])
    topic = args["topic"]
    with sqlog.open(args["path"], **args.get("open", {})) as log:
        producer = log.producer(linger_ms=0)
        consumer = log.consumer(group_id="admin", enable_auto_commit=False)
        say("ready")
        n = 0
        while True:
            n += 1
            name = f"scratch-{args['pid']}-{n}"
            log.create_topic(name, partitions=rng.randint(1, 6), retention_bytes=rng.choice([None, 500]))
            for i in range(rng.randint(0, 40)):
                producer.send(name, b"s%d" % i)
            producer.flush(timeout=60)
            if rng.random() < 0.5:
                log.alter_topic(name, partitions=rng.randint(6, 10))
            consumer.commit({sqlog.TopicPartition(name, 0): log.describe_topic(name).partitions[0].high_watermark})
            if rng.random() < 0.2:
                current = len(log.describe_topic(topic).partitions)
                if current < 6:
                    log.alter_topic(topic, partitions=current + 1)
            if rng.random() < 0.3:
                log.sweep()
            old = f"scratch-{args['pid']}-{n - 2}"
            if n > 2 and rng.random() < 0.8:
                log.delete_topic(old)
            say("admin", n)


# -- consumers killed mid-commit ------------------------------------------------------------


def commit_loop(args: dict[str, Any]) -> None:
    """Commit ever-growing offsets in a tight loop, printing ``committed N`` after each returns.

    Each commit sets every partition of the topic to the same offset in one call (one
    transaction), so a torn commit would show as partitions with different offsets. Starts
    at the group's committed offset + 1 (the previous incarnation's progress) and stops at
    ``limit`` (offsets beyond the high watermark are refused).
    """
    tps = [sqlog.TopicPartition(args["topic"], p) for p in range(args["partitions"])]
    limit = args["limit"]
    with sqlog.open(args["path"], **args.get("open", {})) as log:
        consumer = log.consumer(group_id=args["group"], enable_auto_commit=False)
        start = consumer.committed(tps[0]) or 0
        say("ready", start)
        offset = start
        while True:
            offset += 1
            if offset > limit:
                raise SystemExit(f"ran out of offsets to commit (limit {limit}); make the topic bigger")
            consumer.commit({tp: offset for tp in tps})
            say("committed", offset)


# -- a sweeper killed mid-delete ------------------------------------------------------------


def sweep(args: dict[str, Any]) -> None:
    """Apply retention as of ``now_ms`` over the whole backlog, printing ``sweeping`` first."""
    with sqlog.open(args["path"], retention_check_interval_ms=None, wal_checkpoint_interval_ms=None) as log:
        say("sweeping")
        result = log.sweep(now_ms=args["now_ms"])
        say("swept", result.records)


# -- a lock holder -------------------------------------------------------------------------


def hold_lock(args: dict[str, Any]) -> None:
    """Hold a lock on the file through apsw (not sqlog) until told to release it: the write lock
    (``locking_mode`` "normal" or "exclusive") or a read snapshot ("read")."""
    import apsw

    conn = apsw.Connection(args["path"])
    conn.set_busy_timeout(5000)
    if args.get("locking_mode") == "exclusive":
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    # "read": only a read transaction (a snapshot), as a long reader would hold
    conn.execute("BEGIN" if args.get("locking_mode") == "read" else "BEGIN EXCLUSIVE")
    conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()
    say("locked")
    line = sys.stdin.readline()
    if line.strip() != "release":
        raise SystemExit(f"expected 'release', got {line!r}")
    conn.execute("COMMIT")
    conn.close()  # releases every lock, whatever the locking mode
    say("released")


# -- stress: producers and consumers for a bounded time --------------------------------------


def stress_send_loop(producer: sqlog.Producer, topic: str, pid: str, seed: object, deadline: float,
                     emit: Any) -> int:
    """Send ``pid:seq`` records in random bursts until ``deadline``, waiting on each burst by
    flush() or by the last record's get(); ``emit`` gets the ``ack PID SEQ PART OFFSET`` lines
    of each acknowledged burst. Returns the number of records sent."""
    rng = random.Random(f"{seed}/{pid}")
    seq = 0
    while time.monotonic() < deadline:
        burst = []
        for _ in range(rng.choice((1, 1, 5, 50))):
            key = f"k{rng.randrange(16)}".encode() if rng.random() < 0.7 else None
            burst.append((seq, producer.send(topic, value_for(pid, seq), key=key)))
            seq += 1
        if rng.random() < 0.5:
            producer.flush(timeout=60)
        else:
            burst[-1][1].get(timeout=60)
        lines = []
        for s, future in burst:
            md = future.get(timeout=60)
            lines.append(f"ack {pid} {s} {md.partition} {md.offset}")
        emit(lines)
    return seq


def stress_produce(args: dict[str, Any]) -> None:
    """``threads`` threads over one producer for ``seconds``, each its own producer id ``PID.T``."""
    deadline = time.monotonic() + args["seconds"]
    with sqlog.open(args["path"], **args.get("open", {})) as log:
        producer = log.producer(batch_size=args["batch_size"], linger_ms=args["linger_ms"])
        say("ready")
        def send_loop(pid: str) -> None:
            try:
                stress_send_loop(producer, args["topic"], pid, args["seed"], deadline, say_many)
            except BaseException as exc:  # reported, so the test fails with the cause, not a count
                say("error", pid, repr(exc).replace("\n", " "))
                raise

        workers = [threading.Thread(target=send_loop, daemon=True, args=(f"{args['pid']}.{t}",))
                   for t in range(args["threads"])]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=args["seconds"] + 120)
        producer.close(timeout=60)
    say("done")


def consume_checked(log: sqlog.Log, args: dict[str, Any]) -> list[str]:
    """Read every partition from offset 0 until ``stop_file`` exists and the high watermarks
    seen after that are reached.

    Checks as it goes that each partition arrives in offset order with no gap and no repeat
    (closing and reopening the consumer now and then when ``restart_every`` is set, resuming
    from the group's committed offsets), that values are intact and that each producer's
    sequence numbers grow within a partition. Returns ``bad ...`` on the first violation, else
    ``read PARTITION COUNT DIGEST`` per partition.
    """
    topic, partitions = args["topic"], args["partitions"]
    tps = [sqlog.TopicPartition(topic, p) for p in range(partitions)]
    group = args.get("group")
    restart_every = args.get("restart_every")
    digests = {p: hashlib.sha256() for p in range(partitions)}
    expected = dict.fromkeys(range(partitions), 0)
    last_seq: dict[tuple[int, str], int] = {}
    rng = random.Random(args.get("seed", 0))

    def new_consumer() -> sqlog.Consumer:
        consumer = log.consumer(group_id=group, enable_auto_commit=False, auto_offset_reset="earliest")
        if group and rng.random() < 0.5:
            consumer.subscribe([topic])
        else:
            consumer.assign(tps)
        return consumer

    consumer = new_consumer()
    polls = 0
    final_ends: dict[int, int] | None = None
    deadline = time.monotonic() + args["max_seconds"]
    try:
        while True:
            if time.monotonic() > deadline:
                return [f"bad timeout {json.dumps(expected)} {json.dumps(final_ends)}"]
            records = consumer.poll(timeout_ms=50, max_records=rng.choice((1, 7, 100, 500)))
            for r in records:
                if r.offset != expected[r.partition]:
                    return [f"bad offset partition {r.partition} expected {expected[r.partition]} got {r.offset}"]
                expected[r.partition] += 1
                pid, seq = parse_value(r.value)
                if r.value != value_for(pid, seq):
                    return [f"bad value at {r.partition}/{r.offset}"]
                prev = last_seq.get((r.partition, pid), -1)
                if seq <= prev:
                    return [f"bad order at {r.partition}/{r.offset}: {pid} seq {seq} after {prev}"]
                last_seq[(r.partition, pid)] = seq
                digests[r.partition].update(b"%d:%s;" % (r.offset, r.value))
            polls += 1
            if group and records:
                consumer.commit()
            if restart_every and polls % restart_every == 0:
                consumer.close()
                consumer = new_consumer()
            if final_ends is None and os.path.exists(args["stop_file"]):
                final_ends = {tp.partition: end for tp, end in consumer.end_offsets(tps).items()}
            if final_ends is not None and all(expected[p] >= final_ends[p] for p in range(partitions)):
                break
    finally:
        consumer.close()
    return [f"read {p} {expected[p]} {digests[p].hexdigest()}" for p in range(partitions)]


def stress_consume(args: dict[str, Any]) -> None:
    with sqlog.open(args["path"], **args.get("open", {})) as log:
        say("ready")
        say_many(consume_checked(log, args))


ROLES = {
    "produce": produce,
    "admin_churn": admin_churn,
    "commit_loop": commit_loop,
    "sweep": sweep,
    "hold_lock": hold_lock,
    "stress_produce": stress_produce,
    "stress_consume": stress_consume,
}

if __name__ == "__main__":
    ROLES[sys.argv[1]](json.loads(sys.argv[2]))
