"""Exactly-once in the file: producer epochs per ``transactional_id`` (zombie fencing) and the
dedupe window of ``send(message_id=...)``.

A sqlog transaction writes nothing until ``commit_transaction()``, which runs one SQLite write
transaction: `check_epoch` first, then the records (`append_deduped` where they carry message
ids), the consumer offsets and share acknowledgements. So no reader ever sees an open or aborted
transaction, and offsets stay dense: there are no control records.

Dedupe state: one ``message_ids`` row per id stored within the topic's ``dedupe_window_ms``
(about 30 bytes plus the id's length), and until the next retention sweep after it expires
(the sweep forgets it; until then an expired id is ignored: not a duplicate).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import apsw

from .clock import wall_ms
from .errors import InvalidConfigError, ProducerFencedError
from .storage import partition_table, transaction

Row = tuple[int, bytes | None, bytes | None, bytes | None]
Append = Callable[[apsw.Connection, int, int, list[Row], int, int, str], "int | None"]
"""`retention.append_rows`: the one append path (passed in, so retention's sweep may purge ids here)."""
PURGE_LIMIT = 20_000  # ids the sweep looks at per write transaction


# -- epochs ------------------------------------------------------------------------------------
def init_epoch(conn: apsw.Connection, transactional_id: str) -> int:
    """Bump and return the epoch of ``transactional_id`` (0 for a new one); inside a write transaction."""
    row = conn.execute(
        "INSERT INTO transactional_producers(transactional_id, epoch, updated_ms) VALUES (?, 0, ?)"
        " ON CONFLICT(transactional_id) DO UPDATE SET epoch = epoch + 1, updated_ms = excluded.updated_ms"
        " RETURNING epoch",
        (transactional_id, wall_ms()),
    ).fetchone()
    return int(row[0])


def current_epoch(conn: apsw.Connection, transactional_id: str) -> int | None:
    row = conn.execute(
        "SELECT epoch FROM transactional_producers WHERE transactional_id = ?", (transactional_id,)
    ).fetchone()
    return None if row is None else int(row[0])


def check_epoch(conn: apsw.Connection, transactional_id: str, epoch: int) -> None:
    """ProducerFencedError unless ``epoch`` is still the newest of ``transactional_id``."""
    now = current_epoch(conn, transactional_id)
    if now != epoch:
        raise ProducerFencedError(
            f"producer with transactional_id {transactional_id!r} (epoch {epoch}) was fenced: another producer "
            f"called init_transactions() with it (epoch now {now}); this one must close, nothing of its open "
            "transaction is visible"
        )


# -- dedupe ------------------------------------------------------------------------------------
def purge(conn: apsw.Connection, topic_id: int, window_ms: int | None, now_ms: int, after: str | None = None,
          limit: int = PURGE_LIMIT) -> str | None:
    """Forget the ids of a topic stored before its window (all of them with no window) among the
    next ``limit`` ids in key order after ``after`` (from the first with None), inside the
    caller's write transaction; returns the last id looked at, or None when none was left."""
    cutoff = now_ms - window_ms if window_ms is not None else 2**62
    row = conn.execute(
        "SELECT max(message_id) FROM (SELECT message_id FROM message_ids WHERE topic_id = ?1 AND message_id > ?2"
        " ORDER BY message_id LIMIT ?3)",
        (topic_id, "" if after is None else after, limit),
    ).fetchone()
    if row[0] is None:
        return None
    conn.execute(
        "DELETE FROM message_ids WHERE topic_id = ? AND message_id > ? AND message_id <= ? AND stored_ms < ?",
        (topic_id, "" if after is None else after, row[0], cutoff),
    )
    return str(row[0])


def purge_all(conn: apsw.Connection, now_ms: int, between: Callable[[], object] = lambda: None) -> int:
    """The sweep's part: forget expired ids of every topic, `PURGE_LIMIT` ids looked at per write
    transaction (``between()`` runs after each). Ids carry no age index (one B-tree insert per
    id on the send path, not two), so this walks each topic's ids in key order. Returns the ids
    forgotten."""
    done = 0
    # A write transaction (as the sweep always ended with one): the sweeper's BEGIN IMMEDIATE is
    # a chance for the WAL to restart from its beginning, which the bounded-WAL tests rely on.
    with transaction(conn):
        found = conn.execute(
            "SELECT t.topic_id, t.dedupe_window_ms FROM topics t WHERE EXISTS"
            " (SELECT 1 FROM message_ids m WHERE m.topic_id = t.topic_id)"  # a deleted topic's go by trigger
        ).fetchall()
    for topic_id, window in found:
        after: str | None = None
        while True:
            with transaction(conn):
                after = purge(conn, topic_id, window, now_ms, after)
                done += conn.changes() if after is not None else 0
            between()
            if after is None:
                break
    return done


Placed = tuple[int, "list[tuple[int, int, int, bool]] | None"]
"""``(base offset, per row (partition, offset, timestamp_ms, duplicate) or None when no row was a duplicate)``."""

_LOOKUP = (
    "SELECT message_id, partition, offset, timestamp_ms FROM message_ids"
    " WHERE topic_id = ? AND message_id = ? AND stored_ms >= ?"
)
_COLUMNS = "message_ids(topic_id, message_id, partition, offset, timestamp_ms, stored_ms) VALUES (?, ?, ?, ?, ?, ?)"
_REMEMBER_NEW = f"INSERT OR IGNORE INTO {_COLUMNS}"  # a known id (even expired, not purged yet) is skipped
_REMEMBER = f"INSERT OR REPLACE INTO {_COLUMNS}"  # replaces an expired one


# Every row of the chunk has an id (the usual chunk): one statement for all of them. The ids go
# in as one carray (no per-id Python or bindings; carray's rowid counts from 1) and each takes its
# record's offset and timestamp from the rows just appended (CROSS JOIN: carray drives, a rowid
# lookup per id).
_REMEMBER_ALL = (
    "INSERT OR IGNORE INTO message_ids(topic_id, message_id, partition, offset, timestamp_ms, stored_ms)"
    " SELECT ?1, i.value, ?2, r.offset, r.ts, ?4 FROM carray(?5) i CROSS JOIN {table} r ON r.offset = ?3 + i.rowid - 1"
)


def _remember_new(conn: apsw.Connection, topic_id: int, partition: int, base: int, now: int, rows: list[Row],
                  ids: Sequence[str | None], given: int) -> bool:
    """Remember the ``given`` ids of ``rows`` appended from ``base`` unless one is known already;
    True when all were new."""
    before = conn.total_changes()
    if given == len(ids):
        conn.execute(_REMEMBER_ALL.format(table=partition_table(topic_id, partition)),
                     (topic_id, partition, base, now, apsw.carray(tuple(ids))))
    else:
        conn.executemany(_REMEMBER_NEW, _id_rows(topic_id, partition, base, now, rows, ids))
    return conn.total_changes() - before == given


def _id_rows(topic_id: int, partition: int, base: int, now: int, rows: list[Row],
             ids: Sequence[str | None]) -> list[tuple[int, str | None, int, int, int, int]]:
    """``message_ids`` rows of the ids of ``rows`` appended from offset ``base`` (rows without one skipped)."""
    return [(topic_id, mid, partition, base + i, row[0], now)
            for i, (row, mid) in enumerate(zip(rows, ids)) if mid is not None]


def append_deduped(conn: apsw.Connection, append: Append, topic_id: int, partition: int, rows: list[Row],
                   ids: Sequence[str | None], nbytes: int, max_ts: int, path: str = "") -> Placed | None:
    """Append ``rows`` (with ``append``) except those whose message id the topic stored within its
    window (or earlier in ``rows``), inside the caller's write transaction; ``nbytes`` and
    ``max_ts`` are of all ``rows``.

    Returns `Placed` (a duplicate gets where the original went), or None when the partition does
    not exist. InvalidConfigError when the topic has no dedupe window.
    """
    found = conn.execute("SELECT dedupe_window_ms FROM topics WHERE topic_id = ?", (topic_id,)).fetchone()
    if found is None:
        return None
    window = found[0]
    if window is None:
        raise InvalidConfigError(
            "message_id needs a dedupe window on the topic: alter_topic(name, dedupe_window_ms=...) "
            "(it was removed after the send)"
        )
    now = wall_ms()
    unique = set(ids)  # (C-level passes over ids: this is the send path)
    unique.discard(None)
    given = len(ids) - ids.count(None)
    if len(unique) == given:
        # Optimistic, the common case: append and remember the ids; if one was known, undo and look.
        conn.execute("SAVEPOINT dedupe")
        try:
            base = append(conn, topic_id, partition, rows, nbytes, max_ts, path)
            if base is None:
                conn.execute("RELEASE dedupe")
                return None
            clean = _remember_new(conn, topic_id, partition, base, now, rows, ids, given)
        except BaseException:
            conn.execute("ROLLBACK TO dedupe")  # the chunk leaves nothing behind (the writer goes on)
            conn.execute("RELEASE dedupe")
            raise
        if clean:
            conn.execute("RELEASE dedupe")
            return base, None
        conn.execute("ROLLBACK TO dedupe")
        conn.execute("RELEASE dedupe")
    known: dict[str, tuple[int, int, int]] = {
        mid: (p, o, ts) for mid, p, o, ts in conn.executemany(
            _LOOKUP, [(topic_id, mid, now - window) for mid in unique]
        )
    }
    fresh: list[Row] = []
    fresh_ids: list[str | None] = []
    first: dict[str, int] = {}  # id -> its index in fresh
    plan: list[int | None] = []  # per row: its index in fresh, or None (a duplicate)
    for row, mid in zip(rows, ids):
        if mid is not None and (mid in known or mid in first):
            plan.append(None)
            continue
        if mid is not None:
            first[mid] = len(fresh)
        plan.append(len(fresh))
        fresh.append(row)
        fresh_ids.append(mid)
    base = -1
    if fresh:
        fresh_bytes = sum(len(row[1] or b"") + len(row[2] or b"") + len(row[3] or b"") for row in fresh)
        appended = append(conn, topic_id, partition, fresh, fresh_bytes, max(r[0] for r in fresh), path)
        if appended is None:
            return None
        base = appended
        conn.executemany(_REMEMBER, _id_rows(topic_id, partition, base, now, fresh, fresh_ids))
    out: list[tuple[int, int, int, bool]] = []
    for row, mid, index in zip(rows, ids, plan):
        if index is not None:
            out.append((partition, base + index, row[0], False))
        elif mid in known:
            out.append((*known[mid], True))
        else:
            j = first[mid]  # type: ignore[index]
            out.append((partition, base + j, fresh[j][0], True))
    return base, out
