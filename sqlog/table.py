"""``log.table(topic)``: a topic read as a table (Kafka Streams' KTable): the latest value of every
key, tombstones (value None) deleting it.

On a compacted topic each partition has a key index ``(key, offset)``, maintained by SQLite on
every append, so ``table[key]`` is one index probe per partition (the latest record of the key)
and the answers are the same before and after a compaction ran: compaction only removes records
a later record of the same key supersedes, and tombstones (which read as "absent" either way).
A topic without the index (cleanup_policy "delete") is read the same way, by a scan.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import apsw

from . import topics
from .engine import Engine
from .errors import LogClosedError, SerializationError, translated
from .partitioner import partition_for_key
from .serde import Serde, serde_function, to_bytes
from .storage import partition_table, snapshot

_ABSENT: Any = object()
_LATEST = "SELECT ts, value FROM {table} WHERE key = ? ORDER BY offset DESC LIMIT 1"
# Each key's latest record, through the key index (GROUP BY walks it; the bare columns come from
# the row holding max(offset), as SQLite documents for a lone max()).
_ALL = "SELECT key, ts, value, max(offset) FROM {table} WHERE key IS NOT NULL GROUP BY key"


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
        return len(self._items())

    def __iter__(self) -> Iterator[Any]:
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
        if self._conn is None:
            self._conn = self._engine.reader()
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
            home = partition_for_key(k, meta.partitions)
            best: tuple[int, int, bytes | None] | None = None
            with translated(self._engine.path), snapshot(conn):
                for p in [home, *(p for p in range(meta.partitions) if p != home)]:
                    row = conn.execute(_LATEST.format(table=partition_table(meta.topic_id, p)), (k,)).fetchone()
                    if row is not None and (best is None or row[0] > best[0]):
                        best = (row[0], p, row[1])
        if best is None or best[2] is None:
            return _ABSENT
        return self._decode_value(best[2])

    def _items(self) -> dict[bytes, bytes]:
        """The live keys and their latest values, as stored."""
        with self._lock:
            conn, meta = self._read()
            latest: dict[bytes, tuple[int, bytes | None]] = {}
            with translated(self._engine.path), snapshot(conn):
                for p in range(meta.partitions):
                    for key, ts, value, _ in conn.execute(_ALL.format(table=partition_table(meta.topic_id, p))):
                        seen = latest.get(key)
                        if seen is None or ts > seen[0] or (ts == seen[0] and partition_for_key(key, meta.partitions) == p):
                            latest[key] = (ts, value)
        return {k: v for k, (_, v) in latest.items() if v is not None}

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
