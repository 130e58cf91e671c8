"""Consumer groups' committed offsets, stored in the log file so every process agrees."""

from __future__ import annotations

import time
from collections.abc import Iterable

import apsw

from .errors import InvalidConfigError


def validate_group_id(group_id: object) -> str:
    if not isinstance(group_id, str) or not 1 <= len(group_id) <= 255:
        raise InvalidConfigError(f"group_id must be a str of 1 to 255 characters, not {group_id!r}")
    return group_id


def store(conn: apsw.Connection, group_id: str, offsets: Iterable[tuple[int, int, int, str]]) -> None:
    """Write ``(topic_id, partition, offset, metadata)`` rows; run inside a write transaction."""
    now = int(time.time() * 1000)
    conn.executemany(
        "INSERT INTO committed_offsets(group_id, topic_id, partition, offset, metadata, commit_ms)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(group_id, topic_id, partition) DO UPDATE SET"
        " offset = excluded.offset, metadata = excluded.metadata, commit_ms = excluded.commit_ms",
        [(group_id, t, p, o, m, now) for t, p, o, m in offsets],
    )


def fetch(conn: apsw.Connection, group_id: str, topic_id: int, partition: int) -> tuple[int, str] | None:
    """The committed ``(offset, metadata)`` of one partition, or None."""
    row = conn.execute(
        "SELECT offset, metadata FROM committed_offsets WHERE group_id = ? AND topic_id = ? AND partition = ?",
        (group_id, topic_id, partition),
    ).fetchone()
    return (row[0], row[1]) if row else None
