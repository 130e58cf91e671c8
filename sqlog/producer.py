"""The producer: ``send()`` serializes, partitions and appends to a batch; the writer commits it."""

from __future__ import annotations

import random
import threading
import time
from time import time_ns as _time_ns
from zlib import adler32 as _adler32
from collections.abc import Callable, Iterable
from itertools import repeat
from typing import Any

from .checksum import crcs
from .clock import wall_ms
from .config import (
    MAX_INT32,
    MAX_INT64,
    PRODUCER_OPTIONS,
    check_config,
    check_int,
    check_timeout,
    defaults,
    describe,
)
from .errors import (
    InvalidConfigError,
    InvalidRecordError,
    InvalidTopicError,
    LogClosedError,
    RecordTooLarge,
    SerializationError,
    SqlogError,
    UnknownTopicOrPartitionError,
)
from .partitioner import partition_for_key
from .serde import encode_headers, serde_function, to_bytes
from .topics import TopicMeta
from .writer import Batch, BatchFuture, Chunk, RecordFuture, Writer

PRODUCER_DEFAULTS: dict[str, Any] = defaults(PRODUCER_OPTIONS)
MAX_MESSAGE_ID = 255  # characters



def check_message_id(message_id: object, meta: TopicMeta, window: int | None) -> None:
    """A str of 1 to `MAX_MESSAGE_ID` characters, for a topic with a dedupe window."""
    if not isinstance(message_id, str) or not 1 <= len(message_id) <= MAX_MESSAGE_ID:
        raise InvalidConfigError(f"message_id must be a str of 1 to {MAX_MESSAGE_ID} characters, not {message_id!r}")
    if window is None:
        raise InvalidConfigError(
            f"message_id given but topic {meta.name!r} has no dedupe window; enable it with "
            f"log.alter_topic({meta.name!r}, dedupe_window_ms=...) (or create_topic(..., dedupe_window_ms=...))"
        )
    try:
        message_id.encode()
    except UnicodeEncodeError:
        raise InvalidConfigError(f"message_id must be encodable as UTF-8, not {message_id!r}") from None


class Producer:
    __doc__ = ("Sends records to topics; thread-safe, one per application is usually enough (as in Kafka).\n\n"
               "Config keys (``log.producer(**config)``):\n\n" + describe(PRODUCER_OPTIONS))

    def __init__(self, writer: Writer, **config: Any) -> None:
        cfg = check_config(config, PRODUCER_DEFAULTS, "producer")
        self.config = cfg
        self._value_ser: Callable[[Any], bytes] | None = serde_function(cfg["value_serializer"], "value_serializer", "serialize")
        self._key_ser: Callable[[Any], bytes] | None = serde_function(cfg["key_serializer"], "key_serializer", "serialize")
        self._linger = check_int("linger_ms", cfg["linger_ms"], 0, MAX_INT32) / 1000
        self._batch_size = check_int("batch_size", cfg["batch_size"], 1, None)
        self._max_record = check_int("max_record_bytes", cfg["max_record_bytes"], 1, None)
        self._meta_age_ms = check_int("metadata_max_age_ms", cfg["metadata_max_age_ms"], 0, MAX_INT32)
        if cfg["transactional_id"] is not None and type(self) is Producer:
            raise InvalidConfigError("a transactional producer comes from log.producer(transactional_id=...)")
        writer.engine.check_open()
        self._engine = writer.engine
        self._writer = writer
        self._lock = threading.Lock()
        self._batch = Batch(self, self._writer)
        self._last_chunk = Chunk("", -1, -1, self._batch)  # the chunk the last send went to
        self._error: SqlogError | None = None  # of a failed write, until flush() reports it
        self._topics: dict[str, TopicMeta] = {}
        self._windows: dict[int, int | None] = {}  # topic id -> dedupe_window_ms, cached like _topics
        self._meta_epoch = -1
        self._meta_expiry = 0
        self._sticky: dict[str, list[int]] = {}  # topic -> [partition, bytes left before switching]
        self._lane = self._last_chunk  # the chunk the last keyless send without a partition went to
        self._lane_sticky = [0, 0]  # and its topic's self._sticky entry
        self._closed = False
        self.caller_writes = True
        """When a batch reaches ``batch_size``, the sending thread writes it (fastest for threads).
        Front doors whose callers must never block (sqlog.aio) set False: the full batch is then
        due at once and the linger thread writes it."""
        self._writer.register(self)

    # -- the send path ---------------------------------------------------------------------
    def send(
        self,
        topic: str,
        value: Any = None,
        key: Any = None,
        headers: Iterable[tuple[str, bytes | None]] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        message_id: str | None = None,
    ) -> RecordFuture:
        """Queue one record; the returned future's ``get()`` waits until it is durable.

        ``message_id`` (topics with ``dedupe_window_ms`` only): if the topic stored that id within
        its window the record is not appended again and ``get()`` returns the original's
        `RecordMetadata` with ``duplicate=True``.
        """
        # The common case (cached metadata, bytes, no key, headers, partition or timestamp) runs
        # no function of sqlog's before the lock; every check it skips is one the argument it
        # belongs to makes (None needs none), and the rare cases share helpers with send_batch.
        now_ms = _time_ns() // 1_000_000
        try:
            meta = self._topics.get(topic)
        except TypeError:  # unhashable: not a name at all
            raise InvalidTopicError(f"a topic name must be a str, not {type(topic).__name__}") from None
        if meta is None or now_ms >= self._meta_expiry or self._meta_epoch != self._engine.meta_epoch:
            meta = self._meta(topic, now_ms)  # also where a closed producer or log is refused
        # The record's checksum (checksum.crcs: Adler-32 of key, value, headers in turn, None
        # counting as empty) is taken here, one C call, so the write binds rows as they are.
        if key is None:
            k = None
            check = 1
            size = 0
            if meta.compacted:
                raise _keyless(topic)
        else:
            k = key if type(key) is bytes and self._key_ser is None else to_bytes(key, self._key_ser, "key")
            size = len(k)  # type: ignore[arg-type]  # to_bytes keeps only None as None
            check = _adler32(k)  # type: ignore[arg-type]
        if type(value) is bytes and self._value_ser is None:
            v: bytes | None = value
        else:
            v = to_bytes(value, self._value_ser, "value")
        if v:
            size += len(v)
            check = _adler32(v, check)
        if headers:
            h = encode_headers(headers)
            if h:
                size += len(h)
                check = _adler32(h, check)
        else:
            h = None
        if size > self._max_record:
            raise _too_large(size, self._max_record)
        if timestamp_ms is None:
            timestamp_ms = now_ms
        else:
            _check_timestamp(timestamp_ms)
        if partition is not None:
            _check_partition(meta, partition)
        if message_id is not None and (
                type(message_id) is not str or not 0 < len(message_id) <= MAX_MESSAGE_ID or not message_id.isascii()
                or self._windows.get(meta.topic_id) is None):
            self._check_message_id(meta, message_id)
        wake = False
        lock = self._lock
        lock.acquire()
        try:
            batch = self._batch
            if partition is None and k is None:
                # Keyless: the sticky partition's chunk of the open batch, while its budget lasts.
                chunk = self._lane
                sticky = self._lane_sticky
                if chunk.batch is batch and chunk.topic_id == meta.topic_id and sticky[1] > 0:
                    sticky[1] -= size
                else:
                    chunk, wake = self._keyless_chunk(batch, meta, size)
            else:
                if partition is None:
                    partition = partition_for_key(k, meta.partitions)  # type: ignore[arg-type]
                chunk = self._last_chunk  # consecutive sends mostly go to the same partition
                if chunk.batch is not batch or chunk.partition != partition or chunk.topic_id != meta.topic_id:
                    chunk, wake = self._chunk(batch, meta, partition)
                    self._last_chunk = chunk
            rows = chunk.rows
            index = len(rows)
            rows.append((timestamp_ms, k, v, h, check))
            if chunk.ids is not None:
                chunk.ids.append(message_id)
            elif message_id is not None:
                chunk.ids = [None] * index
                chunk.ids.append(message_id)
            chunk.bytes += size
            if timestamp_ms > chunk.max_ts:
                chunk.max_ts = timestamp_ms
            batch.bytes += size
            full = batch.bytes >= self._batch_size
        finally:
            lock.release()
        if full:
            if self.caller_writes:
                self._writer.write_through(batch)
            else:
                self._writer.wake()
        elif wake:
            self._writer.wake(batch.created + self._linger)
        return RecordFuture(chunk, index)

    def _check_message_id(self, meta: TopicMeta, message_id: object) -> None:
        """send()'s check of a message id its inline test did not pass (a short ASCII str for a
        topic whose window is cached): loads the topic's window, then `check_message_id`."""
        window = self._windows.get(meta.topic_id, -1)
        if window == -1:
            window = self._windows[meta.topic_id] = self._engine.dedupe_window(meta.topic_id)
        check_message_id(message_id, meta, window)

    def send_batch(
        self,
        topic: str,
        values: Iterable[Any],
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> BatchFuture:
        """Queue many keyless, headerless records for one partition in one step (the bulk path).

        The records go to ``partition`` or to the producer's sticky partition, in order and in
        one transaction with whatever else is waiting; the future's ``get()`` returns one
        `RecordMetadata` per record. For keyed records use ``send()``, which partitions by key.
        """
        now_ms = _time_ns() // 1_000_000
        try:
            meta = self._topics.get(topic)
        except TypeError:
            raise InvalidTopicError(f"a topic name must be a str, not {type(topic).__name__}") from None
        if meta is None or now_ms >= self._meta_expiry or self._meta_epoch != self._engine.meta_epoch:
            meta = self._meta(topic, now_ms)
        if meta.compacted:
            raise _keyless(topic)
        try:
            vals = list(values)
        except TypeError as exc:
            raise SerializationError(f"send_batch() takes an iterable of values, not {type(values).__name__}") from exc
        if self._value_ser is not None or not {type(v) for v in vals} <= {bytes, type(None)}:
            vals = [to_bytes(v, self._value_ser, "value") for v in vals]
        present = [len(v) for v in vals if v]
        if present and max(present) > self._max_record:
            raise _too_large(max(present), self._max_record)
        size = sum(present)
        if timestamp_ms is None:
            timestamp_ms = now_ms
        else:
            _check_timestamp(timestamp_ms)
        if partition is not None:
            _check_partition(meta, partition)
        if not vals:
            raise SerializationError("send_batch() needs at least one value")
        with self._lock:
            if partition is None:
                partition = self._new_sticky_partition(meta, size)
            batch = self._batch
            chunk, wake = self._chunk(batch, meta, partition)
            rows = chunk.rows
            start = len(rows)
            nones = [None] * len(vals)
            rows.extend(zip(repeat(timestamp_ms), nones, vals, nones, crcs(nones, vals, nones)))
            if chunk.ids is not None:
                chunk.ids.extend(repeat(None, len(vals)))
            chunk.bytes += size
            if timestamp_ms > chunk.max_ts:
                chunk.max_ts = timestamp_ms
            batch.bytes += size
            full = batch.bytes >= self._batch_size
        if full and self.caller_writes:
            self._writer.write_through(batch)
        elif full:
            self._writer.wake()
        elif wake:
            self._writer.wake(batch.created + self._linger)
        return BatchFuture(chunk, start, len(vals))

    @staticmethod
    def _chunk(batch: Batch, meta: TopicMeta, partition: int) -> tuple[Chunk, bool]:
        """The open batch's chunk for a partition, created if needed; True when the batch was
        empty until now (the linger thread must plan its write). Called under ``_lock``."""
        chunk = batch.chunks.get((meta.topic_id, partition))
        if chunk is not None:
            return chunk, False
        chunk = batch.chunks[(meta.topic_id, partition)] = Chunk(meta.name, meta.topic_id, partition, batch)
        if len(batch.chunks) > 1:
            return chunk, False
        batch.created = time.monotonic()
        return chunk, True

    def _keyless_chunk(self, batch: Batch, meta: TopicMeta, size: int) -> tuple[Chunk, bool]:
        """`_chunk` for a keyless send without a partition: the topic's sticky partition while its
        budget lasts, else a new one; it becomes the lane the next keyless sends take at once."""
        sticky = self._sticky.get(meta.name)
        if sticky is not None and sticky[1] > 0 and sticky[0] < meta.partitions:
            sticky[1] -= size
        else:
            self._new_sticky_partition(meta, size)
            sticky = self._sticky[meta.name]
        chunk, wake = self._chunk(batch, meta, sticky[0])
        self._lane, self._lane_sticky = chunk, sticky
        return chunk, wake

    def _new_sticky_partition(self, meta: TopicMeta, size: int) -> int:
        """Keyless records stick to one partition for a batch's worth of bytes, then move (KIP-480)."""
        sticky = self._sticky.get(meta.name)
        previous = sticky[0] if sticky else -1
        choice = random.randrange(meta.partitions)
        if choice == previous and meta.partitions > 1:
            choice = (choice + 1) % meta.partitions
        self._sticky[meta.name] = [choice, self._batch_size - size]
        return choice

    def has_metadata(self, topic: object) -> bool:
        """True when ``send(topic, ...)`` will not read the file for the topic's metadata (cached
        and fresh; or not a name at all, which send() refuses at once). For front doors whose
        callers must never block (sqlog.aio): else call `load_metadata` off the caller's thread."""
        try:
            cached = topic in self._topics
        except TypeError:
            return True
        return cached and wall_ms() < self._meta_expiry and self._meta_epoch == self._engine.meta_epoch

    def load_metadata(self, topic: str) -> None:
        """Read the topic's metadata into the cache now (UnknownTopicOrPartitionError if none)."""
        self._meta(topic, wall_ms())

    def _meta(self, topic: str, now_ms: int) -> TopicMeta:
        """The topic's metadata, through the cache (read from the file when missing or stale);
        LogClosedError once the producer or its log is closed: sends reach here whenever the
        cache does not serve them, and closing makes sure it never does."""
        if self._closed or self._engine.closed:
            raise LogClosedError("the producer (or its log) is closed")
        if now_ms >= self._meta_expiry or self._meta_epoch != self._engine.meta_epoch:
            # Expired or changed locally: forget all, so grown or deleted topics are seen.
            self._topics.clear()
            self._windows.clear()
            self._meta_epoch = self._engine.meta_epoch
            self._meta_expiry = now_ms + self._meta_age_ms
        meta = self._topics.get(topic)
        if meta is None:
            meta = self._topics[topic] = self._engine.topic_meta(topic)
        if self._closed:  # closed meanwhile by another thread: keep the cache from serving sends
            self._meta_epoch = -1
            raise LogClosedError("the producer (or its log) is closed")
        return meta

    # -- the writer's side (writer.BatchSource) ---------------------------------------------
    def take_batch(self) -> Batch | None:
        """Seal the open batch for the writer (None when empty); a new one opens."""
        with self._lock:
            batch = self._batch
            if not batch.chunks:
                return None
            self._batch = Batch(self, self._writer)
            return batch

    def pending_rows(self) -> int:
        return sum(len(c.rows) for c in self._batch.chunks.values())

    def due(self) -> float | None:
        batch = self._batch
        if not batch.chunks:
            return None
        return batch.created if batch.bytes >= self._batch_size else batch.created + self._linger

    def failed(self, error: SqlogError) -> None:
        self._error = error

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._batch = Batch(self, self._writer)

    # -- lifecycle -------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> None:
        """Block until every record sent so far is durable (or has failed).

        Raises the error of a failed write since the last flush, `SqlogTimeoutError` after ``timeout`` s.
        """
        check_timeout(timeout)
        self._writer.write_through(None, timeout)
        error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self, timeout: float | None = None) -> None:
        """Flush and stop accepting sends; closing twice is harmless."""
        if self._closed:
            return
        check_timeout(timeout)  # before closing: a bad timeout must not drop the records waiting
        try:
            self.flush(timeout)
        finally:
            self._closed = True
            self._meta_epoch = -1  # no send is served by the metadata cache any more: they raise
            self._writer.unregister(self)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _too_large(size: int, limit: int) -> RecordTooLarge:
    return RecordTooLarge(
        f"record of {size} bytes (key + value + headers) exceeds max_record_bytes={limit}; "
        "split it or raise max_record_bytes"
    )


def _check_timestamp(timestamp_ms: object) -> None:
    if type(timestamp_ms) is not int or not 0 <= timestamp_ms <= MAX_INT64:
        raise SerializationError(f"timestamp_ms must be a non-negative int (ms since the epoch), not {timestamp_ms!r}")


def _check_partition(meta: TopicMeta, partition: object) -> None:
    if type(partition) is not int or not 0 <= partition < meta.partitions:
        raise UnknownTopicOrPartitionError(f"topic {meta.name!r} has partitions 0..{meta.partitions - 1}, not {partition!r}")


def _keyless(topic: str) -> InvalidRecordError:
    return InvalidRecordError(
        f"topic {topic!r} is compacted (cleanup_policy has 'compact'): every record needs a key; "
        "send it with key=..."
    )
