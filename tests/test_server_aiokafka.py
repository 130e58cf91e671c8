"""`sqlog serve` with aiokafka (asyncio's Kafka client) over real sockets: produce with each codec
and consume, and a consumer group that commits and resumes after the server restarts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("cramjam")
aiokafka = pytest.importorskip("aiokafka")

import sqlog  # noqa: E402

from helpers import fill  # noqa: E402
from server_helpers import served  # noqa: E402

pytestmark = pytest.mark.asyncio

CODECS = [None, "gzip", "snappy", "lz4", "zstd"]


async def consume(bootstrap: str, topic: str, n: int, timeout: float = 20, **cfg: Any) -> list[Any]:
    c = aiokafka.AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", **cfg)
    await c.start()
    try:
        out = await take(c, n, timeout)
    finally:
        await c.stop()
    return out


async def take(c: Any, n: int, timeout: float = 20) -> list[Any]:
    """Up to ``n`` records from ``c.getmany`` within ``timeout`` seconds."""
    out: list[Any] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(out) < n and asyncio.get_running_loop().time() < deadline:
        for records in (await c.getmany(timeout_ms=500)).values():
            out += records
    return out


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c or "none")
async def test_aiokafka_produce_and_consume(log_path: str, codec: str | None) -> None:
    with sqlog.open(log_path) as log:
        log.create_topic("t", partitions=3)
    with served(log_path) as s:
        p = aiokafka.AIOKafkaProducer(bootstrap_servers=s.bootstrap, compression_type=codec, linger_ms=5)
        await p.start()
        try:
            futures = [await p.send("t", b"v%d" % i, key=b"k%d" % (i % 5), headers=[("n", b"%d" % i)],
                                    timestamp_ms=1_700_000_000_000 + i) for i in range(200)]
            mds = [await f for f in futures]
        finally:
            await p.stop()
        got = await consume(s.bootstrap, "t", 200)
    assert sorted(m.value for m in got) == sorted(b"v%d" % i for i in range(200))
    by_value = {m.value: m for m in got}
    for i, md in enumerate(mds):
        m = by_value[b"v%d" % i]
        assert (m.partition, m.offset, m.key, m.timestamp) == (md.partition, md.offset, b"k%d" % (i % 5),
                                                               1_700_000_000_000 + i)
        assert list(m.headers) == [("n", b"%d" % i)]
    with sqlog.open(log_path) as log:  # the same rows sqlog's own consumer reads
        c = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
        c.subscribe(["t"])
        native: list[sqlog.Record] = []
        for _ in range(40):
            native += c.poll(timeout_ms=200)
            if len(native) == 200:
                break
        c.close()
    assert {(r.partition, r.offset, r.key, r.value, r.headers) for r in native} == {
        (m.partition, m.offset, m.key, m.value, tuple(m.headers)) for m in got}


async def test_aiokafka_idempotent_producer(log_path: str) -> None:
    with sqlog.open(log_path) as log:
        log.create_topic("t")
    with served(log_path) as s:
        p = aiokafka.AIOKafkaProducer(bootstrap_servers=s.bootstrap, enable_idempotence=True, acks="all")
        await p.start()
        try:
            mds = [await p.send_and_wait("t", b"%d" % i) for i in range(30)]
        finally:
            await p.stop()
    assert [md.offset for md in mds] == list(range(30))


async def test_aiokafka_group_commits_and_resumes_after_restart(log_path: str) -> None:
    with sqlog.open(log_path) as log:
        fill(log, "t", 40, 2, create=True)
    with served(log_path) as s:
        c = aiokafka.AIOKafkaConsumer("t", bootstrap_servers=s.bootstrap, group_id="billing",
                                      auto_offset_reset="earliest", enable_auto_commit=False)
        await c.start()
        try:
            got = await take(c, 40)
            assert len(got) == 40
            assert len(c.assignment()) == 2  # one member: both partitions
            tp0, tp1 = aiokafka.TopicPartition("t", 0), aiokafka.TopicPartition("t", 1)
            await c.commit({tp0: 12, tp1: 20})
            assert await c.committed(tp0) == 12
        finally:
            await c.stop()  # LeaveGroup
    with sqlog.open(log_path) as log:  # one set of committed offsets, whichever door
        d = log.describe_group("billing")
        assert {(p.partition, p.committed_offset, p.lag) for p in d.partitions} == {(0, 12, 8), (1, 20, 0)}
    with served(log_path) as s:  # a new server process: the file is the truth
        rest = await consume(s.bootstrap, "t", 8, group_id="billing", enable_auto_commit=False)
    assert sorted((m.partition, m.offset) for m in rest) == [(0, o) for o in range(12, 20)]
