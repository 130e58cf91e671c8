"""Queue mode: share groups and the share consumer, as Kafka's KIP-932 ("Queues for Kafka").

Any number of share consumers, in any number of threads and processes, take records from
every partition of the topics they subscribe to; each record is held by one consumer at a
time, under a lock that expires, and finished one by one with an acknowledgement.

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
one, through the producers' append path (`retention.append_rows`), all in that one transaction.
An acknowledgement applies only while the record is still the consumer's delivery (same
delivery count, not delivered to anyone since), so a lock that expired and was handed to another
consumer makes it fail (`InvalidRecordStateError`, a `CommitFailedError`), never apply twice.
Lock time is `clock.monotonic_ms`, shared by every process on the machine and never stepped, so a
wall-clock step neither expires held locks early nor keeps expired ones.
"""

from __future__ import annotations

import collections
import json
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apsw

from . import clock, topics
from .checksum import CHECK_COLUMN, matches
from .config import MAX_INT32, check_config
from .engine import Engine
from .errors import (
    CorruptRecordError,
    GroupIdNotFoundError,
    GroupNotEmptyError,
    IllegalStateError,
    InvalidConfigError,
    InvalidRecordStateError,
    LogClosedError,
    SerializationError,
    SqlogError,
    translated,
)
from .groups import validate_group_id
from .partitions import select_from
from .retention import append_rows
from .serde import decode_headers, encode_headers, serde_function
from .storage import data_version, partition_table, wait_for_commit
from .types import ShareGroupDescription, SharePartitionState, ShareRecord, TopicPartition

# Kafka's RecordState codes.
AVAILABLE, ACQUIRED, ACKNOWLEDGED, ARCHIVED = 0, 1, 2, 4
ACKNOWLEDGE_TYPES = ("accept", "release", "reject", "renew")

SHARE_CONSUMER_DEFAULTS: dict[str, Any] = {
    # Where a share group starts reading a partition it has never read: "earliest" (a job
    # enqueued before the first worker started must still be done) or "latest".
    "auto_offset_reset": "earliest",
    "record_lock_duration_ms": 30_000,
    "delivery_count_limit": 5,
    "dead_letter_topic": None,
    # "explicit": every record is acknowledged with acknowledge(); "implicit": every record a
    # poll returned is accepted at the next poll, commit() or close().
    "acknowledgement_mode": "explicit",
    "key_deserializer": None,
    "value_deserializer": None,
    "max_poll_records": 500,
    "check_crcs": True,  # verify each record's checksum: a damaged record is rejected, CorruptRecordError
    "partition_max_record_locks": 2_000,
    "consumer_timeout_ms": None,  # iteration stops after this long without a record (None: never)
    # Called as callback(offsets: dict[TopicPartition, set[int]], exception) after a poll() or
    # close() applied acknowledgements (exception: InvalidRecordStateError or None).
    "acknowledgement_commit_callback": None,
}

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
_INSERT_ACQUIRED = "INSERT INTO share_records VALUES (?, ?, ?, ?, 1, 1, ?, ?)"
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


class _Delivered:
    """A record this consumer returned and has not finished: its acquisition and pending acknowledgement."""

    __slots__ = ("topic_id", "delivery_count", "ack")

    def __init__(self, topic_id: int, delivery_count: int, ack: str | None = None) -> None:
        self.topic_id = topic_id
        self.delivery_count = delivery_count
        self.ack = ack  # None, or one of ACKNOWLEDGE_TYPES, applied at the next poll/commit/close


class _Outcome:
    """What one share transaction did."""

    __slots__ = ("acquired", "failed", "done", "changed", "next_expiry_ms")

    def __init__(self) -> None:
        self.acquired: list[tuple[Any, ...]] = []  # (topic, topic_id, partition, offset, dc, ts, key, value, headers, check)
        self.failed: list[tuple[str, int, int]] = []
        self.done: list[tuple[str, int, int]] = []
        self.changed = False  # something may have become available to others (or was dead-lettered)
        self.next_expiry_ms: int | None = None


def _positive(config: dict[str, Any], name: str, minimum: int = 1) -> int:
    value = config[name]
    if type(value) is not int or not minimum <= value <= MAX_INT32:
        raise InvalidConfigError(f"{name} must be an int from {minimum} to {MAX_INT32}, not {value!r}")
    return value


class ShareConsumer:
    """A member of a share group: takes records from every partition of its topics, each held by
    one consumer at a time. Use from one thread, as in Kafka; create with ``Log.share_consumer``.

    Renewing a lock: ``acknowledge(record, type="renew")`` then ``commit()`` (Kafka's KIP-1222
    RENEW) extends the record's lock by ``record_lock_duration_ms`` from now; the record stays
    this consumer's and still needs its final acknowledgement.
    """

    def __init__(self, engine: Engine, group_id: str, **config: Any) -> None:
        cfg = check_config(config, SHARE_CONSUMER_DEFAULTS, "share consumer")
        self.config = cfg
        self.group_id = validate_group_id(group_id)
        if cfg["auto_offset_reset"] not in ("earliest", "latest"):
            raise InvalidConfigError(
                f"auto_offset_reset must be 'earliest' or 'latest', not {cfg['auto_offset_reset']!r}"
            )
        if cfg["acknowledgement_mode"] not in ("explicit", "implicit"):
            raise InvalidConfigError(
                f"acknowledgement_mode must be 'explicit' or 'implicit', not {cfg['acknowledgement_mode']!r}"
            )
        self._implicit = cfg["acknowledgement_mode"] == "implicit"
        self._lock_ms = _positive(cfg, "record_lock_duration_ms")
        self._limit = _positive(cfg, "delivery_count_limit")
        self._max_records = _positive(cfg, "max_poll_records")
        if type(cfg["check_crcs"]) is not bool:
            raise InvalidConfigError(f"check_crcs must be True or False, not {cfg['check_crcs']!r}")
        self._check_crcs = cfg["check_crcs"]
        self._max_locks = _positive(cfg, "partition_max_record_locks")
        timeout = cfg["consumer_timeout_ms"]
        if timeout is not None and (type(timeout) is not int or not 0 <= timeout <= MAX_INT32):
            raise InvalidConfigError(f"consumer_timeout_ms must be an int from 0 to {MAX_INT32} or None, not {timeout!r}")
        self._iter_timeout_ms: int | None = timeout
        self._key_de: Callable[[bytes], Any] | None = serde_function(
            cfg["key_deserializer"], "key_deserializer", "deserialize"
        )
        self._value_de: Callable[[bytes], Any] | None = serde_function(
            cfg["value_deserializer"], "value_deserializer", "deserialize"
        )
        callback = cfg["acknowledgement_commit_callback"]
        if callback is not None and not callable(callback):
            raise InvalidConfigError("acknowledgement_commit_callback must be callable or None")
        self._callback: Callable[[dict[TopicPartition, set[int]], SqlogError | None], None] | None = callback
        self._dlq: str | None = cfg["dead_letter_topic"]
        engine.check_open()
        self._engine = engine
        self._path = engine.path
        if self._dlq is not None:
            engine.topic_meta(self._dlq)  # the dead-letter topic must exist (UnknownTopicOrPartitionError)
        self.member_id = uuid.uuid4().hex
        self._subscription: tuple[str, ...] = ()
        self._subscription_json = "[]"
        self._buffer: collections.deque[tuple[Any, ...]] = collections.deque()  # acquired, not yet returned
        self._delivered: dict[tuple[str, int, int], _Delivered] = {}
        self._rr = 0
        self._next_expiry_ms: int | None = None
        self._closed = False
        # A read connection for a blocked poll: data_version and a cheap look before taking the write lock.
        self._conn: apsw.Connection = engine.reader()
        engine.track(self)  # closed with the log

    # -- subscription ----------------------------------------------------------------------
    def subscribe(self, topics_: Iterable[str]) -> None:
        """Take records from every partition of these topics (they may not exist yet).

        The group's state of each existing partition is set up now, so with
        ``auto_offset_reset="latest"`` records sent after this call are delivered.
        Buffered records of the previous subscription not yet returned are released.
        """
        self._check_open()
        if isinstance(topics_, (str, bytes)) or not isinstance(topics_, Iterable):
            raise InvalidConfigError(f"subscribe() takes a list of topic names, not {topics_!r}")
        names = tuple(sorted({topics.validate_name(t) for t in topics_}))
        self._subscription = names
        self._subscription_json = json.dumps(names)
        self._transact(acquire=0, release_buffer=True)

    def subscription(self) -> set[str]:
        """The topics subscribed to."""
        self._check_open()
        return set(self._subscription)

    def unsubscribe(self) -> None:
        """Apply pending acknowledgements, release every record held, and drop the subscription."""
        self._check_open()
        self._settle_implicit()
        self._report(self._transact(acquire=0, release_all=True))
        self._delivered.clear()
        self._buffer.clear()
        self._subscription = ()
        self._subscription_json = "[]"

    # -- polling ---------------------------------------------------------------------------
    def poll(self, timeout_ms: int | float = 0, max_records: int | None = None) -> list[ShareRecord]:
        """Acquire and return records (at most ``max_records``), waiting up to ``timeout_ms`` for some.

        Pending acknowledgements are applied in the same transaction. In explicit mode every record
        of the previous poll must be acknowledged first (IllegalStateError otherwise, as in Kafka);
        in implicit mode they are accepted now. A record whose key or value cannot be deserialized
        is released and raises SerializationError (after the records before it were returned);
        at the delivery-count limit it is archived.
        """
        self._check_open()
        if type(timeout_ms) not in (int, float) or not 0 <= timeout_ms < math.inf:
            raise InvalidConfigError(f"timeout_ms must be a number >= 0, not {timeout_ms!r}")
        limit = self._max_records if max_records is None else max_records
        if type(limit) is not int or not 1 <= limit <= MAX_INT32:
            raise InvalidConfigError(f"max_records must be an int from 1 to {MAX_INT32}, not {max_records!r}")
        self._settle()
        if not self._buffer:
            self._fill(time.monotonic() + timeout_ms / 1000, limit)
        elif self._has_pending():
            self._report(self._transact(acquire=0))
        return self._take(limit)

    def _settle(self) -> None:
        """Before taking more records: explicit mode insists every returned record is acknowledged."""
        if not self._subscription:
            raise IllegalStateError("poll() before subscribe(): subscribe to the topics first")
        if self._implicit:
            self._settle_implicit()
            return
        unacknowledged = [k for k, d in self._delivered.items() if d.ack is None or d.ack == "renew"]
        if unacknowledged:
            topic, partition, offset = unacknowledged[0]
            raise IllegalStateError(
                f"All records must be acknowledged in explicit acknowledgement mode: {len(unacknowledged)} are not "
                f"(e.g. {topic}-{partition} offset {offset}); acknowledge() each with accept, release or reject"
            )

    def _settle_implicit(self) -> None:
        if self._implicit:
            for d in self._delivered.values():
                if d.ack is None:
                    d.ack = "accept"

    def _has_pending(self) -> bool:
        return any(d.ack is not None for d in self._delivered.values())

    def _fill(self, deadline: float, limit: int) -> None:
        """Acquire up to ``limit`` records into the buffer, blocking until ``deadline`` for some.

        The first attempt always runs the transaction (it also applies acknowledgements); later
        ones only after a cheap read-only look finds something to take, so idle consumers do not
        contend for the write lock.
        """
        signal = self._engine.signal
        first = True
        while True:
            seq = signal.seq
            with translated(self._path):
                version = data_version(self._conn)
                if first or self._maybe_available():
                    first = False
                    self._report(self._transact(acquire=limit))
                    if self._buffer or time.monotonic() >= deadline:
                        return
                    continue  # look again from a fresh seq and data_version: ours moved them
            if time.monotonic() >= deadline:
                return
            # Nothing to take: sleep until a commit here or in another process, or a lock's deadline.
            wait_for_commit(signal, self._conn, self._path, seq, version, deadline, self._lock_expired)

    def _lock_expired(self) -> bool:
        """A blocked poll also wakes when some consumer's lock comes due (no commit marks that)."""
        self._check_open()
        return self._next_expiry_ms is not None and clock.monotonic_ms() >= self._next_expiry_ms

    def _maybe_available(self) -> bool:
        """A read-only look (no write lock) at whether a poll's transaction could take anything."""
        now = clock.monotonic_ms()
        row = self._conn.execute(_GROUP_ID, (self.group_id,)).fetchone()
        if row is None:
            return True
        args = (row[0], self._subscription_json, self._max_locks, now)
        if self._conn.execute(_MAYBE_AVAILABLE, args).fetchone()[0]:
            return True
        self._next_expiry_ms = self._conn.execute(_NEXT_EXPIRY, (row[0], self._subscription_json, now)).fetchone()[0]
        return False

    def _take(self, limit: int) -> list[ShareRecord]:
        """Deserialize and return up to ``limit`` buffered records; they become this consumer's deliveries."""
        out: list[ShareRecord] = []
        kd, vd = self._key_de, self._value_de
        buffer = self._buffer
        delivered = self._delivered
        while buffer and len(out) < limit:
            topic, topic_id, partition, offset, count, ts, k, v, h, check = buffer[0]
            if self._check_crcs and not matches(k, v, h, check):
                if out:
                    break  # return what precedes it; the next poll raises
                buffer.popleft()
                delivered[(topic, partition, offset)] = _Delivered(topic_id, count, "reject")
                raise CorruptRecordError(
                    f"{topic}-{partition} offset {offset}: the record does not match its checksum (it changed on "
                    "disk after it was written); it is rejected (archived, and copied to the dead-letter topic if "
                    "one is set) at the next poll or commit; run `sqlog check` (log.check()) to list every damaged "
                    "record", topic, partition, offset,
                )
            try:
                key = k if kd is None or k is None else kd(k)
                value = v if vd is None or v is None else vd(v)
            except Exception as exc:
                if out:
                    break  # return what precedes it; the next poll raises
                buffer.popleft()
                delivered[(topic, partition, offset)] = _Delivered(topic_id, count, "release")
                raise SerializationError(
                    f"{topic}-{partition} offset {offset}: deserializer failed ({exc}); the record is released "
                    f"(delivery {count}) and archived once it reaches delivery_count_limit"
                ) from exc
            buffer.popleft()
            delivered[(topic, partition, offset)] = _Delivered(topic_id, count)
            out.append(ShareRecord(topic, partition, offset, ts, key, value, decode_headers(h) if h else (), count))
        return out

    def __iter__(self) -> Iterator[ShareRecord]:
        return self

    def __next__(self) -> ShareRecord:
        """The next record, blocking; stops after ``consumer_timeout_ms`` without one (if set)."""
        self._check_open()
        if not self._buffer:
            self._settle()
            wait_ms = self._iter_timeout_ms
            deadline = math.inf if wait_ms is None else time.monotonic() + wait_ms / 1000
            while not self._buffer:
                if time.monotonic() >= deadline:
                    raise StopIteration
                self._fill(min(deadline, time.monotonic() + 1.0), self._max_records)
        return self._take(1)[0]

    # -- acknowledgements ------------------------------------------------------------------
    def acknowledge(self, record: ShareRecord, type: str = "accept") -> None:
        """Mark how a delivered record ended; applied by the next ``commit()``, ``poll()`` or ``close()``.

        ``"accept"``: done. ``"release"``: deliver it again (to any consumer) now; archived instead
        at the delivery-count limit. ``"reject"``: archive it (to the dead-letter topic, if any).
        ``"renew"``: extend its lock by ``record_lock_duration_ms`` (apply it with ``commit()``); the
        record still needs its final acknowledgement.
        """
        self._check_open()
        if self._implicit:
            raise IllegalStateError(
                "acknowledge() in implicit acknowledgement mode: every record a poll returned is accepted "
                "at the next poll/commit; create the share consumer with acknowledgement_mode='explicit'"
            )
        if type not in ACKNOWLEDGE_TYPES:
            raise InvalidConfigError(f"type must be one of {ACKNOWLEDGE_TYPES}, not {type!r}")
        if not isinstance(record, ShareRecord):
            raise InvalidConfigError(f"acknowledge() takes a ShareRecord this consumer returned, not {record!r}")
        d = self._delivered.get((record.topic, record.partition, record.offset))
        if d is None or d.delivery_count != record.delivery_count:
            raise IllegalStateError(
                f"{record.topic}-{record.partition} offset {record.offset} (delivery {record.delivery_count}) "
                "is not a record this consumer holds: already acknowledged and committed, or from another consumer"
            )
        if d.ack is not None and d.ack != "renew":
            raise IllegalStateError(
                f"{record.topic}-{record.partition} offset {record.offset} is already acknowledged ({d.ack})"
            )
        d.ack = type

    def commit(self) -> None:
        """Apply pending acknowledgements now (in implicit mode: accept every returned record).

        Raises InvalidRecordStateError (a CommitFailedError) naming the records whose lock had
        expired and that were delivered again (or archived) meanwhile: nothing of those was
        applied; the other acknowledgements were.
        """
        self._check_open()
        self._settle_implicit()
        if not self._has_pending():
            return
        outcome = self._transact(acquire=0)
        self._report(outcome)
        if outcome.failed:
            raise self._failure(outcome.failed)

    @staticmethod
    def _failure(failed: list[tuple[str, int, int]]) -> InvalidRecordStateError:
        shown = ", ".join(f"{t}-{p}@{o}" for t, p, o in failed[:5]) + (" ..." if len(failed) > 5 else "")
        return InvalidRecordStateError(
            f"{len(failed)} acknowledgement(s) refused ({shown}): the lock expired and the record was delivered "
            "again, archived or removed by retention; raise record_lock_duration_ms or renew locks "
            "(acknowledge(record, 'renew') + commit()) for long jobs",
            tuple(failed),
        )

    def _report(self, outcome: _Outcome) -> None:
        """Tell the acknowledgement commit callback what was applied (and what was refused)."""
        if self._callback is None or not (outcome.done or outcome.failed):
            return
        offsets: dict[TopicPartition, set[int]] = {}
        for t, p, o in outcome.done + outcome.failed:
            offsets.setdefault(TopicPartition(t, p), set()).add(o)
        self._callback(offsets, self._failure(outcome.failed) if outcome.failed else None)

    # -- the transaction -------------------------------------------------------------------
    def _transact(self, acquire: int, release_all: bool = False, release_buffer: bool = False) -> _Outcome:
        """One write transaction: apply pending acknowledgements, expire locks, acquire up to
        ``acquire`` records, release what this consumer holds (``release_all``) or has buffered
        (``release_buffer``), advance start offsets, dead-letter what was archived."""
        pending = [(key, d) for key, d in self._delivered.items() if d.ack is not None]
        buffered = list(self._buffer) if release_buffer else []
        out = _Outcome()
        with self._engine.write() as conn:
            now = clock.monotonic_ms()
            state = _TxState(conn, self, now)
            if pending:
                state.acknowledge(pending, out)
            if buffered:
                state.release_buffered(buffered)
            if release_all:
                state.release_member()
            state.expire()
            rows = state.subscribed()
            if acquire:
                out.acquired = state.acquire(rows, acquire)
            state.finish(out, waiting=acquire > 0 and not out.acquired)
        # Committed: only now does this consumer's bookkeeping follow.
        for key, d in pending:
            if d.ack == "renew" and key not in state.failed_keys:
                d.ack = None
            else:
                del self._delivered[key]
        if release_buffer:
            self._buffer.clear()
        self._buffer.extend(out.acquired)
        self._next_expiry_ms = out.next_expiry_ms
        if out.changed:
            self._engine.signal.notify()  # wakes this process's blocked polls (others see data_version)
        return out

    # -- lifecycle -------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError("the share consumer is closed")
        if self._engine.closed:
            raise LogClosedError("the log this share consumer reads is closed")

    def close(self) -> None:
        """Apply pending acknowledgements (implicit mode: accept what was returned) and release
        every record still held, so other consumers get them at once; idempotent."""
        if self._closed:
            return
        try:
            if not self._engine.closed:
                self._settle_implicit()
                self._report(self._transact(acquire=0, release_all=True))
        finally:
            self._closed = True
            self._buffer.clear()
            self._delivered.clear()
            self._engine.untrack(self)
            self._conn.close()

    def __enter__(self) -> ShareConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<sqlog.ShareConsumer group={self.group_id!r} member={self.member_id}{state}>"


class _TxState:
    """The work of one share transaction on the writer connection (internal to `ShareConsumer._transact`)."""

    def __init__(self, conn: apsw.Connection, consumer: ShareConsumer, now: int) -> None:
        self.conn = conn
        self.c = consumer
        self.now = now  # clock.monotonic_ms(): lock deadlines
        self.wall = clock.wall_ms()  # Kafka timestamps: a new group's created_ms, dead-letter records
        self.sg = group_row(conn, consumer.group_id, self.wall)
        self.touched: set[tuple[int, int]] = set()  # partitions whose start offset may advance
        self.dead: list[tuple[int, int, int, int, str]] = []  # (topic_id, partition, offset, count, reason)
        self.failed_keys: set[tuple[str, int, int]] = set()
        self.changed = False

    def acknowledge(self, pending: list[tuple[tuple[str, int, int], _Delivered]], out: _Outcome) -> None:
        """Apply acknowledgements, each only while the record is still this consumer's delivery."""
        conn, sg, member = self.conn, self.sg, self.c.member_id
        extra = {"accept": (), "release": (self.c._limit,), "reject": (), "renew": (self.now + self.c._lock_ms,)}
        by_type: dict[str, list[tuple[tuple[str, int, int], _Delivered]]] = {}
        for key, d in pending:
            by_type.setdefault(d.ack, []).append((key, d))  # type: ignore[arg-type]
        for kind, items in by_type.items():
            params = [(sg, d.topic_id, p, o, d.delivery_count, member, *extra[kind]) for (_, p, o), d in items]
            applied = {(t, p, o): state for t, p, o, state in conn.executemany(_ACKS[kind], params)}
            if kind == "release":
                self.changed = True
            for key, d in items:
                state = applied.get((d.topic_id, key[1], key[2]))
                if state is None:
                    self.failed_keys.add(key)
                    out.failed.append(key)
                    continue
                if kind == "renew":
                    continue
                out.done.append(key)
                self.touched.add((d.topic_id, key[1]))
                if state == ARCHIVED:
                    reason = REJECTED if kind == "reject" else DELIVERY_COUNT_EXCEEDED
                    self.dead.append((d.topic_id, key[1], key[2], d.delivery_count, reason))

    def release_buffered(self, buffered: list[tuple[Any, ...]]) -> None:
        """Give back records acquired but never returned to the application."""
        c = self.c
        for _, topic_id, partition, offset, count, *_rest in buffered:
            hit = self.conn.execute(
                _RELEASE, (self.sg, topic_id, partition, offset, count, c.member_id, c._limit)
            ).fetchone()
            if hit is not None:
                self._ended(topic_id, partition, offset, hit[3], count)

    def release_member(self) -> None:
        """Give back every record this consumer holds (close, unsubscribe)."""
        for topic_id, partition, offset, state, count in self.conn.execute(
            _RELEASE_MEMBER, (self.sg, self.c._limit, self.c.member_id)
        ).fetchall():
            self._ended(topic_id, partition, offset, state, count)

    def expire(self) -> None:
        """Locks past their deadline: available again, or archived at the delivery-count limit."""
        for topic_id, partition, offset, state, count in self.conn.execute(
            _EXPIRE, (self.sg, self.c._limit, self.now)
        ).fetchall():
            self._ended(topic_id, partition, offset, state, count)

    def _ended(self, topic_id: int, partition: int, offset: int, state: int, count: int) -> None:
        self.changed = True
        if state == ARCHIVED:
            self.touched.add((topic_id, partition))
            self.dead.append((topic_id, partition, offset, count, DELIVERY_COUNT_EXCEEDED))

    def subscribed(self) -> list[list[Any]]:
        """The subscribed partitions and the group's state of each, set up where missing."""
        c = self.c
        rows = [list(r) for r in self.conn.execute(_SUBSCRIBED, (self.sg, c._subscription_json))]
        for row in rows:
            if row[5] is None:  # never read by this group: start per auto_offset_reset
                start = row[3] if c.config["auto_offset_reset"] == "earliest" else row[4]
                self.conn.execute(_PARTITION_CREATE, (self.sg, row[1], row[2], start))
                row[5] = row[6] = start
        return rows

    def acquire(self, rows: list[list[Any]], limit: int) -> list[tuple[Any, ...]]:
        """Lock up to ``limit`` records, partitions taken in turn from a rotating start."""
        c = self.c
        conn, sg, member = self.conn, self.sg, c.member_id
        until = self.now + c._lock_ms
        out: list[tuple[Any, ...]] = []
        n = len(rows)
        if not n:
            return out
        first = c._rr % n
        c._rr += 1
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
                for offset, ts, k, v, h, check in conn.executemany(
                    f"SELECT offset, ts, key, value, headers, {CHECK_COLUMN} FROM {table} WHERE offset = ?",
                    [(o,) for o, _ in again],
                ):
                    out.append((topic, topic_id, partition, offset, counts[offset], ts, k, v, h, check))
                want = limit - len(out)
            # Then records never delivered, from end_offset, as far as the in-flight window allows.
            room = min(want, high - end, start + c._max_locks - end)
            if room > 0:
                fresh = conn.execute(select_from(topic_id, partition), (end, room)).fetchall()
                if fresh:
                    conn.executemany(_INSERT_ACQUIRED, [(sg, topic_id, partition, r[0], member, until) for r in fresh])
                    conn.execute(
                        "UPDATE share_partitions SET end_offset = ? WHERE share_group_id = ? AND topic_id = ?"
                        " AND partition = ?",
                        (fresh[-1][0] + 1, sg, topic_id, partition),
                    )
                    out.extend((topic, topic_id, partition, o, 1, ts, k, v, h, c) for o, ts, k, v, h, c in fresh)
        return out

    def finish(self, out: _Outcome, waiting: bool) -> None:
        """Advance start offsets past finished records, dead-letter the archived, note the next lock deadline."""
        for topic_id, partition in self.touched:
            advance(self.conn, self.sg, topic_id, partition)
        if self.dead:
            self._dead_letter()
        out.changed = self.changed or bool(self.touched)
        if waiting:  # only a poll that found nothing waits for the next lock deadline
            out.next_expiry_ms = self.conn.execute(
                _NEXT_EXPIRY, (self.sg, self.c._subscription_json, self.now)
            ).fetchone()[0]

    def _dead_letter(self) -> None:
        """Copy archived records to the dead-letter topic with headers naming where they came from."""
        c = self.c
        if c._dlq is None:
            return
        meta = topics.lookup(self.conn, c._dlq)
        if meta is None:  # deleted since the consumer was created: archived without a copy
            return
        names = dict(self.conn.execute("SELECT topic_id, name FROM topics"))
        chunks: dict[int, list[tuple[int, bytes | None, bytes | None, bytes | None]]] = {}
        for topic_id, partition, offset, count, reason in self.dead:
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
                (DLQ_GROUP, c.group_id.encode()),
                (DLQ_DELIVERY_COUNT, str(count).encode()),
                (DLQ_REASON, reason.encode()),
                (DLQ_MESSAGE, _MESSAGES[reason].encode()),
            )
            # Kafka's routing: source partition modulo the dead-letter topic's partitions.
            chunks.setdefault(partition % meta.partitions, []).append(
                (self.wall, key, value, encode_headers(decode_headers(headers) + extra))
            )
        for dlq_partition, rows in chunks.items():
            nbytes = sum(len(k or b"") + len(v or b"") + len(h or b"") for _, k, v, h in rows)
            append_rows(self.conn, meta.topic_id, dlq_partition, rows, nbytes, self.wall, c._path)
        self.changed = True


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
    for name, topic_id, partition, start, end, high in conn.execute(
        "SELECT t.name, s.topic_id, s.partition, s.start_offset, s.end_offset, p.next_offset"
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
        parts.append(SharePartitionState(name, partition, start, end, high, end - start, acquired, available,
                                         acknowledged, archived, lag))
    held = conn.execute(
        "SELECT EXISTS(SELECT 1 FROM share_records WHERE share_group_id = ? AND state < 2 AND state = 1"
        " AND lock_until_ms > ?)",
        (sg, now),
    ).fetchone()[0]
    return ShareGroupDescription(group_id, "Stable" if held else "Empty", tuple(parts))


def delete(conn: apsw.Connection, group_id: str, now: int) -> None:
    """Forget a share group and all its state; refused while a consumer holds one of its records
    (a lock ahead of ``now``: `clock.monotonic_ms`)."""
    validate_group_id(group_id)
    row = conn.execute(_GROUP_ID, (group_id,)).fetchone()
    if row is None:
        raise GroupIdNotFoundError(f"no share group {group_id!r}; log.list_share_groups() lists them")
    sg = row[0]
    if conn.execute(
        "SELECT EXISTS(SELECT 1 FROM share_records WHERE share_group_id = ? AND state < 2 AND state = 1"
        " AND lock_until_ms > ?)",
        (sg, now),
    ).fetchone()[0]:
        raise GroupNotEmptyError(
            f"share group {group_id!r} has records locked by live consumers; close them (or wait for their locks "
            "to expire) before deleting it"
        )
    for table in ("share_records", "share_partitions", "share_groups"):
        conn.execute(f"DELETE FROM {table} WHERE share_group_id = ?", (sg,))
