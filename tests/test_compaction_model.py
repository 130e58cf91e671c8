"""A hypothesis model of compaction's guarantees: random sends (keys, tombstones, timestamps),
sweeps at advancing times and reads, checked against what Kafka promises after every sweep."""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

import sqlog
from sqlog import TopicPartition as TP

T0 = 1_700_000_000_000
LAG = 50
TOMBSTONE_MS = 200

send = st.tuples(st.just("send"), st.sampled_from([b"a", b"b", b"c", b"d"]),
                 st.one_of(st.none(), st.binary(min_size=1, max_size=8)), st.integers(0, 40))
sweep = st.tuples(st.just("sweep"), st.integers(0, 150))
ops = st.lists(st.one_of(send, send, sweep), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, partitions=st.integers(1, 2))
def test_compaction_keeps_kafkas_guarantees(ops: list[tuple], partitions: int) -> None:
    with TemporaryDirectory() as d, sqlog.open(Path(d) / "m.db", retention_check_interval_ms=None) as log:
        log.create_topic("c", partitions=partitions, cleanup_policy="compact", min_cleanable_dirty_ratio=0.0,
                         min_compaction_lag_ms=LAG, delete_retention_ms=TOMBSTONE_MS)
        producer = log.producer()
        sent: dict[tuple[int, int], tuple[bytes, bytes | None, int]] = {}  # (partition, offset) -> record
        now = T0
        swept_at = None
        for op in ops:
            if op[0] == "send":
                _, key, value, step = op
                now += step
                md = producer.send("c", value, key=key, timestamp_ms=now).get()
                sent[(md.partition, md.offset)] = (key, value, now)
                continue
            now += op[1]
            swept_at = now
            log.sweep(now_ms=now)
            _check(log, sent, partitions, swept_at)
        if swept_at is None:
            _check(log, sent, partitions, None)
        producer.close()


def _check(log: sqlog.Log, sent: dict, partitions: int, swept_at: int | None) -> None:
    consumer = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
    consumer.assign([TP("c", p) for p in range(partitions)])
    got: dict[tuple[int, int], tuple[bytes, bytes | None, int]] = {}
    order: dict[int, list[int]] = {p: [] for p in range(partitions)}
    while batch := consumer.poll(timeout_ms=0, max_records=1000):
        for r in batch:
            got[(r.partition, r.offset)] = (r.key, r.value, r.timestamp_ms)
            order[r.partition].append(r.offset)
    consumer.close()
    # Offsets never change, order is kept: what survives is what was sent there, in offset order.
    assert all(got[k] == sent[k] for k in got)
    assert all(o == sorted(o) for o in order.values())
    latest: dict[bytes, tuple[int, int]] = {}
    for (p, o), (key, _, _) in sorted(sent.items()):
        latest[key] = (p, o)
    for key, where in latest.items():
        value, ts = sent[where][1], sent[where][2]
        old_tombstone = value is None and swept_at is not None and ts <= swept_at - TOMBSTONE_MS
        assert where in got or old_tombstone, (key, where)  # the latest record of every key stays
    for where, (_, _, ts) in sent.items():
        if swept_at is None or ts > swept_at - LAG:
            assert where in got, where  # younger than min_compaction_lag_ms: never removed
    final = {key: sent[where][1] for key, where in latest.items() if sent[where][1] is not None}
    assert dict(log.table("c").items()) == final
    report = log.check()
    assert report.ok, report.violations
