"""``sqlog.open()``: one log file, its writer connection, and the factories for clients."""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import apsw

from . import groups, topics
from .errors import (
    CommitFailedError,
    InvalidConfigError,
    LogClosedError,
    UnknownTopicOrPartitionError,
    translated,
)
from .storage import connect, file_sizes, transaction
from .types import GroupDescription, OffsetAndMetadata, TopicDescription, TopicPartition
from .writer import Writer

if TYPE_CHECKING:
    from .consumer import Consumer
    from .producer import Producer

_SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}


class Log:
    """An open sqlog file. Create with `sqlog.open`; thread-safe; close it (or use ``with``)."""

    def __init__(self, path: str | os.PathLike[str], *, durability: str = "normal",
                 busy_timeout_ms: int = 10_000, journal_size_limit: int = 64 * 1024 * 1024) -> None:
        if durability not in _SYNCHRONOUS:
            raise InvalidConfigError(f"durability must be 'normal' or 'full', not {durability!r}")
        if type(busy_timeout_ms) is not int or busy_timeout_ms < 0:
            raise InvalidConfigError(f"busy_timeout_ms must be an int >= 0, not {busy_timeout_ms!r}")
        if type(journal_size_limit) is not int or journal_size_limit < 0:
            raise InvalidConfigError(f"journal_size_limit must be an int >= 0, not {journal_size_limit!r}")
        self.path = os.fspath(path)
        self.durability = durability
        self.synchronous = _SYNCHRONOUS[durability]
        self.busy_timeout_ms = busy_timeout_ms
        self._journal_size_limit = journal_size_limit
        self.closed = False
        self._meta_epoch = 0  # bumped by every local topic change, so clients drop cached metadata
        self._commit_seq = 0  # bumped after every local commit of records; blocked polls wait on it
        self._appended = threading.Condition()
        self._consumers: weakref.WeakSet[Consumer] = weakref.WeakSet()
        self._open_connections()
        self._writer = Writer(self._conn, self.path, self._mutex, self._notify_commit)
        atexit.register(_close_at_exit, weakref.ref(self))
        os.register_at_fork(after_in_child=_reopen_in_child(weakref.ref(self)))

    def _open_connections(self) -> None:
        self._pid = os.getpid()
        # The one writer connection: every append, commit and admin change goes through it,
        # serialized by _mutex, so batches reach the tables in the order they were sealed.
        self._conn = connect(self.path, busy_timeout_ms=self.busy_timeout_ms, synchronous=self.synchronous)
        self._conn.execute(f"PRAGMA journal_size_limit={self._journal_size_limit}")
        self._mutex = threading.Lock()

    def _after_fork(self) -> None:
        """In a forked child the parent's connection must not be used (nor closed): open new ones.

        Records the parent had not yet written stay the parent's: the child's producers start empty.
        """
        _ABANDONED.append(self._conn)
        self._appended = threading.Condition()
        self._consumers = weakref.WeakSet()
        if not self.closed:
            self._open_connections()
            self._writer.after_fork(self._conn, self._mutex)

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
                     retention_bytes: int | None = None) -> TopicDescription:
        """Create a topic; offsets of each partition start at 0."""
        with self._write() as conn:
            topics.create(conn, name, partitions, retention_ms, retention_bytes)
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
                    retention_bytes: Any = topics.UNCHANGED) -> TopicDescription:
        """Grow the partition count (never shrink, as in Kafka) or change retention (None: keep forever)."""
        with self._write() as conn:
            topics.alter(conn, name, partitions, retention_ms, retention_bytes)
            self._meta_epoch += 1
            return topics.describe(conn, name)

    def delete_topic(self, name: str) -> None:
        """Delete a topic with all its records and committed offsets."""
        with self._write() as conn:
            topics.delete(conn, name)
            self._meta_epoch += 1

    @contextmanager
    def _read(self) -> Iterator[apsw.Connection]:
        self._check_open()
        with self._mutex, translated(self.path):
            yield self._conn

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
                        fence: groups.Fence | None = None) -> None:
        """Store offsets; with a ``fence``, only if the committer owns every partition (same transaction)."""
        with self._write() as conn:
            if fence is not None:
                groups.check_fence(conn, group_id, fence, [(tp, t) for tp, t, _, _ in rows])
            for tp, topic_id, offset, _ in rows:
                row = conn.execute(
                    "SELECT next_offset FROM partitions WHERE topic_id = ? AND partition = ?",
                    (topic_id, tp.partition),
                ).fetchone()
                if row is None:
                    raise CommitFailedError(f"cannot commit {tp}: the topic no longer exists")
                if offset > row[0]:
                    raise CommitFailedError(
                        f"cannot commit offset {offset} for {tp}: beyond its high watermark {row[0]}"
                    )
            groups.store(conn, group_id, [(t, tp.partition, o, m) for tp, t, o, m in rows])

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
        rows = []
        for tp, om in offsets.items():
            if isinstance(om, int) and type(om) is not bool:
                om = OffsetAndMetadata(om)
            if not isinstance(om, OffsetAndMetadata) or type(om.offset) is not int or om.offset < 0:
                raise InvalidConfigError(f"offset for {tp} must be an int >= 0 or OffsetAndMetadata, not {om!r}")
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
        if to not in ("earliest", "latest") and (type(to) is not int or to < 0):
            raise InvalidConfigError(f"to must be 'earliest', 'latest' or a timestamp in ms >= 0, not {to!r}")
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
        row = conn.execute(
            "SELECT log_start_offset, next_offset FROM partitions WHERE topic_id = ? AND partition = ?",
            (meta.topic_id, tp.partition),
        ).fetchone()
        if row is None:
            raise UnknownTopicOrPartitionError(f"{tp.topic!r} has no partition {tp.partition}")
        return meta.topic_id, int(row[0]), int(row[1])

    # -- upkeep ----------------------------------------------------------------------------
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
                consumer.close()
            self.closed = True
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


def open(path: str | os.PathLike[str], *, durability: str = "normal", busy_timeout_ms: int = 10_000,
         journal_size_limit: int = 64 * 1024 * 1024) -> Log:
    """Open (creating if needed) the log at ``path``.

    ``durability="normal"`` survives a process crash once a send is acknowledged;
    ``"full"`` (synchronous=FULL) also survives power loss, at the cost of an fsync per commit.
    """
    return Log(path, durability=durability, busy_timeout_ms=busy_timeout_ms, journal_size_limit=journal_size_limit)
