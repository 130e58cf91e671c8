"""``push``: forward every record of local topics to a Kafka cluster, partition p to partition p.

At-least-once (the default): an idempotent producer (acks=all) sends; the cursor, a local
consumer group's committed offsets, moves only past records the cluster acknowledged, in order,
so a crash resends at most what was in flight. ``exactly_once``: a transactional producer sends
each batch with its progress as transactional offsets of a group on the cluster; after a restart
``init_transactions()`` fences (and aborts) the old instance and the progress is read back from
the cluster, so a ``read_committed`` consumer sees every record once.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from collections.abc import Iterable, Mapping
from operator import attrgetter
from typing import Any

from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaTP
from confluent_kafka.admin import AdminClient, NewTopic

from ..errors import SqlogError
from ..log import Log
from ..types import OffsetAndMetadata, TopicPartition
from .common import (
    METADATA_TIMEOUT_S,
    Backoff,
    MirrorError,
    MirrorHandle,
    Stopped,
    check_topics,
    connection_config,
    describe,
    kafka_config,
    logger,
    remote_partitions,
)

DEFAULT_GROUP = "sqlog-mirror"
POLL_RECORDS = 5000
COMMIT_EVERY_S = 0.2
FLUSH_ON_STOP_S = 10.0
TXN_TIMEOUT_S = 30.0
_TOPIC, _PARTITION, _OFFSET, _TIMESTAMP, _KEY, _VALUE, _HEADERS = map(
    attrgetter, ("topic", "partition", "offset", "timestamp_ms", "key", "value", "headers"))
PRODUCER_DEFAULTS = {"acks": "all", "enable.idempotence": True, "linger.ms": 5, "allow.auto.create.topics": True}


def push(log: Log, bootstrap_servers: str, topics: Iterable[str] | str, *, remote_topic_prefix: str = "",
         group: str = DEFAULT_GROUP, exactly_once: bool = False, transactional_id: str | None = None,
         once: bool = False, config: Mapping[str, Any] | None = None,
         max_records: int = POLL_RECORDS) -> MirrorHandle:
    """Start forwarding the records of ``topics`` in ``log`` to the cluster at ``bootstrap_servers``
    (local partition p to remote partition p of ``remote_topic_prefix + topic``; keys, values,
    headers and timestamps unchanged) in a background thread; returns its handle.

    The cursor is the local consumer group ``group`` (``sqlog groups describe`` shows its lag).
    ``once``: forward what is there now, then end (``handle.join()``); otherwise follow new records
    until ``handle.stop()``. ``config``: librdkafka producer settings (security, compression,
    linger). ``exactly_once``: see the module docstring; ``transactional_id`` (default
    ``group + "." + hostname``) names both the producer and the cluster group holding the progress.
    """
    names = check_topics(topics)
    conf = kafka_config(bootstrap_servers, config, PRODUCER_DEFAULTS)
    if exactly_once:
        tid = transactional_id or f"{group}.{socket.gethostname()}"
        conf = {**conf, "transactional.id": tid}
    consumer = log.consumer(group_id=group, auto_offset_reset="earliest", enable_auto_commit=False,
                            max_poll_records=max_records)
    tps = [TopicPartition(t, p) for t in names for p in range(len(log.describe_topic(t).partitions))]
    consumer.assign(tps)
    pusher = _Pusher(consumer, tps, conf, remote_topic_prefix, once, max_records, bootstrap_servers)
    return MirrorHandle("push", pusher.run)


class _Pusher:
    def __init__(self, consumer: Any, tps: list[TopicPartition], conf: dict[str, Any], prefix: str, once: bool,
                 max_records: int, bootstrap: str) -> None:
        self.consumer = consumer
        self.tps = tps
        self.conf = conf
        self.prefix = prefix
        self.once = once
        self.max_records = max_records
        self.meta = f"pushed to {bootstrap}"
        self.transactional = "transactional.id" in conf
        self.cursor: dict[TopicPartition, int] = {}  # next local offset the cluster has not acknowledged
        self.read: dict[TopicPartition, int] = {}  # next local offset to hand to the producer
        self.skipped: dict[TopicPartition, int] = {}
        self.targets: dict[TopicPartition, int] | None = None  # once: the end offsets seen at start
        self.next_show = 0.0

    # -- the loop --------------------------------------------------------------------------
    def run(self, h: MirrorHandle) -> None:
        self.h = h
        self.conf["error_cb"] = h.on_kafka_error
        try:
            self._check_remote()
            for tp in self.tps:
                self.cursor[tp] = self.consumer.position(tp)  # committed offset, or the log start
            self._note_skips({tp: self.consumer.committed(tp) or 0 for tp in self.tps})
            self.read = dict(self.cursor)
            if self.once:
                self.targets = self.consumer.end_offsets(self.tps)
            backoff = Backoff()
            while not h.stopping:
                try:
                    if self.transactional:
                        finished = self._run_transactional(backoff)
                    else:
                        finished = self._run_idempotent(backoff)
                    if finished:
                        return
                except (KafkaException, _UplinkFault) as exc:
                    self._rewind()
                    h.retry(backoff, describe(exc))
        except Stopped:
            pass
        finally:
            self.consumer.close(autocommit=False)

    def _check_remote(self) -> None:
        """Each remote topic exists (created when missing) with at least the local partition count."""
        backoff = Backoff()
        want: dict[str, int] = {}
        for tp in self.tps:
            want[tp.topic] = max(want.get(tp.topic, 0), tp.partition + 1)
        for topic, n in want.items():
            remote = self.prefix + topic
            while True:
                try:
                    have = remote_partitions(self.conf, remote)
                    if have is None:
                        _create(self.conf, remote, n)
                        have = remote_partitions(self.conf, remote)
                    break
                except KafkaException as exc:
                    self.h.retry(backoff, f"cluster unreachable: {describe(exc)}")
            if have is None:
                raise MirrorError(f"remote topic {remote!r} does not exist and could not be created; create it "
                                  f"with {n} partitions (or more) on the cluster")
            if have < n:
                raise MirrorError(
                    f"remote topic {remote!r} has {have} partitions but local topic {topic!r} has {n}: push maps "
                    f"partition p to partition p, so add partitions on the cluster (kafka-topics.sh --alter "
                    f"--topic {remote} --partitions {n}) or push to another topic (remote_topic_prefix)"
                )
        self.h.set_state("running")

    def _poll(self, timeout_ms: int) -> list[Any]:
        before = dict(self.consumer.skipped_records())
        records = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.max_records)
        after = self.consumer.skipped_records()
        if after != before:
            self._note_skips({tp: self.read[tp] for tp in after if after[tp] != before.get(tp, 0)}, before)
        return records

    def _note_skips(self, froms: dict[TopicPartition, int], before: Mapping[TopicPartition, int] | None = None) -> None:
        """Retention removed records before they were pushed: a warning per partition, counted."""
        counts = self.consumer.skipped_records()
        for tp, first in froms.items():
            n = counts.get(tp, 0) - (before or {}).get(tp, 0)
            if n <= 0:
                continue
            self.skipped[tp] = self.skipped.get(tp, 0) + n
            self.read[tp] = first + n
            if self.cursor.get(tp, 0) >= first:  # nothing before the gap is still in flight
                self.cursor[tp] = max(self.cursor.get(tp, 0), first + n)
            logger.warning("mirror push: retention removed %s-%d offsets %d to %d (%d records) before they reached "
                           "the cluster; going on from offset %d", tp.topic, tp.partition, first, first + n - 1, n,
                           first + n)
            with self.h.status.lock:
                self.h.status.skipped += n

    def _caught_up(self) -> bool:
        assert self.targets is not None
        return all(self.cursor[tp] >= end for tp, end in self.targets.items())

    def _commit_local(self, ends: Mapping[TopicPartition, int], records: int) -> None:
        """Move the cursor (the local group's offsets) past ``records`` the cluster acknowledged."""
        self.h.status.add_records(records)
        if not ends:
            return
        self.cursor.update(ends)
        self.consumer.commit({tp: OffsetAndMetadata(o, self.meta) for tp, o in ends.items()})
        self._show()

    def _show(self, every: float = 0.0) -> None:
        """Cursor and local end offsets into the progress (at most once per ``every`` seconds)."""
        now = time.monotonic()
        if now < self.next_show + every:
            return
        self.next_show = now
        ends = self.consumer.end_offsets(self.tps)
        with self.h.status.lock:
            for tp in self.tps:
                self.h.status.positions[(tp.topic, tp.partition)] = self.cursor[tp]
                self.h.status.ends[(tp.topic, tp.partition)] = ends[tp]

    def _rewind(self) -> None:
        """After a fault: read again from the cursor (the first record not acknowledged)."""
        for tp in self.tps:
            self.consumer.seek(tp, self.cursor[tp])
        self.read = dict(self.cursor)

    # -- at-least-once ---------------------------------------------------------------------
    def _run_idempotent(self, backoff: Backoff) -> bool:
        """Produce as the local records come; librdkafka reports failures only
        (``delivery.report.only.error``), so once its queue is empty (``len(producer) == 0``) with
        no failure reported, everything produced was acknowledged and the cursor moves there. A
        steady stream is paused every ``COMMIT_EVERY_S`` until the queue drains, for a commit."""
        errors: list[KafkaError] = []
        producer = Producer({**self.conf, "delivery.report.only.error": True,
                             "on_delivery": lambda err, _msg: errors.append(err)})
        pending: dict[TopicPartition, int] = {}  # where the cursor goes once the queue is empty
        count = 0  # records produced since the last commit
        since = 0.0
        self._show()
        try:
            while True:
                if self.h.stopping:
                    producer.flush(FLUSH_ON_STOP_S)
                    if not errors and len(producer) == 0:
                        self._commit_local(pending, count)
                    return True
                draining = count and time.monotonic() - since >= COMMIT_EVERY_S
                records = None if draining else self._poll(0 if count else 100)
                if records:
                    if not count:
                        since = time.monotonic()
                    count += len(records)
                    self._produce(producer, records, pending)
                producer.poll(0.005 if draining else 0)
                if errors:
                    raise _UplinkFault(f"delivery failed: {errors[0].str()}")
                if len(producer) == 0:
                    if not count and self.read != self.cursor:  # a retention skip with nothing in flight
                        pending = {tp: o for tp, o in self.read.items() if o > self.cursor[tp]}
                    if pending:
                        self._commit_local(pending, count)
                        pending, count = {}, 0
                        backoff.reset()
                        self.h.running_again()
                    if self.once and self._caught_up():
                        return True
                self._show(every=0.5)
        finally:
            producer.purge()
            producer.flush(0)

    def _produce(self, producer: Producer, records: list[Any], pending: dict[TopicPartition, int]) -> None:
        batch = self._send(producer, records)
        pending.update(batch)
        self.read.update(batch)

    def _send(self, producer: Producer, records: list[Any]) -> dict[TopicPartition, int]:
        """Hand ``records`` to librdkafka; returns the next offset per partition after them.

        Column-wise: ``produce`` is called through ``map()`` with positional arguments (topic,
        value, key, partition, callback, on_delivery, timestamp, headers), so no bytecode runs per
        record; librdkafka's queue full (a slow or absent uplink) waits for room and goes on from
        the refused record."""
        topics = list(map(_TOPIC, records))
        partitions = list(map(_PARTITION, records))
        ends = dict(zip(zip(topics, partitions), map(_OFFSET, records)))  # the last record of each partition wins
        if self.prefix:
            topics = list(map(self.prefix.__add__, topics))
        headers = list(map(_HEADERS, records))
        cols = [topics, list(map(_VALUE, records)), list(map(_KEY, records)), partitions, [None] * len(records),
                [None] * len(records), list(map(_TIMESTAMP, records)),
                list(map(_header_list, headers)) if any(headers) else [None] * len(records)]
        produce, n, done = producer.produce, len(records), 0
        while done < n:
            rest = iter(cols[0][done:])
            try:
                deque(map(produce, rest, *(c[done:] for c in cols[1:])), 0)
                break
            except BufferError:  # the queue is full: wait for room, then resend from the refused record
                done = n - sum(1 for _ in rest) - 1
                producer.poll(0.1)
                if self.h.stopping:
                    raise Stopped from None
        return {TopicPartition(t, p): o + 1 for (t, p), o in ends.items()}

    # -- exactly-once ----------------------------------------------------------------------
    def _run_transactional(self, backoff: Backoff) -> bool:
        producer = Producer(self.conf)
        group = self.conf["transactional.id"]
        progress = KafkaConsumer(connection_config(self.conf) | {"group.id": group, "enable.auto.commit": False,
                                                                 "isolation.level": "read_committed"})
        try:
            producer.init_transactions(TXN_TIMEOUT_S)  # fences the previous instance, aborting its transaction
            stored = progress.committed([KafkaTP(self.prefix + tp.topic, tp.partition) for tp in self.tps],
                                        METADATA_TIMEOUT_S)
            for tp, ktp in zip(self.tps, stored):
                if ktp.error is None and ktp.offset >= 0 and ktp.offset > self.cursor[tp]:
                    self.cursor[tp] = ktp.offset
            self._rewind()
            self._show()
            metadata = progress.consumer_group_metadata()
            while not self.h.stopping:
                records = self._poll(100)
                self._show(every=0.5)
                if not records:
                    if self.once and self._caught_up():
                        return True
                    continue
                producer.begin_transaction()
                ends = self._send(producer, records)
                self.read.update(ends)
                producer.send_offsets_to_transaction(
                    [KafkaTP(self.prefix + tp.topic, tp.partition, o) for tp, o in ends.items()], metadata,
                    TXN_TIMEOUT_S)
                _commit_transaction(producer)
                self._commit_local(ends, len(records))  # the local group shows the lag; the cluster's progress rules
                backoff.reset()
                self.h.running_again()
            return True
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.fatal():
                raise MirrorError(f"mirror push: the transactional producer {group!r} failed for good: {err.str()} "
                                  "(another mirror with the same transactional id fences this one)") from None
            if isinstance(err, KafkaError) and err.txn_requires_abort():
                try:
                    producer.abort_transaction(TXN_TIMEOUT_S)
                except KafkaException:
                    pass
            raise
        finally:
            progress.close()
            producer.flush(0)


def _commit_transaction(producer: Producer) -> None:
    """commit_transaction(), retried while librdkafka says the error is retriable."""
    while True:
        try:
            producer.commit_transaction(TXN_TIMEOUT_S)
            return
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.retriable():
                continue
            raise


def _create(conf: Mapping[str, Any], topic: str, partitions: int) -> None:
    """Ask the cluster to create the topic; a cluster that cannot (no CreateTopics, no rights) is
    left to its auto-creation, checked by the caller."""
    admin = AdminClient(connection_config(conf))
    try:
        for f in admin.create_topics([NewTopic(topic, partitions, -1)], request_timeout=5,
                                     operation_timeout=5).values():
            f.result(10)
        logger.info("mirror push: created remote topic %r with %d partitions", topic, partitions)
    except KafkaException as exc:
        logger.info("mirror push: creating remote topic %r failed (%s); using what the cluster has", topic,
                    describe(exc))


def _header_list(headers: Any) -> list[tuple[str, bytes]] | None:
    """A record's headers as produce() takes them (a list, or None for none)."""
    return list(headers) if headers else None


class _UplinkFault(SqlogError):
    """Records were not acknowledged: resend from the cursor after a backoff."""

