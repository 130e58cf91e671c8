"""``log.table(topic)``: a topic read as a table (Kafka Streams' KTable): the latest value of every
key, tombstones (value None) deleting it.

A compacted topic keeps, in the same transaction as every append, each key's latest offset per
partition and whether it is a tombstone (its latest-record table, `storage.latest_ddl`), and a
count of its live keys. So, on a compacted topic:

- ``table[key]``, ``get``, ``in``: one probe of that table's primary key (all of the key's
  partitions at once), then one of the partition table's by offset for the value;
- ``len(table)``: one read of the topic's counts, unless some key has records in more than one
  partition (sent with an explicit ``partition=``, or partitions were added): then a walk of the
  latest-record table (one row per key, never the log);
- iteration and ``items()``: one walk of the latest-record table (plus a probe by offset per value).

The answers are the same before and after a compaction ran: compaction only removes records a
later record of the same key supersedes, and tombstones (which read as "absent" either way). A
topic without that table (cleanup_policy "delete") is read the same way, by a scan of its records.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import apsw

from . import topics
from .engine import Engine
from .errors import LogClosedError, SerializationError, translated
from .partitioner import partition_for_key
from .serde import Serde, serde_function, to_bytes
from .storage import latest_table, partition_table, snapshot

_ABSENT: Any = object()


@functools.lru_cache(maxsize=64)
def _lookup(topic_id: int, partitions: int) -> str:
    """A key's latest record in each partition of a compacted topic: ``(partition, ts, value)`` rows,
    one statement (so one snapshot), a probe of the latest-record table's primary key and one of
    the partition's by offset per partition."""
    latest = latest_table(topic_id)
    return " UNION ALL ".join(
        f"SELECT {p}, r.ts, r.value FROM {latest} l JOIN {partition_table(topic_id, p)} r ON r.offset = l.offset"
        f" WHERE l.key = ?1 AND l.partition = {p}" for p in range(partitions)
    )

_VALUE = "SELECT ts, value FROM {table} WHERE offset = ?"
_COUNTS = "SELECT live_keys, shared_keys, cleanup_policy != 'delete' FROM topics WHERE topic_id = ?"
# Each partition's live keys, their latest timestamps and values (a walk of the latest-record table).
_LIVE = "SELECT l.key, r.ts, r.value FROM {latest} l JOIN {table} r ON r.offset = l.offset WHERE l.partition = ? AND l.live"
_LIVE_KEYS = "SELECT key FROM {latest} WHERE live"
# Keys with rows in more than one partition, and their rows (the rest are decided by `live` alone).
_SHARED = ("SELECT key, partition, offset, live FROM {latest} WHERE key IN"
           " (SELECT key FROM {latest} GROUP BY key HAVING count(*) > 1)")
# A delete-policy topic, by a scan: the key's latest record; each key's latest record.
_SCAN_LATEST = "SELECT ts, value FROM {table} WHERE key = ? ORDER BY offset DESC LIMIT 1"
_SCAN_ALL = "SELECT key, ts, value, max(offset) FROM {table} WHERE key IS NOT NULL GROUP BY key"


class Table(Mapping[Any, Any]):
    """A read-only mapping of a topic's latest non-tombstone value per key, across its partitions.

    Every call reads the log as it is now (one snapshot per call). When a key was written to more
    than one partition (explicit ``partition=``), its latest record by timestamp wins (ties: the
    partition the key hashes to). Thread-safe; close it (or its log) when done.
    """

    def __init__(self, engine: Engine, topic: str, key_serializer: Serde | Callable[[Any], bytes] | None = None,
                 value_deserializer: Serde | Callable[[bytes], Any] | None = None,
                 key_deserializer: Serde | Callable[[bytes], Any] | None = None) -> None:
        engine.check_open()
        self.topic = topics.validate_name(topic)
        self._key_ser = serde_function(key_serializer, "key_serializer", "serialize")
        self._value_de = serde_function(value_deserializer, "value_deserializer", "deserialize")
        if key_deserializer is None and isinstance(key_serializer, Serde):
            key_deserializer = key_serializer
        self._key_de = serde_function(key_deserializer, "key_deserializer", "deserialize")
        self._engine = engine
        self._meta = engine.topic_meta(topic)  # UnknownTopicOrPartitionError if there is none
        self._epoch = engine.meta_epoch
        self._lock = threading.Lock()
        self._conn: apsw.Connection | None = None
        self._pid = os.getpid()
        engine.track(self)

    # -- Mapping ---------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        found = self._latest(self._key_bytes(key))
        if found is _ABSENT:
            raise KeyError(key)
        return found

    def get(self, key: Any, default: Any = None) -> Any:
        """The key's latest value, or ``default`` when it has none (never written, or deleted)."""
        found = self._latest(self._key_bytes(key))
        return default if found is _ABSENT else found

    def __contains__(self, key: object) -> bool:
        return self._latest(self._key_bytes(key)) is not _ABSENT

    def __len__(self) -> int:
        with self._lock:
            conn, meta = self._read()
            if meta.compacted:
                with translated(self._engine.path), snapshot(conn):
                    found = conn.execute(_COUNTS, (meta.topic_id,)).fetchone()
                    if found is not None and found[2]:
                        live, shared, _ = found
                        return int(live) if not shared else len(self._live_keys(conn, meta))
                    self._refresh(conn)  # no longer compacted (another process altered it): a scan below
        return len(self._items())

    def __iter__(self) -> Iterator[Any]:
        with self._lock:
            conn, meta = self._read()
            if meta.compacted:
                try:
                    with translated(self._engine.path), snapshot(conn):
                        keys = self._live_keys(conn, meta)
                    return iter([self._decode_key(k) for k in keys])
                except apsw.SQLError:
                    self._refresh(conn)  # e.g. the topic is no longer compacted: a scan below
        return iter([self._decode_key(k) for k in self._items()])

    def items(self) -> Any:
        """``(key, value)`` pairs of the table now (one snapshot)."""
        return [(self._decode_key(k), self._decode_value(v)) for k, v in self._items().items()]

    # -- reading -----------------------------------------------------------------------------
    def _key_bytes(self, key: Any) -> bytes:
        k = key if type(key) is bytes and self._key_ser is None else to_bytes(key, self._key_ser, "key")
        if k is None:
            raise SerializationError("a table key cannot be None (compacted topics' records all have keys)")
        return k

    def _decode_key(self, k: bytes) -> Any:
        return k if self._key_de is None else self._key_de(k)

    def _decode_value(self, v: bytes) -> Any:
        return v if self._value_de is None else self._value_de(v)

    def _read(self) -> tuple[apsw.Connection, topics.TopicMeta]:
        if self._engine.closed or self._closed:
            raise LogClosedError("the table (or its log) is closed")
        if self._conn is not None and self._pid != os.getpid():  # forked: the parent's, not to be used
            _INHERITED.append(self._conn)  # nor closed (it is still the parent's)
            self._conn = None
            self._engine.track(self)  # the child's engine tracks its own clients
        if self._conn is None:
            self._conn = self._engine.reader()
            self._pid = os.getpid()
        if self._epoch != self._engine.meta_epoch:  # altered here (e.g. partitions grown)
            self._epoch = self._engine.meta_epoch
            with translated(self._engine.path):
                self._meta = topics.require(self._conn, self.topic)
        return self._conn, self._meta

    _closed = False
    __hash__ = object.__hash__  # a live view: equal only to itself (Mapping would compare contents)

    def __eq__(self, other: object) -> bool:
        return self is other

    def _latest(self, k: bytes) -> Any:
        """The key's latest value, deserialized; `_ABSENT` when absent or deleted (tombstone)."""
        with self._lock:
            conn, meta = self._read()
            try:
                rows = self._rows(conn, meta, k)
            except apsw.SQLError:  # e.g. another process made the topic "delete" (no latest-record table)
                meta = self._refresh(conn)
                with translated(self._engine.path):
                    rows = self._rows(conn, meta, k)
            except apsw.Error:  # (a try costs nothing until it raises: lookups are the hot path)
                with translated(self._engine.path):
                    raise
        if not rows:
            return _ABSENT
        if len(rows) == 1:
            value = rows[0][2]
        else:  # the key is in more than one partition: the latest by timestamp, ties to its home partition
            home = partition_for_key(k, meta.partitions)
            value = max(rows, key=lambda row: (row[1], row[0] == home, -row[0]))[2]
        return _ABSENT if value is None else self._decode_value(value)

    @staticmethod
    def _rows(conn: apsw.Connection, meta: topics.TopicMeta, k: bytes) -> list[tuple[int, int, bytes | None]]:
        """``(partition, ts, value)`` of the key's latest record in each partition holding it."""
        if meta.compacted:  # one statement: its own snapshot
            return conn.execute(_lookup(meta.topic_id, meta.partitions), (k,)).fetchall()
        with snapshot(conn):
            return [(p, *row) for p in range(meta.partitions)
                    for row in conn.execute(_SCAN_LATEST.format(table=partition_table(meta.topic_id, p)), (k,))]

    def _live_keys(self, conn: apsw.Connection, meta: topics.TopicMeta) -> list[bytes]:
        """A compacted topic's live keys, from its latest-record table (inside a snapshot)."""
        latest = latest_table(meta.topic_id)
        keys = [k for (k,) in conn.execute(_LIVE_KEYS.format(latest=latest))]
        merged = self._merge_shared(conn, meta)
        if not merged:
            return keys
        return [k for k in dict.fromkeys(keys) if k not in merged] + [k for k, live in merged.items() if live]

    def _merge_shared(self, conn: apsw.Connection, meta: topics.TopicMeta) -> dict[bytes, bool]:
        """Keys with records in more than one partition: whether each is live (its latest record
        by timestamp, ties to the partition the key hashes to, is not a tombstone)."""
        best: dict[bytes, tuple[int, bool, bool]] = {}  # key -> (ts, home, live)
        counts = conn.execute(_COUNTS, (meta.topic_id,)).fetchone()
        if counts is None or not counts[1]:
            return {}  # no key is in more than one partition (the count says so: no walk)
        for key, p, offset, live in conn.execute(_SHARED.format(latest=latest_table(meta.topic_id))):
            found = conn.execute(_VALUE.format(table=partition_table(meta.topic_id, p)), (offset,)).fetchone()
            if found is None:
                continue
            mine = (found[0], p == partition_for_key(key, meta.partitions))
            seen = best.get(key)
            if seen is None or mine > seen[:2]:  # rows come in partition order: the first wins a full tie
                best[key] = (*mine, bool(live))
        return {key: found[2] for key, found in best.items()}

    def _refresh(self, conn: apsw.Connection) -> topics.TopicMeta:
        """Read the topic's metadata again (another process may have altered it)."""
        with translated(self._engine.path):
            self._meta = topics.require(conn, self.topic)
        return self._meta

    def _items(self) -> dict[bytes, bytes]:
        """The live keys and their latest values, as stored."""
        with self._lock:
            conn, meta = self._read()
            if meta.compacted:
                try:
                    with snapshot(conn):
                        conn.execute(f"SELECT 1 FROM {latest_table(meta.topic_id)} LIMIT 1").fetchall()
                except apsw.SQLError:
                    meta = self._refresh(conn)  # no longer compacted (another process altered it)
            latest: dict[bytes, tuple[int, bytes | None]] = {}
            with translated(self._engine.path), snapshot(conn):
                for p in range(meta.partitions):
                    table = partition_table(meta.topic_id, p)
                    if meta.compacted:  # live rows only: a later tombstone elsewhere is settled below
                        cursor = conn.execute(_LIVE.format(latest=latest_table(meta.topic_id), table=table), (p,))
                    else:
                        cursor = conn.execute(_SCAN_ALL.format(table=table))
                    for key, ts, value, *_ in cursor:
                        seen = latest.get(key)
                        if seen is None or ts > seen[0] or (ts == seen[0] and partition_for_key(key, meta.partitions) == p):
                            latest[key] = (ts, value)
                merged = self._merge_shared(conn, meta) if meta.compacted else {}
        return {k: v for k, (_, v) in latest.items() if v is not None and merged.get(k, True)}

    def close(self) -> None:
        """Close the table's read connection; idempotent."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        self._engine.untrack(self)

    def __enter__(self) -> Table:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<sqlog.Table {self.topic!r}>"


_INHERITED: list[apsw.Connection] = []  # tables' connections from a parent process, kept so a child never closes them
