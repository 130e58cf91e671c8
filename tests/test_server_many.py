"""`sqlog serve` with 100 client connections at once (confluent-kafka, real sockets): none starved.

49 producers each send one record at a time and wait for its ack, one bulk producer pushes as fast
as librdkafka can batch, and 50 consumers each read one partition, all for the same 2 s. Every
light producer must get about as many acks as the others (none starved by the bulk one or by the
event loop's order), every ack must come back quickly, and every consumer must catch up.
"""

from __future__ import annotations

import statistics
import threading
import time

import pytest

pytest.importorskip("cramjam")
ck = pytest.importorskip("confluent_kafka")

import sqlog  # noqa: E402

from server_helpers import served  # noqa: E402

CLIENTS = 100
SECONDS = 2.0


def test_a_hundred_connections_at_once_none_starved(log_path: str) -> None:
    half = CLIENTS // 2
    with sqlog.open(log_path) as log:
        log.create_topic("many", partitions=half)
    sent: dict[int, int] = {}
    got: dict[int, int] = {}
    latencies: list[float] = []
    errors: list[BaseException] = []
    start = threading.Barrier(CLIENTS + 1, timeout=60)
    stop_at = [0.0]

    with served(log_path) as s:
        def light(i: int) -> None:
            p = ck.Producer({"bootstrap.servers": s.bootstrap, "linger.ms": 0})
            p.list_topics("many", timeout=20)  # connected before the start
            start.wait()
            n = 0
            while time.monotonic() < stop_at[0]:
                t = time.monotonic()
                p.produce("many", b"%d-%d" % (i, n), partition=i)
                assert p.flush(30) == 0
                latencies.append(time.monotonic() - t)
                n += 1
            sent[i] = n

        def bulk(i: int) -> None:
            p = ck.Producer({"bootstrap.servers": s.bootstrap, "linger.ms": 5, "batch.num.messages": 10_000,
                             "queue.buffering.max.messages": 100_000})
            p.list_topics("many", timeout=20)
            start.wait()
            n = 0
            while time.monotonic() < stop_at[0]:
                try:
                    p.produce("many", b"x" * 100, partition=i)
                    n += 1
                except BufferError:  # librdkafka's queue is full: let it drain
                    p.poll(0.01)
            assert p.flush(60) == 0
            sent[i] = n

        def consumer(i: int) -> None:
            c = ck.Consumer({"bootstrap.servers": s.bootstrap, "group.id": "many", "fetch.wait.max.ms": 100,
                             "enable.auto.commit": False})
            c.assign([ck.TopicPartition("many", i, 0)])
            c.list_topics("many", timeout=20)
            start.wait()
            n = 0
            while time.monotonic() < stop_at[0] + 30 and (i not in sent or n < sent[i]):
                for m in c.consume(10_000, 0.1):
                    assert m.error() is None, m.error()
                    n += 1
            got[i] = n
            c.close()

        def guarded(fn, i: int) -> None:  # type: ignore[no-untyped-def]
            try:
                fn(i)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
                start.abort()

        threads = [threading.Thread(target=guarded, args=(bulk if i == 0 else light, i)) for i in range(half)]
        threads += [threading.Thread(target=guarded, args=(consumer, i)) for i in range(half)]
        for t in threads:
            t.start()
        stop_at[0] = time.monotonic() + 60  # until every client is connected
        start.wait()
        stop_at[0] = time.monotonic() + SECONDS
        for t in threads:
            t.join(90)
        assert s.proc.poll() is None
    assert not errors, errors
    light_acks = sorted(n for i, n in sent.items() if i)
    assert len(light_acks) == half - 1 and sent[0] > 1000
    median = statistics.median(light_acks)
    assert light_acks[0] >= max(1, 0.3 * median), light_acks  # nobody starved
    latencies.sort()
    assert latencies[-1] < 5.0, latencies[-10:]
    assert got == sent  # every consumer caught up with its partition
