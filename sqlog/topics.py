"""Topic admin: names, partitions, retention and compaction settings, stored in the log file."""

from __future__ import annotations

import re
from typing import Any

import apsw
import attrs

from .clock import wall_ms
from .errors import (
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidTopicError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from .storage import add_latest, drop_latest, effective, latest_table, partition_ddl, partition_table
from .types import PartitionDescription, TopicDescription

_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
MAX_PARTITIONS = 4096  # each partition is a table, and every connection parses the whole schema


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Any = _Unchanged()
"""Default of ``alter_topic`` arguments: keep the current setting."""


@attrs.frozen
class TopicMeta:
    """What producers and consumers need to know of a topic (internal)."""

    topic_id: int
    name: str
    partitions: int
    retention_ms: int | None
    retention_bytes: int | None
    compacted: bool = False  # cleanup_policy holds "compact": records need a key


CLEANUP_POLICIES = ("delete", "compact", "compact,delete")
COMPACTION_DEFAULTS: dict[str, Any] = {
    "cleanup_policy": "delete",
    "delete_retention_ms": 86_400_000,
    "min_compaction_lag_ms": 0,
    "max_compaction_lag_ms": None,
    "min_cleanable_dirty_ratio": 0.5,
}
"""Kafka's topic configs for compaction (cleanup.policy, delete.retention.ms, ...) and their defaults."""


def check_compaction(name: str, value: object) -> Any:
    """One compaction setting, checked: see `COMPACTION_DEFAULTS` for the names."""
    if name == "cleanup_policy":
        if isinstance(value, str) and value.replace(" ", "") == "delete,compact":
            value = "compact,delete"
        if not isinstance(value, str) or value.replace(" ", "") not in CLEANUP_POLICIES:
            raise InvalidConfigError(f"cleanup_policy must be 'delete', 'compact' or 'compact,delete', not {value!r}")
        return value.replace(" ", "")
    if name == "min_cleanable_dirty_ratio":
        if type(value) not in (int, float) or not 0 <= value <= 1:  # type: ignore[operator]
            raise InvalidConfigError(f"min_cleanable_dirty_ratio must be a number from 0 to 1, not {value!r}")
        return float(value)  # type: ignore[arg-type]
    if name == "max_compaction_lag_ms" and value is None:
        return None
    low = 1 if name == "max_compaction_lag_ms" else 0
    if type(value) is not int or not low <= value < 2**63:
        none = " or None (no limit)" if name == "max_compaction_lag_ms" else ""
        raise InvalidConfigError(f"{name} must be an int from {low} to 2**63-1{none}, not {value!r}")
    return value


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise InvalidTopicError(
            f"invalid topic name {name!r}: use 1 to 249 letters, digits, '.', '_' or '-' "
            "(not '.' or '..')"
        )
    return name


def _check_partitions(partitions: object) -> int:
    if type(partitions) is not int or not 1 <= partitions <= MAX_PARTITIONS:
        raise InvalidPartitionsError(
            f"partitions must be an int from 1 to {MAX_PARTITIONS}, not {partitions!r}"
        )
    return partitions


def check_retention(value: object, what: str) -> int | None:
    """A positive int, -1 (keep forever, Kafka's spelling) or None (the log-wide default)."""
    if value is None or value == -1 and type(value) is int:
        return value  # type: ignore[return-value]
    if type(value) is not int or not 0 < value < 2**63:  # SQLite's INTEGER
        raise InvalidConfigError(
            f"{what} must be an int from 1 to 2**63-1, -1 (keep forever) or None (the log's default), "
            f"not {value!r}"
        )
    return value


RETENTION_POLICIES = ("limits", "interest")


def check_policy(value: object) -> str:
    """``"limits"`` (retention_ms / retention_bytes alone decide) or ``"interest"`` (and never
    past what a consumer group or share group reading the topic still needs)."""
    if value not in RETENTION_POLICIES or not isinstance(value, str):
        raise InvalidConfigError(f"retention_policy must be 'limits' or 'interest', not {value!r}")
    return value


def check_dedupe_window(value: object) -> int | None:
    """None (no dedupe) or a positive int of ms."""
    if value is not None and (type(value) is not int or not 0 < value < 2**63):
        raise InvalidConfigError(f"dedupe_window_ms must be an int from 1 to 2**63-1 or None (off), not {value!r}")
    return value


def lookup(conn: apsw.Connection, name: str) -> TopicMeta | None:
    row = conn.execute(
        "SELECT t.topic_id, t.name, (SELECT count(*) FROM partitions p WHERE p.topic_id = t.topic_id),"
        f" {effective('retention_ms')}, {effective('retention_bytes')}, t.cleanup_policy != 'delete'"
        " FROM topics t WHERE t.name = ?",
        (name,),
    ).fetchone()
    return TopicMeta(*row) if row else None


def require(conn: apsw.Connection, name: str) -> TopicMeta:
    meta = lookup(conn, validate_name(name))
    if meta is None:
        raise UnknownTopicOrPartitionError(f"unknown topic {name!r}: create it with log.create_topic()")
    return meta


def names(conn: apsw.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT name FROM topics ORDER BY name")]


def create(
    conn: apsw.Connection,
    name: str,
    partitions: int,
    retention_ms: int | None,
    retention_bytes: int | None,
    retention_policy: str = "limits",
    compaction: dict[str, Any] | None = None,
    dedupe_window_ms: int | None = None,
    exist_ok: bool = False,
) -> TopicMeta:
    """Insert the topic and its partition tables; run inside a write transaction.
    ``compaction``: settings named as `COMPACTION_DEFAULTS` (the rest take the defaults).

    ``exist_ok``: a topic of that name with the same partition count is returned as it is;
    one with another count is still a TopicAlreadyExistsError."""
    validate_name(name)
    _check_partitions(partitions)
    retention_ms = check_retention(retention_ms, "retention_ms")
    retention_bytes = check_retention(retention_bytes, "retention_bytes")
    check_policy(retention_policy)
    settings = {**COMPACTION_DEFAULTS, **{k: check_compaction(k, v) for k, v in (compaction or {}).items()}}
    check_dedupe_window(dedupe_window_ms)
    if type(exist_ok) is not bool:
        raise InvalidConfigError(f"exist_ok must be True or False, not {exist_ok!r}")
    found = lookup(conn, name)
    if found is not None:
        if not exist_ok:
            raise TopicAlreadyExistsError(
                f"topic {name!r} already exists; pass exist_ok=True (CLI: --if-not-exists) to accept it as it is"
            )
        if found.partitions != partitions:
            raise TopicAlreadyExistsError(
                f"topic {name!r} already exists with {found.partitions} partition(s), not {partitions}; "
                "alter_topic() grows it, or pick another name"
            )
        return found
    conn.execute(
        "INSERT INTO topics(name, retention_ms, retention_bytes, created_ms) VALUES (?, ?, ?, ?)",
        (name, retention_ms, retention_bytes, wall_ms()),
    )
    topic_id = conn.last_insert_rowid()
    if retention_policy != "limits":  # the column's default
        conn.execute("UPDATE topics SET retention_policy = ? WHERE topic_id = ?", (retention_policy, topic_id))
    _set_compaction(conn, topic_id, settings)
    if dedupe_window_ms is not None:
        conn.execute("UPDATE topics SET dedupe_window_ms = ? WHERE topic_id = ?", (dedupe_window_ms, topic_id))
    _add_partitions(conn, topic_id, 0, partitions)
    return require(conn, name)


# Column names from COMPACTION_DEFAULTS' keys only (never user text).
_COMPACTION_SET = {k: f"UPDATE topics SET {k} = ? WHERE topic_id = ?" for k in COMPACTION_DEFAULTS}


def _set_compaction(conn: apsw.Connection, topic_id: int, settings: dict[str, Any]) -> None:
    for key, value in settings.items():
        conn.execute(_COMPACTION_SET[key], (value, topic_id))


def _compacted(conn: apsw.Connection, topic_id: int) -> bool:
    return bool(conn.execute("SELECT cleanup_policy != 'delete' FROM topics WHERE topic_id = ?",
                             (topic_id,)).fetchone()[0])


def _add_partitions(conn: apsw.Connection, topic_id: int, start: int, stop: int) -> None:
    for p in range(start, stop):
        conn.execute(partition_ddl(topic_id, p))
        conn.execute("INSERT INTO partitions(topic_id, partition) VALUES (?, ?)", (topic_id, p))
    if _compacted(conn, topic_id):
        add_latest(conn, topic_id, range(start, stop))


def describe(conn: apsw.Connection, name: str) -> TopicDescription:
    meta = require(conn, name)
    parts = [
        PartitionDescription(p, start, hw, nbytes, hw - start - holes)
        for p, start, hw, nbytes, holes in conn.execute(
            "SELECT partition, log_start_offset, next_offset, bytes, compacted_records FROM partitions"
            " WHERE topic_id = ? ORDER BY partition",
            (meta.topic_id,),
        )
    ]
    # SELECT *: a file of an older schema (tests open them) may lack the newer columns.
    cursor = conn.execute("SELECT * FROM topics WHERE topic_id = ?", (meta.topic_id,))
    row = dict(zip((d[0] for d in cursor.getdescription()), cursor.fetchone()))
    compaction = [row.get(k, default) for k, default in COMPACTION_DEFAULTS.items()]
    return TopicDescription(meta.name, parts, meta.retention_ms, meta.retention_bytes, row["retention_policy"],
                            *compaction, row.get("dedupe_window_ms"))


def dedupe_window(conn: apsw.Connection, topic_id: int) -> int | None:
    """The topic's ``dedupe_window_ms`` (None: off, or no such topic)."""
    row = conn.execute("SELECT dedupe_window_ms FROM topics WHERE topic_id = ?", (topic_id,)).fetchone()
    return None if row is None else row[0]


def alter(
    conn: apsw.Connection,
    name: str,
    partitions: Any = UNCHANGED,
    retention_ms: Any = UNCHANGED,
    retention_bytes: Any = UNCHANGED,
    retention_policy: Any = UNCHANGED,
    compaction: dict[str, Any] | None = None,
    dedupe_window_ms: Any = UNCHANGED,
) -> TopicMeta:
    """Grow partitions and/or change retention, compaction settings or the dedupe window; run
    inside a write transaction."""
    meta = require(conn, name)
    settings = {k: check_compaction(k, v) for k, v in (compaction or {}).items()}
    if settings:
        _set_compaction(conn, meta.topic_id, settings)
        if "cleanup_policy" in settings and (settings["cleanup_policy"] != "delete") != meta.compacted:
            if meta.compacted:
                drop_latest(conn, meta.topic_id, meta.partitions)
            else:
                add_latest(conn, meta.topic_id, range(meta.partitions))
    if partitions is not UNCHANGED:
        _check_partitions(partitions)
        if partitions < meta.partitions:
            raise InvalidPartitionsError(
                f"topic {name!r} has {meta.partitions} partitions; partitions can only grow, as in Kafka"
            )
        _add_partitions(conn, meta.topic_id, meta.partitions, partitions)
    if retention_ms is not UNCHANGED:
        conn.execute(
            "UPDATE topics SET retention_ms = ? WHERE topic_id = ?",
            (check_retention(retention_ms, "retention_ms"), meta.topic_id),
        )
    if retention_bytes is not UNCHANGED:
        conn.execute(
            "UPDATE topics SET retention_bytes = ? WHERE topic_id = ?",
            (check_retention(retention_bytes, "retention_bytes"), meta.topic_id),
        )
    if retention_policy is not UNCHANGED:
        conn.execute(
            "UPDATE topics SET retention_policy = ? WHERE topic_id = ?", (check_policy(retention_policy), meta.topic_id)
        )
    if dedupe_window_ms is not UNCHANGED:
        conn.execute(
            "UPDATE topics SET dedupe_window_ms = ? WHERE topic_id = ?",
            (check_dedupe_window(dedupe_window_ms), meta.topic_id),
        )
    return require(conn, name)


def delete(conn: apsw.Connection, name: str) -> None:
    """Drop the topic, its partition tables, batch index and committed offsets; in a write transaction."""
    meta = require(conn, name)
    for p in range(meta.partitions):
        conn.execute(f"DROP TABLE {partition_table(meta.topic_id, p)}")
    conn.execute(f"DROP TABLE IF EXISTS {latest_table(meta.topic_id)}")
    # Groups that were assigned the topic rebalance at their members' next poll.
    conn.execute(
        "UPDATE consumer_groups SET generation = generation + 1"
        " WHERE group_id IN (SELECT group_id FROM group_targets WHERE topic_id = ?)",
        (meta.topic_id,),
    )
    for table in ("partitions", "batches", "committed_offsets", "group_targets", "partition_owners", "topics"):
        conn.execute(f"DELETE FROM {table} WHERE topic_id = ?", (meta.topic_id,))
