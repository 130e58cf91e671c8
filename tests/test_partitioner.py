"""Keyed records land where Kafka's default partitioner would put them.

``sqlog.murmur2`` must equal the Java client's ``org.apache.kafka.common.utils.Utils.murmur2``
(a signed 32-bit int) and ``sqlog.partition_for_key(key, n)`` must equal
``(murmur2(key) & 0x7fffffff) % n`` (Java's ``Utils.toPositive``, *not* ``abs``).
Every expected value below is a literal taken from a real Kafka client; none is computed
by the code under test.
"""

from __future__ import annotations

import pytest

import sqlog

# From apache/kafka, clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java,
# UtilsTest.testMurmur2 (the Java client's own vectors; read at commit f55581dc73953c3509a4702433aeeeddc2970779).
KAFKA_JAVA_VECTORS = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]

# From dpkp/kafka-python, test/producer/test_partitioner.py, test_murmur2_java_compatibility:
# the partition (of 1000) that Kafka's Java org.apache.kafka.clients.producer.Partitioner picks.
KAFKA_PYTHON_PARTITIONS_OF_1000 = [
    (b"", 681),
    (b"a", 524),
    (b"ab", 434),
    (b"abc", 107),
    (b"123456789", 566),
    (b"\x00 ", 742),
]

# Computed with kafka-python 3.0.12 (kafka.partitioner.default.murmur2, a port of the Java
# Utils.murmur2) in a throwaway venv and pasted here. kafka-python returns the unsigned
# 32-bit value; these are converted to Java's signed int (value - 2**32 when >= 2**31).
# Keys of length 0..9 cover every tail case (length % 4 == 0, 1, 2, 3) with and without
# full 4-byte blocks; the rest are high bytes, UTF-8 text and long keys.
KAFKA_PYTHON_VECTORS = [
    (b"", 275646681),
    (b"a", -1563381124),
    (b"ab", 316155434),
    (b"abc", 479470107),
    (b"abcd", -1323649548),
    (b"abcde", 461995741),
    (b"abcdef", 1870650108),
    (b"abcdefg", -346467175),
    (b"abcdefgh", -955427363),
    (b"abcdefghi", -619679810),
    (b"\x00", 375494588),
    (b"\xff", -311467685),
    (b"\x00\x00\x00\x00", 850957120),
    (b"\xff\xff\xff\xff", 644171429),
    (b"\xff\xff\xff\xff\xff", -363838622),
    (b"\x80\x81\x82", -1975640061),
    (b"\xa4", 367232046),
    ("café".encode(), -1358007374),
    ("日本語".encode(), 1431860170),
    ("\U0001f600".encode(), 131881617),
    (bytes(range(256)), -1948347274),
    (b"\x81" * 1000, -525506620),
    (b"user-7", 696778364),
    (b"order-42", 501153024),
    (b"123456789", -1822237082),
    (b"\x00 ", 1121897742),
]

# Same source (kafka-python 3.0.12, DefaultPartitioner: murmur2 & 0x7fffffff, % partitions).
KAFKA_PYTHON_PARTITIONS = [
    (b"", {2: 1, 3: 0, 7: 2, 12: 9, 100: 81, 1000: 681}),
    (b"a", {2: 0, 3: 1, 7: 5, 12: 4, 100: 24, 1000: 524}),
    (b"ab", {2: 0, 3: 2, 7: 0, 12: 2, 100: 34, 1000: 434}),
    (b"abc", {2: 1, 3: 0, 7: 4, 12: 3, 100: 7, 1000: 107}),
    (b"abcd", {2: 0, 3: 2, 7: 5, 12: 8, 100: 0, 1000: 100}),
    (b"abcde", {2: 1, 3: 1, 7: 4, 12: 1, 100: 41, 1000: 741}),
    (b"abcdef", {2: 0, 3: 0, 7: 5, 12: 0, 100: 8, 1000: 108}),
    (b"abcdefg", {2: 1, 3: 1, 7: 4, 12: 1, 100: 73, 1000: 473}),
    (b"abcdefgh", {2: 1, 3: 0, 7: 0, 12: 9, 100: 85, 1000: 285}),
    (b"abcdefghi", {2: 0, 3: 0, 7: 1, 12: 6, 100: 38, 1000: 838}),
    (b"\x00", {2: 0, 3: 2, 7: 0, 12: 8, 100: 88, 1000: 588}),
    (b"\xff", {2: 1, 3: 0, 7: 5, 12: 3, 100: 63, 1000: 963}),
    (b"\x00\x00\x00\x00", {2: 0, 3: 1, 7: 6, 12: 4, 100: 20, 1000: 120}),
    (b"\xff\xff\xff\xff", {2: 1, 3: 2, 7: 6, 12: 5, 100: 29, 1000: 429}),
    (b"\xff\xff\xff\xff\xff", {2: 0, 3: 0, 7: 2, 12: 6, 100: 26, 1000: 26}),
    (b"\x80\x81\x82", {2: 1, 3: 2, 7: 6, 12: 11, 100: 87, 1000: 587}),
    (b"\xa4", {2: 0, 3: 0, 7: 6, 12: 6, 100: 46, 1000: 46}),
    ("café".encode(), {2: 0, 3: 0, 7: 6, 12: 6, 100: 74, 1000: 274}),
    ("日本語".encode(), {2: 0, 3: 1, 7: 6, 12: 10, 100: 70, 1000: 170}),
    ("\U0001f600".encode(), {2: 1, 3: 0, 7: 0, 12: 9, 100: 17, 1000: 617}),
    (bytes(range(256)), {2: 0, 3: 1, 7: 3, 12: 10, 100: 74, 1000: 374}),
    (b"\x81" * 1000, {2: 0, 3: 1, 7: 0, 12: 4, 100: 28, 1000: 28}),
    (b"user-7", {2: 0, 3: 2, 7: 2, 12: 8, 100: 64, 1000: 364}),
    (b"order-42", {2: 0, 3: 0, 7: 1, 12: 0, 100: 24, 1000: 24}),
    (b"123456789", {2: 0, 3: 0, 7: 1, 12: 6, 100: 66, 1000: 566}),
    (b"\x00 ", {2: 0, 3: 0, 7: 0, 12: 6, 100: 42, 1000: 742}),
]


@pytest.mark.parametrize(("key", "expected"), KAFKA_JAVA_VECTORS, ids=repr)
def test_murmur2_matches_kafka_java_client(key: bytes, expected: int) -> None:
    assert sqlog.murmur2(key) == expected


@pytest.mark.parametrize(("key", "expected"), KAFKA_PYTHON_VECTORS, ids=repr)
def test_murmur2_matches_kafka_python(key: bytes, expected: int) -> None:
    assert sqlog.murmur2(key) == expected


def test_murmur2_vectors_cover_every_tail_length() -> None:
    lengths = {len(key) for key, _ in KAFKA_PYTHON_VECTORS}
    assert set(range(9)) <= lengths
    assert {n % 4 for n in lengths} == {0, 1, 2, 3}


@pytest.mark.parametrize(("key", "partition"), KAFKA_PYTHON_PARTITIONS_OF_1000, ids=repr)
def test_partition_for_key_matches_java_partitioner_of_1000(key: bytes, partition: int) -> None:
    assert sqlog.partition_for_key(key, 1000) == partition


@pytest.mark.parametrize(("key", "partitions"), KAFKA_PYTHON_PARTITIONS, ids=repr)
def test_partition_for_key_for_several_partition_counts(key: bytes, partitions: dict[int, int]) -> None:
    assert sqlog.partition_for_key(key, 1) == 0
    assert {n: sqlog.partition_for_key(key, n) for n in partitions} == partitions


def test_partition_uses_to_positive_not_abs() -> None:
    # Java's toPositive masks the sign bit; abs() would pick another partition for negative
    # hashes. "foobar" hashes to -790332482 (UtilsTest): & 0x7fffffff = 1357151166.
    assert sqlog.partition_for_key(b"foobar", 1000) == 1357151166 % 1000 == 166
    assert abs(-790332482) % 1000 != 166  # so the check above tells the two apart
    # "21" hashes to -973932308: & 0x7fffffff = 1173551340.
    assert sqlog.partition_for_key(b"21", 7) == 1173551340 % 7 == 3
    assert abs(-973932308) % 7 != 3


@pytest.mark.parametrize(("key", "partitions"), KAFKA_PYTHON_PARTITIONS, ids=repr)
def test_producer_sends_keyed_records_to_kafkas_partition(log: sqlog.Log, key: bytes,
                                                          partitions: dict[int, int]) -> None:
    log.create_topic("keyed", partitions=12)
    with log.producer() as producer:
        md = producer.send("keyed", b"v", key=key).get(timeout=5)
    assert md.partition == partitions[12]
    assert md.partition == sqlog.partition_for_key(key, 12)


def test_producer_keyed_partition_uses_the_serialized_key(log: sqlog.Log) -> None:
    log.create_topic("keyed", partitions=12)
    with log.producer(key_serializer=sqlog.STRING) as producer:
        futures = [(key, producer.send("keyed", b"v", key=key)) for key in ("user-7", "order-42", "café", "日本語")]
        placed = {key: f.get(timeout=5).partition for key, f in futures}
    expected = dict(KAFKA_PYTHON_PARTITIONS)
    assert placed == {key: expected[key.encode()][12] for key in placed}


def test_same_key_always_same_partition_and_read_back_there(log: sqlog.Log) -> None:
    log.create_topic("keyed", partitions=12)
    keys = [key for key, _ in KAFKA_PYTHON_PARTITIONS]
    with log.producer() as producer:
        futures = [(key, i, producer.send("keyed", str(i).encode(), key=key)) for i in range(3) for key in keys]
        metas = [(key, i, f.get(timeout=5)) for key, i, f in futures]
    expected = dict(KAFKA_PYTHON_PARTITIONS)
    for key, _, md in metas:
        assert md.partition == expected[key][12]
    consumer = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
    consumer.assign([sqlog.TopicPartition("keyed", p) for p in range(12)])
    seen: list[sqlog.Record] = []
    for _ in range(50):
        batch = consumer.poll(timeout_ms=100)
        seen.extend(batch)
        if len(seen) >= len(metas):
            break
    assert len(seen) == len(metas)
    for record in seen:
        assert record.partition == expected[record.key][12]
    # per key, the three sends arrive in send order
    for key in keys:
        assert [r.value for r in seen if r.key == key] == [b"0", b"1", b"2"]


def test_explicit_partition_overrides_the_key(log: sqlog.Log) -> None:
    log.create_topic("keyed", partitions=12)
    with log.producer() as producer:
        md = producer.send("keyed", b"v", key=b"user-7", partition=3).get(timeout=5)
    assert sqlog.partition_for_key(b"user-7", 12) == 8
    assert md.partition == 3
