"""Reading a partition's records: a range and the partition's bounds seen in one snapshot.

Retention moves a partition's log start between any two statements of a reader, so a reader
can tell "removed by retention" (below the log start) from "damaged" (missing above it) only
when it reads the bounds and the records in one read transaction. `read` does that without
costing the common case anything: one statement when the records start where asked, one
read transaction with the bounds only when they do not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import apsw

from .checksum import CHECK_COLUMN
from .errors import StorageError, UnknownTopicOrPartitionError
from .storage import partition_table, snapshot

_BOUNDS = "SELECT log_start_offset, next_offset FROM partitions WHERE topic_id = ? AND partition = ?"

Row = tuple[Any, ...]
"""``(offset, ts, key, value, headers, check)``: `checksum.CHECK_COLUMN` is the last column."""


def select_from(topic_id: int, partition: int) -> str:
    """The statement `read` runs: records from an offset, in order, up to a limit."""
    return (
        f"SELECT offset, ts, key, value, headers, {CHECK_COLUMN} FROM {partition_table(topic_id, partition)}"
        " WHERE offset >= ? ORDER BY offset LIMIT ?"
    )


def bounds(conn: apsw.Connection, topic_id: int, partition: int, where: str) -> tuple[int, int]:
    """``(log_start_offset, high_watermark)``; UnknownTopicOrPartitionError naming ``where`` if
    the partition is gone."""
    row = conn.execute(_BOUNDS, (topic_id, partition)).fetchone()
    if row is None:
        raise UnknownTopicOrPartitionError(f"{where} no longer exists (topic deleted?)")
    return row[0], row[1]


def read(conn: apsw.Connection, select: str, topic_id: int, partition: int, position: int, limit: int,
         out_of_range: Callable[[int, int, int], int], where: str) -> tuple[int, list[Row]]:
    """Up to ``limit`` records from ``position``, dense and in order; returns ``(position, rows)``.

    When ``position`` is outside ``[log start, high watermark]`` in the snapshot that reads the
    records, ``out_of_range(position, start, end)`` gives the new position (or raises
    `OffsetOutOfRange`) and the records are read from there in that same snapshot. Records
    missing at or above the log start are damage: `StorageError` naming ``where``.
    ``conn`` must not be inside a transaction (each call reads its own snapshot).
    """
    rows: list[Row] = conn.execute(select, (position, limit)).fetchall()
    if not rows or rows[0][0] != position:
        with snapshot(conn):
            start, end = bounds(conn, topic_id, partition, where)
            if not start <= position <= end:
                position = out_of_range(position, start, end)
            rows = conn.execute(select, (position, limit)).fetchall()
        if not rows:
            if position < end:
                raise _missing(where, position, end - 1)
            return position, rows
    last: int = rows[-1][0]
    if rows[0][0] != position or last - position != len(rows) - 1 or any(
        row[0] != offset for row, offset in zip(rows, range(position, last + 1))
    ):
        raise _missing(where, position, last)
    return position, rows


def _missing(where: str, first: int, last: int) -> StorageError:
    return StorageError(
        f"{where}: records missing between offsets {first} and {last}: the file is damaged; "
        "log.check() (or `sqlog check`) lists what is wrong"
    )
