"""`sqlog serve` beside sqlog's native API: confluent-kafka producing 100-byte records to the
server and consuming them back, and native ``send()``/``poll()`` doing the same, in interleaved
rounds on fresh files. Run alone: ``python benchmarks/bench_server.py [records] [rounds]``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import sqlog

VALUE = b"x" * 100


def _serve(path: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "sqlog.cli", "--db", path, "serve", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"sqlog serve did not start: {line!r}")
    return proc, line.split()[-1]


def protocol_round(path: str, n: int) -> tuple[float, float]:
    """(produce rec/s, consume rec/s) through confluent-kafka and `sqlog serve`."""
    import confluent_kafka as ck

    with sqlog.open(path) as log:
        log.create_topic("bench")
    proc, bootstrap = _serve(path)
    try:
        p = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all",
                         "batch.num.messages": 10000, "queue.buffering.max.messages": 1_000_000})
        t0 = time.perf_counter()
        for _ in range(n):
            p.produce("bench", VALUE, partition=0)
        if p.flush(120):
            raise RuntimeError("protocol produce: records left unsent")
        produce = n / (time.perf_counter() - t0)
        del p  # no reconnect attempts once the server stops
        c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": "bench", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "fetch.max.bytes": 8 << 20,
                         "max.partition.fetch.bytes": 8 << 20})
        c.assign([ck.TopicPartition("bench", 0, 0)])
        got = 0
        t0 = time.perf_counter()
        deadline = time.monotonic() + 120
        while got < n and time.monotonic() < deadline:
            got += len(c.consume(10000, 1.0))
        consume = n / (time.perf_counter() - t0)
        c.close()
        if got != n:
            raise RuntimeError(f"protocol consume: got {got} of {n}")
        return produce, consume
    finally:
        proc.terminate()
        proc.wait(30)


def native_round(path: str, n: int) -> tuple[float, float]:
    """(send rec/s, poll rec/s) through sqlog's own producer and consumer."""
    with sqlog.open(path) as log:
        log.create_topic("bench")
        t0 = time.perf_counter()
        with log.producer() as producer:
            for _ in range(n):
                producer.send("bench", VALUE, partition=0)
            producer.flush()
        produce = n / (time.perf_counter() - t0)
        c = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=10000)
        c.assign([sqlog.TopicPartition("bench", 0)])
        got = 0
        t0 = time.perf_counter()
        while got < n:
            got += len(c.poll(timeout_ms=1000))
        consume = n / (time.perf_counter() - t0)
        c.close()
        return produce, consume


def measure(root: str, n: int, rounds: int) -> dict[str, Any]:
    """Median rates and per-round ratios of protocol over native."""
    out: dict[str, list[float]] = {k: [] for k in ("proto_produce", "proto_consume", "native_send", "native_poll")}
    for r in range(rounds):
        a = os.path.join(root, f"proto-{r}.db")
        b = os.path.join(root, f"native-{r}.db")
        pp, pc = protocol_round(a, n)
        ns, np_ = native_round(b, n)
        out["proto_produce"].append(pp)
        out["proto_consume"].append(pc)
        out["native_send"].append(ns)
        out["native_poll"].append(np_)
    med = {k: statistics.median(v) for k, v in out.items()}
    med["produce_ratio"] = statistics.median(p / s for p, s in zip(out["proto_produce"], out["native_send"]))
    med["consume_ratio"] = statistics.median(p / s for p, s in zip(out["proto_consume"], out["native_poll"]))
    return {"records": n, "rounds": rounds, **med}


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with tempfile.TemporaryDirectory() as root:
        res = measure(root, n, rounds)
    print(f"{n} records of 100 B, median of {rounds} rounds")
    print(f"produce: confluent-kafka -> sqlog serve {res['proto_produce']:>10,.0f} rec/s"
          f"   native send() {res['native_send']:>10,.0f} rec/s   ratio {res['produce_ratio']:.2f} (target >= 0.4)")
    print(f"consume: sqlog serve -> confluent-kafka {res['proto_consume']:>10,.0f} rec/s"
          f"   native poll() {res['native_poll']:>10,.0f} rec/s   ratio {res['consume_ratio']:.2f} (target >= 0.4)")
