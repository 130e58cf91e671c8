"""A share-group worker run as a real OS process by tests/test_share_processes.py.

    python tests/procs/share_worker.py '{"path": ..., "out": ..., "mode": "drain", ...}'

Writes one JSON line per event to ``out`` (flushed at once, so a SIGKILL loses nothing written):
``{"e": "start", "member": ...}``, ``{"e": "got", "p": partition, "o": offset, "dc": count}``,
``{"e": "done", "p", "o", "dc", "ack"}`` once a commit applied an acknowledgement,
``{"e": "failed", ...}`` for refused ones, ``{"e": "ready"}`` (mode "hold") and ``{"e": "exit"}``.

Modes:
- ``drain``: poll, accept every record (release those whose value is b"poison"), commit after
  each poll; exit once the group has nothing left to do (lag 0) and nothing came for a while.
- ``hold``: poll up to ``hold`` records, report them, then sleep until killed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import sqlog
import sqlog.liveness


def main(cfg: dict[str, Any]) -> None:
    out = open(cfg["out"], "a", buffering=1)

    def emit(**event: Any) -> None:
        event["t"] = time.time()
        out.write(json.dumps(event) + "\n")
        out.flush()

    if cfg.get("other_pid_namespace"):  # pose as a process in another pid namespace: only lock deadlines judge it
        sqlog.liveness.PID_NAMESPACE = f"elsewhere-{os.getpid()}"
    log = sqlog.open(cfg["path"], retention_check_interval_ms=None)
    consumer = log.share_consumer(
        cfg.get("group", "workers"),
        record_lock_duration_ms=cfg.get("lock_ms", 30_000),
        delivery_count_limit=cfg.get("limit", 5),
        dead_letter_topic=cfg.get("dlq"),
        max_poll_records=cfg.get("batch", 10),
        partition_max_record_locks=cfg.get("max_locks", 2_000),
    )
    consumer.subscribe([cfg.get("topic", "jobs")])
    emit(e="start", member=consumer.member_id, pid=os.getpid())
    if cfg["mode"] == "hold":
        held: list[sqlog.ShareRecord] = []
        while len(held) < cfg["hold"]:
            held.extend(consumer.poll(timeout_ms=1000, max_records=cfg["hold"] - len(held)))
        for r in held:
            emit(e="got", p=r.partition, o=r.offset, dc=r.delivery_count)
        emit(e="ready")
        while True:
            time.sleep(60)
    idle_s = cfg.get("idle_ms", 500) / 1000
    work_s = cfg.get("work_ms", 0) / 1000
    last = time.monotonic()
    while True:
        records = consumer.poll(timeout_ms=100)
        if not records:
            if time.monotonic() - last > idle_s and log.describe_share_group(consumer.group_id).lag == 0:
                break
            continue
        last = time.monotonic()
        acks = []
        for r in records:
            emit(e="got", p=r.partition, o=r.offset, dc=r.delivery_count)
            if work_s:
                time.sleep(work_s)
            ack = "release" if r.value == b"poison" else "accept"
            consumer.acknowledge(r, ack)
            acks.append((r, ack))
        try:
            consumer.commit()
            refused: set[tuple[int, int]] = set()
        except sqlog.InvalidRecordStateError as exc:
            refused = {(p, o) for _, p, o in exc.records}
        for r, ack in acks:
            kind = "failed" if (r.partition, r.offset) in refused else "done"
            emit(e=kind, p=r.partition, o=r.offset, dc=r.delivery_count, ack=ack)
    consumer.close()
    log.close()
    emit(e="exit")


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
