"""The transactional producer: Kafka's transactions API, committed in ONE SQLite transaction.

A transaction's records wait in memory (in the producer, never in the file) until
``commit_transaction()``, which runs one write transaction: the epoch check (fencing), every
partition's records, the consumer offsets (fenced like a consumer's commit) and share
acknowledgements. Abort, a crash or ``close()`` drops the buffer: nothing was written, so no
reader can see it, and offsets stay dense (no control records). A transaction holds at most
``max_transaction_bytes`` (key + value + headers, 64 MiB by default) in memory: the send past
it raises `TransactionTooLargeError` and the transaction stays open with what it had.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import apsw

from . import groups, transactions
from .config import MAX_INT32, check_int
from .errors import (
    IllegalStateError,
    InvalidConfigError,
    LogClosedError,
    ProducerFencedError,
    SqlogError,
    SqlogTimeoutError,
    TransactionAbortedError,
    TransactionTooLargeError,
    translated,
)
from .producer import Producer
from .types import ConsumerGroupMetadata, OffsetAndMetadata, TopicPartition
from .writer import Batch, BatchFuture, Chunk, RecordFuture, Writer, append_chunk

EPOCH_CHECK_S = 0.1  # a send looks at the epoch in the file at most this often (zombie fencing)


class TransactionPart(Protocol):
    """Work another client adds to a producer's transaction (e.g. a share consumer's acknowledgements)."""

    def apply(self, conn: apsw.Connection) -> None:
        """Do the work inside the commit's write transaction; raise to abort the whole transaction."""

    def finish(self, committed: bool) -> None:
        """After the commit (True) or an abort (False)."""


class _Waiter:
    """The ``writer`` of a transaction's batch: ``get()`` on a record's future waits for the
    transaction's end instead of writing anything."""

    def __init__(self) -> None:
        self.cond = threading.Condition()

    def write_through(self, batch: Batch | None, timeout: float | None = None) -> None:
        if batch is None:
            return
        with self.cond:
            if not self.cond.wait_for(lambda: batch.done, timeout):
                raise SqlogTimeoutError(f"the transaction did not end within {timeout} s")

    def ended(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def wake(self, due: float | None = None) -> None:
        pass

    def unregister(self, producer: object) -> None:
        pass


class TransactionalProducer(Producer):
    """A producer with a ``transactional_id``: ``init_transactions()`` once, then
    ``begin_transaction()``, ``send()``s, ``send_offsets_to_transaction()`` /
    ``send_acknowledgements_to_transaction()``, and ``commit_transaction()`` or ``abort_transaction()``.

    A record's future resolves at the commit (it raises `TransactionAbortedError` if the
    transaction was aborted). Use from one thread at a time, as Kafka's.
    """

    def __init__(self, writer: Writer, **config: Any) -> None:
        super().__init__(writer, **config)
        writer.unregister(self)  # its batches are written by commit_transaction(), never by the writer
        self._log_writer = writer
        self._waiter = _Waiter()
        self._writer = self._waiter  # type: ignore[assignment]
        self._batch_size = 2**62  # a send never writes its batch through
        tid = self.config["transactional_id"]
        self.transactional_id = groups.storable_str(tid, "transactional_id", 255)
        self._timeout_s = check_int("transaction_timeout_ms", self.config["transaction_timeout_ms"], 1, MAX_INT32) / 1000
        self._max_bytes = check_int("max_transaction_bytes", self.config["max_transaction_bytes"], 1, None)
        self._epoch: int | None = None
        self._fenced: ProducerFencedError | None = None
        self._in_txn = False
        self._deadline = 0.0
        self._next_epoch_check = 0.0
        self._reader: apsw.Connection | None = None
        self._offsets: dict[str, tuple[ConsumerGroupMetadata | None, dict[TopicPartition, tuple[int, int, str]]]] = {}
        self._parts: list[TransactionPart] = []
        self._batch = Batch(self, self._waiter)  # type: ignore[arg-type]

    # -- the protocol ----------------------------------------------------------------------
    def init_transactions(self) -> None:
        """Register this ``transactional_id``, bumping its epoch in the file: any older producer
        with the same id is fenced from now on (its open transaction can never commit)."""
        self._check_usable()
        if self._in_txn:
            raise IllegalStateError("init_transactions() inside a transaction; commit or abort it first")
        with self._engine.write() as conn:
            self._epoch = transactions.init_epoch(conn, self.transactional_id)

    def begin_transaction(self) -> None:
        """Start a transaction: the sends until commit or abort belong to it."""
        self._check_usable()
        if self._epoch is None:
            raise IllegalStateError("call init_transactions() once before begin_transaction()")
        if self._in_txn:
            raise IllegalStateError("a transaction is already open; commit_transaction() or abort_transaction() it")
        self._check_epoch()
        self._in_txn = True
        self._deadline = time.monotonic() + self._timeout_s

    def send(self, topic: str, value: Any = None, key: Any = None,
             headers: Iterable[tuple[str, bytes | None]] | None = None, partition: int | None = None,
             timestamp_ms: int | None = None, message_id: str | None = None) -> RecordFuture:
        """Add a record to the open transaction (`Producer.send`'s arguments); it is stored,
        and its future resolves, at ``commit_transaction()``."""
        self._check_sending()
        self._check_room()
        return super().send(topic, value, key, headers, partition, timestamp_ms, message_id)

    def send_batch(self, topic: str, values: Iterable[Any], partition: int | None = None,
                   timestamp_ms: int | None = None) -> BatchFuture:
        """Add many records to the open transaction (`Producer.send_batch`)."""
        self._check_sending()
        self._check_room()
        return super().send_batch(topic, values, partition, timestamp_ms)

    def send_offsets_to_transaction(self, offsets: Mapping[TopicPartition, OffsetAndMetadata | int],
                                    group_metadata: ConsumerGroupMetadata | str) -> None:
        """Commit these consumer offsets (the next record to read) with the transaction.

        ``group_metadata``: ``consumer.group_metadata()`` — fenced like the consumer's own commit:
        if the member no longer owns a partition it held then, ``commit_transaction()`` raises
        `CommitFailedError` and nothing of the transaction is applied — or a group id (a
        standalone committer: only while the group has no live members, as ``assign()`` consumers).
        """
        self._check_sending()
        if isinstance(group_metadata, str):
            group_id, md = groups.validate_group_id(group_metadata), None
        elif isinstance(group_metadata, ConsumerGroupMetadata) and group_metadata.group_id is not None:
            group_id, md = group_metadata.group_id, group_metadata
        else:
            raise InvalidConfigError(
                "group_metadata must be consumer.group_metadata() of a consumer with a group_id, or a group id, "
                f"not {group_metadata!r}"
            )
        if not isinstance(offsets, Mapping):
            raise InvalidConfigError("offsets must be a dict {TopicPartition: offset or OffsetAndMetadata}")
        rows: dict[TopicPartition, tuple[int, int, str]] = {}
        for tp, om in offsets.items():
            if not isinstance(tp, TopicPartition):
                raise InvalidConfigError(f"offsets keys must be TopicPartition, not {tp!r}")
            om = groups.offset_and_metadata(om, f"offset for {tp!r}", f"offset metadata for {tp!r}")
            meta = self._engine.topic_meta(tp.topic)
            if not 0 <= tp.partition < meta.partitions:
                raise InvalidConfigError(f"topic {tp.topic!r} has partitions 0..{meta.partitions - 1}, not {tp.partition}")
            rows[tp] = (meta.topic_id, om.offset, om.metadata)
        previous = self._offsets.get(group_id)
        merged = dict(previous[1]) if previous else {}
        merged.update(rows)
        self._offsets[group_id] = (md, merged)

    def send_acknowledgements_to_transaction(self, share_consumer: Any) -> None:
        """Apply the share consumer's pending acknowledgements (``acknowledge()`` calls not yet
        committed) with the transaction: a worker writes its results and accepts its jobs in one
        atomic step. If a record's lock expired and it was delivered again meanwhile,
        ``commit_transaction()`` raises `InvalidRecordStateError` and nothing is applied."""
        self._check_sending()
        take = getattr(share_consumer, "transaction_acknowledgements", None)
        if take is None:
            raise InvalidConfigError(f"send_acknowledgements_to_transaction() takes a ShareConsumer, not {share_consumer!r}")
        self._parts.append(take())

    def commit_transaction(self) -> None:
        """Make the transaction's records, offsets and acknowledgements visible at once, or none of
        it: `ProducerFencedError` (a newer producer took the id), `CommitFailedError` (the group
        moved on), `TransactionAbortedError` (past ``transaction_timeout_ms``); after any of them
        the transaction is aborted."""
        self._check_sending()
        batch, offsets, parts = self._batch, self._offsets, self._parts
        epoch = self._epoch
        assert epoch is not None
        try:
            with self._engine.write() as conn:
                transactions.check_epoch(conn, self.transactional_id, epoch)
                for chunk in batch.chunks.values():
                    append_chunk(conn, chunk, self._engine.path)
                for group_id, (md, rows) in offsets.items():
                    keys = [(t, tp.partition) for tp, (t, _, _) in rows.items()]
                    fence = (groups.Fence(None) if md is None else
                             groups.fence_for(conn, group_id, md.member_id, md.generation_id, keys))
                    groups.commit(conn, group_id, [(tp, t, o, m) for tp, (t, o, m) in rows.items()], fence)
                for part in parts:
                    part.apply(conn)
        except ProducerFencedError as exc:
            self._fenced = exc
            self._end(False, exc)
            raise
        except SqlogError as exc:
            self._end(False, TransactionAbortedError(f"the transaction was aborted: {exc}"))
            raise
        except BaseException as exc:
            self._end(False, TransactionAbortedError(f"the transaction was aborted: {exc!r}"))
            raise
        self._end(True, None)
        self._engine.signal.notify()

    def abort_transaction(self) -> None:
        """Drop the open transaction: nothing of it was ever written."""
        if not self._in_txn:
            raise IllegalStateError("abort_transaction() without an open transaction")
        self._end(False, TransactionAbortedError("the transaction was aborted (abort_transaction())"))

    # -- helpers ---------------------------------------------------------------------------
    def _end(self, committed: bool, error: SqlogError | None) -> None:
        batch = self._batch
        batch.error = error
        batch.done = True
        self._batch = Batch(self, self._waiter)  # type: ignore[arg-type]
        self._last_chunk = Chunk("", -1, -1, self._batch)
        parts, self._parts, self._offsets = self._parts, [], {}
        self._in_txn = False
        self._waiter.ended()
        for part in parts:
            part.finish(committed)

    def _check_usable(self) -> None:
        if self._closed or self._engine.closed:
            raise LogClosedError("the producer (or its log) is closed")
        if self._fenced is not None:
            raise self._fenced

    def _check_sending(self) -> None:
        self._check_usable()
        if not self._in_txn:
            raise IllegalStateError("no open transaction: call begin_transaction() first (after init_transactions())")
        now = time.monotonic()
        if now > self._deadline:
            self._end(False, TransactionAbortedError("the transaction outlived transaction_timeout_ms and was aborted"))
            raise TransactionAbortedError(
                f"the transaction was open longer than transaction_timeout_ms={int(self._timeout_s * 1000)} and was "
                "aborted (nothing of it is visible); begin a new one"
            )
        if now >= self._next_epoch_check:
            self._check_epoch()

    def _check_room(self) -> None:
        if self._batch.bytes >= self._max_bytes:
            raise TransactionTooLargeError(
                f"the transaction holds {self._batch.bytes} bytes, max_transaction_bytes={self._max_bytes}: "
                "commit_transaction() what it holds and continue in a new one, or raise max_transaction_bytes"
            )

    def _check_epoch(self) -> None:
        """Fenced if a newer producer took the id (read without the write lock)."""
        self._next_epoch_check = time.monotonic() + EPOCH_CHECK_S
        if self._reader is None:
            self._reader = self._engine.reader()
        assert self._epoch is not None
        with translated(self._engine.path):
            try:
                transactions.check_epoch(self._reader, self.transactional_id, self._epoch)
            except ProducerFencedError as exc:
                self._fenced = exc
                if self._in_txn:
                    self._end(False, exc)
                raise

    def take_batch(self) -> Batch | None:
        return None  # never the writer's: commit_transaction() writes it

    def pending_rows(self) -> int:
        return 0

    def due(self) -> float | None:
        return None

    def flush(self, timeout: float | None = None) -> None:
        """Nothing to do: a transaction's records are written by ``commit_transaction()``."""

    def close(self, timeout: float | None = None) -> None:
        """Abort an open transaction and close; closing twice is harmless."""
        if self._closed:
            return
        if self._in_txn:
            self._end(False, TransactionAbortedError("the producer was closed inside the transaction"))
        self._closed = True
        if self._reader is not None:
            self._reader.close()
            self._reader = None
