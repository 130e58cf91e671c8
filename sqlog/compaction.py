"""Log compaction (Kafka's ``cleanup.policy=compact``): keep the latest record of every key.

A pass over a partition compacts ``[log start, clean end)``: the clean end is where the dirty
part (above the cleaner checkpoint, ``cleaned_offset``) stops being older than
``min_compaction_lag_ms``. In that range it removes every keyed record that is not its key's
latest in the partition (the topic's latest-record table, `storage.latest_ddl`, says which is),
and every tombstone (value None) older than ``delete_retention_ms``. Offsets never change; what is
removed leaves a hole. Kafka's cleaner only counts later records below the clean end; one above
it (younger than the lag) superseding an older record lets that one go too, which Kafka's
guarantees allow: the removed record is past ``min_compaction_lag_ms`` and its key's latest record
stays.

How a hole is told from damage: the pass first raises the partition's compaction watermark
(``compacted_offset``) to the clean end, in the same transaction as its first delete, and every
delete adds to ``compacted_records``. A reader (`partitions.read`) accepts a gap only below the
watermark; `check` compares the record count with ``high watermark - log start -
compacted_records``, so a record lost below the watermark is still found.

A pass runs when the dirty part holds at least ``min_cleanable_dirty_ratio`` of the partition's
bytes, or its oldest record is older than ``max_compaction_lag_ms``. It deletes in chunks, one
transaction each, so producers get the write lock in between. Share groups: a record compaction
removes is done for them (as one retention removes), unless a consumer holds it: that one stays
held and its acknowledgement applies; if it is released or its lock expires, it is not delivered
again.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

import apsw

from . import share_groups
from .partitions import index_tail
from .storage import RECORD_BYTES, latest_table, partition_table, transaction
from .types import TopicPartition

COMPACT_CHUNK_RECORDS = 20_000

_PARTITION = (
    "SELECT log_start_offset, next_offset, cleaned_offset, bytes FROM partitions WHERE topic_id = ? AND partition = ?"
)


def compacted_partitions(conn: apsw.Connection) -> list[tuple[str, int, int, int, int, int | None, float]]:
    """``(topic, topic_id, partition, delete_retention_ms, min_compaction_lag_ms,
    max_compaction_lag_ms, min_cleanable_dirty_ratio)`` of every partition of a compacted topic."""
    return conn.execute(
        "SELECT t.name, p.topic_id, p.partition, t.delete_retention_ms, t.min_compaction_lag_ms,"
        " t.max_compaction_lag_ms, t.min_cleanable_dirty_ratio FROM partitions p JOIN topics t USING (topic_id)"
        " WHERE t.cleanup_policy != 'delete' ORDER BY t.name, p.partition"
    ).fetchall()


def clean_end(conn: apsw.Connection, topic_id: int, partition: int, dirty_from: int, end: int,
              threshold_ms: int) -> int:
    """The end of the longest run from ``dirty_from`` whose records are all at or before ``threshold_ms``."""
    cut = dirty_from
    for base, last, max_ts in conn.execute(
        "SELECT base_offset, last_offset, max_timestamp FROM batches WHERE topic_id = ?1 AND partition = ?2"
        " AND base_offset >= coalesce((SELECT max(base_offset) FROM batches WHERE topic_id = ?1 AND partition = ?2"
        "  AND base_offset <= ?3), 0) ORDER BY base_offset",
        (topic_id, partition, dirty_from),
    ):
        if last < cut:
            continue
        if max_ts <= threshold_ms:
            cut = last + 1
            continue
        for offset, ts in conn.execute(
            f"SELECT offset, ts FROM {partition_table(topic_id, partition)}"
            " WHERE offset >= ? AND offset <= ? ORDER BY offset", (max(base, cut), last),
        ):
            if ts > threshold_ms:
                return min(offset, end)
            cut = offset + 1
        break
    return min(cut, end)


def plan(conn: apsw.Connection, topic_id: int, partition: int, now_ms: int, min_lag_ms: int,
         max_lag_ms: int | None, min_dirty_ratio: float) -> tuple[int, int] | None:
    """``(log start, clean end)`` of the pass due on a partition, or None when none is due."""
    row = conn.execute(_PARTITION, (topic_id, partition)).fetchone()
    if row is None:
        return None
    start, end, cleaned, nbytes = row
    dirty_from = max(start, cleaned)
    if dirty_from >= end:
        return None
    stop = clean_end(conn, topic_id, partition, dirty_from, end, now_ms - min_lag_ms)
    if stop <= dirty_from:
        return None
    # From the batch index (a batch straddling the checkpoint counts whole): no scan of records.
    dirty_bytes = conn.execute(
        "SELECT coalesce(sum(bytes), 0) FROM batches WHERE topic_id = ? AND partition = ? AND last_offset >= ?",
        (topic_id, partition, dirty_from),
    ).fetchone()[0] if min_dirty_ratio > 0 else 0
    due = min_dirty_ratio <= 0 or (nbytes > 0 and dirty_bytes / nbytes >= min_dirty_ratio)
    if not due and max_lag_ms is not None:
        oldest = conn.execute(
            f"SELECT min(ts) FROM {partition_table(topic_id, partition)} WHERE offset >= ? AND offset < ?",
            (dirty_from, stop),
        ).fetchone()[0]
        due = oldest is not None and oldest <= now_ms - max_lag_ms
    return (start, stop) if due else None


def compact_chunk(conn: apsw.Connection, topic_id: int, partition: int, lo: int, stop: int,
                  tombstone_before_ms: int, chunk_records: int) -> tuple[int, int, int]:
    """One transaction's share of a pass: remove what is compactable in ``[lo, hi)`` (at most
    ``chunk_records`` records; ``hi`` at most ``stop``); returns ``(hi, records, bytes)``.
    Runs inside the caller's write transaction.

    A record is compactable when it is not its key's latest in the partition (the topic's
    latest-record table says which is), or is a tombstone older than ``tombstone_before_ms`` (the
    table's row goes with it, by trigger). One DELETE over a range of offsets: it writes the
    pages of that range and reads the latest-record table, whose pages stay cached."""
    table = partition_table(topic_id, partition)
    key = (topic_id, partition)
    start, _, cleaned, _ = conn.execute(_PARTITION, key).fetchone()
    lo = max(lo, start)  # size retention on append may have cut meanwhile
    if lo >= stop:
        return stop, 0, 0
    # Holes may appear anywhere below stop from this transaction on: the watermark says so.
    conn.execute("UPDATE partitions SET compacted_offset = max(compacted_offset, ?) WHERE topic_id = ? AND partition = ?",
                 (stop, *key))
    if lo < cleaned:  # the part earlier passes cleaned: sparse, so chunk_records records, however far apart
        row = conn.execute(f"SELECT offset FROM {table} WHERE offset >= ? ORDER BY offset LIMIT 1 OFFSET ?",
                           (lo, chunk_records)).fetchone()
        hi = min(stop, cleaned, row[0] if row is not None else cleaned)
    else:  # the dirty part: dense, so a range of chunk_records offsets
        hi = min(stop, lo + chunk_records)
    batches = _batch_bytes(conn, topic_id, partition, lo, hi)
    delete = (f"DELETE FROM {table} AS r WHERE offset >= ?1 AND offset < ?2 AND key IS NOT NULL AND ("
              f" offset != (SELECT offset FROM {latest_table(topic_id)} WHERE key = r.key AND partition = ?3)"
              " OR (value IS NULL AND ts <= ?4))")
    args = (lo, hi, partition, tombstone_before_ms)
    shared = conn.execute(_SHARED, key).fetchone() is not None
    if shared:  # share groups need the offsets
        offsets = sorted(o for (o,) in conn.execute(delete + " RETURNING offset", args))
        records = len(offsets)
    else:
        conn.execute(delete, args)
        records = conn.changes()
    if hi >= stop:
        conn.execute("UPDATE partitions SET cleaned_offset = max(cleaned_offset, ?) WHERE topic_id = ? AND partition = ?",
                     (stop, *key))
    if not records:
        return hi, 0, 0
    nbytes = _take_bytes(conn, topic_id, partition, lo, hi, batches)
    conn.execute(
        "UPDATE partitions SET bytes = bytes - ?, compacted_records = compacted_records + ?"
        " WHERE topic_id = ? AND partition = ?", (nbytes, records, *key),
    )
    if shared:
        _forget_in_share_groups(conn, topic_id, partition, offsets)
    return hi, records, nbytes


_SHARED = "SELECT 1 FROM share_partitions WHERE topic_id = ? AND partition = ? LIMIT 1"


def _batch_bytes(conn: apsw.Connection, topic_id: int, partition: int, lo: int,
                 hi: int) -> list[tuple[int, int, int, int]]:
    """Before a chunk's delete: ``(base, first, last, bytes)`` of every batch overlapping
    ``[lo, hi)``, where ``[first, last]`` is its part inside the range and ``bytes`` that part's
    size (the batch's own count when whole inside; read from the records for the at most two
    batches the range cuts through)."""
    table = partition_table(topic_id, partition)
    out = []
    for base, last, nbytes in conn.execute(
        "SELECT base_offset, last_offset, bytes FROM batches WHERE topic_id = ?1 AND partition = ?2 AND base_offset >="
        " coalesce((SELECT max(base_offset) FROM batches WHERE topic_id = ?1 AND partition = ?2 AND base_offset <= ?3), 0)"
        " AND base_offset < ?4 ORDER BY base_offset",
        (topic_id, partition, lo, hi),
    ).fetchall():
        first, end = max(base, lo), min(last, hi - 1)
        if first > end:
            continue
        if first != base or end != last:
            nbytes = conn.execute(f"SELECT coalesce(sum({RECORD_BYTES}), 0) FROM {table} WHERE offset BETWEEN ? AND ?",
                                  (first, end)).fetchone()[0]
        out.append((base, first, end, nbytes))
    return out


def _take_bytes(conn: apsw.Connection, topic_id: int, partition: int, lo: int, hi: int,
                before: list[tuple[int, int, int, int]]) -> int:
    """After a chunk's delete: take what it removed off each batch's byte count (the survivors are
    counted: few, after compaction); returns the bytes removed. The batch rows stay: their offset
    ranges keep the index dense, and offsets_for_times skips an emptied batch."""
    table = partition_table(topic_id, partition)
    taken = []
    for base, first, end, nbytes in before:
        left = conn.execute(f"SELECT coalesce(sum({RECORD_BYTES}), 0) FROM {table} WHERE offset BETWEEN ? AND ?",
                            (first, end)).fetchone()[0]
        if nbytes != left:
            taken.append((nbytes - left, topic_id, partition, base))
    conn.executemany("UPDATE batches SET bytes = bytes - ? WHERE topic_id = ? AND partition = ? AND base_offset = ?",
                     taken)
    return sum(t[0] for t in taken)


def _forget_in_share_groups(conn: apsw.Connection, topic_id: int, partition: int, offsets: list[int]) -> None:
    """Removed records are done for share groups, except those a consumer holds right now."""
    for sg, start, end in conn.execute(
        "SELECT share_group_id, start_offset, end_offset FROM share_partitions WHERE topic_id = ? AND partition = ?",
        (topic_id, partition),
    ).fetchall():
        inside = offsets[bisect.bisect_left(offsets, start):bisect.bisect_left(offsets, end)]
        if inside:
            conn.executemany(
                "DELETE FROM share_records WHERE share_group_id = ? AND topic_id = ? AND partition = ? AND offset = ?"
                " AND state != 1", [(sg, topic_id, partition, o) for o in inside],
            )
            share_groups.advance(conn, sg, topic_id, partition)


def compact(conn: apsw.Connection, now_ms: int, chunk_records: int = COMPACT_CHUNK_RECORDS,
            between: Callable[[], object] = lambda: None) -> dict[TopicPartition, tuple[int, int]]:
    """Run the passes due on every compacted partition as of ``now_ms``, a chunk per transaction
    (``between()`` runs after each, e.g. a WAL checkpoint); returns (records, bytes) removed per
    partition."""
    out: dict[TopicPartition, tuple[int, int]] = {}
    for name, topic_id, partition, delete_retention_ms, min_lag, max_lag, ratio in compacted_partitions(conn):
        with transaction(conn):
            index_tail(conn, topic_id, partition)  # the pass reads and adjusts the batch index
            found = plan(conn, topic_id, partition, now_ms, min_lag, max_lag, ratio)
        if found is None:
            continue
        lo, stop = found
        records = nbytes = 0
        while lo < stop:
            with transaction(conn):
                if conn.execute(_PARTITION, (topic_id, partition)).fetchone() is None:
                    break  # deleted meanwhile
                lo, n, b = compact_chunk(conn, topic_id, partition, lo, stop, now_ms - delete_retention_ms,
                                         chunk_records)
            records += n
            nbytes += b
            between()
        if records:
            out[TopicPartition(name, partition)] = (records, nbytes)
    return out
