"""Consumer-group benchmark: rebalance times and consume throughput with member processes.

    python benchmarks/bench_groups.py            # full run (a few minutes at most)
    python benchmarks/bench_groups.py --quick    # under ~30 s, fewer trials and records

Rebalance time, on a 6-partition topic, from the event to the moment the last partition is
claimed by its new owner (all members' own wall-clock stamps, taken in their on_assigned):
  join   a third member starts polling next to two settled ones
  leave  one of three members calls close()
  die    one of three members is SIGKILLed (the others notice the dead pid at once)
  die, timeout only   the same, with the member posing as another pid namespace, so only
                      session_timeout_ms can expire it
Throughput: records/s consumed by 1, 2 and 4 member processes of one group on a 4-partition
topic, from the first record returned to the last (members join first, paused, then go).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import signal
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sqlog  # noqa: E402
import sqlog.liveness  # noqa: E402

SESSION_MS = 2000
HEARTBEAT_MS = 200


# -- member processes ----------------------------------------------------------------------
def rebalance_member(db: str, group: str, name: str, events: Any, stop: Any, other_ns: bool) -> None:
    """Poll the group until ``stop``; report each assignment change as (name, kind, time, parts)."""
    if other_ns:
        sqlog.liveness.PID_NAMESPACE = f"elsewhere-{os.getpid()}"
    log = sqlog.open(db)
    consumer = log.consumer(group_id=group, client_id=name, session_timeout_ms=SESSION_MS,
                            heartbeat_interval_ms=HEARTBEAT_MS)

    class Listener(sqlog.ConsumerRebalanceListener):
        def on_assigned(self, ps: set[sqlog.TopicPartition]) -> None:
            events.put((name, "assigned", time.time(), sorted(tp.partition for tp in ps)))

        def on_revoked(self, ps: set[sqlog.TopicPartition]) -> None:
            events.put((name, "revoked", time.time(), sorted(tp.partition for tp in ps)))

    consumer.subscribe(["rebalance"], listener=Listener())
    events.put((name, "joining", time.time(), []))
    while not stop.is_set():
        consumer.poll(timeout_ms=50)
    events.put((name, "closing", time.time(), []))
    consumer.close()
    log.close()


def throughput_member(db: str, group: str | None, go: Any, done: Any, counter: Any, times: Any) -> None:
    """Consume until ``done``; add to ``counter`` per batch; report (first, last) record times."""
    log = sqlog.open(db)
    consumer = log.consumer(group_id=group, auto_offset_reset="earliest", enable_auto_commit=group is not None,
                            auto_commit_interval_ms=1000, session_timeout_ms=10_000, heartbeat_interval_ms=1000)

    class Hold(sqlog.ConsumerRebalanceListener):
        def on_assigned(self, ps: set[sqlog.TopicPartition]) -> None:
            if not go.is_set():
                consumer.pause(*ps)  # join first, consume after the go

    if group is None:
        consumer.assign([sqlog.TopicPartition("tput", p) for p in range(4)])
        consumer.pause(*consumer.assignment())
    else:
        consumer.subscribe(["tput"], listener=Hold())
    while not go.is_set():
        consumer.poll(timeout_ms=20)
    consumer.resume(*consumer.assignment())
    first = last = 0.0
    while not done.is_set():
        batch = consumer.poll(timeout_ms=20)
        if batch:
            now = time.time()
            first = first or now
            last = now
            with counter.get_lock():
                counter.value += len(batch)
            if consumer.paused():
                consumer.resume(*consumer.paused())
        else:
            consumer.resume(*consumer.assignment())
    times.put((first, last))
    consumer.close()
    log.close()


# -- the runs ------------------------------------------------------------------------------
def _drain(events: Any, timeout: float) -> list[tuple[str, str, float, list[int]]]:
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            out.append(events.get(timeout=0.01))
        except queue.Empty:
            pass
    return out


def _settled(log: sqlog.Log, group: str, names: set[str], partitions: int) -> bool:
    try:
        desc = log.describe_group(group)
    except sqlog.GroupIdNotFoundError:
        return False
    owned = [m.assignment for m in desc.members]
    return (desc.state == "Stable" and {m.client_id for m in desc.members} == names
            and sum(len(a) for a in owned) == partitions)


def _wait_settled(log: sqlog.Log, group: str, names: set[str], partitions: int, events: list[Any],
                  evq: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not _settled(log, group, names, partitions):
        if time.monotonic() > deadline:
            raise RuntimeError(f"group {group} did not settle on {names}")
        events.extend(_drain(evq, 0.005))
    events.extend(_drain(evq, 0.1))  # the last callbacks' reports


def rebalance_trial(ctx: Any, db: str, log: sqlog.Log, group: str, what: str) -> float:
    """Seconds from the event to the last on_assigned that completes the new assignment."""
    evq = ctx.Queue()
    stops = {n: ctx.Event() for n in ("a", "b", "c")}
    procs: dict[str, Any] = {}
    other_ns = what == "die (timeout only)"

    def start(name: str) -> None:
        procs[name] = ctx.Process(target=rebalance_member, args=(db, group, name, evq, stops[name], other_ns))
        procs[name].start()

    events: list[Any] = []
    try:
        first = ["a", "b"] if what == "join" else ["a", "b", "c"]
        for name in first:
            start(name)
        _wait_settled(log, group, set(first), 6, events, evq)
        events.clear()
        if what == "join":
            start("c")
            _wait_settled(log, group, {"a", "b", "c"}, 6, events, evq)
            t0 = next(t for n, k, t, _ in events if n == "c" and k == "joining")
        elif what == "leave":
            stops["c"].set()
            _wait_settled(log, group, {"a", "b"}, 6, events, evq)
            t0 = next(t for n, k, t, _ in events if n == "c" and k == "closing")
        else:
            t0 = time.time()
            os.kill(procs["c"].pid, signal.SIGKILL)
            procs["c"].join()
            _wait_settled(log, group, {"a", "b"}, 6, events, evq)
        return max(t for _, k, t, _ in events if k == "assigned") - t0
    finally:
        for name, proc in procs.items():
            stops[name].set()
        for proc in procs.values():
            proc.join(15)
        log.delete_group(group) if group in log.list_groups() else None


def throughput_run(ctx: Any, db: str, members: int, records: int, group: str | None) -> float:
    go, done = ctx.Event(), ctx.Event()
    counter = ctx.Value("q", 0)
    times = ctx.Queue()
    procs = [ctx.Process(target=throughput_member, args=(db, group, go, done, counter, times))
             for _ in range(members)]
    for proc in procs:
        proc.start()
    log = sqlog.open(db)
    try:
        if group is not None:
            deadline = time.monotonic() + 30
            while True:  # every member joined and owning its share
                try:
                    desc = log.describe_group(group)
                    if desc.state == "Stable" and len(desc.members) == members and all(m.assignment for m in
                                                                                      desc.members[:4]):
                        break
                except sqlog.GroupIdNotFoundError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("members did not join")
                time.sleep(0.01)
        else:
            time.sleep(0.5)
        go.set()
        deadline = time.monotonic() + 120
        while counter.value < records:
            if time.monotonic() > deadline:
                raise RuntimeError(f"consumed {counter.value} of {records}")
            time.sleep(0.005)
        done.set()
        spans = [times.get(timeout=30) for _ in procs]
    finally:
        done.set()
        go.set()
        for proc in procs:
            proc.join(30)
        log.close()
    start = min(f for f, _ in spans if f)
    end = max(last for _, last in spans)
    return counter.value / (end - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one trial each and fewer records (< ~30 s)")
    parser.add_argument("--records", type=int, default=None, help="records for the throughput runs")
    parser.add_argument("--trials", type=int, default=None, help="trials per rebalance kind")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    trials = args.trials or (1 if args.quick else 5)
    records = args.records or (40_000 if args.quick else 400_000)
    ctx = mp.get_context("spawn")
    results: dict[str, Any] = {"session_timeout_ms": SESSION_MS, "heartbeat_interval_ms": HEARTBEAT_MS,
                               "cpus": os.cpu_count(), "rebalance_ms": {}, "throughput_rps": {}}
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "bench.db")
        log = sqlog.open(db)
        log.create_topic("rebalance", partitions=6)
        print(f"rebalance on 6 partitions, 2 <-> 3 member processes (session {SESSION_MS} ms, "
              f"heartbeat {HEARTBEAT_MS} ms), {trials} trial(s) each:")
        for what in ("join", "leave", "die", "die (timeout only)"):
            times = [rebalance_trial(ctx, db, log, f"rb-{what[:4]}-{i}", what) * 1000 for i in range(trials)]
            results["rebalance_ms"][what] = {"median": statistics.median(times), "max": max(times)}
            print(f"  {what:<20} median {statistics.median(times):7.1f} ms   max {max(times):7.1f} ms")
        log.create_topic("tput", partitions=4)
        value = b"x" * 100
        with log.producer(linger_ms=50) as producer:
            for i in range(records):
                producer.send("tput", value, partition=i % 4)
        log.close()
        print(f"consume throughput, {records} records of 100 bytes on 4 partitions:")
        rps = throughput_run(ctx, db, 1, records, None)
        results["throughput_rps"]["1 process, no group (assign)"] = rps
        print(f"  {'1 process, no group (assign)':<30} {rps:12,.0f} records/s")
        for n in (1, 2, 4):
            rps = throughput_run(ctx, db, n, records, f"tput-{n}")
            label = f"{n} member process{'es' if n > 1 else ''}"
            results["throughput_rps"][label] = rps
            print(f"  {label:<30} {rps:12,.0f} records/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
