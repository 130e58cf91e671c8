"""The Kafka protocol over a sqlog file: one broker (node 0) on asyncio.

Each connection's requests are answered in order, one at a time (as a Kafka broker does).
Database work runs on a small thread pool (apsw releases the GIL); a produce is one write
transaction through `retention.append_rows`, the append path of native producers, so a record
produced here is the same row a native ``send()`` writes. A fetch with nothing to return waits
for the engine's commit signal or another process's commit, up to ``fetch.max.wait.ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import ssl
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import apsw

from .. import clock, groups, partitions, topics
from ..checksum import mismatches
from ..errors import (
    GroupIdNotFoundError,
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidTopicError,
    SqlogError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from ..log import Log
from ..types import GroupDescription
from ..retention import append_rows
from ..storage import data_version, snapshot, wait_for_commit
from . import auth, coordinator, idempotence, records
from .coordinator import Coordinator
from .wire import Malformed, Reader, Writer

log_ = logging.getLogger("sqlog.server")

# Kafka error codes used here.
NONE = 0
OFFSET_OUT_OF_RANGE = 1
UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_TOPIC = 17
INVALID_GROUP_ID = 24
UNSUPPORTED_VERSION = 35
TOPIC_ALREADY_EXISTS = 36
INVALID_PARTITIONS = 37
INVALID_REPLICATION_FACTOR = 38
INVALID_CONFIG = 40
INVALID_REQUEST = 42
KAFKA_STORAGE_ERROR = 56

# api key: (name, lowest, highest version implemented and advertised)
VERSIONS: dict[int, tuple[str, int, int]] = {
    0: ("Produce", 3, 8),
    1: ("Fetch", 4, 11),
    2: ("ListOffsets", 1, 5),
    3: ("Metadata", 1, 8),
    8: ("OffsetCommit", 2, 7),
    9: ("OffsetFetch", 1, 5),
    10: ("FindCoordinator", 0, 2),
    11: ("JoinGroup", 0, 5),
    12: ("Heartbeat", 0, 3),
    13: ("LeaveGroup", 0, 3),
    14: ("SyncGroup", 0, 3),
    15: ("DescribeGroups", 0, 4),
    16: ("ListGroups", 0, 2),
    17: ("SaslHandshake", 0, 1),
    18: ("ApiVersions", 0, 3),
    19: ("CreateTopics", 0, 4),
    20: ("DeleteTopics", 0, 3),
    22: ("InitProducerId", 0, 1),
    36: ("SaslAuthenticate", 0, 1),
}
API_VERSIONS = 18

MAX_REQUEST_BYTES = 100 * 1024 * 1024  # Kafka's socket.request.max.bytes
FETCH_ROWS = 5000  # most records one partition returns per fetch
_SIZE = struct.Struct(">i")

# Who sent the request being handled: the header's client id and the peer's host (Kafka's
# "/127.0.0.1"), for group members. Each connection is its own task, so its own context.
_client_id: contextvars.ContextVar[str] = contextvars.ContextVar("client_id", default="")
_client_host: contextvars.ContextVar[str] = contextvars.ContextVar("client_host", default="")


async def _frame(reader: asyncio.StreamReader, limit: int, least: int = 8) -> bytes:
    """One size-prefixed frame; `Malformed` if its size is below ``least`` or above ``limit``."""
    (size,) = _SIZE.unpack(await reader.readexactly(4))
    if not least <= size <= limit:
        raise Malformed(f"a frame of {size} bytes")
    return await reader.readexactly(size)


class _OutOfRange(Exception):
    pass


class Server:
    """A Kafka broker endpoint over one open `sqlog.Log`; see `serve` and `run`.

    ``auto_create_partitions``: topics a client names but that do not exist are created with
    this many partitions (Kafka's ``auto.create.topics.enable`` + ``num.partitions``); None: off.
    ``advertised_host`` / ``advertised_port``: the address clients are told to connect to (Kafka's
    ``advertised.listeners``; default: the one listened on), e.g. behind a proxy.
    ``sasl``: clients must authenticate (SASL PLAIN or SCRAM-SHA-256) as a user stored in the log
    (`add_user`); ``tls_cert``/``tls_key``: PEM files, clients connect with TLS (see `auth`).
    A non-loopback ``host`` needs ``sasl`` (and then TLS) or ``allow_anonymous``.
    """

    def __init__(self, log: Log, host: str = "127.0.0.1", port: int = 9092, *,
                 allow_anonymous: bool = False, auto_create_partitions: int | None = None,
                 advertised_host: str | None = None, max_record_bytes: int = 1024 * 1024,
                 threads: int = 4, sasl: bool = False, tls_cert: str | None = None,
                 tls_key: str | None = None, advertised_port: int | None = None) -> None:
        self.tls = auth.listener_tls(host, sasl, allow_anonymous, tls_cert, tls_key)
        self.auth = auth.Authenticator(log) if sasl else None
        if self.auth is not None and not self.auth.has_users():
            raise InvalidConfigError(f"--sasl: {log.path} has no users yet, so nobody could log in; add one "
                                     "with 'sqlog --db PATH users add NAME' (sqlog.server.add_user)")
        self.log = log
        self.engine = log.engine
        self.host = host
        self.port = port
        self.advertised_host = advertised_host
        self.advertised_port = advertised_port
        self.auto_create_partitions = auto_create_partitions
        self.max_record_bytes = max_record_bytes
        self.coordinator = Coordinator(self.engine, self._db, lambda: self._wake, self._wait_wake)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="sqlog-serve")
        self._local = threading.local()
        self._readers: list[apsw.Connection] = []
        self._readers_lock = threading.Lock()
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._waiting = 0
        self._someone_waits = threading.Event()
        self._closing = False
        self._watcher: threading.Thread | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> tuple[str, int]:
        """Listen; returns the ``(host, port)`` bound (``port=0`` picks a free one)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._server = await asyncio.start_server(self._client, self.host, self.port, limit=1 << 20, ssl=self.tls,
                                                  ssl_handshake_timeout=None if self.tls is None else 10.0)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.advertised_host is None:
            self.advertised_host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        if self.advertised_port is None:
            self.advertised_port = self.port
        self._watcher = threading.Thread(target=self._watch, name="sqlog-serve-watch", daemon=True)
        self._watcher.start()
        self._reaper = asyncio.create_task(self._reap())
        return self.host, self.port

    async def serve_forever(self) -> None:
        assert self._server is not None, "call start() first"
        try:
            await self._server.serve_forever()
        except asyncio.CancelledError:
            pass

    async def close(self) -> None:
        """Stop listening, drop connections, stop the threads; the log stays open."""
        self._closing = True
        self._someone_waits.set()
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._reaper is not None:
            self._reaper.cancel()
        if self._watcher is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._watcher.join)
        self._pool.shutdown(wait=True)
        if self.auth is not None:
            self.auth.close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    async def _reap(self) -> None:
        """Expire dead group members and complete due rebalances (the requests do too; this covers
        groups whose members all went quiet)."""
        while True:
            await asyncio.sleep(0.25)
            try:
                await self.coordinator.tick_all()
            except (SqlogError, apsw.Error):
                log_.debug("group upkeep failed; trying again", exc_info=True)

    # -- wake-ups for long-polling fetches ---------------------------------------------------
    def _watch(self) -> None:
        """One thread turns commits (this process's signal, other processes' data_version) into
        wake-ups of waiting fetches, only while some fetch waits."""
        conn = self.engine.reader()
        try:
            while not self._closing:
                if not self._someone_waits.wait(0.5):
                    continue
                seq = self.engine.signal.seq
                version = data_version(conn)
                wait_for_commit(self.engine.signal, conn, self.engine.path, seq, version,
                                time.monotonic() + 0.5, lambda: self._closing)
                if self.engine.signal.seq != seq or data_version(conn) != version:
                    assert self._loop is not None
                    self._loop.call_soon_threadsafe(self._notify)
        except Exception:  # the log was closed under the server
            log_.debug("commit watcher stopped", exc_info=True)
        finally:
            conn.close()

    def _notify(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    async def _wait_wake(self, wake: asyncio.Event, timeout: float) -> None:
        """Wait until ``wake`` (``self._wake`` taken before the last read) is set by a commit of
        any process, or ``timeout`` seconds pass."""
        self._waiting += 1
        self._someone_waits.set()
        try:
            await asyncio.wait_for(wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self._waiting -= 1
            if not self._waiting:
                self._someone_waits.clear()

    # -- connections -----------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        _client_host.set("/" + str(peer[0]) if isinstance(peer, tuple) and peer else "")
        gate = None if self.auth is None else self.auth.gate(peer)
        try:
            while True:
                if gate is None or gate.open:
                    response = await self._dispatch(await _frame(reader, MAX_REQUEST_BYTES))
                else:  # not authenticated yet: small frames, a deadline, only the SASL requests
                    try:
                        frame = await asyncio.wait_for(_frame(reader, auth.MAX_SASL_BYTES, 0), gate.time_left())
                    except asyncio.TimeoutError:
                        raise auth.Refused(f"not authenticated within {gate.auth.deadline_s} s") from None
                    response = await gate.handle(frame, self._dispatch)
                if response is not None:
                    writer.write(_SIZE.pack(len(response)) + response)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        except auth.Refused as exc:
            log_.info("closing %s: %s", peer, exc)
            with contextlib.suppress(ConnectionError):
                if exc.response is not None:
                    writer.write(_SIZE.pack(len(exc.response)) + exc.response)
                    await writer.drain()
                await asyncio.sleep(gate.auth.failure_delay_s if gate else 0)
        except (Malformed, ssl.SSLError) as exc:
            log_.info("closing %s: %s", peer, exc)
        except Exception:
            log_.exception("closing %s after an unexpected error", peer)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _dispatch(self, frame: bytes) -> bytes | None:
        r = Reader(frame)
        key, version, correlation = r.int16(), r.int16(), r.int32()
        _client_id.set(r.nullable_string() or "")
        entry = VERSIONS.get(key)
        head = _SIZE.pack(correlation)
        if key == API_VERSIONS:
            if version > 3:  # answer in v0 so the client can pick a version we speak
                return head + self._api_versions(0, UNSUPPORTED_VERSION)
            if version >= 3:
                r.tagged_fields()
            return head + self._api_versions(version, NONE)
        if entry is None or not entry[1] <= version <= entry[2]:
            raise Malformed(f"api key {key} version {version} is not supported (ApiVersions lists what is)")
        handler: Callable[[Reader, int], Awaitable[bytes | None]] = getattr(self, "_" + entry[0])
        body = await handler(r, version)
        return None if body is None else head + body

    async def _SaslHandshake(self, r: Reader, v: int) -> bytes:
        """Only reached once authenticated, or on a listener without SASL (as Kafka answers)."""
        r.string()
        r.done()
        return auth.handshake_body(auth.ILLEGAL_SASL_STATE, auth.MECHANISMS if self.auth else ())

    async def _SaslAuthenticate(self, r: Reader, v: int) -> bytes:
        r.nullable_bytes()
        r.done()
        return auth.authenticate_body(v, auth.ILLEGAL_SASL_STATE, "no SASL exchange is in progress on this "
                                      "connection" if self.auth else "this listener has no SASL", b"")

    def _db(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        assert self._loop is not None
        return self._loop.run_in_executor(self._pool, fn, *args)

    def _reader(self) -> apsw.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.engine.reader()
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    # -- ApiVersions, Metadata, FindCoordinator -----------------------------------------------
    def _api_versions(self, version: int, error: int) -> bytes:
        w = Writer().int16(error)
        if version >= 3:
            w.uvarint(len(VERSIONS) + 1)
            for k, (_, lo, hi) in sorted(VERSIONS.items()):
                w.int16(k).int16(lo).int16(hi).uvarint(0)
            return w.int32(0).uvarint(0).bytes()
        w.array(sorted(VERSIONS.items()), lambda w, kv: w.int16(kv[0]).int16(kv[1][1]).int16(kv[1][2]))
        if version >= 1:
            w.int32(0)
        return w.bytes()

    async def _Metadata(self, r: Reader, v: int) -> bytes:
        names = r.nullable_array(Reader.string)
        allow_create = r.boolean() if v >= 4 else True
        if v >= 8:
            r.boolean()
            r.boolean()
        r.done()
        found = await self._db(self._metadata, names, allow_create)
        w = Writer()
        if v >= 3:
            w.int32(0)
        w.int32(1).int32(0).string(self.advertised_host).int32(self.advertised_port).string(None)
        if v >= 2:
            w.string("sqlog")
        w.int32(0)

        def topic(w: Writer, t: tuple[str, int, int]) -> None:
            name, error, count = t
            w.int16(error).string(name).boolean(False).int32(count)
            for p in range(count):
                w.int16(NONE).int32(p).int32(0)
                if v >= 7:
                    w.int32(0)
                w.int32(1).int32(0).int32(1).int32(0)
                if v >= 5:
                    w.int32(0)
            if v >= 8:
                w.int32(-2147483648)

        w.array(found, topic)
        if v >= 8:
            w.int32(-2147483648)
        return w.bytes()

    def _metadata(self, names: list[str] | None, allow_create: bool) -> list[tuple[str, int, int]]:
        out = []
        with self.engine.read() as conn:
            wanted = topics.names(conn) if names is None else names
            metas = {n: topics.lookup(conn, n) for n in wanted}
        for name in wanted:
            meta = metas[name]
            if meta is None and allow_create and self.auto_create_partitions:
                try:
                    self.log.create_topic(name, self.auto_create_partitions)
                except TopicAlreadyExistsError:
                    pass
                except InvalidTopicError:
                    out.append((name, INVALID_TOPIC, 0))
                    continue
                meta = self.engine.topic_meta(name)
            out.append((name, NONE, meta.partitions) if meta else (name, UNKNOWN_TOPIC_OR_PARTITION, 0))
        return out

    async def _FindCoordinator(self, r: Reader, v: int) -> bytes:
        r.string()
        if v >= 1:
            r.int8()
        r.done()
        w = Writer()
        if v >= 1:
            w.int32(0)
        w.int16(NONE)
        if v >= 1:
            w.string(None)
        return w.int32(0).string(self.advertised_host).int32(self.advertised_port).bytes()

    # -- topics ----------------------------------------------------------------------------
    async def _CreateTopics(self, r: Reader, v: int) -> bytes:
        def one(r: Reader) -> tuple[str, int, int, list[Any], list[tuple[str, str | None]]]:
            return (r.string(), r.int32(), r.int16(),
                    r.array(lambda r: (r.int32(), r.array(Reader.int32))),
                    r.array(lambda r: (r.string(), r.nullable_string())))

        wanted = r.array(one)
        r.int32()
        validate_only = r.boolean() if v >= 1 else False
        r.done()
        results = await self._db(self._create_topics, wanted, validate_only)
        w = Writer()
        if v >= 2:
            w.int32(0)

        def item(w: Writer, res: tuple[str, int, str | None]) -> None:
            w.string(res[0]).int16(res[1])
            if v >= 1:
                w.string(res[2])

        return w.array(results, item).bytes()

    def _create_topics(self, wanted: list[Any], validate_only: bool) -> list[tuple[str, int, str | None]]:
        out: list[tuple[str, int, str | None]] = []
        for name, count, replication, assignments, configs in wanted:
            if replication not in (-1, 1):
                out.append((name, INVALID_REPLICATION_FACTOR, "sqlog serve is one broker: replication factor 1"))
                continue
            if assignments:
                count = len(assignments)
            if count == -1:
                count = self.auto_create_partitions or 1
            retention: dict[str, int | None] = {}
            error: tuple[int, str] | None = None
            for key, value in configs:
                if key in ("retention.ms", "retention.bytes"):
                    try:
                        n = int(value) if value is not None else -1
                    except ValueError:
                        error = (INVALID_CONFIG, f"{key} must be an integer, not {value!r}")
                        break
                    retention[key.replace(".", "_")] = None if n < 0 else n
                elif key not in ("cleanup.policy",) or value != "delete":
                    error = (INVALID_CONFIG, f"config {key}={value!r} is not supported by sqlog serve "
                                             "(supported: retention.ms, retention.bytes, cleanup.policy=delete)")
                    break
            if error is not None:
                out.append((name, *error))
                continue
            try:
                if validate_only:
                    topics.validate_name(name)
                    if count < 1:
                        raise InvalidPartitionsError(f"partitions must be at least 1, not {count}")
                    with self.engine.read() as conn:
                        if topics.lookup(conn, name) is not None:
                            raise TopicAlreadyExistsError(f"topic {name!r} already exists")
                else:
                    self.log.create_topic(name, count, **retention)
                out.append((name, NONE, None))
            except TopicAlreadyExistsError as exc:
                out.append((name, TOPIC_ALREADY_EXISTS, str(exc)))
            except InvalidTopicError as exc:
                out.append((name, INVALID_TOPIC, str(exc)))
            except InvalidPartitionsError as exc:
                out.append((name, INVALID_PARTITIONS, str(exc)))
            except SqlogError as exc:
                out.append((name, INVALID_REQUEST, str(exc)))
        return out

    async def _DeleteTopics(self, r: Reader, v: int) -> bytes:
        names = r.array(Reader.string)
        r.int32()
        r.done()
        results = await self._db(self._delete_topics, names)
        w = Writer()
        if v >= 1:
            w.int32(0)
        return w.array(results, lambda w, res: w.string(res[0]).int16(res[1])).bytes()

    def _delete_topics(self, names: list[str]) -> list[tuple[str, int]]:
        out = []
        for name in names:
            try:
                self.log.delete_topic(name)
                out.append((name, NONE))
            except (UnknownTopicOrPartitionError, InvalidTopicError):
                out.append((name, UNKNOWN_TOPIC_OR_PARTITION))
        return out

    # -- produce ---------------------------------------------------------------------------
    async def _Produce(self, r: Reader, v: int) -> bytes | None:
        r.nullable_string()  # transactional_id: transactions are not supported (not advertised)
        acks = r.int16()
        r.int32()
        data = r.array(lambda r: (r.string(), r.array(lambda r: (r.int32(), r.nullable_bytes()))))
        r.done()
        results = await self._db(self._produce, data)
        if acks == 0:
            return None
        w = Writer()

        def part(w: Writer, res: tuple[int, int, int, int, str | None]) -> None:
            p, error, base, start, message = res
            w.int32(p).int16(error).int64(base).int64(-1)
            if v >= 5:
                w.int64(start)
            if v >= 8:
                w.int32(0).string(message)

        w.array(results, lambda w, t: w.string(t[0]).array(t[1], part))
        return w.int32(0).bytes()

    def _produce(self, data: list[tuple[str, list[tuple[int, bytes | None]]]]
                 ) -> list[tuple[str, list[tuple[int, int, int, int, str | None]]]]:
        """Decode, check sequences, append every partition in one write transaction."""
        results: dict[tuple[str, int], tuple[int, int, int, int, str | None]] = {}
        todo: list[tuple[str, int, int, list[records.Batch]]] = []
        with self.engine.read() as conn:
            metas = {name: topics.lookup(conn, name) for name, _ in data}
        for name, parts in data:
            meta = metas[name]
            for p, blob in parts:
                if meta is None or not 0 <= p < meta.partitions:
                    results[name, p] = (p, UNKNOWN_TOPIC_OR_PARTITION, -1, -1, f"no partition {name}-{p}")
                    continue
                try:
                    batches = records.decode(blob or b"", self.max_record_bytes)
                    if not batches:
                        raise records.BadBatch("no record batch")
                except records.BadBatch as exc:
                    results[name, p] = (p, exc.code, -1, -1, str(exc))
                    continue
                todo.append((name, meta.topic_id, p, batches))
        if todo:
            self._append(todo, results)
        return [(name, [results[name, p] for p, _ in parts]) for name, parts in data]

    def _append(self, todo: list[tuple[str, int, int, list[records.Batch]]],
                results: dict[tuple[str, int], tuple[int, int, int, int, str | None]]) -> None:
        """Append every partition's batches in one write transaction, with idempotent producers'
        sequences checked and updated in it (`idempotence.Sequences`)."""
        try:
            with self.engine.write() as conn:
                sequences = idempotence.Sequences(conn)
                for name, topic_id, p, batches in todo:
                    first = -1
                    for batch in batches:
                        key = (batch.producer_id, topic_id, p)
                        idempotent = batch.producer_id >= 0
                        verdict = sequences.check(key, batch.producer_epoch, batch.base_sequence,
                                                  len(batch.rows)) if idempotent else None
                        if verdict is not None and verdict[0] != NONE:
                            results[name, p] = (p, verdict[0], -1, -1, verdict[1])
                            break
                        if verdict is not None and verdict[1] == "duplicate":
                            base = verdict[2]
                        else:
                            base = append_rows(conn, topic_id, p, batch.rows, batch.nbytes, batch.max_ts,
                                               self.engine.path)
                            if base is None:
                                results[name, p] = (p, UNKNOWN_TOPIC_OR_PARTITION, -1, -1, "partition deleted")
                                break
                            if idempotent:
                                sequences.appended(key, batch.producer_epoch, batch.base_sequence, len(batch.rows),
                                                   base)
                        first = base if first < 0 else first
                    else:
                        start, _ = partitions.bounds(conn, topic_id, p, f"{name}-{p}")
                        results[name, p] = (p, NONE, first, start, None)
                sequences.store()
        except SqlogError as exc:
            for name, _, p, _ in todo:
                results[name, p] = (p, KAFKA_STORAGE_ERROR, -1, -1, str(exc))
            return
        self.engine.signal.notify()

    async def _InitProducerId(self, r: Reader, v: int) -> bytes:
        txn = r.nullable_string()
        r.int32()
        r.done()
        w = Writer().int32(0)
        if txn is not None:
            return w.int16(INVALID_REQUEST).int64(-1).int16(-1).bytes()
        try:
            producer_id = await self._db(self._new_producer_id)
        except SqlogError:
            log_.exception("InitProducerId")
            return w.int16(KAFKA_STORAGE_ERROR).int64(-1).int16(-1).bytes()
        return w.int16(NONE).int64(producer_id).int16(0).bytes()

    def _new_producer_id(self) -> int:
        with self.engine.write() as conn:
            return idempotence.allocate(conn)

    # -- fetch and offsets -------------------------------------------------------------------
    async def _Fetch(self, r: Reader, v: int) -> bytes:
        r.int32()  # replica id
        max_wait = r.int32()
        min_bytes = r.int32()
        max_bytes = r.int32()
        r.int8()  # isolation level: every stored record is committed
        if v >= 7:
            r.int32()
            r.int32()

        def part(r: Reader) -> tuple[int, int, int]:
            p = r.int32()
            if v >= 9:
                r.int32()
            offset = r.int64()
            if v >= 5:
                r.int64()
            return p, offset, r.int32()

        wanted = r.array(lambda r: (r.string(), r.array(part)))
        if v >= 7:
            r.array(lambda r: (r.string(), r.array(Reader.int32)))
        if v >= 11:
            r.string()
        r.done()
        deadline = time.monotonic() + max(max_wait, 0) / 1000
        while True:
            wake = self._wake
            found, total, failed = await self._db(self._fetch, wanted, max_bytes)
            remaining = deadline - time.monotonic()
            if total >= max(min_bytes, 1) or failed or remaining <= 0 or self._closing:
                break
            await self._wait_wake(wake, remaining)
        w = Writer().int32(0)
        if v >= 7:
            w.int16(NONE).int32(0)

        def out(w: Writer, res: tuple[int, int, int, int, bytes | None]) -> None:
            p, error, hw, start, blob = res
            w.int32(p).int16(error).int64(hw).int64(hw)
            if v >= 5:
                w.int64(start)
            w.int32(-1)  # aborted transactions: none
            if v >= 11:
                w.int32(-1)
            w.nullable_bytes(b"" if blob is None else blob)  # librdkafka refuses a null record set (size -1)

        return w.array(found, lambda w, t: w.string(t[0]).array(t[1], out)).bytes()

    def _fetch(self, wanted: list[tuple[str, list[tuple[int, int, int]]]], max_bytes: int
               ) -> tuple[list[tuple[str, list[tuple[int, int, int, int, bytes | None]]]], int, bool]:
        conn = self._reader()
        total = 0
        failed = False
        out = []
        for name, parts in wanted:
            res = []
            meta = topics.lookup(conn, name)
            for p, offset, part_max in parts:
                if meta is None or not 0 <= p < meta.partitions:
                    res.append((p, UNKNOWN_TOPIC_OR_PARTITION, -1, -1, None))
                    failed = True
                    continue
                budget = max(1, min(part_max, max_bytes - total)) if total < max_bytes else 0
                try:
                    hw, start, blob = self._read_partition(conn, meta.topic_id, p, offset, budget, f"{name}-{p}")
                except _OutOfRange as exc:
                    hw, start = exc.args
                    res.append((p, OFFSET_OUT_OF_RANGE, hw, start, None))
                    failed = True
                    continue
                except SqlogError:
                    log_.exception("fetch %s-%d at %d", name, p, offset)
                    res.append((p, KAFKA_STORAGE_ERROR, -1, -1, None))
                    failed = True
                    continue
                total += len(blob)
                res.append((p, NONE, hw, start, blob))
            out.append((name, res))
        return out, total, failed

    def _read_partition(self, conn: apsw.Connection, topic_id: int, p: int, offset: int, budget: int,
                        where: str) -> tuple[int, int, bytes]:
        """``(high watermark, log start, record batch)`` from ``offset``, at most about ``budget``
        bytes (always at least one record when there is one and the budget is not 0)."""
        with snapshot(conn):
            start, hw = partitions.bounds(conn, topic_id, p, where)
            if not start <= offset <= hw:
                raise _OutOfRange(hw, start)
            if offset == hw or budget <= 0:
                return hw, start, b""
            rows = conn.execute(partitions.select_from(topic_id, p), (offset, FETCH_ROWS)).fetchall()
        size = 0
        for i, row in enumerate(rows):
            size += 24 + len(row[2] or b"") + len(row[3] or b"") + len(row[4] or b"")
            if size > budget and i:
                rows = rows[:i]
                break
        if not rows or rows[0][0] != offset or rows[-1][0] - offset != len(rows) - 1:
            raise SqlogError(f"{where}: records missing from offset {offset}; `sqlog check` says what is wrong")
        keys, values, headers, checks = [r[2] for r in rows], [r[3] for r in rows], [r[4] for r in rows], [r[5] for r in rows]
        if mismatches(keys, values, headers, checks):
            raise SqlogError(f"{where}: a record from offset {offset} fails its checksum; `sqlog check` says more")
        return hw, start, records.encode(rows)

    async def _ListOffsets(self, r: Reader, v: int) -> bytes:
        r.int32()
        if v >= 2:
            r.int8()

        def part(r: Reader) -> tuple[int, int]:
            p = r.int32()
            if v >= 4:
                r.int32()
            return p, r.int64()

        wanted = r.array(lambda r: (r.string(), r.array(part)))
        r.done()
        found = await self._db(self._list_offsets, wanted)
        w = Writer()
        if v >= 2:
            w.int32(0)

        def out(w: Writer, res: tuple[int, int, int, int]) -> None:
            w.int32(res[0]).int16(res[1]).int64(res[2]).int64(res[3])
            if v >= 4:
                w.int32(0 if res[1] == NONE else -1)

        return w.array(found, lambda w, t: w.string(t[0]).array(t[1], out)).bytes()

    def _list_offsets(self, wanted: list[tuple[str, list[tuple[int, int]]]]
                      ) -> list[tuple[str, list[tuple[int, int, int, int]]]]:
        conn = self._reader()
        out = []
        for name, parts in wanted:
            res = []
            with snapshot(conn):
                meta = topics.lookup(conn, name)
                for p, ts in parts:
                    if meta is None or not 0 <= p < meta.partitions:
                        res.append((p, UNKNOWN_TOPIC_OR_PARTITION, -1, -1))
                        continue
                    start, hw = partitions.bounds(conn, meta.topic_id, p, f"{name}-{p}")
                    if ts == -1:
                        res.append((p, NONE, -1, hw))
                    elif ts == -2:
                        res.append((p, NONE, -1, start))
                    else:
                        hit = partitions.offset_for_time(conn, meta.topic_id, p, ts)
                        res.append((p, NONE, hit[1], hit[0]) if hit else (p, NONE, -1, -1))
            out.append((name, res))
        return out

    # -- committed offsets -----------------------------------------------------------------
    async def _OffsetCommit(self, r: Reader, v: int) -> bytes:
        group_id = r.string()
        generation = r.int32()
        member_id = r.string()
        if v >= 7:
            r.nullable_string()
        if v <= 4:
            r.int64()

        def part(r: Reader) -> tuple[int, int, str | None]:
            p, offset = r.int32(), r.int64()
            if v >= 6:
                r.int32()
            return p, offset, r.nullable_string()

        wanted = r.array(lambda r: (r.string(), r.array(part)))
        r.done()
        found = await self._db(self._commit, group_id, generation, member_id, wanted)
        w = Writer()
        if v >= 3:
            w.int32(0)
        return w.array(found, lambda w, t: w.string(t[0]).array(
            t[1], lambda w, pe: w.int32(pe[0]).int16(pe[1]))).bytes()

    def _commit(self, group_id: str, generation: int, member_id: str,
                wanted: list[tuple[str, list[tuple[int, int, str | None]]]]) -> list[tuple[str, list[tuple[int, int]]]]:
        """Store the offsets if the member may commit them, checked in the same transaction."""
        out = []
        try:
            groups.validate_group_id(group_id)
            with self.engine.write() as conn:
                error = coordinator.check_commit(conn, clock.monotonic_ms(), group_id, generation, member_id)
                if error != NONE:
                    return [(name, [(p, error) for p, _, _ in parts]) for name, parts in wanted]
                for name, parts in wanted:
                    meta = topics.lookup(conn, name)
                    res = []
                    rows = []
                    for p, offset, metadata in parts:
                        if meta is None or not 0 <= p < meta.partitions:
                            res.append((p, UNKNOWN_TOPIC_OR_PARTITION))
                        else:
                            rows.append((meta.topic_id, p, offset, metadata or ""))
                            res.append((p, NONE))
                    groups.store(conn, group_id, rows)
                    out.append((name, res))
        except SqlogError:
            log_.exception("offset commit of group %r", group_id)
            return [(name, [(p, KAFKA_STORAGE_ERROR) for p, _, _ in parts]) for name, parts in wanted]
        return out

    async def _OffsetFetch(self, r: Reader, v: int) -> bytes:
        group_id = r.string()
        wanted = r.nullable_array(lambda r: (r.string(), r.array(Reader.int32)))
        r.done()
        found = await self._db(self._offsets, group_id, wanted)
        w = Writer()
        if v >= 3:
            w.int32(0)

        def part(w: Writer, res: tuple[int, int, str, int]) -> None:
            w.int32(res[0]).int64(res[1])
            if v >= 5:
                w.int32(-1)
            w.string(res[2]).int16(res[3])

        w.array(found, lambda w, t: w.string(t[0]).array(t[1], part))
        if v >= 2:
            w.int16(NONE)
        return w.bytes()

    def _offsets(self, group_id: str, wanted: list[tuple[str, list[int]]] | None
                 ) -> list[tuple[str, list[tuple[int, int, str, int]]]]:
        conn = self._reader()
        with snapshot(conn):
            if wanted is None:
                by_topic: dict[str, list[tuple[int, int, str, int]]] = {}
                for name, p, offset, metadata in groups.committed(conn, group_id):
                    by_topic.setdefault(name, []).append((p, offset, metadata, NONE))
                return list(by_topic.items())
            out = []
            for name, parts in wanted:
                meta = topics.lookup(conn, name)
                res = []
                for p in parts:
                    if meta is None or not 0 <= p < meta.partitions:
                        res.append((p, -1, "", UNKNOWN_TOPIC_OR_PARTITION))
                        continue
                    got = groups.fetch(conn, group_id, meta.topic_id, p)
                    res.append((p, got[0], got[1], NONE) if got else (p, -1, "", NONE))
                out.append((name, res))
            return out

    # -- group membership ------------------------------------------------------------------
    async def _JoinGroup(self, r: Reader, v: int) -> bytes:
        group_id = r.string()
        session_timeout = r.int32()
        rebalance_timeout = r.int32() if v >= 1 else session_timeout
        member_id = r.string()
        if v >= 5:
            r.nullable_string()
        protocol_type = r.string()
        protocols = r.array(lambda r: (r.string(), r.nullable_bytes() or b""))
        r.done()
        res = await self.coordinator.join(group_id, member_id, _client_id.get(), protocol_type, protocols,
                                          session_timeout, rebalance_timeout, require_known_id=v >= 4,
                                          client_host=_client_host.get())
        w = Writer()
        if v >= 2:
            w.int32(0)
        w.int16(res["error"]).int32(res.get("generation", -1)).string(res.get("protocol", ""))
        w.string(res.get("leader", "")).string(res["member_id"])

        def member(w: Writer, m: tuple[str, bytes]) -> None:
            w.string(m[0])
            if v >= 5:
                w.string(None)
            w.nullable_bytes(m[1])

        return w.array(res.get("members", []), member).bytes()

    async def _SyncGroup(self, r: Reader, v: int) -> bytes:
        group_id, generation, member_id = r.string(), r.int32(), r.string()
        if v >= 3:
            r.nullable_string()
        assignments = r.array(lambda r: (r.string(), r.nullable_bytes() or b""))
        r.done()
        error, assignment = await self.coordinator.sync(group_id, generation, member_id, assignments)
        w = Writer()
        if v >= 1:
            w.int32(0)
        return w.int16(error).nullable_bytes(assignment).bytes()

    async def _Heartbeat(self, r: Reader, v: int) -> bytes:
        group_id, generation, member_id = r.string(), r.int32(), r.string()
        if v >= 3:
            r.nullable_string()
        r.done()
        error = await self.coordinator.heartbeat(group_id, generation, member_id)
        w = Writer()
        if v >= 1:
            w.int32(0)
        return w.int16(error).bytes()

    async def _LeaveGroup(self, r: Reader, v: int) -> bytes:
        group_id = r.string()
        if v >= 3:
            members = r.array(lambda r: (r.string(), r.nullable_string()))
        else:
            members = [(r.string(), None)]
        r.done()
        errors = [(m, i, await self.coordinator.leave(group_id, m)) for m, i in members]
        w = Writer()
        if v >= 1:
            w.int32(0)
        if v < 3:
            return w.int16(errors[0][2]).bytes()
        w.int16(NONE)
        return w.array(errors, lambda w, e: w.string(e[0]).string(e[1]).int16(e[2])).bytes()

    # -- ListGroups, DescribeGroups ----------------------------------------------------------
    async def _ListGroups(self, r: Reader, v: int) -> bytes:
        r.done()
        in_file = await self._db(self.log.list_groups)
        found = {g: "consumer" for g in in_file}  # native groups and any group with committed offsets
        for group_id, protocol_type in await self.coordinator.listing():
            found[group_id] = protocol_type
        w = Writer()
        if v >= 1:
            w.int32(0)
        w.int16(NONE)
        return w.array(sorted(found.items()), lambda w, g: w.string(g[0]).string(g[1])).bytes()

    async def _DescribeGroups(self, r: Reader, v: int) -> bytes:
        wanted = r.array(Reader.string)
        if v >= 3:
            r.boolean()  # include_authorized_operations: no ACLs here
        r.done()
        w = Writer()
        if v >= 1:
            w.int32(0)

        def member(w: Writer, m: tuple[str, str, str, bytes, bytes]) -> None:
            w.string(m[0])
            if v >= 4:
                w.string(None)  # group_instance_id: static membership is not supported
            w.string(m[1]).string(m[2]).nullable_bytes(m[3]).nullable_bytes(m[4])

        w.int32(len(wanted))
        for group_id in wanted:
            error, state, protocol_type, protocol, members = await self._describe_group(group_id)
            w.int16(error).string(group_id).string(state).string(protocol_type).string(protocol)
            w.array(members, member)
            if v >= 3:
                w.int32(-2147483648)  # authorized operations: not asked for / not known
        return w.bytes()

    async def _describe_group(self, group_id: str) -> tuple[int, str, str, str, list[tuple[str, str, str, bytes, bytes]]]:
        """(error, state, protocol type, protocol, members) as DescribeGroups answers."""
        if not group_id:
            return INVALID_GROUP_ID, "", "", "", []
        found = await self.coordinator.describe(group_id)
        if found is not None:  # a protocol group with live members
            g, live = found
            stable = g.state == "Stable"
            # As Kafka: metadata and assignments only once the group is stable.
            members = [(m.member_id, m.client_id, m.client_host,
                        dict(m.protocols).get(g.protocol or "", b"") if stable else b"",
                        m.assignment if stable else b"") for m in live]
            return NONE, g.state, g.protocol_type, (g.protocol or "") if stable else "", members
        try:
            d = await self._db(self.log.describe_group, group_id)
        except GroupIdNotFoundError:
            return NONE, "Dead", "", "", []  # what Kafka answers (before v6) for a group it does not know
        except InvalidConfigError:  # a group id sqlog cannot store (over 255 characters)
            return INVALID_GROUP_ID, "", "", "", []
        return NONE, d.state, "consumer", (d.strategy or "") if d.members else "", _native_members(d)


def _native_members(d: GroupDescription) -> list[tuple[str, str, str, bytes, bytes]]:
    """A native group's live members as a consumer-protocol group describes them: the subscription
    and the owned partitions in the consumer protocol's v0 encoding."""
    out = []
    for m in d.members:
        subscription = Writer().int16(0).array(m.subscription, Writer.string).nullable_bytes(None).bytes()
        by_topic: dict[str, list[int]] = {}
        for tp in sorted(m.assignment, key=lambda tp: (tp.topic, tp.partition)):
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        assignment = Writer().int16(0).array(
            by_topic.items(), lambda w, t: w.string(t[0]).array(t[1], Writer.int32)).nullable_bytes(None).bytes()
        out.append((m.member_id, m.client_id, m.host, subscription, assignment))
    return out


__all__ = ["Server", "VERSIONS"]
