"""``Log.check()``: SQLite's integrity check plus sqlog's own invariants, as a list of violations."""

from __future__ import annotations

import apsw

from .checksum import CHECK_COLUMN, mismatches
from .partitions import TAIL_AS_BATCH
from .storage import PARTITION_TABLE, RECORD_BYTES, latest_table, partition_table
from .types import CheckReport, TopicPartition

_CHUNK = 10_000  # records verified per statement


def report(conn: apsw.Connection) -> CheckReport:
    """Everything wrong with the file; no violations when it is sound. Read-only; O(records).

    Whatever SQLite can open gets a report: an error from SQLite part way (a page too damaged to
    read) becomes a violation rather than an exception.
    """
    unverified: dict[TopicPartition, int] = {}
    try:
        found = violations(conn, unverified)
    except apsw.Error as exc:
        found = [(f"SQLite stopped the check: {type(exc).__name__}: {exc} (the file is damaged; restore it from "
                  "a copy, or read what is still readable with a consumer)")]
    return CheckReport(found, unverified)


def violations(conn: apsw.Connection, unverified: dict[TopicPartition, int]) -> list[str]:
    """The violated invariants; counts each partition's records without a checksum into ``unverified``."""
    found = [f"integrity_check: {row[0]}" for row in conn.execute("PRAGMA integrity_check") if row[0] != "ok"]
    if found:
        return found  # the rest reads the tables, which may be what is broken
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    partitions = conn.execute(
        "SELECT t.name, p.topic_id, p.partition, p.log_start_offset, p.next_offset, p.bytes, p.compacted_offset,"
        " p.compacted_records"
        " FROM partitions p LEFT JOIN topics t USING (topic_id) ORDER BY p.topic_id, p.partition"
    ).fetchall()
    known = set()
    for name, topic_id, partition, start, end, nbytes, compacted, holes in partitions:
        where = f"{name or f'<topic id {topic_id}>'}-{partition}"
        table = partition_table(topic_id, partition)
        known.add(table)
        if name is None:
            found.append(f"{where}: partition row without a topic")
        if table not in tables:
            found.append(f"{where}: table {table} is missing")
            continue
        if not 0 <= start <= end:
            found.append(f"{where}: log_start_offset {start} / high watermark {end} out of order")
        count, low, high, stored = conn.execute(
            f"SELECT count(*), min(offset), max(offset), coalesce(sum({RECORD_BYTES}), 0) FROM {table}"
        ).fetchone()
        if not holes and compacted <= start:
            if count != end - start or (count and (low != start or high != end - 1)):
                found.append(
                    f"{where}: offsets not dense: {count} records in [{low}, {high}], expected [{start}, {end})"
                )
        else:
            found.extend(_check_compacted(conn, where, table, start, end, compacted, holes, count, low, high))
        if stored != nbytes:
            found.append(f"{where}: partition bytes {nbytes} but records hold {stored}")
        damaged, unchecked = _check_records(conn, table)
        found.extend(f"{where} offset {offset}: the record does not match its checksum (damaged)" for offset in damaged)
        if unchecked:
            unverified[TopicPartition(name or f"<topic id {topic_id}>", partition)] = unchecked
        found.extend(_check_batches(conn, where, topic_id, partition, start, end, nbytes, table, compacted))
    for table in sorted(tables):
        if PARTITION_TABLE.fullmatch(table) and table not in known:
            found.append(f"orphan table {table} (no partition row)")
    for group, topic_id, partition, offset in conn.execute(
        "SELECT c.group_id, c.topic_id, c.partition, c.offset FROM committed_offsets c"
        " LEFT JOIN partitions p USING (topic_id, partition)"
        " WHERE p.topic_id IS NULL OR c.offset > p.next_offset OR c.offset < 0"
    ):
        found.append(f"group {group!r}: committed offset {offset} of topic id {topic_id} partition {partition}"
                     " is beyond the high watermark or of no partition")
    # Group ownership: every owner row belongs to a member row and to an existing partition
    # (the primary key already keeps a partition from having two owners).
    for group, topic_id, partition, member, has_member, has_partition in conn.execute(
        "SELECT o.group_id, o.topic_id, o.partition, o.member_id,"
        " EXISTS (SELECT 1 FROM group_members m WHERE m.group_id = o.group_id AND m.member_id = o.member_id),"
        " EXISTS (SELECT 1 FROM partitions p WHERE p.topic_id = o.topic_id AND p.partition = o.partition)"
        " FROM partition_owners o"
    ):
        if not has_member or not has_partition:
            found.append(f"group {group!r}: topic id {topic_id} partition {partition} owned by "
                         f"{'unknown member ' if not has_member else ''}{member}"
                         f"{' but no such partition' if not has_partition else ''}")
    found.extend(_check_latest(conn, tables))
    found.extend(_check_share_groups(conn))
    return found


def _check_latest(conn: apsw.Connection, tables: set[str]) -> list[str]:
    """A compacted topic's latest-record table: one row per key and partition holding records,
    pointing at the key's latest record there and saying whether it is a tombstone; its counts."""
    found = []
    for topic_id, name, partitions, live, shared in conn.execute(
        "SELECT t.topic_id, t.name, (SELECT count(*) FROM partitions p WHERE p.topic_id = t.topic_id),"
        " t.live_keys, t.shared_keys FROM topics t WHERE t.cleanup_policy != 'delete'"
    ).fetchall():
        latest = latest_table(topic_id)
        if latest not in tables:
            found.append(f"topic {name!r}: its latest-record table {latest} is missing")
            continue
        for p in range(partitions):
            table = partition_table(topic_id, p)
            if table not in tables:
                continue
            wrong = conn.execute(
                f"SELECT count(*) FROM (SELECT key, max(offset) AS top FROM {table} WHERE key IS NOT NULL GROUP BY key) g"
                f" LEFT JOIN {latest} l ON l.key = g.key AND l.partition = ?1"
                f" LEFT JOIN {table} r ON r.offset = g.top"
                " WHERE l.offset IS NOT g.top OR l.live IS NOT (r.value IS NOT NULL)",
                (p,),
            ).fetchone()[0]
            stray = conn.execute(
                f"SELECT count(*) FROM {latest} l WHERE partition = ? AND NOT EXISTS"
                f" (SELECT 1 FROM {table} r WHERE r.offset = l.offset AND r.key = l.key)",
                (p,),
            ).fetchone()[0]
            if wrong or stray:
                found.append(f"{name}-{p}: latest-record table {latest} disagrees with the records "
                             f"({wrong} keys with a wrong or missing row, {stray} rows of no record)")
        counted = conn.execute(
            f"SELECT coalesce(sum(live), 0), (SELECT count(*) FROM (SELECT 1 FROM {latest} GROUP BY key"
            f" HAVING count(*) > 1)) FROM {latest}"
        ).fetchone()
        if counted != (live, shared):
            found.append(f"topic {name!r}: counts live_keys {live}, shared_keys {shared}; its latest-record table "
                         f"holds {counted[0]}, {counted[1]}")
    return found


def _check_share_groups(conn: apsw.Connection) -> list[str]:
    """Share-group state: windows inside the log, one row per in-flight offset, none outside."""
    found = []
    for group, topic_id, partition, start, end, log_start, high, rows, low, top in conn.execute(
        "SELECT g.group_id, s.topic_id, s.partition, s.start_offset, s.end_offset, p.log_start_offset,"
        " p.next_offset, (SELECT count(*) FROM share_records r WHERE r.share_group_id = s.share_group_id"
        "  AND r.topic_id = s.topic_id AND r.partition = s.partition),"
        " (SELECT min(offset) FROM share_records r WHERE r.share_group_id = s.share_group_id"
        "  AND r.topic_id = s.topic_id AND r.partition = s.partition),"
        " (SELECT max(offset) FROM share_records r WHERE r.share_group_id = s.share_group_id"
        "  AND r.topic_id = s.topic_id AND r.partition = s.partition)"
        " FROM share_partitions s LEFT JOIN share_groups g USING (share_group_id)"
        " LEFT JOIN partitions p USING (topic_id, partition)"
    ):
        where = f"share group {group!r} topic id {topic_id} partition {partition}"
        holes = high is not None and conn.execute(
            "SELECT compacted_offset > ? FROM partitions WHERE topic_id = ? AND partition = ?", (start, topic_id, partition)
        ).fetchone()[0]
        if group is None or high is None:
            found.append(f"{where}: state of no share group or no partition")
            continue
        if not log_start <= start <= end <= high:
            found.append(f"{where}: window [{start}, {end}) outside the log [{log_start}, {high})")
        if holes:  # compaction removed records of the window: no rows for those
            if rows > end - start or (rows and (low < start or top > end - 1)):
                found.append(f"{where}: {rows} rows in [{low}, {top}] for the window [{start}, {end})")
        elif rows != end - start or (rows and (low != start or top != end - 1)):
            found.append(f"{where}: {rows} rows in [{low}, {top}] for the window [{start}, {end})")
    return found


def _check_compacted(conn: apsw.Connection, where: str, table: str, start: int, end: int, compacted: int,
                     holes: int, count: int, low: int | None, high: int | None) -> list[str]:
    """A compacted partition: holes only below the compaction watermark, and exactly as many as
    compaction recorded (so a record lost below the watermark is found too)."""
    found = []
    if holes < 0 or count != end - start - holes or (count and (low < start or high > end - 1)):  # type: ignore[operator]
        found.append(f"{where}: {count} records in [{low}, {high}], but [{start}, {end}) less the {holes} "
                     "compaction removed should leave " + str(end - start - holes) + " (records missing: damaged)")
    dense_from = max(start, compacted)
    if dense_from < end:
        tail, first = conn.execute(f"SELECT count(*), min(offset) FROM {table} WHERE offset >= ?",
                                   (dense_from,)).fetchone()
        if tail != end - dense_from or first != dense_from:
            found.append(f"{where}: offsets not dense above the compaction watermark: {tail} records from {first}, "
                         f"expected [{dense_from}, {end})")
    return found


def _check_records(conn: apsw.Connection, table: str) -> tuple[list[int], int]:
    """Every record against its checksum: the offsets of the damaged ones, and how many have none.

    The parts are read as BLOBs, with a flag for a part of another type (which only a damaged
    cell holds): a TEXT that is not UTF-8 must not stop the check."""
    damaged: list[int] = []
    unchecked = 0
    after = -1
    while True:
        rows = conn.execute(
            f"SELECT offset, CAST(key AS BLOB), CAST(value AS BLOB), CAST(headers AS BLOB), {CHECK_COLUMN},"
            " typeof(key) IN ('blob', 'null') AND typeof(value) IN ('blob', 'null')"
            " AND typeof(headers) IN ('blob', 'null')"
            f" FROM {table} WHERE offset > ? ORDER BY offset LIMIT ?",
            (after, _CHUNK),
        ).fetchall()
        if not rows:
            return damaged, unchecked
        offsets, keys, values, headers, checks, typed = zip(*rows)
        unchecked += checks.count(None)
        bad = set(mismatches(keys, values, headers, checks))
        bad.update(i for i, ok in enumerate(typed) if not ok)
        damaged.extend(offsets[i] for i in sorted(bad))
        after = offsets[-1]


def _check_batches(conn: apsw.Connection, where: str, topic_id: int, partition: int, start: int, end: int,
                   nbytes: int, table: str, compacted: int = 0) -> list[str]:
    found = []
    expected = start
    total = 0
    for base, last, max_ts, batch_bytes in conn.execute(  # the index's rows, then the partition's tail
        "SELECT base_offset, last_offset, max_timestamp, bytes FROM batches"
        f" WHERE topic_id = ?1 AND partition = ?2 UNION ALL {TAIL_AS_BATCH} ORDER BY 1",
        (topic_id, partition),
    ):
        if base != expected or last < base:
            found.append(f"{where}: batch index [{base}, {last}] does not follow offset {expected}")
            return found
        real_max = conn.execute(f"SELECT max(ts) FROM {table} WHERE offset BETWEEN ? AND ?", (base, last)).fetchone()[0]
        if real_max is None and last < compacted and not batch_bytes:
            pass  # every record of the batch was compacted away
        elif real_max is None or real_max > max_ts:
            found.append(f"{where}: batch [{base}, {last}] max_timestamp {max_ts} below its records' {real_max}")
        expected = last + 1
        total += batch_bytes
    if expected != end:
        found.append(f"{where}: batch index ends at {expected}, high watermark is {end}")
    if total != nbytes:
        found.append(f"{where}: batch index holds {total} bytes, partition {nbytes}")
    return found
