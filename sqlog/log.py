"""``sqlog.open()``: one log file, its writer connection, and the factories for clients."""

from __future__ import annotations

import atexit
import inspect
import os
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import apsw

from . import clock, groups, topics
from .errors import (
    CommitFailedError,
    InvalidConfigError,
    LogClosedError,
    UnknownTopicOrPartitionError,
    translated,
)
from .retention import Upkeep, WalBudget
from .storage import clock_now, connect, file_sizes, snapshot, transaction
from .types import (
    CheckReport,
    GroupDescription,
    OffsetAndMetadata,
    SweepResult,
    TopicDescription,
    TopicPartition,
)
from .writer import Writer

if TYPE_CHECKING:
    from .consumer import Consumer
    from .producer import Producer
    from .share import ShareConsumer
    from .types import ShareGroupDescription

_SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}


def _check_path(path: object) -> str:
    """A file system path as a str; not ':memory:' or '' (each connection would get its own database)."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidConfigError(f"path must be a str or os.PathLike, not {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise InvalidConfigError("path must be a str path, not bytes")
    if text in ("", ":memory:") or text.startswith("file:"):
        raise InvalidConfigError(f"path {text!r} is not a file: sqlog needs a file that every connection shares")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise InvalidConfigError(f"path {text!r} cannot be encoded for the file system") from None
    if "\0" in text:
        raise InvalidConfigError("path contains a NUL character")
    return text


MAX_INT64 = 2**63 - 1  # SQLite's INTEGER
MAX_MS = 2**31 - 1  # a C int (busy timeout), and any wait a thread can take (about 24.8 days)


def _check_int(name: str, value: object, minimum: int, maximum: int = MAX_INT64) -> None:
    if type(value) is not int or not minimum <= value <= maximum:
        raise InvalidConfigError(f"{name} must be an int from {minimum} to {maximum}, not {value!r}")


class Log:
    """An open sqlog file. Create with `sqlog.open`; thread-safe; close it (or use ``with``)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: str = "normal",
        busy_timeout_ms: int = 10_000,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        retention_check_interval_ms: int | None = 60_000,
        wal_checkpoint_interval_ms: int | None = 1_000,
        wal_limit_bytes: int = 64 * 1024 * 1024,
        journal_size_limit: int = 32 * 1024 * 1024,
        max_db_bytes: int | None = None,
    ) -> None:
        """Open (creating if needed) the log at ``path``; see `sqlog.open` for the options."""
        if not isinstance(durability, str) or durability not in _SYNCHRONOUS:
            raise InvalidConfigError(f"durability must be 'normal' or 'full', not {durability!r}")
        _check_int("busy_timeout_ms", busy_timeout_ms, 0, MAX_MS)
        _check_int("wal_limit_bytes", wal_limit_bytes, 1)
        _check_int("journal_size_limit", journal_size_limit, 0)
        if max_db_bytes is not None:
            _check_int("max_db_bytes", max_db_bytes, 64 * 1024)
        for name, interval in (("retention_check_interval_ms", retention_check_interval_ms),
                               ("wal_checkpoint_interval_ms", wal_checkpoint_interval_ms)):
            if interval is not None:
                _check_int(name, interval, 1, MAX_MS)
        defaults = {
            "retention_ms": topics.check_retention(retention_ms, "retention_ms"),
            "retention_bytes": topics.check_retention(retention_bytes, "retention_bytes"),
        }
        self.path = _check_path(path)
        self.durability = durability
        self.synchronous = _SYNCHRONOUS[durability]
        self.busy_timeout_ms = busy_timeout_ms
        self._journal_size_limit = journal_size_limit
        self._max_db_bytes = max_db_bytes
        self._wal_budget: WalBudget | None = None  # with max_db_bytes: the WAL's share of the cap
        self._upkeep_options = (retention_check_interval_ms, wal_checkpoint_interval_ms, wal_limit_bytes)
        self.closed = False
        self._meta_epoch = 0  # bumped by every local topic change, so clients drop cached metadata
        self._commit_seq = 0  # bumped after every local commit of records; blocked polls wait on it
        self._appended = threading.Condition()
        self._consumers: weakref.WeakSet[Consumer] = weakref.WeakSet()
        self._open_connections()
        try:
            given = {k: v for k, v in defaults.items() if v is not None}
            if given:
                with self._write() as conn:
                    conn.executemany("INSERT OR REPLACE INTO settings VALUES (?, ?)", list(given.items()))
        except BaseException:
            self._conn.close()
            raise
        self._writer = Writer(self._conn, self.path, self._mutex, self._notify_commit)
        self._upkeep = self._start_upkeep()
        atexit.register(_close_at_exit, weakref.ref(self))
        os.register_at_fork(after_in_child=_reopen_in_child(weakref.ref(self)))

    def _start_upkeep(self) -> Upkeep:
        sweep_ms, checkpoint_ms, wal_limit = self._upkeep_options
        if self._wal_budget is not None:  # the periodic checkpoint escalates where the commits' does
            wal_limit = min(wal_limit, self._wal_budget.trigger_bytes)
        return Upkeep(self.path, self._connect, sweep_ms, checkpoint_ms, wal_limit, self.busy_timeout_ms)

    def _connect(self) -> apsw.Connection:
        conn = connect(self.path, busy_timeout_ms=self.busy_timeout_ms, synchronous=self.synchronous)
        try:
            journal_size_limit = self._journal_size_limit
            if self._max_db_bytes is not None:
                if self._wal_budget is None:
                    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                    self._wal_budget = WalBudget(self.path, self._max_db_bytes, self._upkeep_options[2],
                                                 page_size, self.busy_timeout_ms)
                journal_size_limit = min(journal_size_limit, self._wal_budget.trigger_bytes)
                self._wal_budget.attach(conn)
            conn.execute(f"PRAGMA journal_size_limit={journal_size_limit}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_connections(self) -> None:
        self._pid = os.getpid()
        # The one writer connection: every append, commit and admin change goes through it,
        # serialized by _mutex, so batches reach the tables in the order they were sealed.
        self._conn = self._connect()
        self._mutex = threading.Lock()

    def _after_fork(self) -> None:
        """In a forked child the parent's connection must not be used (nor closed): open new ones.

        Records the parent had not yet written stay the parent's: the child's producers start empty.
        """
        _ABANDONED.append(self._conn)
        _ABANDONED.append(self._upkeep.abandon())
        self._appended = threading.Condition()
        self._consumers = weakref.WeakSet()
        if not self.closed:
            self._open_connections()
            self._writer.after_fork(self._conn, self._mutex)
            self._upkeep = self._start_upkeep()

    def _notify_commit(self) -> None:
        with self._appended:
            self._commit_seq += 1
            self._appended.notify_all()

    @contextmanager
    def _write(self) -> Iterator[apsw.Connection]:
        """A write transaction on the writer connection, with sqlog's errors."""
        self._check_open()
        with self._mutex, translated(self.path), transaction(self._conn) as conn:
            yield conn

    def _check_open(self) -> None:
        if self.closed:
            raise LogClosedError(f"{self.path}: the log is closed; open it again with sqlog.open()")

    # -- topics ----------------------------------------------------------------------------
    def create_topic(self, name: str, partitions: int = 1, retention_ms: int | None = None,
                     retention_bytes: int | None = None, retention_policy: str = "limits") -> TopicDescription:
        """Create a topic; offsets of each partition start at 0.

        ``retention_policy="interest"``: retention never removes records that a consumer group
        (by its committed offset) or a share group (by its start offset) reading the topic still needs.
        """
        with self._write() as conn:
            topics.create(conn, name, partitions, retention_ms, retention_bytes, retention_policy)
            self._meta_epoch += 1
            return topics.describe(conn, name)

    def list_topics(self) -> list[str]:
        """The names of all topics, sorted."""
        with self._read() as conn:
            return topics.names(conn)

    def describe_topic(self, name: str) -> TopicDescription:
        """Retention settings and, per partition, log start, high watermark, bytes and records."""
        with self._read() as conn:
            return topics.describe(conn, name)

    def alter_topic(self, name: str, *, partitions: Any = topics.UNCHANGED, retention_ms: Any = topics.UNCHANGED,
                    retention_bytes: Any = topics.UNCHANGED,
                    retention_policy: Any = topics.UNCHANGED) -> TopicDescription:
        """Grow the partition count (never shrink, as in Kafka) or change retention (None: keep forever)."""
        with self._write() as conn:
            topics.alter(conn, name, partitions, retention_ms, retention_bytes, retention_policy)
            self._meta_epoch += 1
            return topics.describe(conn, name)

    def delete_topic(self, name: str) -> None:
        """Delete a topic with all its records and committed offsets."""
        with self._write() as conn:
            topics.delete(conn, name)
            self._meta_epoch += 1

    @contextmanager
    def _read(self) -> Iterator[apsw.Connection]:
        """The log's connection for an admin read: one snapshot, so retention running meanwhile
        cannot make two of its statements disagree (bounds against records, lag against ends)."""
        self._check_open()
        with self._mutex, translated(self.path), snapshot(self._conn) as conn:
            yield conn

    def _topic_meta(self, name: str) -> topics.TopicMeta:
        with self._read() as conn:
            return topics.require(conn, name)

    # -- clients ---------------------------------------------------------------------------
    def producer(self, **config: Any) -> Producer:
        """A new producer; see `sqlog.Producer` for the config keys."""
        from .producer import Producer

        self._check_open()
        return Producer(self, **config)

    def consumer(self, **config: Any) -> Consumer:
        """A new consumer with its own read connection; see `sqlog.Consumer` for the config keys."""
        from .consumer import Consumer

        self._check_open()
        return Consumer(self, **config)

    def _writer_for_producers(self) -> Writer:
        self._check_open()
        return self._writer

    def _track(self, consumer: Consumer) -> None:
        self._consumers.add(consumer)

    def _untrack(self, consumer: Consumer) -> None:
        self._consumers.discard(consumer)

    def _commit_offsets(self, group_id: str, rows: list[tuple[TopicPartition, int, int, str]],
                        fence: groups.Fence | None = None, skip_beyond_end: bool = False) -> None:
        """Store committed offsets in one transaction; an offset beyond the high watermark is
        refused (CommitFailedError), or left out with ``skip_beyond_end`` (auto-commit). With a
        ``fence``, only if the committer owns every partition, checked in the same transaction."""
        with self._write() as conn:
            if fence is not None:
                groups.check_fence(conn, group_id, fence, [(tp, t) for tp, t, _, _ in rows])
            keep = []
            for row in rows:
                tp, topic_id, offset, _ = row
                found = conn.execute(
                    "SELECT next_offset FROM partitions WHERE topic_id = ? AND partition = ?",
                    (topic_id, tp.partition),
                ).fetchone()
                if found is None:
                    if skip_beyond_end:
                        continue
                    raise CommitFailedError(f"cannot commit {tp}: the topic no longer exists")
                if offset > found[0]:
                    if skip_beyond_end:
                        continue
                    raise CommitFailedError(
                        f"cannot commit offset {offset} for {tp}: beyond its high watermark {found[0]}"
                    )
                keep.append(row)
            groups.store(conn, group_id, [(t, tp.partition, o, m) for tp, t, o, m in keep])

    # -- consumer groups -------------------------------------------------------------------
    def list_groups(self) -> list[str]:
        """The ids of all consumer groups (with members or committed offsets), sorted."""
        with self._read() as conn:
            return groups.list_groups(conn)

    def describe_group(self, group_id: str) -> GroupDescription:
        """A group's state, live members (what each owns and is meant to own, last heartbeat) and,
        per partition, the committed offset, log end offset, lag and owner."""
        with self._read() as conn:
            return groups.describe(conn, group_id)

    def delete_group(self, group_id: str) -> None:
        """Delete a group and its committed offsets; refused (GroupNotEmptyError) while it has live members."""
        with self._write() as conn:
            groups.delete(conn, group_id)

    def alter_group_offsets(self, group_id: str,
                            offsets: Mapping[TopicPartition, int | OffsetAndMetadata]) -> None:
        """Set the group's committed offsets; refused (GroupNotEmptyError) while it has live members.

        Each offset must lie within ``[log_start_offset, high_watermark]`` of its partition.
        """
        if not isinstance(offsets, Mapping):
            raise InvalidConfigError(
                "alter_group_offsets() takes a dict {TopicPartition: offset or OffsetAndMetadata}"
            )
        rows = []
        for tp, om in offsets.items():
            if isinstance(om, int) and type(om) is not bool:
                om = OffsetAndMetadata(om)
            if not isinstance(om, OffsetAndMetadata) or type(om.offset) is not int or om.offset < 0:
                raise InvalidConfigError(f"offset for {tp} must be an int >= 0 or OffsetAndMetadata, not {om!r}")
            groups.storable_str(om.metadata, f"metadata for {tp}")
            rows.append((tp, om))
        with self._write() as conn:
            groups.require_empty(conn, group_id, "alter offsets of")
            stored = []
            for tp, om in rows:
                topic_id, start, end = self._partition_bounds(conn, tp)
                if not start <= om.offset <= end:
                    raise InvalidConfigError(
                        f"offset {om.offset} for {tp.topic}-{tp.partition} is outside its log [{start}, {end}]"
                    )
                stored.append((topic_id, tp.partition, om.offset, om.metadata))
            groups.store(conn, group_id, stored)

    def reset_group_offsets(self, group_id: str, to: str | int = "earliest",
                            partitions: Iterable[TopicPartition | str] | None = None) -> dict[TopicPartition, int]:
        """Move the group's committed offsets to ``"earliest"``, ``"latest"`` or a timestamp (ms: the
        first record at or after it, else the end), like ``kafka-consumer-groups --reset-offsets``.

        ``partitions``: TopicPartitions and/or topic names (all their partitions); default: every
        partition the group has committed. Refused (GroupNotEmptyError) while it has live members.
        Returns the new offsets.
        """
        if to not in ("earliest", "latest") and (type(to) is not int or not 0 <= to <= MAX_INT64):
            raise InvalidConfigError(
                f"to must be 'earliest', 'latest' or a timestamp in ms from 0 to 2**63-1, not {to!r}"
            )
        if partitions is not None and (isinstance(partitions, (str, bytes)) or not isinstance(partitions, Iterable)):
            raise InvalidConfigError(
                f"partitions must be a list of TopicPartitions and/or topic names, not {partitions!r}"
            )
        with self._write() as conn:
            groups.require_empty(conn, group_id, "reset offsets of")
            if partitions is None:
                names = dict(conn.execute("SELECT topic_id, name FROM topics"))
                wanted = [TopicPartition(names[t], p) for t, p in conn.execute(
                    "SELECT topic_id, partition FROM committed_offsets WHERE group_id = ? ORDER BY 1, 2", (group_id,)
                ) if t in names]
            else:
                wanted = []
                for item in partitions:
                    if isinstance(item, TopicPartition):
                        wanted.append(item)
                    else:
                        meta = topics.require(conn, item)
                        wanted.extend(TopicPartition(meta.name, p) for p in range(meta.partitions))
            out: dict[TopicPartition, int] = {}
            stored = []
            for tp in wanted:
                topic_id, start, end = self._partition_bounds(conn, tp)
                if to == "earliest":
                    offset = start
                elif to == "latest":
                    offset = end
                else:
                    hit = topics.offset_for_time(conn, topic_id, tp.partition, to)  # type: ignore[arg-type]
                    offset = end if hit is None else hit[0]
                out[tp] = offset
                stored.append((topic_id, tp.partition, offset, ""))
            groups.store(conn, group_id, stored)
            return out

    @staticmethod
    def _partition_bounds(conn: apsw.Connection, tp: TopicPartition) -> tuple[int, int, int]:
        if not isinstance(tp, TopicPartition):
            raise InvalidConfigError(f"expected a TopicPartition, not {tp!r}")
        meta = topics.require(conn, tp.topic)
        if type(tp.partition) is not int or not 0 <= tp.partition < meta.partitions:
            raise UnknownTopicOrPartitionError(
                f"topic {tp.topic!r} has partitions 0..{meta.partitions - 1}, not {tp.partition!r}"
            )
        row = conn.execute(
            "SELECT log_start_offset, next_offset FROM partitions WHERE topic_id = ? AND partition = ?",
            (meta.topic_id, tp.partition),
        ).fetchone()
        if row is None:
            raise UnknownTopicOrPartitionError(f"{tp.topic!r} has no partition {tp.partition}")
        return meta.topic_id, int(row[0]), int(row[1])

    # -- share groups (queue mode, Kafka's KIP-932; see share.py) -----------------------------
    def share_consumer(self, group_id: str, **config: Any) -> ShareConsumer:
        """A new member of share group ``group_id``; see `sqlog.ShareConsumer` for the config keys."""
        from .share import ShareConsumer

        self._check_open()
        return ShareConsumer(self, group_id, **config)

    def list_share_groups(self) -> list[str]:
        """The ids of all share groups, sorted."""
        from . import share_groups

        with self._read() as conn:
            return share_groups.list_groups(conn)

    def describe_share_group(self, group_id: str) -> ShareGroupDescription:
        """Per partition: start offset, in-flight window, acquired / available / acknowledged /
        archived counts and lag; state "Dead" for a group that does not exist."""
        from . import share_groups

        with self._read() as conn:
            return share_groups.describe(conn, group_id, clock_now(conn))

    def delete_share_group(self, group_id: str) -> None:
        """Forget a share group's state (e.g. so interest retention stops waiting for it); refused
        (GroupNotEmptyError) while a consumer holds one of its records, GroupIdNotFoundError if none."""
        from . import share_groups

        with self._write() as conn:
            share_groups.delete(conn, group_id, clock.monotonic_ms())

    # -- upkeep ----------------------------------------------------------------------------
    def sweep(self, now_ms: int | None = None) -> SweepResult:
        """Apply retention now (as of ``now_ms``, default the clock) and give free pages back.

        Deletes in bounded chunks, one transaction each, so producers keep going meanwhile.
        """
        self._check_open()
        if now_ms is not None and (type(now_ms) is not int or not 0 <= now_ms <= MAX_INT64):
            raise InvalidConfigError(
                f"now_ms must be None or an int from 0 to 2**63-1 (ms since the epoch), not {now_ms!r}"
            )
        return self._upkeep.sweep(now_ms)

    def check(self) -> CheckReport:
        """Verify the file: SQLite's integrity_check plus sqlog's invariants (dense offsets from
        log start to high watermark, batch index and byte counts matching the records, committed
        offsets in range, no orphan tables). Reads one snapshot; producers keep going."""
        self._check_open()
        return self._upkeep.check()

    def checkpoint(self) -> int:
        """Checkpoint the WAL now (TRUNCATE once it passes ``wal_limit_bytes``); returns its prior size."""
        self._check_open()
        return self._upkeep.checkpoint()

    def stats(self) -> dict[str, int]:
        """Bytes of the database, WAL and shared-memory files, pages and free pages."""
        with self._read() as conn:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return {**file_sizes(self.path), "page_size": page_size, "page_count": pages, "freelist_count": free}

    def close(self) -> None:
        """Write what producers have waiting, close consumers and connections; idempotent."""
        if self.closed:
            return
        try:
            self._writer.close()
        finally:
            for consumer in list(self._consumers):
                try:
                    consumer.close()
                except Exception:
                    # Its final auto-commit failed (e.g. topic deleted), or a user's rebalance
                    # listener raised in on_revoked: the consumer is closed all the same, and so is the log.
                    pass
            self.closed = True
            self._upkeep.close()
            with self._mutex:
                self._conn.close()

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<sqlog.Log {self.path!r}{' closed' if self.closed else ''}>"


_ABANDONED: list[apsw.Connection] = []  # a parent's connections, kept alive so a child never closes them


def _close_at_exit(ref: weakref.ref[Log]) -> None:
    log = ref()
    if log is not None and not log.closed and log._pid == os.getpid():
        log.close()


def _reopen_in_child(ref: weakref.ref[Log]) -> Any:
    def hook() -> None:
        log = ref()
        if log is not None:
            log._after_fork()

    return hook


def open(path: str | os.PathLike[str], **options: Any) -> Log:
    """Open (creating if needed) the log at ``path``. Options:

    - ``durability``: "normal" (default) survives a process crash once a send is acknowledged;
      "full" (synchronous=FULL) also survives power loss, at an fsync per commit.
    - ``busy_timeout_ms`` (10000): how long a write waits for another process's lock.
    - ``retention_ms`` / ``retention_bytes``: log-wide defaults for topics without their own,
      stored in the file so every process agrees (-1 = forever; omitted = keep what is stored).
    - ``retention_check_interval_ms`` (60000, None = off): how often the background sweeper runs.
    - ``wal_checkpoint_interval_ms`` (1000, None = off) and ``wal_limit_bytes`` (64 MiB): the
      periodic WAL checkpoint, escalated to TRUNCATE past the limit.
    - ``journal_size_limit`` (32 MiB): what SQLite truncates the WAL to after a checkpoint.
    - ``max_db_bytes`` (None): a cap on the database file plus its WAL; a write past it fails
      with `DiskFullError` (nothing of it stored) until retention or a sweep frees pages. The WAL
      gets a quarter of it (at most ``wal_limit_bytes``) and is checkpointed (TRUNCATE) at each
      commit that fills half of that; the database file gets the rest. A write finding the WAL's
      share full, because readers held old snapshots past ``busy_timeout_ms``, fails with
      `DiskFullError` too. A write starts only with the WAL within its share, so the sum exceeds
      the cap by at most the one transaction being committed (none while checkpoints get through
      and transactions stay under half the WAL's share); the ``-shm`` index (32 KiB per 4096 WAL
      pages) is not counted. The cap holds this process's writes (other processes: their own).
    """
    unknown = sorted(set(options) - _OPEN_OPTIONS)
    if unknown:
        raise InvalidConfigError(f"unknown sqlog.open() option {', '.join(unknown)}; known: {', '.join(sorted(_OPEN_OPTIONS))}")
    return Log(path, **options)


_OPEN_OPTIONS = frozenset(inspect.signature(Log.__init__).parameters) - {"self", "path"}
