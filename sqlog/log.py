"""``sqlog.open()``: the public front of one log file: the client factories and admin calls.

The work happens beneath: `engine` (connections, write lock, commit signal), the clients
(`producer`, `consumer`, `share`) and the modules that own each part of the file (`topics`,
`groups`, `share_groups`, `retention`, `check`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Mapping
from typing import Any

from . import clock, groups, share_groups, topics
from .config import CONSUMER_OPTIONS, MAX_INT64, OPEN_OPTIONS, PRODUCER_OPTIONS, SHARE_CONSUMER_OPTIONS, describe
from .consumer import Consumer
from .engine import Engine
from .errors import InvalidConfigError
from .producer import Producer
from .share import ShareConsumer
from .storage import clock_now, file_sizes
from .table import Table
from .transactional import TransactionalProducer
from .types import (
    CheckReport,
    GroupDescription,
    OffsetAndMetadata,
    ShareGroupDescription,
    SweepResult,
    TopicDescription,
    TopicPartition,
)
from .writer import Writer


class Log:
    """An open sqlog file. Create with `sqlog.open`; thread-safe; close it (or use ``with``)."""

    def __init__(self, path: str | os.PathLike[str], *, retention_ms: int | None = None,
                 retention_bytes: int | None = None, **options: Any) -> None:
        """Open (creating if needed) the log at ``path``; see `sqlog.open` for the options."""
        defaults = {
            "retention_ms": topics.check_retention(retention_ms, "retention_ms"),
            "retention_bytes": topics.check_retention(retention_bytes, "retention_bytes"),
        }
        self.engine = Engine(path, **options)  # the other options and their defaults live there
        """The engine beneath: for sqlog's own front doors (and tests), not for applications."""
        self._writer = Writer(self.engine)  # group commit for every producer of this log
        self.path = self.engine.path
        self.durability = self.engine.durability
        self.synchronous = self.engine.synchronous
        self.busy_timeout_ms = self.engine.busy_timeout_ms
        try:
            given = {k: v for k, v in defaults.items() if v is not None}
            if given:
                with self.engine.write() as conn:
                    conn.executemany("INSERT OR REPLACE INTO settings VALUES (?, ?)", list(given.items()))
        except BaseException:
            self.engine.close()
            raise

    @property
    def closed(self) -> bool:
        return self.engine.closed

    # -- topics ----------------------------------------------------------------------------
    def create_topic(self, name: str, partitions: int = 1, retention_ms: int | None = None,
                     retention_bytes: int | None = None, retention_policy: str = "limits", *,
                     cleanup_policy: str = "delete", delete_retention_ms: int = 86_400_000,
                     min_compaction_lag_ms: int = 0, max_compaction_lag_ms: int | None = None,
                     min_cleanable_dirty_ratio: float = 0.5, dedupe_window_ms: int | None = None,
                     exist_ok: bool = False) -> TopicDescription:
        """Create a topic; offsets of each partition start at 0.

        ``exist_ok=True``: if the topic exists with the same partition count, describe it and
        change nothing (kafka-topics.sh's ``--if-not-exists``); another count still raises
        TopicAlreadyExistsError.

        ``dedupe_window_ms``: ``send(..., message_id=...)`` stores a message id once within this
        window (None: off, the default).

        ``retention_policy="interest"``: retention never removes records that a consumer group
        (by its committed offset) or a share group (by its start offset) reading the topic still needs.
        ``cleanup_policy`` (Kafka's cleanup.policy): "delete" (retention), "compact" (keep the
        latest record of every key; records need a key; value None is a tombstone, kept
        ``delete_retention_ms``) or "compact,delete" (both). Records younger than
        ``min_compaction_lag_ms`` are never compacted; a partition is compacted once its dirty part
        holds ``min_cleanable_dirty_ratio`` of its bytes, or has waited ``max_compaction_lag_ms``.
        """
        compaction = {"cleanup_policy": cleanup_policy, "delete_retention_ms": delete_retention_ms,
                      "min_compaction_lag_ms": min_compaction_lag_ms, "max_compaction_lag_ms": max_compaction_lag_ms,
                      "min_cleanable_dirty_ratio": min_cleanable_dirty_ratio}
        with self.engine.write() as conn:
            topics.create(conn, name, partitions, retention_ms, retention_bytes, retention_policy, compaction,
                          dedupe_window_ms, exist_ok)
            self.engine.topics_changed()
            return topics.describe(conn, name)

    def list_topics(self) -> list[str]:
        """The names of all topics, sorted."""
        with self.engine.read() as conn:
            return topics.names(conn)

    def describe_topic(self, name: str) -> TopicDescription:
        """Retention settings and, per partition, log start, high watermark, bytes and records."""
        with self.engine.read() as conn:
            return topics.describe(conn, name)

    def alter_topic(self, name: str, *, partitions: Any = topics.UNCHANGED, retention_ms: Any = topics.UNCHANGED,
                    retention_bytes: Any = topics.UNCHANGED,
                    retention_policy: Any = topics.UNCHANGED, cleanup_policy: Any = topics.UNCHANGED,
                    delete_retention_ms: Any = topics.UNCHANGED, min_compaction_lag_ms: Any = topics.UNCHANGED,
                    max_compaction_lag_ms: Any = topics.UNCHANGED,
                    min_cleanable_dirty_ratio: Any = topics.UNCHANGED,
                    dedupe_window_ms: Any = topics.UNCHANGED) -> TopicDescription:
        """Grow the partition count (never shrink, as in Kafka), change retention (None: keep
        forever), compaction settings (see `create_topic`) or the dedupe window (None: off)."""
        compaction = {k: v for k, v in (
            ("cleanup_policy", cleanup_policy), ("delete_retention_ms", delete_retention_ms),
            ("min_compaction_lag_ms", min_compaction_lag_ms), ("max_compaction_lag_ms", max_compaction_lag_ms),
            ("min_cleanable_dirty_ratio", min_cleanable_dirty_ratio)) if v is not topics.UNCHANGED}
        with self.engine.write() as conn:
            topics.alter(conn, name, partitions, retention_ms, retention_bytes, retention_policy, compaction,
                         dedupe_window_ms)
            self.engine.topics_changed()
            return topics.describe(conn, name)

    def delete_topic(self, name: str) -> None:
        """Delete a topic with all its records and committed offsets."""
        with self.engine.write() as conn:
            topics.delete(conn, name)
            self.engine.topics_changed()

    # -- clients ---------------------------------------------------------------------------
    def producer(self, **config: Any) -> Producer:
        if config.get("transactional_id") is not None:
            return TransactionalProducer(self._writer, **config)
        return Producer(self._writer, **config)

    producer.__doc__ = "A new producer (`sqlog.Producer`). Config keys:\n\n" + describe(PRODUCER_OPTIONS)

    def consumer(self, **config: Any) -> Consumer:
        return Consumer(self.engine, **config)

    consumer.__doc__ = ("A new consumer (`sqlog.Consumer`) with its own read connection. Config keys:\n\n"
                        + describe(CONSUMER_OPTIONS))

    def table(self, topic: str, *, key_serializer: Any = None, value_deserializer: Any = None,
              key_deserializer: Any = None) -> Table:
        """A read-only mapping of ``topic``'s latest non-tombstone value per key (Kafka Streams'
        KTable): ``table[key]``, ``get``, ``in``, ``len``, iteration; lookups are one key-index
        probe per partition on compacted topics. Keys go through ``key_serializer`` (bytes pass
        through); iteration gives them back through ``key_deserializer`` (default: the serializer
        when it is a `sqlog.Serde` such as `sqlog.JSON`, else bytes)."""
        return Table(self.engine, topic, key_serializer, value_deserializer, key_deserializer)

    # -- consumer groups -------------------------------------------------------------------
    def list_groups(self) -> list[str]:
        """The ids of all consumer groups (with members or committed offsets), sorted."""
        with self.engine.read() as conn:
            return groups.list_groups(conn)

    def describe_group(self, group_id: str) -> GroupDescription:
        """A group's state, live members (what each owns and is meant to own, last heartbeat) and,
        per partition, the committed offset, log end offset, lag and owner."""
        with self.engine.read() as conn:
            return groups.describe(conn, group_id)

    def delete_group(self, group_id: str) -> None:
        """Delete a group and its committed offsets; refused (GroupNotEmptyError) while it has live members."""
        with self.engine.write() as conn:
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
            rows.append((tp, groups.offset_and_metadata(om, f"offset for {tp}", f"metadata for {tp}")))
        with self.engine.write() as conn:
            groups.alter_offsets(conn, group_id, [(tp, om.offset, om.metadata) for tp, om in rows])

    def reset_group_offsets(self, group_id: str, to: str | int = "earliest",
                            partitions: Iterable[TopicPartition | str] | None = None,
                            dry_run: bool = False) -> dict[TopicPartition, int]:
        """Move the group's committed offsets to ``"earliest"``, ``"latest"`` or a timestamp (ms: the
        first record at or after it, else the end), like ``kafka-consumer-groups --reset-offsets``.

        ``partitions``: TopicPartitions and/or topic names (all their partitions); default: every
        partition the group has committed. Refused (GroupNotEmptyError) while it has live members.
        Returns the new offsets; ``dry_run=True`` computes them (same checks, one snapshot) and
        stores nothing.
        """
        if to not in ("earliest", "latest") and (type(to) is not int or not 0 <= to <= MAX_INT64):
            raise InvalidConfigError(
                f"to must be 'earliest', 'latest' or a timestamp in ms from 0 to 2**63-1, not {to!r}"
            )
        if partitions is not None and (isinstance(partitions, (str, bytes)) or not isinstance(partitions, Iterable)):
            raise InvalidConfigError(
                f"partitions must be a list of TopicPartitions and/or topic names, not {partitions!r}"
            )
        if type(dry_run) is not bool:
            raise InvalidConfigError(f"dry_run must be True or False, not {dry_run!r}")
        with self.engine.read() if dry_run else self.engine.write() as conn:
            return groups.reset_offsets(conn, group_id, to, partitions, dry_run)

    # -- share groups (queue mode, Kafka's KIP-932; see share.py) -----------------------------
    def share_consumer(self, group_id: str, **config: Any) -> ShareConsumer:
        return ShareConsumer(self.engine, group_id, **config)

    share_consumer.__doc__ = ("A new member of share group ``group_id`` (`sqlog.ShareConsumer`). Config keys:\n\n"
                              + describe(SHARE_CONSUMER_OPTIONS))

    def list_share_groups(self) -> list[str]:
        """The ids of all share groups, sorted."""
        with self.engine.read() as conn:
            return share_groups.list_groups(conn)

    def describe_share_group(self, group_id: str) -> ShareGroupDescription:
        """Per partition: start offset, in-flight window, acquired / available / acknowledged /
        archived counts and lag; state "Dead" for a group that does not exist."""
        with self.engine.read() as conn:
            return share_groups.describe(conn, group_id, clock_now(conn))

    def delete_share_group(self, group_id: str) -> None:
        """Forget a share group's state (e.g. so interest retention stops waiting for it); refused
        (GroupNotEmptyError) while a consumer holds one of its records, GroupIdNotFoundError if none."""
        with self.engine.write() as conn:
            share_groups.delete(conn, group_id, clock.monotonic_ms())

    # -- upkeep ----------------------------------------------------------------------------
    def sweep(self, now_ms: int | None = None) -> SweepResult:
        """Apply retention now (as of ``now_ms``, default the clock) and give free pages back.

        Deletes in bounded chunks, one transaction each, so producers keep going meanwhile.
        """
        self.engine.check_open()
        if now_ms is not None and (type(now_ms) is not int or not 0 <= now_ms <= MAX_INT64):
            raise InvalidConfigError(
                f"now_ms must be None or an int from 0 to 2**63-1 (ms since the epoch), not {now_ms!r}"
            )
        return self.engine.upkeep.sweep(now_ms)

    def check(self) -> CheckReport:
        """Verify the file: SQLite's integrity_check plus sqlog's invariants (dense offsets from
        log start to high watermark, batch index and byte counts matching the records, committed
        offsets in range, no orphan tables). Reads one snapshot; producers keep going."""
        self.engine.check_open()
        return self.engine.upkeep.check()

    def checkpoint(self) -> int:
        """Checkpoint the WAL now (TRUNCATE once it passes ``wal_limit_bytes``); returns its prior size."""
        self.engine.check_open()
        return self.engine.upkeep.checkpoint()

    def stats(self) -> dict[str, int]:
        """Bytes of the database, WAL and shared-memory files, pages and free pages."""
        with self.engine.read() as conn:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return {**file_sizes(self.path), "page_size": page_size, "page_count": pages, "freelist_count": free}

    def close(self) -> None:
        """Write what producers have waiting, close consumers and connections; idempotent."""
        self.engine.close()

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<sqlog.Log {self.path!r}{' closed' if self.closed else ''}>"


def open(path: str | os.PathLike[str], **options: Any) -> Log:
    unknown = sorted(set(options) - _OPEN_OPTIONS)
    if unknown:
        raise InvalidConfigError(f"unknown sqlog.open() option {', '.join(unknown)}; known: {', '.join(sorted(_OPEN_OPTIONS))}")
    return Log(path, **options)


open.__doc__ = (
    "Open (creating if needed) the log at ``path``; a context manager. Options:\n\n" + describe(OPEN_OPTIONS) + """

``max_db_bytes`` in detail: the WAL gets a quarter of it (at most ``wal_limit_bytes``) and is
checkpointed (TRUNCATE) at each commit that fills half of that; the database file gets the rest. A
write finding the WAL's share full, because readers held old snapshots past ``busy_timeout_ms``,
fails with `DiskFullError` too. A write starts only with the WAL within its share, so the sum
exceeds the cap by at most the one transaction being committed (none while checkpoints get through
and transactions stay under half the WAL's share); the ``-shm`` index (32 KiB per 4096 WAL pages)
is not counted. The cap holds this process's writes (other processes: their own).
""")

_OPEN_OPTIONS = frozenset(
    {*inspect.signature(Engine.__init__).parameters, *inspect.signature(Log.__init__).parameters}
) - {"self", "path", "options"}
