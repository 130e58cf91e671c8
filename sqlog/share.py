"""Queue mode's client: `ShareConsumer`, a member of a share group (Kafka's KIP-932, "Queues for
Kafka").

Any number of share consumers, in any number of threads and processes, take records from
every partition of the topics they subscribe to; each record is held by one consumer at a
time, under a lock that expires, and finished one by one with an acknowledgement.

This module owns the client side: config checks, the buffer of acquired records not yet
returned, the records delivered and their pending acknowledgements, and poll / acknowledge /
commit / close. The share group's state in the file and the work of each share transaction are
`share_groups`; a consumer runs one `share_groups.ShareTransaction` per poll, commit or close in
one ``BEGIN IMMEDIATE`` transaction on the log's writer connection, appending dead-letter records
through the producers' append path (`retention.append_rows`) in that same transaction.
"""

from __future__ import annotations

import collections
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apsw

from . import clock, liveness, share_groups, topics
from .checksum import matches
from .config import SHARE_CONSUMER_OPTIONS, check_bool, check_config, check_int, defaults, describe
from .engine import Engine
from .errors import (
    CorruptRecordError,
    IllegalStateError,
    InvalidConfigError,
    InvalidRecordStateError,
    LogClosedError,
    SqlogError,
    UnknownTopicOrPartitionError,
    translated,
)
from .groups import storable_str, validate_group_id
from .reading import RETRY, deserialize, deserialize_error, next_from, poll_deadline, read_blocking
from .retention import append_rows
from .serde import decode_headers, serde_function
from .share_groups import ACKNOWLEDGE_TYPES, Acknowledgement, ShareOutcome, ShareSettings, ShareTransaction
from .types import ShareRecord, TopicPartition

SHARE_CONSUMER_DEFAULTS: dict[str, Any] = defaults(SHARE_CONSUMER_OPTIONS)
MAX_REASON_CHARS = 10_000
"""The longest ``acknowledge(..., reason=...)`` kept (a header value of the dead letter)."""
DEAD_CHECK_S = 0.5
"""How often a blocked poll looks for a member whose process on this machine is gone (a poll's
own transaction always looks)."""


class _Delivered:
    """A record this consumer returned and has not finished: its acquisition and pending acknowledgement."""

    __slots__ = ("topic_id", "delivery_count", "ack", "reason")

    def __init__(self, topic_id: int, delivery_count: int, ack: str | None = None, reason: str | None = None) -> None:
        self.topic_id = topic_id
        self.delivery_count = delivery_count
        self.ack = ack  # None, or one of ACKNOWLEDGE_TYPES, applied at the next poll/commit/close
        self.reason = reason  # why it was rejected or released: a dead letter's __dlq.errors.message


def _positive(config: dict[str, Any], name: str) -> int:
    return check_int(name, config[name], 1)  # type: ignore[no-any-return]


class TransactionAcknowledgements:
    """A share consumer's acknowledgements carried by a producer's transaction (its ``TransactionPart``)."""

    def __init__(self, consumer: ShareConsumer, taken: dict[tuple[str, int, int], _Delivered]) -> None:
        self.consumer = consumer
        self.taken = taken

    def apply(self, conn: apsw.Connection) -> None:
        """Inside the transaction's commit: apply them all, or raise InvalidRecordStateError."""
        self.consumer.apply_in_transaction(conn, self.taken)

    def finish(self, committed: bool) -> None:
        self.consumer.transaction_ended(self.taken, committed)


class ShareConsumer:
    """A member of a share group: takes records from every partition of its topics, each held by
    one consumer at a time. Use from one thread, as in Kafka; create with ``Log.share_consumer``.

    Renewing a lock: ``acknowledge(record, type="renew")`` then ``commit()`` (Kafka's KIP-1222
    RENEW) extends the record's lock by ``record_lock_duration_ms`` from now; the record stays
    this consumer's and still needs its final acknowledgement.

    Config keys (``log.share_consumer(group_id, **config)``):

    """
    __doc__ = (__doc__ or "").rstrip() + "\n\n" + describe(SHARE_CONSUMER_OPTIONS)

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
        lock_ms = _positive(cfg, "record_lock_duration_ms")
        limit = _positive(cfg, "delivery_count_limit")
        self._max_records = _positive(cfg, "max_poll_records")
        self._check_crcs = check_bool("check_crcs", cfg["check_crcs"])
        max_locks = _positive(cfg, "partition_max_record_locks")
        self._iter_timeout_ms: int | None = check_int(
            "consumer_timeout_ms", cfg["consumer_timeout_ms"], allow_none=True
        )
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
        dlq: str | None = cfg["dead_letter_topic"]
        engine.check_open()
        self._engine = engine
        self._path = engine.path
        if dlq is not None:
            try:
                engine.topic_meta(dlq)  # the dead-letter topic must exist
            except UnknownTopicOrPartitionError:
                raise UnknownTopicOrPartitionError(
                    f"dead_letter_topic={dlq!r}: no such topic; create it first "
                    f"(log.create_topic({dlq!r}, exist_ok=True)) or leave dead_letter_topic unset"
                ) from None
        self._settings = ShareSettings(
            group_id=self.group_id,
            delivery_count_limit=limit,
            record_lock_duration_ms=lock_ms,
            partition_max_record_locks=max_locks,
            auto_offset_reset=cfg["auto_offset_reset"],
            dead_letter_topic=dlq,
        )
        self.member_id = uuid.uuid4().hex
        self._subscription: tuple[str, ...] = ()
        self._subscription_json = "[]"
        self._buffer: collections.deque[tuple[Any, ...]] = collections.deque()  # acquired, not yet returned
        self._delivered: dict[tuple[str, int, int], _Delivered] = {}
        self._rr = 0
        self._next_expiry_ms: int | None = None
        self._registered_pid: int | None = None  # the process recorded in share_members for this member
        self._dead_check_at = 0.0  # when a blocked poll next looks for members whose process is gone
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
        deadline, limit = poll_deadline(timeout_ms, max_records, self._max_records)
        self._settle()
        if not self._buffer:
            self._fill(deadline, limit)
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

        def attempt(first: bool) -> bool:
            if not (first or self._maybe_available()):
                return False
            self._report(self._transact(acquire=limit))
            if self._buffer:
                return True
            # Look again from a fresh seq and data_version (ours moved them), unless the time is up.
            return False if time.monotonic() >= deadline else RETRY

        # Nothing to take: sleep until a commit here or in another process, or a lock's deadline.
        read_blocking(self._engine, self._conn, deadline, attempt, self._lock_expired, self._next_stop)

    def _lock_expired(self) -> bool:
        """A blocked poll also wakes when some consumer's lock comes due (no commit marks that), or
        (looked at every `DEAD_CHECK_S`) when another member's process on this machine is gone."""
        self._check_open()
        if self._next_expiry_ms is not None and clock.monotonic_ms() >= self._next_expiry_ms:
            return True
        now = time.monotonic()
        if now < self._dead_check_at:
            return False
        self._dead_check_at = now + DEAD_CHECK_S
        return self._dead_member()

    def _next_stop(self) -> float:
        """When a blocked poll must look again (monotonic): the next lock deadline or dead-member check."""
        at = self._dead_check_at
        if self._next_expiry_ms is not None:
            at = min(at, time.monotonic() + (self._next_expiry_ms - clock.monotonic_ms()) / 1000)
        return at

    def _dead_member(self) -> bool:
        with translated(self._path):
            return share_groups.dead_member(self._conn, self.group_id, self.member_id)

    def _maybe_available(self) -> bool:
        """A read-only look (no write lock) at whether a poll's transaction could take anything."""
        if self._dead_member():
            return True  # its locks are released by the next transaction
        maybe, next_expiry_ms = share_groups.look(
            self._conn, self.group_id, self._subscription_json, self._settings.partition_max_record_locks,
            clock.monotonic_ms(),
        )
        if not maybe:
            self._next_expiry_ms = next_expiry_ms
        return maybe

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
                delivered[(topic, partition, offset)] = _Delivered(
                    topic_id, count, "reject", "the record does not match its checksum"
                )
                raise CorruptRecordError(
                    f"{topic}-{partition} offset {offset}: the record does not match its checksum (it changed on "
                    "disk after it was written); it is rejected (archived, and copied to the dead-letter topic if "
                    "one is set) at the next poll or commit; run `sqlog check` (log.check()) to list every damaged "
                    "record", topic, partition, offset,
                )
            try:
                key, value = deserialize(kd, vd, k, v)
            except Exception as exc:
                if out:
                    break  # return what precedes it; the next poll raises
                buffer.popleft()
                delivered[(topic, partition, offset)] = _Delivered(topic_id, count, "release")
                raise deserialize_error(
                    topic, partition, offset, exc,
                    f"the record is released (delivery {count}) and archived once it reaches delivery_count_limit",
                ) from exc
            buffer.popleft()
            delivered[(topic, partition, offset)] = _Delivered(topic_id, count)
            out.append(ShareRecord(topic, partition, offset, ts, key, value, decode_headers(h) if h else (), count))
        return out

    # -- for front doors that wait without blocking a thread (sqlog.aio) ---------------------
    def fetch(self, max_records: int | None = None, look_first: bool = False) -> int:
        """One poll that neither waits nor hands out: with the buffer empty, check (as ``poll()``)
        that the records handed out are acknowledged and acquire up to ``max_records`` into the
        buffer, applying pending acknowledgements in the same transaction (``look_first``: only
        if a read-only look finds something to take, so idle waiters leave the write lock alone);
        with records buffered, only apply pending acknowledgements. Buffered records stay locked
        to this consumer until `take` hands them out (or close releases them). Returns how many
        records are buffered."""
        self._check_open()
        _, limit = poll_deadline(0, max_records, self._max_records)
        if not self._buffer:
            self._settle()
            if not look_first or self._maybe_available():
                self._report(self._transact(acquire=limit))
        elif self._has_pending():
            self._report(self._transact(acquire=0))
        return len(self._buffer)

    def take(self, max_records: int) -> list[ShareRecord]:
        """Hand out up to ``max_records`` buffered records; each becomes a delivery to acknowledge.
        Raises as ``poll()`` does for a record that fails its checksum or deserializer. No I/O."""
        self._check_open()
        return self._take(max_records)

    @property
    def next_lock_expiry_ms(self) -> int | None:
        """When (`sqlog.clock.monotonic_ms`) the next record lock seen by the last fetch expires,
        freeing a record to take; None if none was seen."""
        return self._next_expiry_ms

    def __iter__(self) -> Iterator[ShareRecord]:
        return self

    def __next__(self) -> ShareRecord:
        """The next record, blocking; stops after ``consumer_timeout_ms`` without one (if set)."""
        self._check_open()
        if not self._buffer:
            self._settle()
            next_from(self._buffer, self._iter_timeout_ms, lambda deadline: self._fill(deadline, self._max_records))
        return self._take(1)[0]

    # -- acknowledgements ------------------------------------------------------------------
    def acknowledge(self, record: ShareRecord, type: str = "accept", reason: str | None = None) -> None:
        """Mark how a delivered record ended; applied by the next ``commit()``, ``poll()`` or ``close()``.

        ``"accept"``: done. ``"release"``: deliver it again (to any consumer) now; archived instead
        at the delivery-count limit. ``"reject"``: archive it (to the dead-letter topic, if any).
        ``"renew"``: extend its lock by ``record_lock_duration_ms`` (apply it with ``commit()``); the
        record still needs its final acknowledgement.

        ``reason`` (reject or release only): why, in the dead letter's ``__dlq.errors.message``
        header if the record is archived (instead of Kafka's generic text).
        """
        self._check_open()
        if self._implicit:
            raise IllegalStateError(
                "acknowledge() in implicit acknowledgement mode: every record a poll returned is accepted "
                "at the next poll/commit; create the share consumer with acknowledgement_mode='explicit'"
            )
        if type not in ACKNOWLEDGE_TYPES:
            raise InvalidConfigError(f"type must be one of {ACKNOWLEDGE_TYPES}, not {type!r}")
        if reason is not None:
            if type not in ("reject", "release"):
                raise InvalidConfigError(f"reason goes with type='reject' or 'release' (a dead letter's message), "
                                         f"not {type!r}")
            storable_str(reason, "reason", MAX_REASON_CHARS)
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
        d.reason = reason

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

    def transaction_acknowledgements(self) -> TransactionAcknowledgements:
        """Hand the pending acknowledgements to a producer's transaction
        (``producer.send_acknowledgements_to_transaction(consumer)`` calls this): they are applied
        by its commit, in its SQLite transaction, and no longer by this consumer's own commit or
        poll. If the transaction aborts, the records are this consumer's again, unacknowledged."""
        self._check_open()
        self._settle_implicit()
        taken = {key: d for key, d in self._delivered.items() if d.ack is not None and d.ack != "renew"}
        for key in taken:
            del self._delivered[key]
        return TransactionAcknowledgements(self, taken)

    def transaction_ended(self, taken: dict[tuple[str, int, int], _Delivered], committed: bool) -> None:
        """The end of a transaction that carried ``taken``: on abort they are held again, unacknowledged."""
        if committed or self._closed:
            return
        for key, d in taken.items():
            d.ack = None
            self._delivered.setdefault(key, d)

    def apply_in_transaction(self, conn: apsw.Connection, taken: dict[tuple[str, int, int], _Delivered]) -> None:
        """Apply ``taken`` inside a producer's write transaction; InvalidRecordStateError (the whole
        transaction rolls back) if any of them is no longer this consumer's delivery."""
        acks: list[Acknowledgement] = [(t, p, o, d.topic_id, d.delivery_count, d.ack) for (t, p, o), d in taken.items()
                                       if d.ack is not None]
        if not acks:
            return
        now = clock.monotonic_ms()
        wall = clock.wall_ms()
        sg = share_groups.group_row(conn, self.group_id, wall)
        tx = ShareTransaction(conn, sg, self.member_id, self._settings, self._subscription_json, now, wall)
        tx.acknowledge(acks)
        if tx.outcome.failed:
            raise self._failure(tx.outcome.failed)
        tx.advance()
        for batch in tx.dead_letters():
            append_rows(conn, batch.topic_id, batch.partition, batch.rows, batch.nbytes, batch.max_ts, self._path)

    @staticmethod
    def _failure(failed: list[tuple[str, int, int]]) -> InvalidRecordStateError:
        shown = ", ".join(f"{t}-{p}@{o}" for t, p, o in failed[:5]) + (" ..." if len(failed) > 5 else "")
        return InvalidRecordStateError(
            f"{len(failed)} acknowledgement(s) refused ({shown}): the lock expired and the record was delivered "
            "again, archived or removed by retention; raise record_lock_duration_ms or renew locks "
            "(acknowledge(record, 'renew') + commit()) for long jobs",
            tuple(failed),
        )

    def _report(self, outcome: ShareOutcome) -> None:
        """Tell the acknowledgement commit callback what was applied (and what was refused)."""
        if self._callback is None or not (outcome.done or outcome.failed):
            return
        offsets: dict[TopicPartition, set[int]] = {}
        for t, p, o in outcome.done + outcome.failed:
            offsets.setdefault(TopicPartition(t, p), set()).add(o)
        self._callback(offsets, self._failure(outcome.failed) if outcome.failed else None)

    # -- the transaction -------------------------------------------------------------------
    def _transact(self, acquire: int, release_all: bool = False, release_buffer: bool = False,
                  leave: bool = False) -> ShareOutcome:
        """One write transaction: apply pending acknowledgements, expire locks, acquire up to
        ``acquire`` records, release what this consumer holds (``release_all``) or has buffered
        (``release_buffer``), advance start offsets, dead-letter what was archived."""
        pending = [(key, d) for key, d in self._delivered.items() if d.ack is not None]
        acks: list[Acknowledgement] = [
            (t, p, o, d.topic_id, d.delivery_count, d.ack) for (t, p, o), d in pending if d.ack is not None
        ]
        messages = {key: d.reason for key, d in pending if d.reason is not None}
        buffered = list(self._buffer) if release_buffer else []
        with self._engine.write() as conn:
            now = clock.monotonic_ms()  # lock deadlines
            wall = clock.wall_ms()  # Kafka timestamps: a new group's created_ms, dead-letter records
            sg = share_groups.group_row(conn, self.group_id, wall)
            tx = ShareTransaction(conn, sg, self.member_id, self._settings, self._subscription_json, now, wall,
                                  rr=self._rr)
            if acks:
                tx.acknowledge(acks, messages)
            if buffered:
                tx.release_buffered(buffered)
            if release_all:
                tx.release_member()
            pid = os.getpid()
            if leave:
                tx.forget_member()
            elif acquire and self._registered_pid != pid:
                tx.register(pid, liveness.PID_NAMESPACE, liveness.start_time(pid))
            tx.expire_dead()
            tx.expire()
            rows = tx.subscribed()
            if acquire:
                tx.acquire(rows, acquire)
                self._rr = tx.rr
            tx.advance()
            for batch in tx.dead_letters():
                append_rows(conn, batch.topic_id, batch.partition, batch.rows, batch.nbytes, batch.max_ts, self._path)
            out = tx.finish(waiting=acquire > 0 and not tx.outcome.acquired)
        # Committed: only now does this consumer's bookkeeping follow.
        self._registered_pid = None if leave else pid if acquire else self._registered_pid
        failed = set(out.failed)
        for key, d in pending:
            if d.ack == "renew" and key not in failed:
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
                self._report(self._transact(acquire=0, release_all=True, leave=True))
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
