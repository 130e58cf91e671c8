"""`sqlog mirror` beside plain confluent-kafka, against librdkafka's mock cluster (in process).

push: ``sqlog.mirror.push(once=True)`` of N 100-byte records stored in a sqlog file, beside a
confluent-kafka producer sending the same records (no key, the same value, no headers, the same
timestamp, as push sends them) straight from memory (same settings: acks=all, idempotent,
linger.ms=5) to the same cluster. pull: ``sqlog.mirror.pull(once=True)`` of those
records into a fresh file (each fetched batch appended with its offsets in one SQLite
transaction), beside a plain confluent-kafka consumer reading them. Each round has its own mock
cluster (it keeps records in memory) and fresh files; sides alternate first within a round.
Targets: push >= 0.5x, pull >= 0.5x. Run alone: ``python benchmarks/bench_mirror.py [records] [rounds]``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from typing import Any

import sqlog

VALUE = b"x" * 100
PARTITIONS = 32  # the mock keeps about 5 MB per partition (it drops the oldest past that): 1M records fit in 32
FULL_RECORDS = 1_000_000
QUICK_RECORDS = 20_000


def _produce_from_memory(bootstrap: str, topic: str, n: int, timestamp_ms: int) -> float:
    """Sends what push sends: no key, the 100-byte value, no headers, the stored timestamp."""
    import confluent_kafka as ck

    p = ck.Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
    step = max(1, n // PARTITIONS)  # the file's order: partition after partition
    t0 = time.perf_counter()
    for i in range(n):
        while True:
            try:
                p.produce(topic, VALUE, partition=(i // step) % PARTITIONS, timestamp=timestamp_ms)
                break
            except BufferError:
                p.poll(0.01)
    if p.flush(300):
        raise RuntimeError("baseline produce: records left unsent")
    return n / (time.perf_counter() - t0)


def _consume(bootstrap: str, topic: str, n: int) -> float:
    import confluent_kafka as ck

    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": "bench", "enable.auto.commit": False})
    c.assign([ck.TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    got = 0
    t0 = time.perf_counter()
    deadline = time.monotonic() + 300
    while got < n and time.monotonic() < deadline:
        got += sum(1 for m in c.consume(min(10_000, n - got), 1.0) if not m.error())
    rate = n / (time.perf_counter() - t0)
    c.close()
    if got != n:
        raise RuntimeError(f"baseline consume: got {got} of {n}")
    return rate


def one_round(root: str, n: int, mirror_first: bool) -> dict[str, float]:
    from sqlog.mirror import MockCluster, pull, push

    for name in os.listdir(root):
        os.remove(os.path.join(root, name))
    src, dst = os.path.join(root, "edge.db"), os.path.join(root, "copy.db")
    stamp = int(time.time() * 1000)  # every record's timestamp, in the file and in the baseline
    with sqlog.open(src) as log:
        log.create_topic("pushed", partitions=PARTITIONS)
        with log.producer() as producer:
            step = max(1, n // PARTITIONS)
            for i in range(0, n, step):
                producer.send_batch("pushed", [VALUE] * min(step, n - i), partition=(i // step) % PARTITIONS,
                                    timestamp_ms=stamp)
    out: dict[str, float] = {}
    with MockCluster(1) as mc, sqlog.open(src) as log, sqlog.open(dst) as copy:
        mc.create_topic("pushed", PARTITIONS)
        mc.create_topic("memory", PARTITIONS)
        bs = mc.bootstrap_servers

        def mirror_push() -> None:
            t0 = time.perf_counter()
            progress = push(log, bs, "pushed", once=True).join()
            out["push"] = n / (time.perf_counter() - t0)
            if progress.records != n:
                raise RuntimeError(f"push: {progress.records} of {n}")

        def baseline_produce() -> None:
            out["produce"] = _produce_from_memory(bs, "memory", n, stamp)

        def mirror_pull() -> None:
            t0 = time.perf_counter()
            progress = pull(copy, bs, "pushed", group="bench", once=True).join()
            out["pull"] = n / (time.perf_counter() - t0)
            if progress.records != n:
                raise RuntimeError(f"pull: {progress.records} of {n}")

        def baseline_consume() -> None:
            out["consume"] = _consume(bs, "pushed", n)

        for fn in ((mirror_push, baseline_produce) if mirror_first else (baseline_produce, mirror_push)):
            fn()
        for fn in ((mirror_pull, baseline_consume) if mirror_first else (baseline_consume, mirror_pull)):
            fn()
    return out


def measure(root: str, n: int, rounds: int) -> dict[str, Any]:
    """Per-round rates and ratios; medians of each and of the per-round ratios."""
    per: list[dict[str, float]] = []
    for r in range(rounds):
        per.append(one_round(root, n, mirror_first=r % 2 == 0))
    med = {k: statistics.median(p[k] for p in per) for k in ("push", "produce", "pull", "consume")}
    med["push_ratio"] = statistics.median(p["push"] / p["produce"] for p in per)
    med["pull_ratio"] = statistics.median(p["pull"] / p["consume"] for p in per)
    return {"records": n, "rounds": rounds, "per_round": per, **med, "loadavg": os.getloadavg()}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else FULL_RECORDS
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with tempfile.TemporaryDirectory(prefix="bench-mirror-") as root:
        res = measure(root, n, rounds)
    print(f"{n:,} records of 100 B, {rounds} rounds, load {res['loadavg'][0]:.2f}")
    print(f"push {res['push']:,.0f}/s  vs confluent-kafka from memory {res['produce']:,.0f}/s  "
          f"ratio {res['push_ratio']:.2f} (target >= 0.5)")
    print(f"pull {res['pull']:,.0f}/s  vs plain confluent-kafka consumer {res['consume']:,.0f}/s  "
          f"ratio {res['pull_ratio']:.2f} (target >= 0.5)")
    for i, p in enumerate(res["per_round"]):
        print(f"  round {i}: push {p['push'] / p['produce']:.2f}  pull {p['pull'] / p['consume']:.2f}")


if __name__ == "__main__":
    main()
