"""Retention and disk upkeep: delete expired prefixes, give pages back, keep the WAL small.

Retention removes whole prefixes of a partition, oldest first: by record timestamp
(``retention_ms``) and by size (``retention_bytes`` per partition). It moves
``log_start_offset`` and never ``next_offset`` (the high watermark), so offsets are never
reused. The batch index (one row per appended batch) finds the cut without reading every
record; only the one batch the cut falls inside is read record by record.
"""

from __future__ import annotations

import operator
import os
import threading
import time
from collections.abc import Callable

import apsw

from .check import report
from .clock import wall_ms
from .compaction import compact
from .errors import DiskFullError, InvalidRecordError, SqlogError, translated
from .partitions import append, index_tail
from .storage import (
    RECORD_BYTES,
    busy_handler,
    effective,
    guard_writes,
    latest_table,
    partition_table,
    snapshot,
    transaction,
)
from .transactions import purge_all as purge_ids
from .types import CheckReport, PartitionSweep, SweepResult, TopicPartition

SWEEP_CHUNK_RECORDS = 20_000  # records deleted per transaction: producers get the lock in between
VACUUM_STEP_PAGES = 512
TRUNCATE_WAIT_MS = 50  # how long a TRUNCATE checkpoint holds the write lock waiting for readers


def _batches(conn: apsw.Connection, topic_id: int, partition: int) -> apsw.Cursor:
    return conn.execute(
        "SELECT base_offset, last_offset, max_timestamp, bytes FROM batches"
        " WHERE topic_id = ? AND partition = ? ORDER BY base_offset",
        (topic_id, partition),
    )


def time_cut(conn: apsw.Connection, topic_id: int, partition: int, start: int, threshold_ms: int,
             limit: int) -> int:
    """The end of the longest prefix whose records are all older than ``threshold_ms`` (capped at ``limit``)."""
    cut = start
    for base, last, max_ts, _ in _batches(conn, topic_id, partition):
        if cut >= limit:
            break
        if max_ts < threshold_ms:
            cut = last + 1
            continue
        for offset, ts in conn.execute(
            f"SELECT offset, ts FROM {partition_table(topic_id, partition)}"
            " WHERE offset >= ? AND offset <= ? ORDER BY offset",
            (max(base, start), min(last, limit - 1)),
        ):
            if ts >= threshold_ms:
                break
            cut = offset + 1
        break
    return min(cut, limit)


def size_cut(conn: apsw.Connection, topic_id: int, partition: int, start: int, nbytes: int, budget: int,
             limit: int) -> int:
    """The smallest cut leaving at most ``budget`` bytes, oldest first (capped at ``limit``)."""
    excess = nbytes - budget
    cut = start
    for base, last, _, batch_bytes in _batches(conn, topic_id, partition):
        if excess <= 0 or cut >= limit:
            break
        if batch_bytes <= excess:
            excess -= batch_bytes
            cut = last + 1
            continue
        # The budget ends inside this batch: cut record by record.
        for offset, size in conn.execute(
            f"SELECT offset, {RECORD_BYTES} FROM {partition_table(topic_id, partition)}"
            " WHERE offset >= ? AND offset <= ? ORDER BY offset",
            (max(base, start), min(last, limit - 1)),
        ):
            if excess <= 0:
                break
            excess -= size
            cut = offset + 1
        break
    return min(cut, limit)


def cut_partition(conn: apsw.Connection, topic_id: int, partition: int, start: int, cut: int) -> tuple[int, int]:
    """Delete offsets ``[start, cut)`` and move the log start; returns (records, bytes) deleted.

    Runs inside the caller's write transaction; keeps the batch index consistent by trimming
    the batch the cut falls inside.
    """
    if cut <= start:
        return 0, 0
    table = partition_table(topic_id, partition)
    key = (topic_id, partition)
    full = conn.execute(
        "SELECT coalesce(sum(bytes), 0) FROM batches WHERE topic_id = ? AND partition = ? AND last_offset < ?",
        (*key, cut),
    ).fetchone()[0]
    partial_bytes = 0
    inside = conn.execute(
        "SELECT base_offset FROM batches WHERE topic_id = ? AND partition = ? AND base_offset < ? AND last_offset >= ?",
        (*key, cut, cut),
    ).fetchone()
    if inside is not None:
        partial_bytes = conn.execute(
            f"SELECT coalesce(sum({RECORD_BYTES}), 0) FROM {table} WHERE offset >= ? AND offset < ?",
            (inside[0], cut),
        ).fetchone()[0]
        conn.execute(
            "UPDATE batches SET base_offset = ?, bytes = bytes - ? WHERE topic_id = ? AND partition = ? AND base_offset = ?",
            (cut, partial_bytes, *key, inside[0]),
        )
    conn.execute("DELETE FROM batches WHERE topic_id = ? AND partition = ? AND last_offset < ?", (*key, cut))
    if conn.execute(_COMPACTED, (topic_id,)).fetchone()[0]:
        # A compacted topic's latest-record rows of the records cut go with them (probed by the
        # keys cut: no scan of the table).
        conn.execute(
            f"DELETE FROM {latest_table(topic_id)} WHERE partition = ?1 AND offset < ?2"
            f" AND key IN (SELECT key FROM {table} WHERE offset >= ?3 AND offset < ?2 AND key IS NOT NULL)",
            (partition, cut, start),
        )
    conn.execute(f"DELETE FROM {table} WHERE offset < ?", (cut,))
    holes = cut - start - conn.changes()  # compaction's holes in the cut prefix go with it
    deleted_bytes = full + partial_bytes
    conn.execute(
        "UPDATE partitions SET log_start_offset = ?, bytes = bytes - ?, compacted_records = compacted_records - ?"
        " WHERE topic_id = ? AND partition = ?",
        (cut, deleted_bytes, holes, *key),
    )
    return cut - start, deleted_bytes


_COMPACTED = "SELECT cleanup_policy != 'delete' FROM topics WHERE topic_id = ?"
_KEY = operator.itemgetter(1)


def interest_cap(conn: apsw.Connection, topic_id: int, partition: int) -> int | None:
    """For a topic with ``retention_policy="interest"``, the lowest offset a group reading the
    partition still needs: the least of consumer groups' committed offsets and share groups'
    start offsets. None when retention may cut freely (policy "limits", or nobody reads it)."""
    row = conn.execute(
        "SELECT retention_policy = 'interest',"
        " (SELECT min(offset) FROM committed_offsets WHERE topic_id = ?1 AND partition = ?2),"
        " (SELECT min(start_offset) FROM share_partitions WHERE topic_id = ?1 AND partition = ?2)"
        " FROM topics WHERE topic_id = ?1",
        (topic_id, partition),
    ).fetchone()
    if row is None or not row[0]:
        return None
    needed = [o for o in row[1:] if o is not None]
    return min(needed) if needed else None


def append_rows(conn: apsw.Connection, topic_id: int, partition: int,
                rows: list[tuple[int, bytes | None, bytes | None, bytes | None]], nbytes: int, max_ts: int,
                path: str = "") -> int | None:
    """`partitions.append`, then size retention as the log grows, in the same transaction:
    the append path of producers' batches and of dead-letter records. Returns the first
    offset, or None when the partition does not exist. InvalidRecordError, before anything is
    written, for a record without a key bound for a compacted topic (a producer refuses those at
    send(); a dead-letter copy or a topic turned compacted since can still bring one here)."""
    # all(map(...)) runs in C: keyed batches pay next to nothing (an empty key b"" looks again).
    if not all(map(_KEY, rows)) and any(row[1] is None for row in rows) and conn.execute(
            _COMPACTED, (topic_id,)).fetchone() == (1,):
        name = conn.execute("SELECT name FROM topics WHERE topic_id = ?", (topic_id,)).fetchone()[0]
        raise InvalidRecordError(
            f"topic {name!r} is compacted (cleanup_policy has 'compact'): every record needs a key, and one "
            "to append here has none (e.g. a dead-letter copy of a keyless record: give dead_letter_topic a "
            "topic with cleanup_policy 'delete'); none of these records was appended"
        )
    done = append(conn, topic_id, partition, rows, nbytes, max_ts, path)
    if done is None:
        return None
    if done.retention_bytes is not None and done.bytes > done.retention_bytes:
        # Bounded so one append never deletes a backlog (the sweeper does that in chunks).
        enforce_size(conn, topic_id, partition, done.log_start_offset, done.bytes, done.retention_bytes,
                     max(4 * len(rows), 1000))
    return done.base_offset


def enforce_size(conn: apsw.Connection, topic_id: int, partition: int, start: int, nbytes: int, budget: int,
                 max_records: int) -> None:
    """Size retention as the log grows: called by the writer in the append's own transaction."""
    index_tail(conn, topic_id, partition)  # the cut reads and trims the batch index
    limit = start + max_records
    cap = interest_cap(conn, topic_id, partition)
    if cap is not None:
        limit = min(limit, cap)
    if limit <= start:
        return
    cut = size_cut(conn, topic_id, partition, start, nbytes, budget, limit)
    cut_partition(conn, topic_id, partition, start, cut)


def _retained_partitions(conn: apsw.Connection) -> list[tuple[str, int, int, int | None, int | None]]:
    return conn.execute(
        f"SELECT t.name, p.topic_id, p.partition, {effective('retention_ms')}, {effective('retention_bytes')}"
        " FROM partitions p JOIN topics t USING (topic_id)"
        f" WHERE {effective('retention_ms')} IS NOT NULL OR {effective('retention_bytes')} IS NOT NULL"
        " ORDER BY t.name, p.partition"
    ).fetchall()


def sweep(conn: apsw.Connection, path: str, now_ms: int, wal_limit_bytes: int, busy_timeout_ms: int,
          chunk_records: int = SWEEP_CHUNK_RECORDS) -> SweepResult:
    """Apply time and size retention to every partition, then compaction to compacted topics
    (`compaction.compact`), a bounded chunk per transaction, then vacuum.

    Between chunks the WAL is checkpointed once it passes ``wal_limit_bytes``: a long sweep
    beside busy producers would otherwise grow it far past the limit.
    """
    deleted: dict[TopicPartition, PartitionSweep] = {}
    with translated(path):
        for name, topic_id, partition, retention_ms, retention_bytes in _retained_partitions(conn):
            records = nbytes = 0
            while True:
                with transaction(conn):
                    row = conn.execute(
                        "SELECT log_start_offset, bytes FROM partitions WHERE topic_id = ? AND partition = ?",
                        (topic_id, partition),
                    ).fetchone()
                    if row is None:  # deleted meanwhile
                        break
                    start, size = row
                    index_tail(conn, topic_id, partition)  # the cut reads and trims the batch index
                    limit = start + chunk_records
                    cap = interest_cap(conn, topic_id, partition)
                    if cap is not None:
                        limit = min(limit, cap)
                    cut = start
                    if retention_ms is not None:
                        cut = time_cut(conn, topic_id, partition, start, now_ms - retention_ms, limit)
                    if retention_bytes is not None and size > retention_bytes:
                        cut = max(cut, size_cut(conn, topic_id, partition, start, size, retention_bytes, limit))
                    n, b = cut_partition(conn, topic_id, partition, start, cut)
                if not n:
                    break
                records += n
                nbytes += b
                checkpoint(conn, path, wal_limit_bytes, busy_timeout_ms, only_past_limit=True)
            if records:
                deleted[TopicPartition(name, partition)] = PartitionSweep(records, nbytes)
        compacted = compact(conn, now_ms, chunk_records,
                            lambda: checkpoint(conn, path, wal_limit_bytes, busy_timeout_ms, only_past_limit=True))
        for tp, (n, b) in compacted.items():
            was = deleted.get(tp, PartitionSweep(0, 0))
            deleted[tp] = PartitionSweep(was.records, was.bytes, n, b)
        purge_ids(conn, now_ms,  # message ids past their topic's dedupe window
                  lambda: checkpoint(conn, path, wal_limit_bytes, busy_timeout_ms, only_past_limit=True))
        pages = reclaim(conn)
    return SweepResult(deleted, pages)


def reclaim(conn: apsw.Connection) -> int:
    """Give free pages back to the file system in small steps; returns pages freed."""
    freed = 0
    while True:
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        if not free:
            return freed
        with transaction(conn):
            conn.execute(f"PRAGMA incremental_vacuum({VACUUM_STEP_PAGES})").fetchall()
        after = conn.execute("PRAGMA freelist_count").fetchone()[0]
        if after >= free:  # auto_vacuum is off in this file: nothing to give back
            return freed
        freed += free - after


def checkpoint(conn: apsw.Connection, path: str, wal_limit_bytes: int, busy_timeout_ms: int,
               only_past_limit: bool = False) -> int:
    """PASSIVE checkpoint, escalated to TRUNCATE once the WAL passes ``wal_limit_bytes``.

    Readers that never pause can keep a PASSIVE checkpoint from ever resetting the WAL;
    TRUNCATE waits for them to finish their current read, then empties it. It holds the write
    lock while it waits, so it waits only `TRUNCATE_WAIT_MS` (and tries again next time) rather
    than stall every producer behind a long reader for the whole busy timeout.
    Returns the WAL size seen before the checkpoint.
    """
    try:
        wal = os.stat(path + "-wal").st_size
    except FileNotFoundError:
        return 0
    if wal <= wal_limit_bytes and only_past_limit:
        return wal
    if wal <= wal_limit_bytes:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        return wal
    truncate_wal(conn, TRUNCATE_WAIT_MS, busy_timeout_ms)
    return wal


def truncate_wal(conn: apsw.Connection, wait_ms: int, busy_timeout_ms: int) -> int:
    """TRUNCATE checkpoint waiting at most ``wait_ms`` for readers, then the connection's busy
    timeout again. Returns the pages left in the WAL: 0 once it is emptied, -1 when unknown
    (another connection was checkpointing)."""
    conn.set_busy_timeout(wait_ms)
    try:
        ((busy, pages, _),) = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.set_busy_handler(busy_handler(busy_timeout_ms))
    return int(pages) if busy else 0


WAL_HEADER_BYTES = 32
WAL_FRAME_HEADER_BYTES = 24
AUTOCHECKPOINT_PAGES = 1000  # SQLite's default autocheckpoint, which a WAL hook replaces


def truncate_wal_waiting(conn: apsw.Connection, wait_ms: int, busy_timeout_ms: int, deadline: float) -> int:
    """`truncate_wal`, retried while another connection holds the checkpoint lock (SQLite then
    fails at once, without the busy handler) until ``deadline`` (`time.monotonic`). Returns as
    `truncate_wal`: -1 only if the other checkpoint outlasted the deadline."""
    while True:
        left = truncate_wal(conn, max(1, min(wait_ms, int((deadline - time.monotonic()) * 1000))), busy_timeout_ms)
        if left != -1 or time.monotonic() >= deadline:
            return left
        time.sleep(0.001)  # another connection is checkpointing: try again once it is done


class WalWatch:
    """Holds the WAL near ``limit_bytes`` from the writing side, whatever the upkeep thread's
    schedule: a WAL hook on each of the log's writing connections learns the WAL's page count
    at every commit, for free (no stat()), and the commit that reaches the limit ends with a
    TRUNCATE checkpoint waiting `TRUNCATE_WAIT_MS` for readers. While another connection is
    checkpointing (which keeps the WAL from restarting, so a nonstop producer would grow it by
    its whole write rate times that checkpoint's length) the commit waits for it, up to the
    busy timeout, and then truncates: writers past the limit are held back, never ahead of the
    checkpoints. Below the limit, every `AUTOCHECKPOINT_PAGES` pages a PASSIVE checkpoint
    (SQLite's own autocheckpoint, which the hook replaces).
    """

    def __init__(self, path: str, limit_bytes: int, page_size: int, busy_timeout_ms: int) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self.frame_bytes = page_size + WAL_FRAME_HEADER_BYTES
        self.trigger_pages = max(1, (limit_bytes - WAL_HEADER_BYTES) // self.frame_bytes)
        self.trigger_bytes = WAL_HEADER_BYTES + self.trigger_pages * self.frame_bytes
        self.pages = 0  # in the WAL, as the last commit (or checkpoint) on any of the log's connections saw it

    def attach(self, conn: apsw.Connection) -> None:
        """Watch ``conn``'s commits; call on every connection of the log that writes."""
        conn.set_wal_hook(self._committed)

    def _truncate(self, conn: apsw.Connection) -> None:
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        left = truncate_wal_waiting(conn, TRUNCATE_WAIT_MS, self._busy_timeout_ms, deadline)
        if left >= 0:  # unknown (-1): keep what the last commit saw, so the next commit tries again
            self.pages = left

    def _committed(self, conn: apsw.Connection, _name: str, pages: int) -> int:
        """The WAL hook: runs after each commit; must not raise (the commit is already done)."""
        self.pages = pages
        try:
            if pages >= self.trigger_pages:
                self._truncate(conn)
            elif pages >= AUTOCHECKPOINT_PAGES:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except Exception:  # noqa: BLE001 - e.g. an I/O error: the next commit or write tries again
            pass
        return apsw.SQLITE_OK


class WalBudget(WalWatch):
    """Holds database + WAL within ``max_db_bytes``: SQLite's ``max_page_count`` caps only the
    database file, and the WAL beside it grows while readers hold old snapshots.

    The WAL gets ``reserve_bytes`` of the cap (a quarter, at most ``wal_limit_bytes``), the
    database file the rest (`max_page_count`). As `WalWatch`, with half the reserve as its
    limit: the commit past it ends with a TRUNCATE checkpoint. If
    readers kept it from emptying the WAL and it reached the whole reserve, the next write
    transaction waits up to the busy timeout for them, then fails with `DiskFullError`
    (nothing of it stored). Bound: a write starts only with the WAL below its reserve, so
    database + WAL exceed the cap by at most the WAL frames of the one transaction being
    committed; not at all while each commit's checkpoint gets through and no transaction writes
    more than half the reserve. The ``-shm`` index is not counted; writers in other processes
    are held only by their own ``max_db_bytes``.
    """

    def __init__(self, path: str, max_db_bytes: int, wal_limit_bytes: int, page_size: int,
                 busy_timeout_ms: int) -> None:
        frame = page_size + WAL_FRAME_HEADER_BYTES
        self.limit_pages = max(2, (min(max_db_bytes // 4, wal_limit_bytes) - WAL_HEADER_BYTES) // frame)
        self.reserve_bytes = WAL_HEADER_BYTES + self.limit_pages * frame
        super().__init__(path, WAL_HEADER_BYTES + self.limit_pages // 2 * frame, page_size, busy_timeout_ms)
        self.max_page_count = max(1, (max_db_bytes - self.reserve_bytes) // page_size)

    def attach(self, conn: apsw.Connection) -> None:
        """Watch ``conn``'s commits and guard its write transactions; call on every connection that writes."""
        conn.execute(f"PRAGMA max_page_count={self.max_page_count}")
        super().attach(conn)
        guard_writes(conn, self._before_write)
        with translated(self._path):  # the WAL may be large already (e.g. from creating the schema)
            left = truncate_wal(conn, TRUNCATE_WAIT_MS, self._busy_timeout_ms)
        self.pages = left if left >= 0 else max(self.pages, self.limit_pages)  # unknown: the next write checks

    def _before_write(self, conn: apsw.Connection) -> None:
        """Refuse a write while the WAL fills its whole reserve and readers keep it from emptying."""
        if self.pages < self.limit_pages:
            return
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        left = truncate_wal_waiting(conn, self._busy_timeout_ms, self._busy_timeout_ms, deadline)
        if left >= 0:
            self.pages = left
        if self.pages >= self.limit_pages:
            raise DiskFullError(
                f"{self._path}: max_db_bytes is reached: the WAL fills its share of the cap "
                f"({self.reserve_bytes // 1024} KiB) and readers holding old snapshots kept it from being "
                "checkpointed for busy_timeout_ms; end long read transactions and retry"
            )


class Upkeep:
    """The log's upkeep connection and thread: periodic sweeps and WAL checkpoints."""

    def __init__(self, path: str, connect: Callable[[], apsw.Connection], sweep_interval_ms: int | None,
                 checkpoint_interval_ms: int | None, wal_limit_bytes: int, busy_timeout_ms: int) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._connect = connect
        self._conn: apsw.Connection | None = None
        self.lock = threading.Lock()  # one sweep or checkpoint at a time on the upkeep connection
        self._sweep_s = None if sweep_interval_ms is None else sweep_interval_ms / 1000
        self._checkpoint_s = None if checkpoint_interval_ms is None else checkpoint_interval_ms / 1000
        self._wal_limit = wal_limit_bytes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: SqlogError | None = None
        if self._sweep_s is not None or self._checkpoint_s is not None:
            self._thread = threading.Thread(target=self._run, name="sqlog-upkeep", daemon=True)
            self._thread.start()

    def conn(self) -> apsw.Connection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def sweep(self, now_ms: int | None = None) -> SweepResult:
        with self.lock:
            return sweep(self.conn(), self._path, wall_ms() if now_ms is None else now_ms,
                         self._wal_limit, self._busy_timeout_ms)

    def check(self) -> CheckReport:
        """Run ``check.report`` on one snapshot (a read transaction) of the upkeep connection."""
        with self.lock, translated(self._path), snapshot(self.conn()) as conn:
            return report(conn)

    def checkpoint(self) -> int:
        with self.lock, translated(self._path):
            return checkpoint(self.conn(), self._path, self._wal_limit, self._busy_timeout_ms)

    def _run(self) -> None:
        now = time.monotonic()
        next_sweep = now + (self._sweep_s or 0)
        next_checkpoint = now + (self._checkpoint_s or 0)
        while True:
            waits = []
            if self._sweep_s is not None:
                waits.append(next_sweep)
            if self._checkpoint_s is not None:
                waits.append(next_checkpoint)
            if self._stop.wait(max(0.0, min(waits) - time.monotonic())):
                return
            now = time.monotonic()
            try:
                if self._sweep_s is not None and now >= next_sweep:
                    self.sweep()
                    next_sweep = time.monotonic() + self._sweep_s
                if self._checkpoint_s is not None and now >= next_checkpoint:
                    self.checkpoint()
                    next_checkpoint = time.monotonic() + self._checkpoint_s
            except Exception as exc:  # e.g. the disk is full: keep the log usable, retry next time
                self.last_error = exc if isinstance(exc, SqlogError) else SqlogError(f"upkeep failed: {exc!r}")
                next_sweep = next_checkpoint = time.monotonic() + 1.0

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self.lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def abandon(self) -> apsw.Connection | None:
        """After fork: hand back the parent's connection (not to be closed here)."""
        conn, self._conn = self._conn, None
        return conn
