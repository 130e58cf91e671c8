"""asyncio front door, shaped like aiokafka: ``async with sqlog.aio.open("app.db") as log: ...``.

SQLite work never runs on the event loop: admin calls and the clients' reads and commits run on a
small thread pool owned by the log, each client's calls one at a time and in order (a "strand"
on the pool, not a thread per client). Waiting is event-driven: a task awaiting records
registers its client's read with the log's `_Waker`; the engine's commit signal (commits in this
process, or the one shared watcher thread per log for other processes' commits, `Engine.watch`)
runs the registered reads, in the signalling thread where that is safe, and wakes the loop once
through ``call_soon_threadsafe``; a task awaiting records holds no thread and polls nothing.
Records are read into the sync client's buffer off the loop and
handed out on the loop, so a cancelled ``getone()``/``getmany()`` loses nothing: positions move
(and share records become deliveries) only when a call returns them, and the next call does.

The producer wraps the sync producer: ``send()`` appends to its batch on the loop (microseconds,
no I/O) and the log's writer thread commits batches (group commit: a thousand tasks sending at
once share transactions); futures are resolved on the loop from the commit signal.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import functools
import inspect
import itertools
import math
import operator
import os
import re
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping
from typing import Any, Generic, TypeVar

import sqlog

from . import clock
from .errors import InvalidConfigError, LogClosedError, SqlogError
from .types import OffsetAndMetadata, OffsetAndTimestamp, Record, RecordMetadata, ShareRecord, TopicPartition

__all__ = [
    "AIOConsumer",
    "AIOLog",
    "AIOProducer",
    "AIOShareConsumer",
    "ConsumerRebalanceListener",
    "open",
]

T = TypeVar("T")
R = TypeVar("R", Record, ShareRecord)  # what a reading client hands out

POOL_THREADS = 8
"""Threads of a log's pool (created as needed): admin calls and clients' reads and commits."""

WAIT_SLICE_S = 0.5
"""A waiting getmany() looks again at least this often (group coordination, new topics)."""

MAX_PENDING_SENDS = 10_000
"""A producer's sends not yet durable before ``send()`` waits for the writer (back-pressure, as
Kafka's ``buffer.memory``): bounds memory, the size of one commit and the garbage collector's work."""

READ_AHEAD_POLLS = 8
"""An async consumer outside a group reads up to this many ``max_poll_records`` per trip off the
loop, so the thread hop is paid once for several ``getmany()`` calls."""

RESOLVE_SLICE = 1000
"""Send futures resolved per loop callback (about a millisecond), so a large commit does not stall the loop."""


class _SendFuture(asyncio.Future):  # type: ignore[type-arg]
    """A send's future; ``watched`` once anything added a callback (an awaiting task, gather(),
    add_done_callback()), the other way besides a reference to see it resolve."""

    watched = False

    def add_done_callback(self, fn: Callable[..., object], *, context: contextvars.Context | None = None) -> None:
        self.watched = True
        super().add_done_callback(fn, context=context)


def _refs(obj: object) -> int:
    return sys.getrefcount(obj)


def _unseen_refs(popped: bool) -> int:
    """What `_refs` says of an object only a deque and the caller's local variable hold: just
    popped from the deque (``popped``, as `AIOProducer._resolve` does) or read from its tail (as
    `AIOProducer.send` does). A send future at that count and not ``watched`` is referenced by
    nothing else, so nothing can ever see its result. -1 (never) where CPython's reference
    counts are not there to ask."""
    if not hasattr(sys, "getrefcount"):
        return -1
    pending = collections.deque([object()])
    obj = pending.popleft() if popped else pending[-1]
    return _refs(obj)


_UNSEEN = _unseen_refs(popped=True)
_UNSEEN_TAIL = _unseen_refs(popped=False)


def _report_dropped(loop: asyncio.AbstractEventLoop, exc: BaseException) -> None:
    """A failed send whose future was dropped unseen: a future with the error, dropped in turn,
    so asyncio reports it as it would have reported the dropped one ("exception was never retrieved")."""
    _SendFuture(loop=loop).set_exception(exc)

_IN_LISTENER: contextvars.ContextVar[object] = contextvars.ContextVar("sqlog_aio_in_listener", default=None)


# -- plumbing --------------------------------------------------------------------------------------
class _Strand:
    """Runs one client's blocking calls on the pool in submission order, one at a time."""

    def __init__(self, pool: concurrent.futures.Executor) -> None:
        self._pool = pool
        self._queue: collections.deque[tuple[concurrent.futures.Future[Any], Callable[[], Any]]] = collections.deque()
        self._lock = threading.Lock()
        self._running = False

    def idle(self) -> bool:
        """Nothing queued or running: the loop may use the client itself (submissions come from the loop)."""
        return not self._running

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        cf: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            self._queue.append((cf, fn))
            start = not self._running
            self._running = True
        if start:
            try:
                self._pool.submit(self._drain)
            except RuntimeError:  # the pool is shut down: the log is closed
                with self._lock:
                    self._queue.clear()
                    self._running = False
                cf.set_exception(LogClosedError("the log is closed"))
        return cf

    def claim(self) -> bool:
        """Take the strand, if idle, to run a call in this thread (then `release`)."""
        with self._lock:
            if self._running:
                return False
            self._running = True
            return True

    def release(self) -> None:
        """End a `claim`: calls queued meanwhile run next, on the pool."""
        with self._lock:
            self._running = bool(self._queue)
            if not self._running:
                return
        try:
            self._pool.submit(self._drain)
        except RuntimeError:  # the pool is shut down: the log is closed
            with self._lock:
                queued, self._queue = self._queue, collections.deque()
                self._running = False
            for cf, _ in queued:
                cf.set_exception(LogClosedError("the log is closed"))

    def _drain(self) -> None:
        while True:
            with self._lock:
                cf, fn = self._queue.popleft()
            ok, value = False, None
            if cf.set_running_or_notify_cancel():
                try:
                    value, ok = fn(), True
                except BaseException as exc:  # handed to the awaiting task
                    value = exc
            with self._lock:
                more = bool(self._queue)
                if not more:
                    self._running = False  # before the result: an awaiting task then finds the strand idle
            if cf.running():
                if ok:
                    cf.set_result(value)
                else:
                    cf.set_exception(value)  # type: ignore[arg-type]
            if not more:
                return


_Fetched = tuple[int, int]
"""What a fetch made on a commit hands a waiting task: records buffered, and the commit signal's
``seq`` before it read."""


class _Waker:
    """Reads for a log's waiting tasks when commits come: one listener on the engine's commit
    signal, no thread of its own. A task waiting for records registers its client's fetch; the
    next commit signal (in the committing thread, or in the engine's watcher for other
    processes' commits) takes every registered fetch at once and runs it on its client's strand,
    then wakes the loop with one ``call_soon_threadsafe`` for them all.

    Where it may, the signalling thread reads itself: a record committed in this process then
    reaches a waiting task through the loop alone, as a blocked ``poll()`` is woken directly.
    It may not on the loop's thread, while the write mutex is held, inside such a read, or for
    a client whose read could wait for the loop or write records (a rebalance listener, a share
    consumer's acquiring transaction): those go to the pool as one job. (A consumer's
    deserializers run in the read, so in the committing thread: they should be quick.)"""

    def __init__(self, engine: Any, loop: asyncio.AbstractEventLoop, pool: concurrent.futures.Executor) -> None:
        self._engine = engine
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._pool = pool
        self._lock = threading.Lock()  # guards _fetches (the loop, committing threads, the pool)
        # A waiting task's future -> its client's strand, fetch, and whether any thread may run it.
        self._fetches: dict[asyncio.Future[_Fetched | None], tuple[_Strand, Callable[[], int], bool]] = {}
        self._reading = threading.local()  # .inside: this thread runs fetches for the waker now
        self._unlisten = engine.signal.listen(self._on_commit)

    @property
    def seq(self) -> int:
        return int(self._engine.signal.seq)

    def _on_commit(self) -> None:  # the signalling thread
        if not self._fetches:
            return
        here = (threading.get_ident() != self._loop_thread and not self._engine.mutex.locked()
                and not getattr(self._reading, "inside", False))
        results: list[tuple[asyncio.Future[_Fetched | None], Any]] = []
        inline: list[tuple[asyncio.Future[_Fetched | None], _Strand, Callable[[], int]]] = []
        pooled: list[tuple[asyncio.Future[_Fetched | None], _Strand, Callable[[], int]]] = []
        with self._lock:
            # Taken and claimed under the lock: a task that stops waiting either finds its fetch
            # still registered (and removes it) or finds its strand busy with it.
            seq = self.seq
            fetches, self._fetches = self._fetches, {}
            for fut, (strand, fetch, anywhere) in fetches.items():
                if not strand.claim():
                    results.append((fut, None))  # busy: the task fetches itself
                else:
                    (inline if here and anywhere else pooled).append((fut, strand, fetch))
        if pooled:
            try:
                self._pool.submit(self._run, pooled, seq, [])
            except RuntimeError:  # the pool is shut down: the log is closed
                for fut, strand, _ in pooled:
                    strand.release()
                    results.append((fut, None))
        if inline:
            self._reading.inside = True
            try:
                self._run(inline, seq, results)
            finally:
                self._reading.inside = False
        elif results:
            self._post(results)

    def _run(self, claimed: list[tuple[asyncio.Future[_Fetched | None], _Strand, Callable[[], int]]], seq: int,
             results: list[tuple[asyncio.Future[_Fetched | None], Any]]) -> None:
        """Run claimed fetches (their strands released after each); wake the loop with all results."""
        for fut, strand, fetch in claimed:
            try:
                results.append((fut, (fetch(), seq)))
            except BaseException as exc:  # handed to the waiting task
                results.append((fut, exc))
            finally:
                strand.release()
        self._post(results)

    def _post(self, results: list[tuple[asyncio.Future[_Fetched | None], Any]]) -> None:
        try:
            self._loop.call_soon_threadsafe(_deliver, results)
        except RuntimeError:  # the loop is closed
            pass

    async def fetch_on_commit(self, strand: _Strand, fetch: Callable[[], int], seq: int, timeout: float,
                              anywhere: bool = False) -> _Fetched | None:
        """Wait for a commit after ``seq`` and run ``fetch`` on ``strand`` then (in any thread if
        ``anywhere``, else on the pool): its result and the ``seq`` before it read; None at once if
        a commit came already, or after ``timeout`` s, or if the client was busy then (the caller
        fetches itself)."""
        fut: asyncio.Future[_Fetched | None] = self._loop.create_future()
        with self._lock:
            self._fetches[fut] = (strand, fetch, anywhere)
        handle = self._loop.call_later(timeout, _set_none, fut)
        try:
            if self.seq != seq:  # committed while we registered: its listener may have found no fetch
                return None
            return await fut
        finally:
            handle.cancel()
            if fut in self._fetches:
                with self._lock:
                    self._fetches.pop(fut, None)

    def wake_all(self) -> None:
        """End every wait now (a client stops: its tasks look at it again)."""
        with self._lock:
            fetches, self._fetches = self._fetches, {}
        for fut in fetches:
            _set_none(fut)

    def close(self) -> None:
        self._unlisten()
        self.wake_all()


def _deliver(results: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for fut, result in results:
        if fut.done():
            continue  # cancelled: what the fetch read stays buffered for the next call
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)


def _set_none(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _check_ms(name: str, value: object, allow_none: bool = False) -> float:
    if value is None and allow_none:
        return math.inf
    if type(value) not in (int, float) or not 0 <= value < math.inf:  # type: ignore[operator]
        raise InvalidConfigError(f"{name} must be a number of ms >= 0, not {value!r}")
    return value / 1000  # type: ignore[operator]


def _check_max(max_records: object, default: int) -> int:
    limit = default if max_records is None else max_records
    if type(limit) is not int or limit < 1:
        raise InvalidConfigError(f"max_records must be an int >= 1 or None, not {max_records!r}")
    return limit


_WHERE = operator.attrgetter("topic", "partition")


def _count(grouped: dict[TopicPartition, list[Any]]) -> int:
    return sum(map(len, grouped.values()))


def _grouped(records: list[Any]) -> dict[TopicPartition, list[Any]]:
    out: dict[TopicPartition, list[Any]] = {}
    for (topic, partition), run in itertools.groupby(records, key=_WHERE):
        out.setdefault(TopicPartition(topic, partition), []).extend(run)
    return out


# -- the log -----------------------------------------------------------------------------------------
def _admin(name: str) -> Any:
    sync = getattr(sqlog.Log, name)

    async def call(self: AIOLog, *args: Any, **kwargs: Any) -> Any:
        return await self.run(functools.partial(getattr(self.log, name), *args, **kwargs))

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"Coroutine of `sqlog.Log.{name}`: {(sync.__doc__ or '').strip().splitlines()[0]}"
    return call


class AIOLog:
    """An open sqlog file for asyncio; create with ``sqlog.aio.open``. Admin calls are coroutines
    run on the log's thread pool; use from the event loop that opened it."""

    def __init__(self, log: sqlog.Log, pool: concurrent.futures.ThreadPoolExecutor,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.log = log
        """The sync `sqlog.Log` beneath (for code that runs in threads)."""
        self.engine = log.engine
        self.loop = loop
        self.pool = pool
        """The thread pool the log's blocking calls run on."""
        self._loop_thread = threading.get_ident()
        self.waker = _Waker(log.engine, loop, pool)
        self._clients: weakref.WeakSet[Any] = weakref.WeakSet()
        self._closing = False

    @property
    def path(self) -> str:
        return self.log.path

    @property
    def closed(self) -> bool:
        return self.log.closed

    async def run(self, fn: Callable[[], T]) -> T:
        """Run a blocking call on the log's pool and await it."""
        if self._closing:
            raise LogClosedError(f"{self.path}: the log is closed; open it again with sqlog.aio.open()")
        return await self.loop.run_in_executor(self.pool, fn)

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread

    create_topic = _admin("create_topic")
    list_topics = _admin("list_topics")
    describe_topic = _admin("describe_topic")
    alter_topic = _admin("alter_topic")
    delete_topic = _admin("delete_topic")
    list_groups = _admin("list_groups")
    describe_group = _admin("describe_group")
    delete_group = _admin("delete_group")
    alter_group_offsets = _admin("alter_group_offsets")
    reset_group_offsets = _admin("reset_group_offsets")
    list_share_groups = _admin("list_share_groups")
    describe_share_group = _admin("describe_share_group")
    delete_share_group = _admin("delete_share_group")
    sweep = _admin("sweep")
    check = _admin("check")
    checkpoint = _admin("checkpoint")
    stats = _admin("stats")

    # -- clients -----------------------------------------------------------------------------
    def producer(self, **config: Any) -> AIOProducer:
        """A new async producer; config as `sqlog.Producer` (``linger_ms`` defaults to 0, as aiokafka's)."""
        return self._track(AIOProducer(self, **config))

    def consumer(self, *topics: str, **config: Any) -> AIOConsumer:
        """A new async consumer (subscribed to ``topics`` if given); config as `sqlog.Consumer`."""
        return self._track(AIOConsumer(self, *topics, **config))

    def share_consumer(self, group_id: str, **config: Any) -> AIOShareConsumer:
        """A new async member of share group ``group_id``; config as `sqlog.ShareConsumer`."""
        return self._track(AIOShareConsumer(self, group_id, **config))

    def _track(self, client: T) -> T:
        if self._closing:
            raise LogClosedError(f"{self.path}: the log is closed; open it again with sqlog.aio.open()")
        self._clients.add(client)
        return client

    async def close(self) -> None:
        """Stop the clients (producers flush, consumers commit as configured), then close the log."""
        if self._closing:
            return
        try:
            for client in list(self._clients):
                try:
                    await client.stop()
                except SqlogError:
                    pass  # e.g. a final auto-commit refused: the log closes all the same
            await self.run(self.log.close)
        finally:
            self._closing = True
            self.waker.close()
            self.pool.shutdown(wait=False)

    async def __aenter__(self) -> AIOLog:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<sqlog.aio.AIOLog {self.path!r}{' closed' if self._closing else ''}>"


class _Opening:
    """What ``sqlog.aio.open()`` returns: await it, or use it with ``async with``."""

    def __init__(self, path: str | os.PathLike[str], options: dict[str, Any]) -> None:
        self._path = path
        self._options = options
        self._log: AIOLog | None = None

    async def _open(self) -> AIOLog:
        loop = asyncio.get_running_loop()
        pool = concurrent.futures.ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="sqlog-aio")
        try:
            log = await loop.run_in_executor(pool, functools.partial(sqlog.open, self._path, **self._options))
        except BaseException:
            pool.shutdown(wait=False)
            raise
        return AIOLog(log, pool, loop)

    def __await__(self) -> Generator[Any, None, AIOLog]:
        return self._open().__await__()

    async def __aenter__(self) -> AIOLog:
        self._log = await self._open()
        return self._log

    async def __aexit__(self, *exc: object) -> None:
        if self._log is not None:
            await self._log.close()


def open(path: str | os.PathLike[str], **options: Any) -> _Opening:  # noqa: A001 - sqlog.open's name
    """Open (creating if needed) the log at ``path`` for asyncio, with `sqlog.open`'s options:
    ``log = await sqlog.aio.open(path)`` or ``async with sqlog.aio.open(path) as log``."""
    return _Opening(path, options)


# -- the producer --------------------------------------------------------------------------------------
_UNKNOWN = object()


class _Run:
    """Consecutive sends of plain bytes (no key, headers or timestamp) to one topic and
    ``partition`` argument within one wall-clock millisecond: handed to the sync producer as one
    ``send_batch`` (the timestamp each record would have had), so the loop's share of such a
    send is a list append and its future."""

    __slots__ = ("topic", "partition", "timestamp_ms", "values", "future", "metadata", "failure")

    def __init__(self, topic: str, partition: int | None, timestamp_ms: int) -> None:
        self.topic = topic
        self.partition = partition
        self.timestamp_ms = timestamp_ms
        self.values: list[bytes] = []
        self.future: Any = None  # the sync producer's BatchFuture, once handed over
        self.metadata: list[RecordMetadata] | None = None
        self.failure: object = _UNKNOWN

    def done(self) -> bool:
        future = self.future
        return future is not None and future.done()

    def error(self) -> SqlogError | None:
        """Why the run's write failed (its future is done), or None."""
        if self.failure is _UNKNOWN:
            self.failure = self.future.exception(0)
        return self.failure  # type: ignore[return-value]

    def result(self, index: int) -> RecordMetadata:
        """The `RecordMetadata` of the run's ``index``-th record (its future is done)."""
        if self.metadata is None:
            self.metadata = self.future.get(0)
        return self.metadata[index]


RUN_MAX = 1024
"""Most records in one `_Run` (a run also ends with the millisecond, or at the end of a loop turn)."""


class AIOProducer:
    """Sends records; ``send()`` returns an `asyncio.Future` of `RecordMetadata`, done once the
    record is durable. Tasks sending at once share transactions (group commit).

    The loop's share of a send is the sync producer's enqueue (no I/O; plain bytes sends in a
    run share one), and one future; the writer thread commits, and the futures of a commit are
    resolved on the loop in slices by one callback, not one thread hop per record. A future that
    nothing but the producer references when its record is written, and that has no callbacks,
    is dropped rather than resolved: nothing could see the difference (a failed send's future is
    always given its error)."""

    def __init__(self, log: AIOLog, **config: Any) -> None:
        config.setdefault("linger_ms", 0)
        self._log = log
        self._loop = log.loop
        self._engine = log.engine
        self._sync = log.log.producer(**config)
        self._sync.caller_writes = False  # the loop never writes: the log's writer thread does
        # Sends not yet resolved, oldest first: the loop's futures and, side by side, what the sync
        # producer returned for each (or the _Run it is in). One producer's records are committed
        # in the order they were sent.
        self._futures: collections.deque[asyncio.Future[Any] | None] = collections.deque()  # None: dropped
        self._sent: collections.deque[Any] = collections.deque()
        self._posted = False
        self._room_made: asyncio.Future[None] | None = None
        self._run: _Run | None = None  # the run being collected
        self._run_posted = False
        self._head_run: _Run | None = None  # the run being resolved, and the index of its next record
        self._head_index = 0
        self._run_error: SqlogError | None = None  # of a run the sync producer refused, for flush()
        self._plain = self._sync.config["value_serializer"] is None  # bytes values pass through
        self._max_record = self._sync.config["max_record_bytes"]
        self._fast_topic: str | None = None  # runs need one checked send of this (topic, partition) first
        self._fast_partition: int | None = None
        self._fast_epoch = -1
        self._unlisten = log.engine.signal.listen(self._on_commit)
        self._stopped = False

    async def start(self) -> None:
        """Nothing to connect: present for aiokafka's shape."""
        if self._stopped:
            raise LogClosedError("the producer is stopped")

    async def stop(self) -> None:
        """Flush and close; idempotent."""
        if self._stopped:
            return
        self._flush_run()
        self._stopped = True
        try:
            await self._log.run(self._sync.close)
        finally:
            self._unlisten()
            await self._resolve_all()

    async def send(self, topic: str, value: Any = None, key: Any = None, partition: int | None = None,
                   timestamp_ms: int | None = None,
                   headers: Iterable[tuple[str, bytes | None]] | None = None) -> asyncio.Future[RecordMetadata]:
        """Queue one record; returns a future of its `RecordMetadata`, set once it is durable.
        Raises at once for what `sqlog.Producer.send` refuses (unknown topic, too large, ...)."""
        run = self._run
        if (run is not None and type(value) is bytes and key is None and headers is None and timestamp_ms is None
                and topic == run.topic and partition == run.partition and topic == self._fast_topic
                and self._fast_epoch == self._engine.meta_epoch and len(value) <= self._max_record
                and len(run.values) < RUN_MAX and len(self._futures) < MAX_PENDING_SENDS
                and run.timestamp_ms == clock.wall_ms()):
            # The run's own millisecond: the metadata check that started it holds, and the send
            # is a list append and a future.
            run.values.append(value)
            return self._pending(run)
        sync = self._sync
        if not sync.has_metadata(topic) or len(self._futures) >= MAX_PENDING_SENDS:
            await self._ready(topic)
        if (type(value) is bytes and key is None and headers is None and timestamp_ms is None
                and topic == self._fast_topic and partition == self._fast_partition
                and self._fast_epoch == self._engine.meta_epoch and len(value) <= self._max_record
                and not self._stopped):
            now = clock.wall_ms()
            run = self._run
            if (run is None or run.timestamp_ms != now or run.topic != topic or run.partition != partition
                    or len(run.values) >= RUN_MAX):
                run = self._new_run(topic, partition, now)
            run.values.append(value)
            return self._pending(run)
        fut = self._queue(functools.partial(sync.send, topic, value, key=key, headers=headers, partition=partition,
                                            timestamp_ms=timestamp_ms))
        if type(value) is bytes and key is None and headers is None and timestamp_ms is None and self._plain:
            self._fast_topic, self._fast_partition, self._fast_epoch = topic, partition, self._engine.meta_epoch
        return fut

    async def send_and_wait(self, topic: str, value: Any = None, key: Any = None, partition: int | None = None,
                            timestamp_ms: int | None = None,
                            headers: Iterable[tuple[str, bytes | None]] | None = None) -> RecordMetadata:
        """Send one record and wait until it is durable."""
        return await (await self.send(topic, value, key, partition, timestamp_ms, headers))

    async def send_batch(self, topic: str, values: Iterable[Any], partition: int | None = None,
                         timestamp_ms: int | None = None) -> asyncio.Future[list[RecordMetadata]]:
        """Queue many keyless records for one partition (`sqlog.Producer.send_batch`); one future
        of their `RecordMetadata` list."""
        await self._ready(topic)
        return self._queue(functools.partial(self._sync.send_batch, topic, values, partition=partition,
                                             timestamp_ms=timestamp_ms))

    async def _ready(self, topic: str) -> None:
        """Before a send: the topic's metadata cached (read off the loop) and room among the pending sends."""
        sync = self._sync
        if not sync.has_metadata(topic):
            self._fast_topic = None  # reloaded: the plain path waits for a checked send again
            while not sync.has_metadata(topic):
                await self._log.run(functools.partial(sync.load_metadata, topic))
        if len(self._futures) >= MAX_PENDING_SENDS:
            await self._room()

    def _queue(self, send: Callable[[], Any]) -> asyncio.Future[Any]:
        """Queue through the sync producer (after the run being collected); the future of it."""
        self._flush_run()
        fut = self._pending(None)  # before the record is queued: the commit that writes it finds it pending
        try:
            self._sent[-1] = send()
        except BaseException:
            self._futures.pop()
            self._sent.pop()
            raise
        return fut

    def _pending(self, entry: Any) -> asyncio.Future[Any]:
        """A new send's future, queued beside ``entry``. The previous send's future, if nothing
        but this producer references it any more (its sender dropped it, the usual fire-and-forget
        ``await send()``), is dropped now rather than kept until its record is written: it is
        freed while still young, so a stream of such sends leaves nothing for the garbage
        collector's full collections, which stall the loop."""
        futures = self._futures
        if futures:
            last = futures[-1]
            if last is not None and _refs(last) <= _UNSEEN_TAIL and not last.watched:
                futures[-1] = None
        fut = _SendFuture(loop=self._loop)
        futures.append(fut)
        self._sent.append(entry)
        return fut

    async def flush(self) -> None:
        """Wait until every record sent so far is durable and its future done; raises the error
        of a failed write."""
        self._flush_run()
        await self._log.run(self._sync.flush)
        await self._resolve_all()
        error, self._run_error = self._run_error, None
        if error is not None:
            raise error

    # -- runs ----------------------------------------------------------------------------------
    def _new_run(self, topic: str, partition: int | None, now: int) -> _Run:
        self._flush_run()
        run = self._run = _Run(topic, partition, now)
        if not self._run_posted:  # handed over at the end of this loop turn at the latest
            self._run_posted = True
            self._loop.call_soon(self._flush_posted)
        return run

    def _flush_posted(self) -> None:
        self._run_posted = False
        self._flush_run_if_idle()

    def _flush_run_if_idle(self) -> None:
        """Hand the run over unless the writer is still on this producer's earlier sends: then
        the run grows (within its millisecond) until they are written, and `_resolve` hands it
        over. A commit then takes a few runs, not one per loop turn, which is fewer objects
        living through a commit, so fewer reach the collector's oldest generation."""
        run = self._run
        if run is not None:
            oldest = self._sent[0]
            if oldest is run or oldest.done():
                self._flush_run()

    def _flush_run(self) -> None:
        """Hand the run being collected to the sync producer (its records are the newest sent)."""
        run = self._run
        if run is None:
            return
        self._run = None
        try:
            run.future = self._sync.send_batch(run.topic, run.values, partition=run.partition,
                                               timestamp_ms=run.timestamp_ms)
        except SqlogError as exc:  # e.g. the log was closed, or the topic made compacted meanwhile
            self._fast_topic = None
            self._run_error = exc
            for _ in run.values:
                self._sent.pop()
                fut = self._futures.pop()
                if fut is None:
                    _report_dropped(self._loop, exc)
                elif not fut.done():
                    fut.set_exception(exc)

    # -- resolving -----------------------------------------------------------------------------
    async def _resolve_all(self) -> None:
        """Resolve every future whose record is written, a slice per loop turn."""
        while True:
            self._resolve(post_rest=False)
            if not self._sent or not self._sent[0].done():
                return
            await asyncio.sleep(0)

    async def _room(self) -> None:
        """Wait until half the pending sends are durable."""
        self._flush_run()
        while len(self._futures) >= MAX_PENDING_SENDS // 2:
            self._room_made = self._loop.create_future()
            await self._room_made

    def _on_commit(self) -> None:  # the committing thread
        if self._futures and not self._posted:
            self._posted = True
            try:
                self._loop.call_soon_threadsafe(self._resolve)
            except RuntimeError:  # the loop is closed
                pass

    def _written(self) -> int:
        """How many of the oldest pending sends are done (written or failed): a binary search,
        as one producer's batches complete in the order they were sent."""
        sent = self._sent
        lo, hi = 0, len(sent)
        if hi and sent[hi - 1].done():
            return hi
        while lo < hi:
            mid = (lo + hi) // 2
            if sent[mid].done():
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _resolve(self, post_rest: bool = True) -> None:
        """Set the futures of written sends (at most `RESOLVE_SLICE`; the rest in a later callback)."""
        self._posted = False
        futures, sent = self._futures, self._sent
        refs, unseen = _refs, _UNSEEN
        for _ in range(min(self._written(), RESOLVE_SLICE)):
            fut = futures.popleft()
            entry = sent.popleft()
            if type(entry) is _Run:
                if entry is self._head_run:
                    index = self._head_index
                else:
                    self._head_run, index = entry, 0
                self._head_index = index + 1
                error = entry.error()
            else:
                error = entry.exception(0)
            # Errors are taken, never raised here: a raise would link this frame, and the future
            # in it, to the exception every future of the batch shares.
            if fut is None:  # dropped unseen (see _pending)
                if error is not None:
                    _report_dropped(self._loop, error)
            elif fut.done():  # cancelled by its awaiter
                pass
            elif error is not None:
                fut.set_exception(error)
            elif refs(fut) > unseen or fut.watched:  # else nothing can see it (see the class doc)
                fut.set_result(entry.result(index) if type(entry) is _Run else entry.get(0))
        room = self._room_made
        if room is not None and len(futures) < MAX_PENDING_SENDS // 2 and not room.done():
            room.set_result(None)
        if post_rest and sent and not self._posted and sent[0].done():
            self._posted = True
            self._loop.call_soon(self._resolve)  # the rest after other callbacks: no long stall
        if not self._run_posted:
            self._flush_run_if_idle()

    async def __aenter__(self) -> AIOProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# -- what the two consumers share -------------------------------------------------------------------------
class _Reader(Generic[R]):
    """A sync reading client driven from the loop: its blocking calls on a strand, records handed
    out on the loop, waits on the log's waker."""

    _sync: Any

    def __init__(self, log: AIOLog, create: Callable[[], Any]) -> None:
        self.log = log
        """The `AIOLog` this client reads."""
        self._log = log
        self._loop = log.loop
        self._strand = _Strand(log.pool)
        self._error: BaseException | None = None  # of a queued plain call, raised by the next awaited one
        self._stopped = False
        self._sync = None
        self._prefetch: concurrent.futures.Future[int] | None = None  # a fetch started ahead (see _get)
        self._buffered = 0  # records the sync client holds for take(), at most
        self._fetched = 0  # records the last fetch found
        self._fill_seq = -1  # the commit signal's seq before the fetch that filled the buffer
        # Set when a call emptied a buffer whose fetch found less than it could take: every record
        # committed up to that seq is handed out, so the next call waits for a later commit
        # without a fetch of its own first. Any other call on the client clears it.
        self._settled: int | None = None
        self._unwatch = log.engine.watch()  # other processes' commits wake the waker while this client lives

        self._create_error: BaseException | None = None

        def make() -> None:
            try:
                self._sync = create()
            except BaseException as exc:  # raised by every later call (config errors, closed log)
                self._create_error = exc

        self._strand.submit(make)

    def _keep_error(self, cf: concurrent.futures.Future[Any]) -> None:
        if not cf.cancelled() and cf.exception() is not None:
            self._error = cf.exception()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _need(self) -> Any:
        if self._sync is None:
            if self._create_error is not None:
                raise self._create_error
            raise LogClosedError("the client was not created")
        return self._sync

    def _check_running(self) -> None:
        if self._stopped:
            raise LogClosedError("the consumer is stopped")

    async def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` off the loop after the client's earlier calls."""
        self._settled = None
        self._check_running()
        self._raise_error()
        if _IN_LISTENER.get() is self:  # the strand is blocked in this listener: run beside it
            return await self._log.run(fn)
        return await asyncio.wrap_future(self._strand.submit(fn), loop=self._loop)

    def _plain(self, fn: Callable[[], T], queue_only: bool = False) -> T | None:
        """A non-async call: now, on the loop, when the client is idle (errors raise at once), else
        queued after the running calls (errors raise from the next awaited call)."""
        self._settled = None
        self._check_running()
        self._raise_error()
        if not queue_only and self._sync is not None and (self._strand.idle() or _IN_LISTENER.get() is self):
            return fn()
        self._strand.submit(fn).add_done_callback(self._keep_error)
        return None

    def subscription(self) -> set[str]:
        return set() if self._sync is None else self._sync.subscription()

    # -- records (Record for a consumer, ShareRecord for a share consumer) -----------------------
    async def getmany(self, timeout_ms: int | float = 0,
                      max_records: int | None = None) -> dict[TopicPartition, list[R]]:
        """Records by partition (at most ``max_records``), waiting up to ``timeout_ms`` for some."""
        records = await self._records(_check_ms("timeout_ms", timeout_ms), _check_max(max_records, self._max_poll))
        return _grouped(records)

    async def getone(self) -> R:
        """The next record, waiting as long as it takes."""
        while True:
            records = await self._records(math.inf, 1)
            if records:
                return records[0]

    def __aiter__(self) -> AsyncIterator[R]:
        return self

    async def __anext__(self) -> R:
        """The next record; stops when the client stops, or after ``consumer_timeout_ms`` without one."""
        if self._stopped:
            raise StopAsyncIteration
        try:
            records = await self._records(self._iter_timeout_s, 1)
        except LogClosedError:
            if self._stopped:
                raise StopAsyncIteration from None
            raise
        if not records:
            raise StopAsyncIteration
        return records[0]

    async def _records(self, timeout_s: float, limit: int) -> list[R]:
        raise NotImplementedError

    async def _get(self, timeout_s: float, limit: int, fetch: Callable[[bool], int],
                   take: Callable[[int], Any], wake_in: Callable[[], float] | None = None,
                   prefetch: int | None = None, grouped: bool = False, anywhere: bool = False) -> Any:
        """Records handed out on the loop, fetching (off the loop) and waiting until some come or
        ``timeout_s`` passes. Cancelled anywhere, nothing is lost: fetched records stay buffered.
        ``prefetch``: when a call empties the buffer and the last fetch found at least this many
        records (the reader is behind), the next fetch starts at once, off the loop, so a loop
        that keeps calling finds records waiting rather than a thread to wake. ``anywhere``:
        ``fetch`` runs no application code and never waits for the loop, so a commit's own thread
        may run it (see `_Waker`)."""
        loop = self._loop
        deadline = loop.time() + timeout_s
        waker = self._log.waker
        first = True
        seen: int | None = None
        while True:
            self._check_running()
            ahead = self._prefetch
            if ahead is not None:
                self._prefetch = None
                if not ahead.done():
                    await asyncio.wrap_future(ahead, loop=loop)
                self._buffered = self._fetched = ahead.result()  # the fetch's error, if it failed
            if self._sync is not None and self._strand.idle():
                out = take(limit)
                if out:
                    self._buffered -= _count(out) if grouped else len(out)
                    if prefetch is not None and self._buffered <= 0 and not self._stopped:
                        if self._fetched >= prefetch:  # behind: read on now
                            self._fill_seq = self._log.waker.seq
                            self._prefetch = self._strand.submit(functools.partial(fetch, False))
                        else:
                            self._settled = self._fill_seq
                    return out
            if seen is None and prefetch is not None and self._settled is not None:
                seen, self._settled = self._settled, None  # all up to it handed out: wait for more
            if seen is None:
                seq = self._fill_seq = waker.seq
                again = not first
                first = False
                self._buffered = self._fetched = await self._call(functools.partial(fetch, again))
                if self._buffered:
                    continue
            else:  # a fetch made on a commit found nothing: wait for the next one
                seq, seen = seen, None
            remaining = deadline - loop.time()
            if remaining <= 0:
                return {} if grouped else []
            delay = min(remaining, WAIT_SLICE_S)
            if wake_in is not None:
                delay = max(min(delay, wake_in()), 0.0)
            got = await waker.fetch_on_commit(self._strand, functools.partial(fetch, True), seq, delay, anywhere)
            if got is not None:
                self._buffered = self._fetched = got[0]
                self._fill_seq = got[1]
                if not got[0]:
                    seen = got[1]

    async def _stop(self, close: Callable[[], None]) -> None:
        if self._stopped:
            return
        try:
            if self._sync is not None or not self._strand.idle():
                await self._call(lambda: self._sync is not None and close())
        finally:
            self._stopped = True
            self._unwatch()
            self._log.waker.wake_all()  # tasks waiting in getmany() see the stop


# -- the consumer -------------------------------------------------------------------------------------
class ConsumerRebalanceListener:
    """aiokafka's listener: coroutines run on the event loop when the assignment changes, inside
    a ``getone()``/``getmany()`` (or ``stop()``). Awaiting the consumer's calls (``commit()``,
    ``position()``) from them is allowed."""

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Partitions about to be taken away, still owned: commit what was processed of them."""

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Partitions just given to this consumer."""

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        """Partitions already taken away (session expired); by default as revoked."""
        await self.on_partitions_revoked(lost)


class _OnLoop(sqlog.ConsumerRebalanceListener):
    """Runs an async listener's callbacks on the loop while the sync consumer (on the pool) waits."""

    def __init__(self, client: AIOConsumer, listener: Any) -> None:
        self._client = client
        self._listener = listener

    def on_revoked(self, partitions: set[TopicPartition]) -> None:
        self._run(self._listener.on_partitions_revoked, partitions)

    def on_assigned(self, partitions: set[TopicPartition]) -> None:
        self._run(self._listener.on_partitions_assigned, partitions)

    def on_lost(self, partitions: set[TopicPartition]) -> None:
        lost = getattr(self._listener, "on_partitions_lost", None) or self._listener.on_partitions_revoked
        self._run(lost, partitions)

    def _run(self, fn: Callable[[set[TopicPartition]], Any], partitions: set[TopicPartition]) -> None:
        log = self._client.log
        loop = log.loop
        if loop.is_closed() or not loop.is_running() or log.on_loop_thread():
            result = fn(partitions)  # no loop to run it on (closing at exit): a coroutine is dropped
            if inspect.iscoroutine(result):
                result.close()
            return
        asyncio.run_coroutine_threadsafe(self._in_listener(fn, partitions), loop).result()

    async def _in_listener(self, fn: Callable[[set[TopicPartition]], Any], partitions: set[TopicPartition]) -> None:
        token = _IN_LISTENER.set(self._client)
        try:
            result = fn(partitions)
            if inspect.isawaitable(result):
                await result
        finally:
            _IN_LISTENER.reset(token)


class AIOConsumer(_Reader[Record]):
    """Reads records: ``await getone()``, ``await getmany()``, ``async for``; config and group
    behaviour as `sqlog.Consumer`. ``subscribe``/``assign``/``seek`` are plain methods, as in aiokafka."""

    def __init__(self, log: AIOLog, *topics: str, **config: Any) -> None:
        self._max_poll = config.get("max_poll_records", 500)
        self._iter_timeout_s = _check_ms("consumer_timeout_ms", config.get("consumer_timeout_ms"), allow_none=True)
        self._group_id = config.get("group_id")
        self._in_group = False  # subscribed with a group_id: fetches coordinate, so none start ahead
        self._pattern: re.Pattern[str] | None = None
        self._pattern_listener: Any = None
        self._pattern_due = 0.0  # when (monotonic s) the topics are matched against the pattern again
        self._pattern_epoch = -1
        self._buffer_only: frozenset[TopicPartition] | None = None  # the filter the buffer was filled under
        self._listened = False  # subscribed with a rebalance listener: fetches may run its code
        super().__init__(log, functools.partial(log.log.consumer, **config))
        if topics:
            self.subscribe(topics)

    async def start(self) -> None:
        """Wait until the consumer is set up (its config checked, its connection open)."""
        await self._call(self._need)

    async def stop(self) -> None:
        """Leave the group / commit as configured (``close()`` of the sync consumer); idempotent."""
        await self._stop(lambda: self._need().close())

    # -- assignment -----------------------------------------------------------------------------
    def subscribe(self, topics: Iterable[str] = (), pattern: str | re.Pattern[str] | None = None,
                  listener: Any = None) -> None:
        """Consume these topics, or every topic whose name matches ``pattern`` (``re.match``, as
        aiokafka; topics created later join within ``metadata_max_age_ms``); with a group_id the
        group assigns partitions at the next getmany(). ``listener``: a
        `sqlog.aio.ConsumerRebalanceListener` (coroutines, on the loop) or a
        `sqlog.ConsumerRebalanceListener` (run on the pool)."""
        if listener is not None and callable(getattr(listener, "on_partitions_assigned", None)):
            listener = _OnLoop(self, listener)
        self._listened = listener is not None
        if pattern is not None:
            if topics:
                raise InvalidConfigError("subscribe() takes topics or a pattern, not both")
            try:
                compiled = re.compile(pattern)
            except (re.error, TypeError) as exc:
                raise InvalidConfigError(f"pattern must be a regular expression, not {pattern!r} ({exc})") from None
            self._plain(lambda: self._need().subscribe([], listener))
            self._pattern, self._pattern_listener, self._pattern_due = compiled, listener, 0.0
            self._in_group = self._group_id is not None
            return
        names = list(topics) if not isinstance(topics, (str, bytes)) else topics
        self._plain(lambda: self._need().subscribe(names, listener))
        self._pattern = None
        self._in_group = self._group_id is not None

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Consume exactly these partitions, outside any group rebalancing."""
        parts = list(partitions) if not isinstance(partitions, (str, bytes)) else partitions
        self._plain(lambda: self._need().assign(parts))
        self._pattern = None
        self._in_group = False

    def unsubscribe(self) -> None:
        """Drop the subscription or assignment (a group member leaves its group, off the loop)."""
        self._plain(lambda: self._need().unsubscribe(), queue_only=True)
        self._pattern = None
        self._in_group = False

    def assignment(self) -> set[TopicPartition]:
        return set() if self._sync is None else self._sync.assignment()

    def _match_pattern(self, sync: Any) -> None:
        """Off the loop, before a fetch: subscribe to the topics the pattern matches now (when
        ``metadata_max_age_ms`` has passed or a topic changed in this process)."""
        pattern = self._pattern
        engine = self._log.engine
        if pattern is None or (time.monotonic() < self._pattern_due and self._pattern_epoch == engine.meta_epoch):
            return
        self._pattern_epoch = engine.meta_epoch
        self._pattern_due = time.monotonic() + (sync.config["metadata_max_age_ms"] or 0) / 1000
        names = {t for t in self._log.log.list_topics() if pattern.match(t)}
        if names != sync.subscription():
            sync.subscribe(sorted(names), self._pattern_listener)

    # -- records ---------------------------------------------------------------------------------
    async def getmany(self, *partitions: TopicPartition, timeout_ms: int | float = 0,  # type: ignore[override]
                      max_records: int | None = None) -> dict[TopicPartition, list[Record]]:
        """Records by partition (at most ``max_records``), waiting up to ``timeout_ms`` for some;
        given ``partitions``, only records of those (as aiokafka: the others wait for later calls)."""
        timeout_s = _check_ms("timeout_ms", timeout_ms)
        limit = _check_max(max_records, self._max_poll)
        if not partitions:
            return await self._records(timeout_s, limit, grouped=True)  # type: ignore[no-any-return]
        if not all(isinstance(tp, TopicPartition) for tp in partitions):
            raise InvalidConfigError(f"getmany() takes TopicPartitions, not {partitions!r}")
        return _grouped(await self._records(timeout_s, limit, frozenset(partitions)))

    async def _records(self, timeout_s: float, limit: int, only: frozenset[TopicPartition] | None = None,
                       grouped: bool = False) -> Any:
        """Up to ``limit`` records (a list, or by partition if ``grouped``), waiting up to ``timeout_s``."""
        max_poll = self._max_poll if type(self._max_poll) is int else 1
        if only is not None:
            def take_only(n: int) -> list[Record]:
                held = self._buffer_only
                return self._need().take(n) if held is not None and held <= only else []

            return await self._get(timeout_s, limit, lambda again: self._fetch_only(only, limit), take_only)

        # Outside a group, read ahead READ_AHEAD_POLLS polls' worth per trip off the loop (positions
        # move only as records are handed out). A group member reads a poll's worth: its fetches
        # are its heartbeats.
        fetch_limit = max(limit, max_poll if self._in_group else max_poll * READ_AHEAD_POLLS)

        def fetch(again: bool) -> int:
            sync = self._need()
            self._match_pattern(sync)
            self._buffer_only = None
            return int(sync.fetch(fetch_limit))

        prefetch = None if self._in_group else fetch_limit
        anywhere = not self._listened
        if grouped:
            return await self._get(timeout_s, limit, fetch, lambda n: self._need().take_grouped(n),
                                   prefetch=prefetch, grouped=True, anywhere=anywhere)
        return await self._get(timeout_s, limit, fetch, lambda n: self._need().take(n), prefetch=prefetch,
                               anywhere=anywhere)

    def _fetch_only(self, only: frozenset[TopicPartition], limit: int) -> int:
        """Off the loop: fill the buffer from the partitions in ``only`` alone, pausing the others
        for the fetch (pause() empties the buffer; positions stay, so nothing is skipped)."""
        sync = self._need()
        self._match_pattern(sync)
        for _ in range(3):
            assigned = sync.assignment()
            paused = sync.paused()
            others = [tp for tp in assigned if tp not in only and tp not in paused]
            if others:
                sync.pause(*others)
            try:
                n = int(sync.fetch(limit))
            finally:
                if others:
                    sync.resume(*[tp for tp in others if tp in sync.assignment()])
            if sync.assignment() == assigned:  # no rebalance meanwhile: only wanted partitions fetched
                self._buffer_only = only
                return n
            sync.pause()  # the assignment changed inside fetch(): drop what it read, try again
        self._buffer_only = None
        return 0

    # -- positions and offsets -------------------------------------------------------------------
    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` next."""
        self._plain(lambda: self._need().seek(tp, offset))

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        """Move to the log start of each partition (all assigned if none given)."""
        await self._call(lambda: self._need().seek_to_beginning(*partitions))

    async def seek_to_end(self, *partitions: TopicPartition) -> None:
        """Move to the high watermark of each partition (all assigned if none given)."""
        await self._call(lambda: self._need().seek_to_end(*partitions))

    async def seek_to_committed(self, *partitions: TopicPartition) -> None:
        """Move to the group's committed offset of each partition (all assigned if none given)."""
        def run() -> None:
            sync = self._need()
            for tp in partitions or tuple(sync.assignment()):
                offset = sync.committed(tp)
                if offset is not None:
                    sync.seek(tp, offset)
        await self._call(run)

    async def position(self, tp: TopicPartition) -> int:
        """The offset of the next record this consumer returns from ``tp``."""
        return await self._call(lambda: self._need().position(tp))

    async def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset for ``tp``, or None."""
        return await self._call(lambda: self._need().committed(tp))

    async def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        parts = list(partitions)
        return await self._call(lambda: self._need().beginning_offsets(parts))

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        parts = list(partitions)
        return await self._call(lambda: self._need().end_offsets(parts))

    async def offsets_for_times(self, timestamps: Mapping[TopicPartition, int]
                                ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        stamps = dict(timestamps) if isinstance(timestamps, Mapping) else timestamps
        return await self._call(lambda: self._need().offsets_for_times(stamps))

    async def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata | int] | None = None) -> None:
        """Store, per partition, the offset of the next record to read (default: the positions of
        what getone()/getmany() returned)."""
        await self._call(lambda: self._need().commit(offsets))

    def pause(self, *partitions: TopicPartition) -> None:
        self._plain(lambda: self._need().pause(*partitions))

    def resume(self, *partitions: TopicPartition) -> None:
        self._plain(lambda: self._need().resume(*partitions))

    def paused(self) -> set[TopicPartition]:
        return set() if self._sync is None else self._sync.paused()

    async def __aenter__(self) -> AIOConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# -- the share consumer ----------------------------------------------------------------------------------
class AIOShareConsumer(_Reader[ShareRecord]):
    """A member of a share group (queue mode) for asyncio; config and semantics as `sqlog.ShareConsumer`."""

    def __init__(self, log: AIOLog, group_id: str, **config: Any) -> None:
        self._max_poll = config.get("max_poll_records", 500)
        self._iter_timeout_s = _check_ms("consumer_timeout_ms", config.get("consumer_timeout_ms"), allow_none=True)
        super().__init__(log, functools.partial(log.log.share_consumer, group_id, **config))

    async def start(self) -> None:
        await self._call(self._need)

    async def stop(self) -> None:
        """Apply acknowledgements and release what is held (``close()`` of the sync one); idempotent."""
        await self._stop(lambda: self._need().close())

    def subscribe(self, topics: Iterable[str]) -> None:
        """Take records from every partition of these topics (applied off the loop, in order)."""
        names = list(topics) if not isinstance(topics, (str, bytes)) else topics
        self._plain(lambda: self._need().subscribe(names), queue_only=True)

    def unsubscribe(self) -> None:
        self._plain(lambda: self._need().unsubscribe(), queue_only=True)



    async def _records(self, timeout_s: float, limit: int) -> list[ShareRecord]:
        fetch_limit = max(limit, self._max_poll if type(self._max_poll) is int else 1)

        def wake_in() -> float:
            expiry = None if self._sync is None else self._sync.next_lock_expiry_ms
            return math.inf if expiry is None else (expiry - clock.monotonic_ms()) / 1000 + 0.001

        return await self._get(timeout_s, limit, lambda again: self._need().fetch(fetch_limit, look_first=again),
                               lambda n: self._need().take(n), wake_in)

    def acknowledge(self, record: ShareRecord, type: str = "accept") -> None:  # noqa: A002 - Kafka's name
        """Mark how a delivered record ended (accept / release / reject / renew); applied by commit()."""
        self._plain(lambda: self._need().acknowledge(record, type))

    async def commit(self) -> None:
        """Apply pending acknowledgements now (InvalidRecordStateError for expired locks)."""
        await self._call(lambda: self._need().commit())

    async def __aenter__(self) -> AIOShareConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

