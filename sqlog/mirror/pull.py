"""``pull``: consume topics from a Kafka cluster and append them locally, partition p to partition p.

Each batch of fetched records is appended by a sqlog transactional producer together with the
remote offsets it reached, in ONE SQLite transaction: a crash at any moment leaves either both or
neither, so a restart resumes exactly after the last appended record — nothing lost, nothing
twice. The cursor is the local consumer group named like the remote one: its committed offset is
the local end after the append, its metadata ``remote-offset=N ...`` the next remote offset
(remote offsets need not match local ones: transaction markers, compaction, retention). The
remote offsets are then committed to the cluster's group too (asynchronously, for the cluster's
lag tools; a restart reads the local file).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import TopicPartition as KafkaTP

from ..errors import ProducerFencedError, SqlogError
from ..log import Log
from ..types import OffsetAndMetadata, TopicPartition
from .common import (
    METADATA_TIMEOUT_S,
    Backoff,
    MirrorError,
    MirrorHandle,
    Stopped,
    check_topics,
    describe,
    kafka_config,
    logger,
    remote_partitions,
)

POLL_RECORDS = 5000
CONSUMER_DEFAULTS = {"enable.auto.commit": False, "enable.auto.offset.store": False, "auto.offset.reset": "error",
                     "isolation.level": "read_committed", "enable.partition.eof": True}


REMOTE_OFFSET = "remote-offset="  # the committed offset's metadata starts with it


def remote_offset(metadata: str) -> int | None:
    """The remote offset a pull stored in the local group's offset metadata (None: not a pull's)."""
    head = metadata.split(" ", 1)[0]
    if head.startswith(REMOTE_OFFSET) and head[len(REMOTE_OFFSET):].isdigit():
        return int(head[len(REMOTE_OFFSET):])
    return None


def pull(log: Log, bootstrap_servers: str, topics: Iterable[str] | str, *, group: str, once: bool = False,
         config: Mapping[str, Any] | None = None, max_records: int = POLL_RECORDS) -> MirrorHandle:
    """Start appending the records of the cluster's ``topics`` to the same-named local topics
    (created with the remote partition count when missing) in a background thread; returns its
    handle. ``group``: the consumer group on the cluster and, locally, the cursor: a group whose
    committed offsets are the local end after each append, with the remote offset reached in their
    metadata (``remote-offset=N ...``; ``sqlog groups describe GROUP``). ``once``: stop at
    the end offsets seen at the start. ``config``: librdkafka consumer settings."""
    names = check_topics(topics)
    if not isinstance(group, str) or not group:
        raise MirrorError(f"pull needs a group id (the cursor's name), not {group!r}")
    conf = kafka_config(bootstrap_servers, config, {**CONSUMER_DEFAULTS, "group.id": group})
    puller = _Puller(log, names, group, conf, once, max_records, bootstrap_servers)
    return MirrorHandle("pull", puller.run)


class _Puller:
    def __init__(self, log: Log, topics: list[str], group: str, conf: dict[str, Any], once: bool, max_records: int,
                 bootstrap: str) -> None:
        self.log = log
        self.topics = topics
        self.group = group
        self.conf = conf
        self.once = once
        self.max_records = max_records
        self.meta = f"pulled from {bootstrap}"
        self.cursor: dict[tuple[str, int], int | None] = {}  # next remote offset to append
        self.targets: dict[tuple[str, int], int] = {}
        self.eof: dict[tuple[str, int], int] = {}
        self.floor: dict[tuple[str, int], int] = {}  # the cluster's log start, where retention moved it past the cursor
        self.reader: Any = None  # a local consumer of the group: its committed offsets, local end offsets

    def run(self, h: MirrorHandle) -> None:
        self.h = h
        self.conf["error_cb"] = h.on_kafka_error
        try:
            self._prepare()
            producer = self.log.producer(transactional_id=f"sqlog-mirror-pull.{self.group}")
            try:
                producer.init_transactions()  # fences an older pull of this group
                backoff = Backoff()
                while not h.stopping:
                    try:
                        if self._session(producer, backoff):
                            return
                    except KafkaException as exc:
                        h.retry(backoff, describe(exc))
                    except MirrorError:
                        raise
                    except ProducerFencedError as exc:
                        raise MirrorError(f"mirror pull of group {self.group!r}: another pull took over ({exc})") from None
                    except SqlogError as exc:  # e.g. a full disk: nothing of the batch was stored
                        h.retry(backoff, f"local append failed: {exc}")
            finally:
                producer.close()
        except Stopped:
            pass
        finally:
            if self.reader is not None:
                self.reader.close(autocommit=False)

    def _prepare(self) -> None:
        """The remote partition counts; the local topics created or checked; the local cursors."""
        backoff = Backoff()
        counts: dict[str, int] = {}
        for topic in self.topics:
            while True:
                try:
                    n = remote_partitions(self.conf, topic)
                    break
                except KafkaException as exc:
                    self.h.retry(backoff, f"cluster unreachable: {describe(exc)}")
            if n is None:
                raise MirrorError(f"remote topic {topic!r} does not exist on the cluster")
            counts[topic] = n
            if topic not in self.log.list_topics():
                self.log.create_topic(topic, partitions=n, exist_ok=True)
            have = len(self.log.describe_topic(topic).partitions)
            if have < n:
                raise MirrorError(
                    f"local topic {topic!r} has {have} partitions but the remote one has {n}: pull maps partition p "
                    f"to partition p, so grow it first (sqlog topics alter {topic} --partitions {n})"
                )
        self.reader = self.log.consumer(group_id=self.group, enable_auto_commit=False)
        for topic, n in counts.items():
            for p in range(n):
                committed = self.reader.committed(TopicPartition(topic, p), metadata=True)
                self.cursor[(topic, p)] = None if committed is None else remote_offset(committed.metadata)
        self._show()

    def _show(self, consumer: KafkaConsumer | None = None) -> None:
        with self.h.status.lock:
            for key, pos in self.cursor.items():
                self.h.status.positions[key] = pos
                if consumer is not None:
                    try:
                        _, high = consumer.get_watermark_offsets(KafkaTP(*key), cached=True)
                        if high >= 0:
                            self.h.status.ends[key] = high
                    except KafkaException:
                        pass

    def _session(self, producer: Any, backoff: Backoff) -> bool:
        """Consume from the cursors until stopped (False on a fault to retry), True when done."""
        consumer = KafkaConsumer(self.conf)
        try:
            self._assign(consumer)
            if self.once and not self.targets:
                for key in self.cursor:
                    self.targets[key] = consumer.get_watermark_offsets(KafkaTP(*key), METADATA_TIMEOUT_S)[1]
            self.h.set_state("running")
            shown = 0.0
            while not self.h.stopping:
                if self.once and all((self.cursor[k] or 0) >= end or self.eof.get(k, -1) >= end
                                     for k, end in self.targets.items()):
                    self._show(consumer)
                    return True
                messages = consumer.consume(self.max_records, 0.1)
                data = []
                for m in messages:
                    err = m.error()
                    if err is None:
                        data.append(m)
                    elif err.code() == KafkaError._PARTITION_EOF:
                        self.eof[(m.topic(), m.partition())] = m.offset()
                    elif err.code() == KafkaError._AUTO_OFFSET_RESET:
                        self._skip(consumer, m.topic(), m.partition())
                    elif err.fatal():
                        raise MirrorError(f"mirror pull: the Kafka consumer failed for good: {err.str()}")
                    else:
                        with self.h.status.lock:
                            self.h.status.last_error = err.str()
                if data:
                    self._append(producer, data, consumer)  # a failure: the next session starts at the cursor
                    backoff.reset()
                    self.h.running_again()
                if time.monotonic() >= shown + 0.5:
                    self._show(consumer)
                    shown = time.monotonic()
            return True
        finally:
            consumer.close()

    def _append(self, producer: Any, messages: list[Any], consumer: KafkaConsumer) -> None:
        """The records and the remote offsets they reach, in one SQLite transaction."""
        producer.begin_transaction()
        ends: dict[tuple[str, int], int] = {}
        counts: dict[tuple[str, int], int] = {}
        send = producer.send
        for m in messages:
            kind, ts = m.timestamp()
            key = m.topic(), m.partition()
            send(key[0], m.value(), m.key(), m.headers(), key[1], ts if kind else None)
            ends[key] = m.offset() + 1
            counts[key] = counts.get(key, 0) + 1
        # The group's offset is the local end after this append (so its lag reads 0 once caught up, and
        # it is never past the high watermark); the remote offset reached is in its metadata.
        tps = {key: TopicPartition(*key) for key in counts}
        local_end = self.reader.end_offsets(list(tps.values()))
        producer.send_offsets_to_transaction(
            {tp: OffsetAndMetadata(local_end[tp] + counts[key], f"{REMOTE_OFFSET}{ends[key]} {self.meta}")
             for key, tp in tps.items()}, self.group)
        producer.commit_transaction()
        self.cursor.update(ends)
        self.h.status.add_records(len(messages))
        try:  # for the cluster's lag tools; a restart reads the local file, so a failure here is harmless
            consumer.commit(offsets=[KafkaTP(t, p, o) for (t, p), o in ends.items()], asynchronous=True)
        except KafkaException as exc:
            logger.info("mirror pull: committing offsets to the cluster failed: %s", describe(exc))

    def _assign(self, consumer: KafkaConsumer) -> None:
        """Fetch every partition from its cursor (or past what the cluster's retention removed)."""
        consumer.assign([KafkaTP(t, p, max(o, self.floor.get((t, p), 0)) if o is not None else
                                 self.floor.get((t, p), OFFSET_BEGINNING)) for (t, p), o in self.cursor.items()])

    def _skip(self, consumer: KafkaConsumer, topic: str, partition: int) -> None:
        """The cluster's retention removed records before they were pulled: warn, count, go on
        from its log start."""
        low, _ = consumer.get_watermark_offsets(KafkaTP(topic, partition), METADATA_TIMEOUT_S)
        first = self.cursor.get((topic, partition)) or 0
        n = max(0, low - first)
        logger.warning("mirror pull: the cluster's retention removed %s-%d offsets %d to %d (%d records) before they "
                       "were pulled; going on from offset %d", topic, partition, first, low - 1, n, low)
        with self.h.status.lock:
            self.h.status.skipped += n
        self.floor[(topic, partition)] = low
        self._assign(consumer)

