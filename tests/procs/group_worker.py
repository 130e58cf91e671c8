"""A consumer-group member run as its own OS process by the group tests (not a test module).

    python tests/procs/group_worker.py '<json config>'

It subscribes, processes (records) every record, commits after each batch and in on_revoked,
and appends one JSON line per event to its audit file, with wall-clock times and the
ownership generation, so the test can check that no two members ever owned (or processed) a
partition at the same time. SIGTERM stops it cleanly: close() hands its partitions over.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository

import sqlog  # noqa: E402
import sqlog.liveness  # noqa: E402


def main(cfg: dict[str, Any]) -> None:
    if cfg.get("other_pid_namespace"):
        # Pose as a member in another pid namespace (a container sharing the volume): the others
        # cannot judge its pid, so only the session timeout can expire it.
        sqlog.liveness.PID_NAMESPACE = f"elsewhere-{os.getpid()}"
    audit = open(cfg["audit"], "a", buffering=1)

    def write(kind: str, **fields: Any) -> None:
        audit.write(json.dumps({"t": time.time(), "kind": kind, "pid": os.getpid(), **fields}) + "\n")

    stop = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    log = sqlog.open(cfg["db"])
    consumer = log.consumer(
        group_id=cfg["group"], client_id=cfg["name"], auto_offset_reset="earliest", enable_auto_commit=False,
        session_timeout_ms=cfg.get("session_timeout_ms", 1500), heartbeat_interval_ms=cfg.get("heartbeat_ms", 200),
        max_poll_interval_ms=cfg.get("max_poll_ms", 30_000),
        partition_assignment_strategy=cfg.get("strategy", "range"), value_deserializer=sqlog.STRING,
    )

    def committed_positions() -> dict[str, int]:
        return {str(tp.partition): consumer.position(tp) for tp in consumer.assignment()}

    class Listener(sqlog.ConsumerRebalanceListener):
        def on_assigned(self, partitions: set[sqlog.TopicPartition]) -> None:
            write("assigned", gen=consumer.group_metadata().generation_id,
                  member=consumer.group_metadata().member_id, parts=sorted(tp.partition for tp in partitions))

        def on_revoked(self, partitions: set[sqlog.TopicPartition]) -> None:
            consumer.commit()  # still the owner: this is where a member hands over its progress
            write("commit", offsets=committed_positions())
            write("revoked", parts=sorted(tp.partition for tp in partitions))

        def on_lost(self, partitions: set[sqlog.TopicPartition]) -> None:
            write("lost", parts=sorted(tp.partition for tp in partitions))

    consumer.subscribe([cfg["topic"]], listener=Listener())
    write("started", name=cfg["name"])
    delay = cfg.get("process_delay_ms", 0) / 1000
    stall_after = cfg.get("stall_after")
    processed = 0
    while not stop:
        records = consumer.poll(timeout_ms=50, max_records=cfg.get("max_records", 20))
        gen = consumer.group_metadata().generation_id
        for r in records:
            write("proc", part=r.partition, offset=r.offset, value=r.value, gen=gen)
            processed += 1
            if delay:
                time.sleep(delay)
        if not records:
            continue
        if stall_after is not None and processed >= stall_after:
            stall_after = None
            write("stall", seconds=cfg["stall_s"])
            time.sleep(cfg["stall_s"])  # a slow job: no poll() for longer than max_poll_interval_ms
            tp = sqlog.TopicPartition(cfg["topic"], records[-1].partition)
            try:
                consumer.commit({tp: sqlog.OffsetAndMetadata(records[-1].offset + 1, "zombie")})
                write("zombie_commit_applied")
            except sqlog.CommitFailedError as exc:
                write("commit_failed", error=str(exc))
            write("assignment_after_stall", parts=sorted(p.partition for p in consumer.assignment()))
            continue
        try:
            consumer.commit()
            write("commit", offsets=committed_positions())
        except sqlog.CommitFailedError as exc:
            write("commit_failed", error=str(exc))
    write("closing")
    consumer.close()
    write("closed")
    time.sleep(cfg.get("linger_after_close_s", 0))  # stay alive: the handover must not rely on our death
    log.close()
    write("exit")


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
