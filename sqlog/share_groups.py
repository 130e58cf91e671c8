"""Share-group state in the file (queue mode, Kafka's KIP-932): its SQL, the work of one share
transaction, and the admin calls (list, describe, delete). The client is `share.ShareConsumer`.

State, per share group and partition (tables in storage.MIGRATIONS):

- ``share_partitions``: ``start_offset`` (Kafka's share-partition start offset: everything
  below is done) and ``end_offset`` (the next offset never delivered yet).
- ``share_records``: one row per offset of the in-flight window ``[start_offset, end_offset)``
  with its state (Kafka's RecordState: AVAILABLE 0, ACQUIRED 1, ACKNOWLEDGED 2, ARCHIVED 4),
  delivery count, holder and lock deadline. When the lowest records of the window are done,
  the start offset advances past them and their rows are deleted: a drained queue of millions
  of records keeps a handful of rows. The window is capped at ``partition_max_record_locks``
  records per partition (Kafka's ``group.share.partition.max.record.locks``).

Protocol: every state change is one ``BEGIN IMMEDIATE`` transaction on the log's writer
connection, so it is serialized against every other process. A poll's transaction (1) applies
the consumer's pending acknowledgements, (2) makes expired locks of the group available again
(or archives them at the delivery-count limit), (3) acquires records: available ones first
(lowest offset first, ``UPDATE ... RETURNING``), then new ones from ``end_offset``, each locked
for ``record_lock_duration_ms`` with its delivery count raised, (4) advances start offsets past
finished records, and (5) copies archived records to the dead-letter topic, if the consumer has
one: `ShareTransaction.dead_letters` builds the rows, and the caller appends them through the
producers' append path in that same transaction.
An acknowledgement applies only while the record is still the consumer's delivery (same
delivery count, not delivered to anyone since), so a lock that expired and was handed to another
consumer makes it fail, never apply twice. Lock time is `clock.monotonic_ms` (passed in as
``now``), shared by every process on the machine and never stepped, so a wall-clock step neither
expires held locks early nor keeps expired ones.

Nothing here knows the consumer: a transaction gets its settings and inputs as plain values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import apsw
import attrs

from . import liveness, topics
from .checksum import CHECK_COLUMN
from .errors import GroupIdNotFoundError, GroupNotEmptyError
from .groups import validate_group_id
from .partitions import select_from
from .serde import decode_headers, encode_headers
from .storage import partition_table
from .types import ShareGroupDescription, SharePartitionState

# Kafka's RecordState codes.
AVAILABLE, ACQUIRED, ACKNOWLEDGED, ARCHIVED = 0, 1, 2, 4
ACKNOWLEDGE_TYPES = ("accept", "release", "reject", "renew")

# Dead-letter headers, as Kafka's share groups write them (KIP-1191), plus a machine-readable reason.
DLQ_TOPIC = "__dlq.errors.topic"
DLQ_PARTITION = "__dlq.errors.partition"
DLQ_OFFSET = "__dlq.errors.offset"
DLQ_GROUP = "__dlq.errors.group"
DLQ_DELIVERY_COUNT = "__dlq.errors.delivery.count"
DLQ_REASON = "__dlq.errors.reason"
DLQ_MESSAGE = "__dlq.errors.message"
REJECTED = "rejected"
DELIVERY_COUNT_EXCEEDED = "delivery_count_exceeded"
_MESSAGES = {
    REJECTED: "Offset rejected by client.",
    DELIVERY_COUNT_EXCEEDED: "Offset delivery count exceeded the threshold.",
}

Acquired = tuple[Any, ...]
"""A record a transaction locked: ``(topic, topic_id, partition, offset, delivery_count, timestamp_ms,
key, value, headers, check)``, key/value/headers as stored, ``check`` as `checksum.matches` takes it."""

Acknowledgement = tuple[str, int, int, int, int, str]
"""``(topic, partition, offset, topic_id, delivery_count, type)``, type one of `ACKNOWLEDGE_TYPES`."""

RecordKey = tuple[str, int, int]
"""``(topic, partition, offset)``."""

DeadLetterRow = tuple[int, bytes | None, bytes | None, bytes | None]
"""``(timestamp_ms, key, value, headers)``, as `retention.append_rows` takes them."""

# -- SQL (parameters bound; table names only from integers) -----------------------------------
_GROUP_ID = "SELECT share_group_id FROM share_groups WHERE group_id = ?"
_GROUP_CREATE = "INSERT INTO share_groups(group_id, created_ms) VALUES (?, ?) ON CONFLICT(group_id) DO NOTHING"
# The subscribed partitions (topic names as one JSON list) with the group's state of each.
# Correlated subqueries rather than joins: SQLite sets up a join (a Bloom filter) on every run,
# which costs several times these few index lookups.
_SUBSCRIBED_IDS = "SELECT topic_id FROM topics WHERE name IN (SELECT value FROM json_each(?2))"
_STATE_OF = (
    "FROM share_partitions s WHERE s.share_group_id = ?1 AND s.topic_id = p.topic_id AND s.partition = p.partition"
)
_SUBSCRIBED = (
    "SELECT (SELECT name FROM topics t WHERE t.topic_id = p.topic_id), p.topic_id, p.partition,"
    f" p.log_start_offset, p.next_offset, (SELECT s.start_offset {_STATE_OF}), (SELECT s.end_offset {_STATE_OF})"
    f" FROM partitions p WHERE p.topic_id IN ({_SUBSCRIBED_IDS}) ORDER BY 1, 3"
)
_PARTITION_CREATE = (
    "INSERT INTO share_partitions(share_group_id, topic_id, partition, start_offset, end_offset)"
    " VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT DO NOTHING"
)
_KEY = "share_group_id = ?1 AND topic_id = ?2 AND partition = ?3 AND offset = ?4"
# An acknowledgement applies while the record is still this delivery: acquired by this member,
# or made available by lock expiry and not delivered again since (the count would have moved).
_MINE = f"{_KEY} AND delivery_count = ?5 AND state < 2 AND (state = 0 OR member_id = ?6)"
_RETURNING = "RETURNING topic_id, partition, offset, state"
_ACCEPT = f"UPDATE share_records SET state = 2, member_id = NULL, lock_until_ms = NULL WHERE {_MINE} {_RETURNING}"
_RELEASE = (
    "UPDATE share_records SET state = CASE WHEN delivery_count >= ?7 THEN 4 ELSE 0 END,"
    f" member_id = NULL, lock_until_ms = NULL WHERE {_MINE} {_RETURNING}"
)
_REJECT = f"UPDATE share_records SET state = 4, member_id = NULL, lock_until_ms = NULL WHERE {_MINE} {_RETURNING}"
_RENEW = f"UPDATE share_records SET state = 1, member_id = ?6, lock_until_ms = ?7 WHERE {_MINE} {_RETURNING}"
_ACKS = {"accept": _ACCEPT, "release": _RELEASE, "reject": _REJECT, "renew": _RENEW}
_EXPIRE = (
    "UPDATE share_records INDEXED BY share_records_open"
    " SET state = CASE WHEN delivery_count >= ?2 THEN 4 ELSE 0 END, member_id = NULL, lock_until_ms = NULL"
    " WHERE share_group_id = ?1 AND state < 2 AND state = 1 AND lock_until_ms <= ?3"
    " RETURNING topic_id, partition, offset, state, delivery_count"
)
_RELEASE_MEMBER = (
    "UPDATE share_records INDEXED BY share_records_open"
    " SET state = CASE WHEN delivery_count >= ?2 THEN 4 ELSE 0 END, member_id = NULL, lock_until_ms = NULL"
    " WHERE share_group_id = ?1 AND state < 2 AND state = 1 AND member_id = ?3"
    " RETURNING topic_id, partition, offset, state, delivery_count"
)
# Records available again (released, or their lock expired), lowest offset first: found through
# the open-records index, then each taken with UPDATE ... RETURNING (the write lock is held).
_AVAILABLE = (
    "SELECT offset FROM share_records INDEXED BY share_records_open"
    " WHERE share_group_id = ?1 AND topic_id = ?2 AND partition = ?3 AND state < 2 AND state = 0"
    " ORDER BY offset LIMIT ?4"
)
_ACQUIRE_AVAILABLE = (
    "UPDATE share_records SET state = 1, member_id = ?5, lock_until_ms = ?6, delivery_count = delivery_count + 1"
    f" WHERE {_KEY} AND state = 0 RETURNING offset, delivery_count"
)
_GONE = f"UPDATE share_records SET state = 2, member_id = NULL, lock_until_ms = NULL WHERE {_KEY}"
_INSERT_ACQUIRED = "INSERT INTO share_records VALUES (?, ?, ?, ?, 1, 1, ?, ?)"
_END_OFFSET = "UPDATE share_partitions SET end_offset = ? WHERE share_group_id = ? AND topic_id = ? AND partition = ?"
# A partition's window and its lowest record not done yet (where the start offset can move to).
_WINDOW = (
    "SELECT start_offset, end_offset, (SELECT min(offset) FROM share_records INDEXED BY share_records_open"
    "  WHERE share_group_id = ?1 AND topic_id = ?2 AND partition = ?3 AND state < 2)"
    " FROM share_partitions WHERE share_group_id = ?1 AND topic_id = ?2 AND partition = ?3"
)
# The next lock deadline still ahead in the subscribed partitions: a blocked poll wakes then.
_NEXT_EXPIRY = (
    "SELECT min(lock_until_ms) FROM share_records INDEXED BY share_records_open"
    " WHERE share_group_id = ?1 AND state < 2 AND state = 1"
    f" AND lock_until_ms > ?3 AND topic_id IN ({_SUBSCRIBED_IDS})"
)
# Something a poll could take now (for a blocked poll's cheap look on its read connection):
# a subscribed partition with unread records and room in its window, or one never read yet,
# or a record available again (released, or its lock expired).
_MAYBE_AVAILABLE = (
    "SELECT EXISTS(SELECT 1 FROM partitions p WHERE p.topic_id IN (" + _SUBSCRIBED_IDS + ")"
    "  AND (SELECT p.next_offset > s.end_offset AND s.end_offset - s.start_offset < ?3 " + _STATE_OF + ") IS NOT 0)"
    " OR EXISTS(SELECT 1 FROM share_records INDEXED BY share_records_open WHERE share_group_id = ?1 AND state < 2"
    f"  AND (state = 0 OR lock_until_ms <= ?4) AND topic_id IN ({_SUBSCRIBED_IDS}))"
)
_HELD = (
    "SELECT EXISTS(SELECT 1 FROM share_records WHERE share_group_id = ? AND state < 2 AND state = 1"
    " AND lock_until_ms > ?)"
)


@attrs.frozen
class ShareSettings:
    """What a share transaction needs of a consumer's configuration (checked by the consumer)."""

    group_id: str
    delivery_count_limit: int
    record_lock_duration_ms: int
    partition_max_record_locks: int
    auto_offset_reset: str  # "earliest" or "latest": where the group starts a partition it never read
    dead_letter_topic: str | None


@attrs.frozen
class DeadLetterBatch:
    """Archived records to append to one partition of the dead-letter topic (`retention.append_rows`'s arguments)."""

    topic_id: int
    partition: int
    rows: list[DeadLetterRow]
    nbytes: int  # key + value + headers, as retention counts them
    max_ts: int


@attrs.define
class ShareOutcome:
    """What one share transaction did."""

    acquired: list[Acquired] = attrs.field(factory=list)
    failed: list[RecordKey] = attrs.field(factory=list)  # acknowledgements refused: no longer this delivery
    done: list[RecordKey] = attrs.field(factory=list)  # acknowledgements applied (renewals excepted)
    changed: bool = False  # something may have become available to others (or was dead-lettered)
    next_expiry_ms: int | None = None  # the next lock deadline ahead, when a poll found nothing


_MEMBERS = ("SELECT member_id, pid, pid_namespace, pid_start_time FROM share_members"
            " WHERE share_group_id = ? AND member_id != ?")


def dead_member(conn: apsw.Connection, group_id: str, member_id: str) -> bool:
    """Whether a member of the group other than ``member_id`` has a process on this machine
    that is gone (a read: a blocked poll's cheap look before its write transaction)."""
    row = conn.execute(_GROUP_ID, (group_id,)).fetchone()
    return row is not None and any(
        liveness.process_gone(pid, ns, start) for _, pid, ns, start in conn.execute(_MEMBERS, (row[0], member_id))
    )


class ShareTransaction:
    """The work of one share transaction, on a connection inside a write transaction.

    ``now`` is `clock.monotonic_ms` (lock deadlines), ``wall`` the wall clock in ms (dead-letter
    record timestamps), ``rr`` where the round-robin over partitions starts; `acquire` moves it
    on and `rr` then holds the value for the next transaction. Call, in order and as needed:
    `acknowledge`, `release_buffered`, `release_member`, `expire`, `subscribed`, `acquire`,
    `advance`, `dead_letters` (append what it returns), `finish`.
    """

    def __init__(self, conn: apsw.Connection, share_group: int, member_id: str, settings: ShareSettings,
                 subscription_json: str, now: int, wall: int, rr: int = 0) -> None:
        self.conn = conn
        self.sg = share_group  # the group's row id (`group_row`)
        self.member_id = member_id
        self.settings = settings
        self.subscription_json = subscription_json  # the subscribed topic names, a JSON list
        self.now = now
        self.wall = wall
        self.rr = rr
        self.outcome = ShareOutcome()
        self.touched: set[tuple[int, int]] = set()  # partitions whose start offset may advance
        # (topic_id, partition, offset, count, reason, message: the app's reason, or None for Kafka's text)
        self.dead: list[tuple[int, int, int, int, str, str | None]] = []
        self.changed = False

    def acknowledge(self, acks: Sequence[Acknowledgement], messages: dict[RecordKey, str] | None = None) -> None:
        """Apply acknowledgements, each only while the record is still this member's delivery;
        the refused go to ``outcome.failed``, the applied (except renewals) to ``outcome.done``.
        ``messages``: the application's reason per record, for a dead letter's ``__dlq.errors.message``."""
        conn, sg, member, out = self.conn, self.sg, self.member_id, self.outcome
        extra = {
            "accept": (),
            "release": (self.settings.delivery_count_limit,),
            "reject": (),
            "renew": (self.now + self.settings.record_lock_duration_ms,),
        }
        by_type: dict[str, list[Acknowledgement]] = {}
        for ack in acks:
            by_type.setdefault(ack[5], []).append(ack)
        for kind, items in by_type.items():
            params = [(sg, topic_id, p, o, count, member, *extra[kind]) for _, p, o, topic_id, count, _ in items]
            applied = {(t, p, o): state for t, p, o, state in conn.executemany(_ACKS[kind], params)}
            if kind == "release":
                self.changed = True
            for topic, partition, offset, topic_id, count, _ in items:
                key = (topic, partition, offset)
                state = applied.get((topic_id, partition, offset))
                if state is None:
                    out.failed.append(key)
                    continue
                if kind == "renew":
                    continue
                out.done.append(key)
                self.touched.add((topic_id, partition))
                if state == ARCHIVED:
                    reason = REJECTED if kind == "reject" else DELIVERY_COUNT_EXCEEDED
                    self.dead.append((topic_id, partition, offset, count, reason, (messages or {}).get(key)))

    def release_buffered(self, buffered: Iterable[Acquired]) -> None:
        """Give back records acquired but never returned to the application."""
        limit = self.settings.delivery_count_limit
        for _, topic_id, partition, offset, count, *_rest in buffered:
            hit = self.conn.execute(
                _RELEASE, (self.sg, topic_id, partition, offset, count, self.member_id, limit)
            ).fetchone()
            if hit is not None:
                self._ended(topic_id, partition, offset, hit[3], count)

    def release_member(self) -> None:
        """Give back every record this member holds (close, unsubscribe)."""
        for topic_id, partition, offset, state, count in self.conn.execute(
            _RELEASE_MEMBER, (self.sg, self.settings.delivery_count_limit, self.member_id)
        ).fetchall():
            self._ended(topic_id, partition, offset, state, count)

    def register(self, pid: int, namespace: str, start: int | None) -> None:
        """Record this member's process (`liveness`), so others can release its locks if it dies."""
        self.conn.execute("INSERT OR REPLACE INTO share_members VALUES (?, ?, ?, ?, ?)",
                          (self.member_id, self.sg, pid, namespace, start))

    def forget_member(self) -> None:
        """This member leaves (close): its process record goes."""
        self.conn.execute("DELETE FROM share_members WHERE member_id = ?", (self.member_id,))

    def expire_dead(self) -> None:
        """Release at once the locks of members whose process on this machine is gone (same boot
        and pid namespace: `liveness.process_gone`), as if their locks had expired: available
        again, or archived at the delivery-count limit. Elsewhere the lock deadline decides."""
        conn, sg, limit = self.conn, self.sg, self.settings.delivery_count_limit
        for member, pid, namespace, start in conn.execute(_MEMBERS, (sg, self.member_id)).fetchall():
            if liveness.process_gone(pid, namespace, start):
                for topic_id, partition, offset, state, count in conn.execute(
                    _RELEASE_MEMBER, (sg, limit, member)
                ).fetchall():
                    self._ended(topic_id, partition, offset, state, count)
                conn.execute("DELETE FROM share_members WHERE member_id = ?", (member,))

    def expire(self) -> None:
        """Locks past their deadline: available again, or archived at the delivery-count limit."""
        for topic_id, partition, offset, state, count in self.conn.execute(
            _EXPIRE, (self.sg, self.settings.delivery_count_limit, self.now)
        ).fetchall():
            self._ended(topic_id, partition, offset, state, count)

    def _ended(self, topic_id: int, partition: int, offset: int, state: int, count: int) -> None:
        self.changed = True
        if state == ARCHIVED:
            self.touched.add((topic_id, partition))
            self.dead.append((topic_id, partition, offset, count, DELIVERY_COUNT_EXCEEDED, None))

    def subscribed(self) -> list[list[Any]]:
        """The subscribed partitions and the group's state of each, set up where missing:
        ``[topic, topic_id, partition, log_start_offset, next_offset, start_offset, end_offset]``."""
        rows = [list(r) for r in self.conn.execute(_SUBSCRIBED, (self.sg, self.subscription_json))]
        earliest = self.settings.auto_offset_reset == "earliest"
        for row in rows:
            if row[5] is None:  # never read by this group: start per auto_offset_reset
                start = row[3] if earliest else row[4]
                self.conn.execute(_PARTITION_CREATE, (self.sg, row[1], row[2], start))
                row[5] = row[6] = start
        return rows

    def acquire(self, rows: list[list[Any]], limit: int) -> list[Acquired]:
        """Lock up to ``limit`` records of ``rows`` (`subscribed`), partitions taken in turn from
        the rotating start ``rr`` (moved on by one); also kept in ``outcome.acquired``."""
        conn, sg, member = self.conn, self.sg, self.member_id
        until = self.now + self.settings.record_lock_duration_ms
        max_locks = self.settings.partition_max_record_locks
        out = self.outcome.acquired
        n = len(rows)
        if not n:
            return out
        first = self.rr % n
        self.rr += 1
        for i in range(n):
            if len(out) >= limit:
                break
            topic, topic_id, partition, _, high, start, end = rows[(first + i) % n]
            table = partition_table(topic_id, partition)
            want = limit - len(out)
            # Records available again (released, or their lock expired), lowest offset first.
            available = conn.execute(_AVAILABLE, (sg, topic_id, partition, want)).fetchall()
            if available:
                again = list(conn.executemany(
                    _ACQUIRE_AVAILABLE, [(sg, topic_id, partition, o, member, until) for (o,) in available]
                ))
                counts = dict(again)
                gone = dict(counts)
                for offset, ts, k, v, h, check in conn.executemany(
                    f"SELECT offset, ts, key, value, headers, {CHECK_COLUMN} FROM {table} WHERE offset = ?",
                    [(o,) for o, _ in again],
                ):
                    del gone[offset]
                    out.append((topic, topic_id, partition, offset, counts[offset], ts, k, v, h, check))
                if gone:  # compacted away while held, then released: done, as retention would make it
                    conn.executemany(_GONE, [(sg, topic_id, partition, o) for o in gone])
                    self.touched.add((topic_id, partition))
                want = limit - len(out)
            # Then records never delivered, from end_offset, as far as the in-flight window allows.
            room = min(want, high - end, start + max_locks - end)
            if room > 0:
                fresh = conn.execute(select_from(topic_id, partition), (end, room)).fetchall()
                if fresh:
                    conn.executemany(_INSERT_ACQUIRED, [(sg, topic_id, partition, r[0], member, until) for r in fresh])
                    conn.execute(_END_OFFSET, (fresh[-1][0] + 1, sg, topic_id, partition))
                    out.extend((topic, topic_id, partition, o, 1, ts, k, v, h, c) for o, ts, k, v, h, c in fresh)
        return out

    def advance(self) -> None:
        """Advance the start offsets of the partitions where records finished."""
        for topic_id, partition in self.touched:
            advance(self.conn, self.sg, topic_id, partition)

    def dead_letters(self) -> list[DeadLetterBatch]:
        """The archived records as dead-letter rows, with headers naming where they came from; empty
        without a dead-letter topic (or when it was deleted since: archived without a copy). The
        caller appends them in this transaction."""
        dlq = self.settings.dead_letter_topic
        if not self.dead:
            return []
        counts: dict[tuple[int, int], int] = {}
        for topic_id, partition, *_ in self.dead:
            counts[(topic_id, partition)] = counts.get((topic_id, partition), 0) + 1
        self.conn.executemany(
            "UPDATE share_partitions SET dead_lettered = dead_lettered + ?"
            " WHERE share_group_id = ? AND topic_id = ? AND partition = ?",
            [(n, self.sg, t, p) for (t, p), n in counts.items()],
        )
        if dlq is None:
            return []
        meta = topics.lookup(self.conn, dlq)
        if meta is None:
            return []
        names = dict(self.conn.execute("SELECT topic_id, name FROM topics"))
        group = self.settings.group_id.encode()
        chunks: dict[int, list[DeadLetterRow]] = {}
        for topic_id, partition, offset, count, reason, message in self.dead:
            row = self.conn.execute(
                f"SELECT key, value, headers FROM {partition_table(topic_id, partition)} WHERE offset = ?", (offset,)
            ).fetchone()
            if row is None:
                continue
            key, value, headers = row
            extra = (
                (DLQ_TOPIC, names.get(topic_id, "").encode()),
                (DLQ_PARTITION, str(partition).encode()),
                (DLQ_OFFSET, str(offset).encode()),
                (DLQ_GROUP, group),
                (DLQ_DELIVERY_COUNT, str(count).encode()),
                (DLQ_REASON, reason.encode()),
                (DLQ_MESSAGE, (_MESSAGES[reason] if message is None else message).encode()),
            )
            # Kafka's routing: source partition modulo the dead-letter topic's partitions.
            chunks.setdefault(partition % meta.partitions, []).append(
                (self.wall, key, value, encode_headers(decode_headers(headers) + extra))
            )
        self.changed = True
        return [
            DeadLetterBatch(meta.topic_id, dlq_partition, rows,
                            sum(len(k or b"") + len(v or b"") + len(h or b"") for _, k, v, h in rows), self.wall)
            for dlq_partition, rows in chunks.items()
        ]

    def finish(self, waiting: bool) -> ShareOutcome:
        """The outcome; ``waiting`` (a poll that found nothing) also notes the next lock deadline ahead."""
        out = self.outcome
        out.changed = self.changed or bool(self.touched)
        if waiting:
            out.next_expiry_ms = self.conn.execute(
                _NEXT_EXPIRY, (self.sg, self.subscription_json, self.now)
            ).fetchone()[0]
        return out


def group_row(conn: apsw.Connection, group_id: str, now: int) -> int:
    """The share group's numeric id, creating the group (``created_ms`` = ``now``, wall clock) if
    needed (inside a write transaction)."""
    row = conn.execute(_GROUP_ID, (group_id,)).fetchone()
    if row is None:
        conn.execute(_GROUP_CREATE, (group_id, now))
        row = conn.execute(_GROUP_ID, (group_id,)).fetchone()
    return int(row[0])


def advance(conn: apsw.Connection, sg: int, topic_id: int, partition: int) -> None:
    """Move the start offset to the lowest record not done and delete the rows it passes."""
    found = conn.execute(_WINDOW, (sg, topic_id, partition)).fetchone()
    if found is None:
        return
    start, end, lowest = found
    new_start = end if lowest is None else lowest
    if new_start <= start:
        return
    conn.execute(
        "DELETE FROM share_records WHERE share_group_id = ? AND topic_id = ? AND partition = ? AND offset < ?",
        (sg, topic_id, partition, new_start),
    )
    conn.execute(
        "UPDATE share_partitions SET start_offset = ? WHERE share_group_id = ? AND topic_id = ? AND partition = ?",
        (new_start, sg, topic_id, partition),
    )


def look(conn: apsw.Connection, group_id: str, subscription_json: str, max_locks: int,
         now: int) -> tuple[bool, int | None]:
    """A read-only look (no write lock) for a blocked poll: ``(True, None)`` if a share
    transaction could take something now (or the group does not exist yet), else ``(False, the
    next lock deadline ahead in the subscribed partitions or None)``."""
    row = conn.execute(_GROUP_ID, (group_id,)).fetchone()
    if row is None:
        return True, None
    if conn.execute(_MAYBE_AVAILABLE, (row[0], subscription_json, max_locks, now)).fetchone()[0]:
        return True, None
    return False, conn.execute(_NEXT_EXPIRY, (row[0], subscription_json, now)).fetchone()[0]


# -- admin (Log.list_share_groups, describe_share_group, delete_share_group) -------------------
def list_groups(conn: apsw.Connection) -> list[str]:
    """The ids of all share groups, sorted."""
    return [r[0] for r in conn.execute("SELECT group_id FROM share_groups ORDER BY group_id")]


def describe(conn: apsw.Connection, group_id: str, now: int) -> ShareGroupDescription:
    """Per partition start offset, window and record counts; a lock past its deadline (``now``:
    `storage.clock_now`) counts as available."""
    validate_group_id(group_id)
    row = conn.execute(_GROUP_ID, (group_id,)).fetchone()
    if row is None:
        return ShareGroupDescription(group_id, "Dead", ())
    sg = row[0]
    parts = []
    for name, topic_id, partition, start, end, high, dead in conn.execute(
        "SELECT t.name, s.topic_id, s.partition, s.start_offset, s.end_offset, p.next_offset, s.dead_lettered"
        " FROM share_partitions s JOIN topics t USING (topic_id) JOIN partitions p USING (topic_id, partition)"
        " WHERE s.share_group_id = ? ORDER BY t.name, s.partition",
        (sg,),
    ).fetchall():
        acquired, available, acknowledged, archived = conn.execute(
            "SELECT coalesce(sum(state = 1 AND lock_until_ms > ?4), 0),"
            " coalesce(sum(state = 0 OR (state = 1 AND lock_until_ms <= ?4)), 0),"
            " coalesce(sum(state = 2), 0), coalesce(sum(state = 4), 0)"
            " FROM share_records WHERE share_group_id = ?1 AND topic_id = ?2 AND partition = ?3",
            (sg, topic_id, partition, now),
        ).fetchone()
        lag = high - start - acknowledged - archived
        parts.append(SharePartitionState(name, partition, start, high, end - start, acquired, available,
                                         acknowledged, archived, dead, lag))
    held = conn.execute(_HELD, (sg, now)).fetchone()[0]
    return ShareGroupDescription(group_id, "Stable" if held else "Empty", tuple(parts))


def delete(conn: apsw.Connection, group_id: str, now: int) -> None:
    """Forget a share group and all its state; refused while a consumer holds one of its records
    (a lock ahead of ``now``: `clock.monotonic_ms`)."""
    validate_group_id(group_id)
    row = conn.execute(_GROUP_ID, (group_id,)).fetchone()
    if row is None:
        raise GroupIdNotFoundError(f"no share group {group_id!r}; log.list_share_groups() lists them")
    sg = row[0]
    if conn.execute(_HELD, (sg, now)).fetchone()[0]:
        raise GroupNotEmptyError(
            f"share group {group_id!r} has records locked by live consumers; close them (or wait for their locks "
            "to expire) before deleting it"
        )
    for table in ("share_records", "share_partitions", "share_members", "share_groups"):
        conn.execute(f"DELETE FROM {table} WHERE share_group_id = ?", (sg,))
