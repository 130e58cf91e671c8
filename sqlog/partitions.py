"""A partition's records: appending them, and reading a range with the partition's bounds
seen in one snapshot; offsets for times.

Retention moves a partition's log start between any two statements of a reader, so a reader
can tell "removed by retention" (below the log start) from "damaged" (missing above it) only
when it reads the bounds and the records in one read transaction. `read` does that without
costing the common case anything: one statement when the records start where asked, one
read transaction with the bounds only when they do not.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from operator import ge
from typing import Any, NamedTuple

import apsw

from .checksum import CHECK_COLUMN, STORE, crcs
from .errors import StorageError, UnknownTopicOrPartitionError, damaged_advice
from .storage import effective, partition_table, snapshot

_BOUNDS = "SELECT log_start_offset, next_offset FROM partitions WHERE topic_id = ? AND partition = ?"

Row = tuple[Any, ...]
"""``(offset, ts, key, value, headers, check)``: `checksum.CHECK_COLUMN` is the last column."""
Columns = tuple[tuple[Any, ...], ...]
"""`Row`s turned into columns: ``(offsets, timestamps, keys, values, headers, checks)``."""


READ_SLICE = 512
"""Rows `read` holds as row tuples at a time. Each is an object the garbage collector tracks
until its first collection: a read of thousands at once sets off collections (and, as they
promote whatever else is alive, full ones later), where slices of this size come and go
between them."""


def _columns(cursor: Iterator[Row]) -> Columns:
    """A statement's rows as columns (``()`` for none), read `READ_SLICE` rows at a time."""
    rows = list(islice(cursor, READ_SLICE))
    if len(rows) < READ_SLICE:
        return tuple(zip(*rows))
    columns = [list(c) for c in zip(*rows)]
    while rows := list(islice(cursor, READ_SLICE)):
        for column, more in zip(columns, zip(*rows)):
            column.extend(more)
    return tuple(map(tuple, columns))


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
         out_of_range: Callable[[int, int, int], int], where: str) -> tuple[int, Columns]:
    """Up to ``limit`` records from ``position``, in order; returns ``(position, columns)``:
    the rows turned into columns (`Row`'s, one tuple each), or ``()`` when there are none.

    When ``position`` is outside ``[log start, high watermark]`` in the snapshot that reads the
    records, ``out_of_range(position, start, end)`` gives the new position (or raises
    `OffsetOutOfRange`) and the records are read from there in that same snapshot. Offsets are
    dense except below the partition's compaction watermark (``compacted_offset``), where
    compaction left holes: the rows then start at the next surviving offset. Records missing at
    or above both the log start and that watermark are damage: `StorageError` naming ``where``.
    ``conn`` must not be inside a transaction (each call reads its own snapshot).
    """
    columns = _columns(conn.execute(select, (position, limit)))
    if columns:
        offsets = columns[0]
        # Dense and in order (compared in C: no Python code per row): the common case costs one statement.
        if offsets[0] == position and offsets[-1] == position + len(offsets) - 1 and offsets == tuple(
            range(position, position + len(offsets))
        ):
            return position, columns
    with snapshot(conn):
        found = conn.execute(_BOUNDS_COMPACTED, (topic_id, partition)).fetchone()
        if found is None:
            raise UnknownTopicOrPartitionError(f"{where} no longer exists (topic deleted?)")
        start, end, compacted = found
        if not start <= position <= end:
            position = out_of_range(position, start, end)
        columns = _columns(conn.execute(select, (position, limit)))
    dense_from = max(position, compacted)  # below: holes compaction made; from here: dense
    if not columns:
        if dense_from < end:
            raise _missing(where, dense_from, end - 1)
        return max(position, min(compacted, end)), ()
    offsets = columns[0]
    if any(map(ge, offsets, offsets[1:])):  # only a damaged B-tree returns them out of order
        raise _missing(where, position, offsets[-1])
    i = bisect.bisect_left(offsets, dense_from)
    if i < len(offsets):
        last: int = offsets[-1]
        if offsets[i] != dense_from or last - dense_from != len(offsets) - i - 1:
            raise _missing(where, dense_from, last)
    return position, columns


_BOUNDS_COMPACTED = (
    "SELECT log_start_offset, next_offset, compacted_offset FROM partitions WHERE topic_id = ? AND partition = ?"
)


def _missing(where: str, first: int, last: int) -> StorageError:
    return StorageError(
        f"{where}: records missing between offsets {first} and {last}: the file is damaged; "
        "log.check() (or `sqlog check`) lists what is wrong"
    )


# -- appending ------------------------------------------------------------------------------
class Appended(NamedTuple):
    """Where an append went: its first offset, and the partition's log start, bytes and
    retention budget (``retention_bytes`` in force, None = none) after it."""

    base_offset: int
    log_start_offset: int
    bytes: int
    retention_bytes: int | None


INDEX_INTERVAL_BYTES = 4096
"""Kafka's index.interval.bytes: the batch index gets a row once the records not in it yet (the
partition's tail) reach this many bytes, or `INDEX_INTERVAL_RECORDS` records; until then the
partition row carries them (``tail_offset``, ``tail_max_timestamp``, ``tail_bytes``)."""
INDEX_INTERVAL_RECORDS = 4096

# An UPDATE then a SELECT of the row: measured cheaper than one UPDATE ... RETURNING, which
# SQLite runs through a temporary table.
_UPDATE = (
    "UPDATE partitions SET next_offset = next_offset + ?1, bytes = bytes + ?2, tail_bytes = tail_bytes + ?2,"
    " tail_max_timestamp = max(tail_max_timestamp, ?5) WHERE topic_id = ?3 AND partition = ?4"
)
_UPDATED = (
    "SELECT next_offset, log_start_offset, bytes,"
    f" (SELECT {effective('retention_bytes')} FROM topics t WHERE t.topic_id = ?1),"
    " tail_offset, tail_max_timestamp, tail_bytes FROM partitions WHERE topic_id = ?1 AND partition = ?2"
)
_INDEX = "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?)"
_TAIL = (
    "SELECT tail_offset, next_offset, tail_max_timestamp, tail_bytes FROM partitions"
    " WHERE topic_id = ? AND partition = ?"
)
_TAIL_INDEXED = (
    "UPDATE partitions SET tail_offset = ?3, tail_max_timestamp = -1, tail_bytes = 0"
    " WHERE topic_id = ?1 AND partition = ?2"
)
TAIL_AS_BATCH = (
    "SELECT tail_offset, next_offset - 1, tail_max_timestamp, tail_bytes FROM partitions"
    " WHERE topic_id = ?1 AND partition = ?2 AND next_offset > tail_offset"
)
"""SQL: the partition's tail as one more ``(base_offset, last_offset, max_timestamp, bytes)`` batch
row (none when empty), for read-only readers of the batch index (`offset_for_time`, the check)
to add to ``batches``; writers call `index_tail` first instead."""


def index_tail(conn: apsw.Connection, topic_id: int, partition: int) -> None:
    """Put the partition's tail into the batch index now, inside the caller's write transaction:
    what retention and compaction call before they read or trim ``batches``."""
    found = conn.execute(_TAIL, (topic_id, partition)).fetchone()
    if found is not None and found[1] > found[0]:
        _flush_tail(conn, topic_id, partition, *found)


def _flush_tail(conn: apsw.Connection, topic_id: int, partition: int, tail: int, end: int, max_ts: int,
                nbytes: int) -> None:
    conn.execute(_INDEX, (topic_id, partition, tail, end - 1, max_ts, nbytes))
    conn.execute(_TAIL_INDEXED, (topic_id, partition, end))


def append(conn: apsw.Connection, topic_id: int, partition: int, rows: Sequence[tuple[Any, ...]], nbytes: int,
           max_ts: int, path: str = "") -> Appended | None:
    """Append ``(timestamp_ms, key, value, headers)`` rows to one partition inside the caller's
    write transaction: offsets, checksums, batch index (the partition's tail until it reaches
    `INDEX_INTERVAL_BYTES`) and byte count, in the same transaction as the partition's
    watermark. ``nbytes`` is the rows' size as retention counts it, ``max_ts`` their largest timestamp.

    Rows may also come as ``(timestamp_ms, key, value, headers, check)`` with ``check`` their
    `checksum.crcs` value, computed by the caller (the producer does, as each record is sent):
    they are then bound as they are, the fastest append there is. All rows of a call have one shape.

    Returns where they went and the partition's size after them (for size retention), or None
    when the partition does not exist.
    """
    n = len(rows)
    conn.execute(_UPDATE, (n, nbytes, topic_id, partition, max_ts))
    if not conn.changes():
        return None
    end, start, size, budget, tail, tail_max_ts, tail_bytes = conn.execute(_UPDATED, (topic_id, partition)).fetchone()
    base = end - n
    table = partition_table(topic_id, partition)
    if len(rows[0]) == 5:
        stored: Iterator[tuple[Any, ...]] = iter(rows)
    else:
        stamps, keys, values, headers = zip(*rows)
        stored = zip(stamps, keys, values, headers, crcs(keys, values, headers))
    # The first row takes its offset explicitly; the rest get max(offset) + 1 from SQLite,
    # which is the next offset because nothing above ``base`` exists in this transaction.
    conn.execute(f"INSERT INTO {table}(ts, key, value, headers, crc, offset) VALUES (?1, ?2, ?3, ?4, {STORE}, ?6)",
                 (*next(stored), base))
    if n > 1:
        conn.executemany(f"INSERT INTO {table}(ts, key, value, headers, crc) VALUES (?1, ?2, ?3, ?4, {STORE})", stored)
        if conn.last_insert_rowid() != base + n - 1:
            raise StorageError(f"{path}: {table} holds offsets above its high watermark {base}: the file is "
                               f"damaged; {damaged_advice(path)}")
    if tail_bytes >= INDEX_INTERVAL_BYTES or end - tail >= INDEX_INTERVAL_RECORDS:
        _flush_tail(conn, topic_id, partition, tail, end, tail_max_ts, tail_bytes)
    return Appended(base, start, size, budget)


# -- offsets for times --------------------------------------------------------------------
def offset_for_time(conn: apsw.Connection, topic_id: int, partition: int, ts: int) -> tuple[int, int] | None:
    """``(offset, timestamp)`` of the earliest stored record whose timestamp is >= ``ts``, or None."""
    # The batch index holds each batch's max timestamp, so only batches reaching ``ts`` are
    # read; usually the first holds the answer, but a batch trimmed by retention may keep the
    # max of records already deleted, so go on to the next one.
    batches = conn.execute(
        "SELECT max(b.base_offset, p.log_start_offset), b.last_offset FROM batches b"
        " JOIN partitions p USING (topic_id, partition)"
        " WHERE b.topic_id = ?1 AND b.partition = ?2 AND b.max_timestamp >= ?3"
        " AND b.last_offset >= p.log_start_offset"
        " UNION ALL SELECT max(tail_offset, log_start_offset), next_offset - 1 FROM partitions"
        " WHERE topic_id = ?1 AND partition = ?2 AND tail_max_timestamp >= ?3"
        " AND next_offset > max(tail_offset, log_start_offset) ORDER BY 1",
        (topic_id, partition, ts),
    ).fetchall()
    for first, last in batches:
        hit = conn.execute(
            f"SELECT offset, ts FROM {partition_table(topic_id, partition)}"
            " WHERE offset BETWEEN ? AND ? AND ts >= ? ORDER BY offset LIMIT 1",
            (first, last, ts),
        ).fetchone()
        if hit is not None:
            return hit[0], hit[1]
    return None
