"""Group commit: everything producers have waiting goes into one ``BEGIN IMMEDIATE`` transaction.

A send only appends to its producer's open batch. The batch is written by whichever comes
first: the sending thread itself once the batch is full, a thread blocking in ``get()`` or
``flush()`` (the leader; threads arriving meanwhile find their records written or join the
next write), or the linger thread for records nobody waits on. Sealing and writing happen
under one mutex, so batches reach the table in the order they were sealed.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from typing import Protocol

import apsw

from .config import check_timeout
from .engine import Engine
from .errors import (
    LogClosedError,
    SqlogError,
    SqlogTimeoutError,
    UnknownTopicOrPartitionError,
    translated,
)
from .retention import append_rows
from .storage import transaction
from .transactions import append_deduped
from .types import RecordMetadata


class BatchSource(Protocol):
    """What the writer asks of a producer: its open batch, when it is due, and where to report."""

    def take_batch(self) -> Batch | None:
        """Seal and return the open batch (None when empty); a new one opens."""

    def pending_rows(self) -> int:
        """Records in the open batch."""

    def due(self) -> float | None:
        """When the open batch's linger ends (monotonic seconds), None when it is empty."""

    def failed(self, error: SqlogError) -> None:
        """A batch of this source failed: report it at the next flush."""

    def after_fork(self) -> None:
        """In a forked child: drop the parent's unwritten batch."""


class Chunk:
    """The records of one batch bound for one partition: ``(timestamp_ms, key, value, headers, check)``
    rows, ``check`` their `checksum.crcs` value (taken by ``send()``)."""

    __slots__ = ("topic", "topic_id", "partition", "rows", "bytes", "max_ts", "base_offset", "error", "batch",
                 "ids", "results")

    def __init__(self, topic: str, topic_id: int, partition: int, batch: Batch) -> None:
        self.topic = topic
        self.topic_id = topic_id
        self.partition = partition
        self.rows: list[tuple[int, bytes | None, bytes | None, bytes | None, int]] = []  # with checksum.crcs
        self.bytes = 0
        self.max_ts = -1
        self.base_offset = -1
        self.error: SqlogError | None = None
        self.batch = batch
        self.ids: list[str | None] | None = None  # message ids, per row (send(message_id=...) chunks only)
        self.results: list[RecordMetadata] | None = None  # per row, once a chunk with ids held a duplicate


class Batch:
    """One producer's records between two writes; done once committed (or failed)."""

    __slots__ = ("source", "writer", "chunks", "bytes", "created", "done", "error")

    def __init__(self, source: BatchSource, writer: Writer) -> None:
        self.source = source
        self.writer = writer
        self.chunks: dict[tuple[int, int], Chunk] = {}
        self.bytes = 0
        self.created = time.monotonic()
        self.done = False
        self.error: SqlogError | None = None


class _ChunkFuture:
    """What the futures of one chunk share: waiting for its batch, and its error."""

    __slots__ = ("_chunk",)

    def __init__(self, chunk: Chunk) -> None:
        self._chunk = chunk

    def done(self) -> bool:
        """True once the records are committed or have failed."""
        return self._chunk.batch.done

    def _error(self, timeout: float | None) -> SqlogError | None:
        """Write the records through unless they are written already; the write's error, or None.
        Returned, not raised: the error is shared by every future of the batch, and a raise
        ties the raising frames to it."""
        chunk = self._chunk
        if not chunk.batch.done:
            chunk.batch.writer.write_through(chunk.batch, timeout)
        return chunk.error or chunk.batch.error

    def _wait(self, timeout: float | None) -> Chunk:
        check_timeout(timeout)
        error = self._error(timeout)
        if error is not None:
            raise error
        return self._chunk

    def exception(self, timeout: float | None = None) -> SqlogError | None:
        """The error the send failed with, or None once it succeeded."""
        check_timeout(timeout)  # raised, not returned as the send's error
        try:
            return self._error(timeout)
        except SqlogTimeoutError:
            raise
        except SqlogError as exc:  # the write through failed before the batch could
            return exc


class RecordFuture(_ChunkFuture):
    """The result of ``Producer.send``: ``get()`` blocks until the record is durable."""

    __slots__ = ("_index",)

    def __init__(self, chunk: Chunk, index: int) -> None:
        self._chunk = chunk
        self._index = index

    def get(self, timeout: float | None = None) -> RecordMetadata:
        """Wait until the record is durable and return where it was stored.

        Raises the write's `SqlogError`, or `SqlogTimeoutError` after ``timeout`` seconds.
        """
        chunk = self._wait(timeout)
        index = self._index
        if chunk.results is not None:
            return chunk.results[index]
        return RecordMetadata(chunk.topic, chunk.partition, chunk.base_offset + index, chunk.rows[index][0])


class BatchFuture(_ChunkFuture):
    """The result of ``Producer.send_batch``: one future for many records of one partition."""

    __slots__ = ("_start", "_count")

    def __init__(self, chunk: Chunk, start: int, count: int) -> None:
        self._chunk = chunk
        self._start = start
        self._count = count

    def get(self, timeout: float | None = None) -> list[RecordMetadata]:
        """Wait until all the records are durable; where each was stored, in the order given."""
        chunk = self._wait(timeout)
        base = chunk.base_offset
        rows = chunk.rows
        return [
            RecordMetadata(chunk.topic, chunk.partition, base + i, rows[i][0])
            for i in range(self._start, self._start + self._count)
        ]


_RETRY_S = 0.005  # how long a get() waits on a busy mutex before trying it again
LOOK_S = 0.005
"""While sends keep coming, the linger thread looks for due batches at least this often."""
IDLE_S = 1.0
"""After this long with nothing to write, the linger thread sleeps until a send wakes it."""

def append_chunk(conn: apsw.Connection, chunk: Chunk, path: str) -> None:
    """Append one chunk inside the caller's write transaction, deduplicating by message id when
    it has ids; sets ``base_offset`` (and ``results``). UnknownTopicOrPartitionError if the
    partition is gone; the dedupe's InvalidConfigError."""
    if chunk.ids is None:
        base = append_rows(conn, chunk.topic_id, chunk.partition, chunk.rows, chunk.bytes, chunk.max_ts, path)
        if base is None:
            raise UnknownTopicOrPartitionError(f"topic {chunk.topic!r} partition {chunk.partition} no longer exists (deleted?)")
        chunk.base_offset = base
        return
    placed = append_deduped(conn, append_rows, chunk.topic_id, chunk.partition, chunk.rows, chunk.ids, chunk.bytes,
                            chunk.max_ts, path)
    if placed is None:
        raise UnknownTopicOrPartitionError(f"topic {chunk.topic!r} partition {chunk.partition} no longer exists (deleted?)")
    chunk.base_offset, per_row = placed
    chunk.results = None if per_row is None else [
        RecordMetadata(chunk.topic, p, o, ts, dup) for p, o, ts, dup in per_row
    ]


class Writer:
    """The log's single writer connection, shared by all its producers (one per Log)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine  # its connection and mutex (which also guards admin use of the connection)
        self._path = engine.path
        self._producers: weakref.WeakSet[BatchSource] = weakref.WeakSet()
        # The same, as a tuple of references rebuilt at (un)registration: every write goes over
        # the producers, and iterating a WeakSet costs a Python generator and a guard each time.
        self._sources: tuple[weakref.ref[BatchSource], ...] = ()
        self._cond = threading.Condition()  # wakes the linger thread
        self._written = threading.Condition()  # notified after every write through the mutex
        self._writes = 0
        self._last_records = 0  # records and duration of the last write, for _gather()
        self._last_seconds = 0.0
        self._closed = False
        self._thread: threading.Thread | None = None
        self._next_look = math.inf  # when the linger thread looks at the producers next, at the latest
        engine.at_fork(self.after_fork)
        engine.at_close(self.close)

    # -- producers -------------------------------------------------------------------------
    def register(self, producer: BatchSource) -> None:
        with self._cond:
            if self._closed:
                raise LogClosedError(f"{self._path}: the log is closed")
            self._producers.add(producer)
            self._sources = tuple(weakref.ref(p) for p in self._producers)
            if self._thread is None:
                self._thread = threading.Thread(target=self._linger_loop, name="sqlog-linger", daemon=True)
                self._thread.start()

    def unregister(self, producer: BatchSource) -> None:
        with self._cond:
            self._producers.discard(producer)
            self._sources = tuple(weakref.ref(p) for p in self._producers)

    def wake(self, due: float | None = None) -> None:
        """A batch went from empty to non-empty and is ``due`` (monotonic; None: now): the linger
        thread should plan its write. Skipped while the thread will look by then anyway: a
        waking thread costs the sender a GIL hand-off, which is most of the difference between a
        durable ``send().get()`` and a raw commit once the fsync is paid."""
        if due is not None and due >= self._next_look:
            return
        with self._cond:
            self._cond.notify()

    # -- writing ---------------------------------------------------------------------------
    def _write_locked(self, batch: Batch | None, blocking: bool, gather: bool, timeout: float = -1) -> bool:
        """Take the mutex (False if not within ``timeout``, or at once if not ``blocking``) and
        write everything waiting, unless ``batch`` is done by then."""
        mutex = self.engine.mutex
        if not mutex.acquire(blocking, timeout):
            return False
        wrote = False
        try:
            if batch is None or not batch.done:
                if gather:
                    self._gather()
                wrote = self._write(
                    [b for r in self._sources if (p := r()) is not None and (b := p.take_batch()) is not None])
        finally:
            mutex.release()
            if wrote:
                # Failed writes notify too: sends awaited through a commit listener (sqlog.aio)
                # must see their error; a blocked poll woken by it only looks again. After the
                # mutex is released: a listener may read (sqlog.aio reads for a waiting task).
                self.engine.signal.notify()
            with self._written:
                self._writes += 1
                self._written.notify_all()
        return True

    def write_through(self, batch: Batch | None, timeout: float | None = None) -> None:
        """Write everything waiting unless ``batch`` is already done (None: write everything).

        A thread whose batch is being written by another waits for that write to end rather
        than for the mutex, so it returns as soon as its records are durable and the next
        write (by whoever takes the mutex first) carries everything sent meanwhile.
        """
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while batch is None or not batch.done:
            seen = self._writes
            if self._write_locked(batch, blocking=batch is None, gather=batch is not None,
                                  timeout=-1 if deadline is None or batch is not None
                                  else max(deadline - time.monotonic(), 0.0)):
                return
            if batch is None:
                raise SqlogTimeoutError(f"records not written within {timeout} s")
            with self._written:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise SqlogTimeoutError(f"record not written within {timeout} s")
                # The mutex may be held by admin work that signals nothing: look again soon.
                self._written.wait_for(lambda: self._writes != seen, _RETRY_S if remaining is None
                                       else min(remaining, _RETRY_S))

    def _gather(self) -> None:
        """Adaptive group commit: before writing for a waiting ``get()``, give the threads the
        last write released a moment to send again, so one commit serves them all.

        Waits only while fewer records are pending than the last write carried, and never
        longer than that write took (at most 2 ms): a lone sender never waits.
        """
        target = self._last_records
        if target <= 1:
            return
        until = time.monotonic() + min(self._last_seconds, 0.002)
        producers = [p for r in self._sources if (p := r()) is not None]
        while time.monotonic() < until:
            if sum(p.pending_rows() for p in producers) >= target:
                return
            time.sleep(0)  # let the other threads take the GIL and send

    def _write(self, batches: list[Batch]) -> bool:
        """Commit ``batches`` in one transaction; the caller holds ``mutex`` and, if this returns
        True (there were batches), notifies the commit signal once it released it."""
        if not batches:
            return False
        conn = self.engine.conn
        error: SqlogError | None = None
        began = time.monotonic()
        self.engine.signal.writing()
        try:
            with translated(self._path), transaction(conn):
                for batch in batches:
                    for chunk in batch.chunks.values():
                        self._append(conn, chunk)
        except SqlogError as exc:
            error = exc
        except Exception as exc:  # anything translated() does not name: the batches still complete
            error = SqlogError(f"{self._path}: write failed: {exc!r}")
        except BaseException:
            self.engine.signal.notify()  # ends the echo window `writing` opened
            raise
        self._last_seconds = time.monotonic() - began
        self._last_records = sum(len(c.rows) for b in batches for c in b.chunks.values())
        for batch in batches:
            batch.error = error
            batch.done = True
            # Each chunk points back at its batch (its futures ask it whether it is done): dropped
            # here, the cycle would be freed only by a garbage collection, which by then has
            # promoted it, rows and all, to an older generation: full collections then free
            # thousands of rows in one pause.
            batch.chunks = {}
            if error is not None:
                batch.source.failed(error)
        return True

    def _append(self, conn: apsw.Connection, chunk: Chunk) -> None:
        if chunk.ids is not None:
            try:
                append_chunk(conn, chunk, self._path)
            except SqlogError as exc:  # e.g. the dedupe window was removed: only this chunk fails
                chunk.error = exc
            return
        base = append_rows(conn, chunk.topic_id, chunk.partition, chunk.rows, chunk.bytes, chunk.max_ts, self._path)
        if base is None:
            chunk.error = UnknownTopicOrPartitionError(
                f"topic {chunk.topic!r} partition {chunk.partition} no longer exists (deleted?)"
            )
            return
        chunk.base_offset = base

    # -- lingering records -----------------------------------------------------------------
    def _linger_loop(self) -> None:
        # While sends keep coming the thread stays armed: it looks at least every LOOK_S, so a
        # send whose batch is due later needs not wake it (`wake`); after IDLE_S with nothing
        # to write it disarms and sleeps until woken (an idle log costs no wake-ups). Each
        # ``_next_look`` is published before the producers are looked at, so a send either is
        # seen by that look or reads the new ``_next_look`` and wakes the thread.
        idle_since = time.monotonic()
        seen = self._writes
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                if self._writes != seen:  # a write by anyone (a get(), a full batch) is activity too
                    seen = self._writes
                    idle_since = now
                armed = now - idle_since < IDLE_S
                self._next_look = now + LOOK_S if armed else math.inf
                due = self._next_due()
                if due is None:
                    if self._cond.wait(LOOK_S if armed else None):
                        idle_since = time.monotonic()  # woken by a send
                    continue
                idle_since = now
                delay = due - now
                if delay > 0:
                    self._next_look = min(due, self._next_look)
                    self._cond.wait(min(delay, LOOK_S))
                    continue
            try:
                self.write_through(None)
            except SqlogError:
                pass  # the error is on every future of the failed batches

    def _next_due(self) -> float | None:
        due = None
        for r in self._sources:
            p = r()
            if p is None:
                continue
            t = p.due()
            if t is not None and (due is None or t < due):
                due = t
        return due

    def after_fork(self) -> None:
        """Continue in a forked child (on the engine's new connection), dropping the parent's unwritten batches."""
        self._cond = threading.Condition()
        self._thread = None
        self._next_look = math.inf
        for producer in list(self._producers):
            producer.after_fork()
        if self._producers:
            self._thread = threading.Thread(target=self._linger_loop, name="sqlog-linger", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Write what is waiting and stop the linger thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self.write_through(None)
