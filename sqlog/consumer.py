"""The consumer: reads partitions in offset order, tracks positions, commits offsets for its group."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from itertools import chain, repeat
from typing import Any

import apsw

from . import groups, partitions, topics
from .assignors import STRATEGIES
from .checksum import mismatches
from .config import (
    CONSUMER_OPTIONS,
    MAX_INT32,
    check_bool,
    check_config,
    check_int,
    check_offset,
    defaults,
    describe,
)
from .engine import Engine
from .errors import (
    CommitFailedError,
    CorruptRecordError,
    IllegalStateError,
    InvalidConfigError,
    LogClosedError,
    OffsetOutOfRange,
    SerializationError,
    SqlogError,
    UnknownTopicOrPartitionError,
    translated,
)
from .reading import (
    RETRY,
    deserialize,
    deserialize_column,
    deserialize_error,
    next_from,
    poll_deadline,
    read_blocking,
)
from .serde import decode_headers, serde_function
from .types import ConsumerGroupMetadata, OffsetAndMetadata, OffsetAndTimestamp, Record, TopicPartition

CONSUMER_DEFAULTS: dict[str, Any] = defaults(CONSUMER_OPTIONS)
logger = logging.getLogger("sqlog")
_new_tuple = tuple.__new__
_RESETS = ("earliest", "latest", "none")
ISOLATION_LEVELS = ("read_uncommitted", "read_committed")


class ConsumerRebalanceListener:
    """Callbacks run inside ``poll()`` (and ``close()``) when the consumer's assignment changes.

    In a group, a partition moves only after its owner's ``on_revoked`` ran and the owner
    released it at its own ``poll()``, or after the owner's session expired.
    """

    def on_revoked(self, partitions: set[TopicPartition]) -> None:
        """Partitions about to be taken away, still owned: commit what was processed of them here."""

    def on_assigned(self, partitions: set[TopicPartition]) -> None:
        """Partitions just given to this consumer; positions resolve at the next fetch."""

    def on_lost(self, partitions: set[TopicPartition]) -> None:
        """Partitions already taken away (session expired, or more than ``max_poll_interval_ms``
        between polls): others may own them now and commits for them fail. As in Kafka, the
        default calls ``on_revoked``."""
        self.on_revoked(partitions)


class _Partition:
    __slots__ = ("tp", "name", "topic_id", "select", "position", "paused", "generation")

    def __init__(self, tp: TopicPartition, topic_id: int, generation: int = -1) -> None:
        self.tp = tp
        self.name = str(tp)  # for errors, made once: a read passes it every time
        self.topic_id = topic_id
        self.generation = generation  # of the group claim that gave it to this member
        self.select = partitions.select_from(topic_id, tp.partition)
        self.position: int | None = None  # None until resolved from the committed offset or the reset policy
        self.paused = False


class _Rows:
    """One partition's records read ahead, kept as the columns they were read as (tuples of
    ints and bytes, which the garbage collector ignores) until handed out: a slice of them
    becomes `Record` tuples then, all in C. A buffer of Records instead would carry thousands of
    tracked objects into the older generations, each costing every full collection."""

    __slots__ = ("topic", "partition", "columns")

    def __init__(self, topic: str, partition: int, columns: tuple[Sequence[Any], ...]) -> None:
        self.topic = topic
        self.partition = partition
        self.columns = columns  # offsets, timestamps, keys, values, headers (deserialized and decoded)

    def __len__(self) -> int:
        return len(self.columns[0])

    def __getitem__(self, cut: slice) -> list[Record]:
        offsets, stamps, keys, values, headers = (c[cut] for c in self.columns)
        return list(map(_new_tuple, repeat(Record), zip(
            repeat(self.topic), repeat(self.partition), offsets, stamps, keys, values, headers)))


class _Buffer:
    """Records read ahead and not yet handed out (`Consumer.fetch`/`take` and iteration): one
    read's runs of records, a run per partition in order, so handing out n records is a slice
    of each run they span and one position per partition, not Python work per record."""

    __slots__ = ("runs", "run", "at", "size")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.runs: list[tuple[TopicPartition, Sequence[Record]]] = []
        self.run = 0  # the run of the next record to hand out, and its index there
        self.at = 0
        self.size = 0

    def fill(self, runs: list[tuple[TopicPartition, Sequence[Record]]]) -> None:
        self.runs, self.run, self.at = runs, 0, 0
        self.size = sum(len(rows) for _, rows in runs)

    def __len__(self) -> int:
        return self.size

    def take(self, n: int) -> list[tuple[TopicPartition, list[Record]]]:
        """Remove the next ``n`` records (at most): (partition, records) per run they span."""
        runs, i, at = self.runs, self.run, self.at
        left = min(n, self.size)
        self.size -= left
        out = []
        while left > 0:
            tp, rows = runs[i]
            cut = min(len(rows), at + left)
            out.append((tp, rows[at:cut]))
            left -= cut - at
            if cut == len(rows):
                i, at = i + 1, 0
            else:
                at = cut
        if self.size:
            self.run, self.at = i, at
        else:
            self.clear()
        return out


def _corrupt(tp: TopicPartition, offset: int) -> CorruptRecordError:
    return CorruptRecordError(
        f"{tp.topic}-{tp.partition} offset {offset}: the record does not match its checksum (it changed on "
        f"disk after it was written); seek(TopicPartition({tp.topic!r}, {tp.partition}), {offset + 1}) to skip "
        "it, and run `sqlog check` (log.check()) to list every damaged record",
        tp.topic, tp.partition, offset,
    )


def _iterable(items: object, call: str, what: str) -> list[Any]:
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise InvalidConfigError(f"{call} takes a list of {what}, not {items!r}")
    return list(items)


def _ms(config: dict[str, Any], name: str, allow_none: bool = False) -> int | None:
    return check_int(name, config[name], 0, MAX_INT32, allow_none)  # type: ignore[no-any-return]


def heartbeat_for(session_timeout_ms: int) -> int:
    """The heartbeat interval when none is given: a third of the session timeout (Kafka's
    advice), at most Kafka's default of 3000 ms, at least 1 ms."""
    return max(1, min(session_timeout_ms // 3, 3_000))


class Consumer:
    __doc__ = ("Reads records from assigned or subscribed partitions; use from one thread, as in Kafka.\n\n"
               "Config keys (``log.consumer(**config)``):\n\n" + describe(CONSUMER_OPTIONS))

    def __init__(self, engine: Engine, **config: Any) -> None:
        cfg = check_config(config, CONSUMER_DEFAULTS, "consumer")
        self.config = cfg
        self._group = None if cfg["group_id"] is None else groups.validate_group_id(cfg["group_id"])
        if cfg["isolation_level"] not in ISOLATION_LEVELS or not isinstance(cfg["isolation_level"], str):
            raise InvalidConfigError(
                f"isolation_level must be 'read_uncommitted' or 'read_committed', not {cfg['isolation_level']!r}"
            )
        if cfg["auto_offset_reset"] not in _RESETS:
            raise InvalidConfigError(f"auto_offset_reset must be one of {_RESETS}, not {cfg['auto_offset_reset']!r}")
        self._reset = cfg["auto_offset_reset"]
        self._auto_commit = check_bool("enable_auto_commit", cfg["enable_auto_commit"]) and self._group is not None
        self._auto_commit_s = (_ms(cfg, "auto_commit_interval_ms") or 0) / 1000
        self._key_de: Callable[[bytes], Any] | None = serde_function(cfg["key_deserializer"], "key_deserializer", "deserialize")
        self._value_de: Callable[[bytes], Any] | None = serde_function(cfg["value_deserializer"], "value_deserializer", "deserialize")
        self._max_records = check_int("max_poll_records", cfg["max_poll_records"], 1)
        self._check_crcs = check_bool("check_crcs", cfg["check_crcs"])
        self._iter_timeout_ms = _ms(cfg, "consumer_timeout_ms", allow_none=True)
        self._meta_age_s = (_ms(cfg, "metadata_max_age_ms") or 0) / 1000
        for name in ("session_timeout_ms", "max_poll_interval_ms"):
            _ms(cfg, name)
        derived = _ms(cfg, "heartbeat_interval_ms", allow_none=True) is None
        if derived:
            cfg["heartbeat_interval_ms"] = heartbeat_for(cfg["session_timeout_ms"])
        if cfg["partition_assignment_strategy"] not in STRATEGIES:
            raise InvalidConfigError(
                f"partition_assignment_strategy must be one of {STRATEGIES}, "
                f"not {cfg['partition_assignment_strategy']!r}"
            )
        groups.storable_str(cfg["client_id"], "client_id", 255)
        if self._group is not None and not 0 < cfg["heartbeat_interval_ms"] < cfg["session_timeout_ms"]:
            if derived:
                raise InvalidConfigError(
                    f"session_timeout_ms must be at least 2 ms, not {cfg['session_timeout_ms']}: "
                    "members heartbeat several times within it"
                )
            raise InvalidConfigError(
                "heartbeat_interval_ms must be > 0 and below session_timeout_ms "
                f"({cfg['heartbeat_interval_ms']} vs {cfg['session_timeout_ms']}); Kafka advises a third of it, "
                "which is what leaving heartbeat_interval_ms out gives"
            )
        # Group membership (subscribe() with a group_id): created at the first subscribe().
        self._membership: groups.Membership | None = None
        self._seen_gen: int | None = None  # the group generation this member last converged on
        self._joined_sub: tuple[str, ...] = ()
        self._sub_key: tuple[str, ...] = ()
        engine.check_open()
        self._engine = engine
        self._path = engine.path
        self._conn: apsw.Connection = engine.reader()
        self._parts: dict[TopicPartition, _Partition] = {}
        self._subscription: set[str] | None = None
        self._listener: ConsumerRebalanceListener | None = None
        self._manual = False
        self._refresh_at = 0.0
        self._meta_epoch = -1
        self._next_commit = time.monotonic() + self._auto_commit_s
        self._buffer = _Buffer()
        self._rr = 0
        self._skipped: dict[TopicPartition, int] = {}
        self._skips_pending: dict[tuple[int, int], int] = {}  # (topic_id, partition): not yet in the file
        self._closed = False
        engine.track(self)

    # -- assignment ------------------------------------------------------------------------
    def subscribe(self, topics: Iterable[str], listener: ConsumerRebalanceListener | None = None) -> None:
        """Consume these topics; partitions are assigned at the next ``poll()`` (topics may not exist yet)."""
        self._check_open()
        names = {self._valid_topic(t) for t in _iterable(topics, "subscribe()", "topic names")}
        if listener is not None and not all(
            callable(getattr(listener, name, None)) for name in ("on_assigned", "on_revoked")
        ):
            raise InvalidConfigError(
                f"listener must be a ConsumerRebalanceListener (on_assigned and on_revoked methods) or None, "
                f"not {listener!r}"
            )
        if self._manual:
            raise IllegalStateError("subscribe() after assign(): call unsubscribe() first")
        self._subscription = names
        self._sub_key = tuple(sorted(names))
        self._listener = listener
        self._refresh_at = 0.0
        self._buffer.clear()
        if self._group is not None and self._membership is None:
            cfg = self.config
            self._membership = groups.Membership(
                self._engine.write, self._group, cfg["client_id"], cfg["partition_assignment_strategy"],
                cfg["session_timeout_ms"], cfg["heartbeat_interval_ms"], cfg["max_poll_interval_ms"],
            )

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Consume exactly these partitions, outside any group rebalancing."""
        self._check_open()
        if self._subscription is not None:
            raise IllegalStateError("assign() after subscribe(): call unsubscribe() first")
        new: dict[TopicPartition, _Partition] = {}
        for tp in _iterable(partitions, "assign()", "TopicPartition objects"):
            meta = self._existing(tp)
            kept = self._parts.get(tp)
            new[tp] = kept if kept is not None and kept.topic_id == meta.topic_id else _Partition(tp, meta.topic_id)
        self._parts = new
        self._manual = bool(new)
        self._buffer.clear()

    def unsubscribe(self) -> None:
        """Drop the subscription or manual assignment; a group member leaves its group."""
        self._check_open()
        if self._membership is not None and self._membership.member_id is not None:
            self._leave_group()
        elif self._subscription is not None and self._listener is not None and self._parts:
            self._listener.on_revoked(set(self._parts))
        self._subscription = None
        self._listener = None
        self._parts = {}
        self._manual = False
        self._buffer.clear()

    def subscription(self) -> set[str]:
        """The topics subscribed to (empty with assign() or nothing)."""
        self._check_open()
        return set(self._subscription or ())

    def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer reads now (in a group: owns)."""
        self._check_open()
        if self._membership is not None and self._membership.lost is not None:
            return set()  # the heartbeat thread saw the membership end; poll() will say so
        return set(self._parts)

    def group_metadata(self) -> ConsumerGroupMetadata:
        """This member's group id, generation (of its last claim or join) and member id."""
        m = self._membership
        if m is None or m.member_id is None:
            return ConsumerGroupMetadata(self._group, -1, "")
        return ConsumerGroupMetadata(self._group, m.generation, m.member_id)

    # -- the group protocol (see groups.py) ------------------------------------------------
    def _coordinate(self) -> None:
        """Join if needed; at a new group generation, release what the target gives to others and
        claim what it gives to this member and nobody owns. Cheap when nothing changed."""
        m = self._membership
        assert m is not None and self._subscription is not None
        m.polled()
        if m.lost is not None and m.take_lost() is not None:
            self._lose()
        with translated(self._path):
            now = time.monotonic()
            subscription = self._sub_key
            if m.member_id is None:
                m.join(subscription)
                self._joined_sub = subscription
                self._seen_gen = None
                self._refresh_at = now + self._meta_age_s
                self._meta_epoch = self._engine.meta_epoch
            elif subscription != self._joined_sub:
                with self._engine.write() as conn:
                    ok = groups.resubscribe(conn, self._group, m.member_id, subscription)  # type: ignore[arg-type]
                self._joined_sub = subscription
                if not ok:
                    m.mark_lost(m.member_id, "member expired")
                    return self._coordinate()  # drop the partitions now and rejoin
            elif now >= self._refresh_at or self._meta_epoch != self._engine.meta_epoch:
                # Topics created, grown or deleted: recompute the target if it no longer matches.
                self._refresh_at = now + self._meta_age_s
                self._meta_epoch = self._engine.meta_epoch
                previous, target = groups.compute_target(self._conn, self._group)  # type: ignore[arg-type]
                if previous != target:
                    with self._engine.write() as conn:
                        groups.rebalance(conn, self._group, always=False)  # type: ignore[arg-type]
            gen = groups.generation(self._conn, self._group)  # type: ignore[arg-type]
            if gen == self._seen_gen:
                return
            member_id = m.member_id
            view = groups.member_view(self._conn, self._group, member_id)  # type: ignore[arg-type]
            if view is None:  # expired by the others: stop reading its partitions in this very poll
                m.mark_lost(member_id, "member expired")  # type: ignore[arg-type]
                return self._coordinate()
            target, owned = view
            revoked = [tp for tp, part in self._parts.items()
                       if (part.topic_id, tp.partition) not in target or (part.topic_id, tp.partition) not in owned]
            if revoked:
                self._release(member_id, revoked)  # type: ignore[arg-type]
            if any(key not in owned for key in target) and not self._claim(member_id):  # type: ignore[arg-type]
                return self._coordinate()
            self._seen_gen = gen

    def _release(self, member_id: str, revoked: list[TopicPartition]) -> None:
        """Commit (auto-commit), run on_revoked, then give the partitions up: in that order, so the
        next owner starts from what this member committed."""
        if self._auto_commit:
            try:
                self._commit_positions(revoked)
            except (CommitFailedError, UnknownTopicOrPartitionError):
                pass  # already lost, or the topic is gone: nothing to commit for
        if self._listener is not None:
            self._listener.on_revoked(set(revoked))
        keys = [(self._parts[tp].topic_id, tp.partition) for tp in revoked]
        with self._engine.write() as conn:
            groups.release(conn, self._group, member_id, keys)  # type: ignore[arg-type]
        for tp in revoked:
            del self._parts[tp]
        self._buffer.clear()

    def _claim(self, member_id: str) -> bool:
        """Claim the free partitions of this member's target; False if it is no longer a member."""
        m = self._membership
        assert m is not None
        with self._engine.write() as conn:
            got = groups.claim(conn, self._group, member_id)  # type: ignore[arg-type]
        if got is None:
            m.mark_lost(member_id, "member expired")
            return False
        gen, claimed = got
        if not claimed:
            return True
        m.generation = gen
        added = set()
        for (topic_id, p), name in claimed.items():
            tp = TopicPartition(name, p)
            self._parts[tp] = _Partition(tp, topic_id, gen)  # position: from the committed offset
            added.add(tp)
        self._parts = dict(sorted(self._parts.items()))
        self._buffer.clear()
        if self._listener is not None:
            self._listener.on_assigned(added)
        return True

    def _lose(self) -> None:
        """The membership ended behind this consumer's back: drop its partitions, tell the listener."""
        lost = set(self._parts)
        self._parts = {}
        self._buffer.clear()
        self._seen_gen = None
        if lost and self._listener is not None:
            # A duck-typed listener without on_lost gets on_revoked, as the base class does.
            getattr(self._listener, "on_lost", self._listener.on_revoked)(lost)

    def _leave_group(self) -> None:
        """Commit (auto-commit), on_revoked, then leave at once so the partitions move now."""
        m = self._membership
        assert m is not None
        try:
            if m.take_lost() is not None:
                self._lose()
            elif self._parts:
                if self._auto_commit and not self._engine.closed:
                    try:
                        self._commit_positions()
                    except (CommitFailedError, UnknownTopicOrPartitionError):
                        pass
                if self._listener is not None:
                    self._listener.on_revoked(set(self._parts))
        finally:
            self._parts = {}
            self._seen_gen = None
            if not self._engine.closed:
                m.leave()

    def _rebind(self) -> bool:
        """assign(): partitions whose topic was deleted and created again move to the new topic
        (their position resolves anew, as Kafka resumes there); True if any moved."""
        moved = False
        with translated(self._path):
            for tp, part in list(self._parts.items()):
                meta = topics.lookup(self._conn, tp.topic)
                if meta is not None and meta.topic_id != part.topic_id and tp.partition < meta.partitions:
                    fresh = _Partition(tp, meta.topic_id)
                    fresh.paused = part.paused
                    self._parts[tp] = fresh
                    moved = True
        if moved:
            self._buffer.clear()
        return moved

    def _refresh(self, force: bool = False) -> None:
        """Bring a subscription's partitions up to date with the topics table."""
        if self._subscription is None:
            return
        now = time.monotonic()
        if not force and now < self._refresh_at and self._meta_epoch == self._engine.meta_epoch:
            return
        self._meta_epoch = self._engine.meta_epoch
        self._refresh_at = now + self._meta_age_s
        wanted: dict[TopicPartition, int] = {}
        with translated(self._path):
            for name in self._subscription:
                meta = topics.lookup(self._conn, name)
                if meta is not None:
                    for p in range(meta.partitions):
                        wanted[TopicPartition(name, p)] = meta.topic_id
        current = {tp: part.topic_id for tp, part in self._parts.items()}
        if wanted == current:
            return
        revoked = {tp for tp, tid in current.items() if wanted.get(tp) != tid}
        added = {tp for tp, tid in wanted.items() if current.get(tp) != tid}
        if revoked and self._listener is not None:
            self._listener.on_revoked(revoked)
        self._parts = {
            tp: (self._parts[tp] if tp not in added else _Partition(tp, tid)) for tp, tid in sorted(wanted.items())
        }
        self._buffer.clear()
        if added and self._listener is not None:
            self._listener.on_assigned(added)

    # -- positions -------------------------------------------------------------------------
    def _part(self, tp: TopicPartition) -> _Partition:
        # Check the fields before the dict lookup: an unhashable topic or partition would raise TypeError.
        if not isinstance(tp, TopicPartition) or not isinstance(tp.topic, str) or type(tp.partition) is not int:
            raise InvalidConfigError(f"expected a sqlog.TopicPartition(topic: str, partition: int), not {tp!r}")
        part = self._parts.get(tp)
        if part is None:
            raise IllegalStateError(f"{tp} is not assigned to this consumer")
        return part

    def _bounds(self, part: _Partition) -> tuple[int, int]:
        return partitions.bounds(self._conn, part.topic_id, part.tp.partition, part.name)

    def _reset_position(self, part: _Partition, offset: int | None, start: int, end: int) -> int:
        if self._reset in ("earliest", "latest"):
            new = start if self._reset == "earliest" else end
            if offset is not None and offset < new:
                self._skip(part, offset, new, start)
            return new
        if offset is None:
            raise OffsetOutOfRange(
                f"{part.tp}: no committed offset and auto_offset_reset='none'; seek() to a position first"
            )
        raise OffsetOutOfRange(
            f"{part.tp}: offset {offset} is outside the log [{start}, {end}] and auto_offset_reset='none'; "
            "seek() to a valid offset"
        )

    def _skip(self, part: _Partition, offset: int, new: int, start: int) -> None:
        """auto_offset_reset jumped from ``offset`` to ``new``: say so on the ``sqlog`` logger and count it."""
        n = new - offset
        why = "retention removed them" if new == start else "auto_offset_reset='latest'"
        logger.warning(
            "%s: offset %d is below the log start offset %d; auto_offset_reset=%r moves to %d, "
            "skipping %d record(s), offsets %d to %d (%s)%s",
            f"{part.tp.topic}-{part.tp.partition}", offset, start, self._reset, new, n, offset, new - 1, why,
            f" [group {self._group!r}]" if self._group else "",
        )
        self._skipped[part.tp] = self._skipped.get(part.tp, 0) + n
        if self._group is not None:
            key = (part.topic_id, part.tp.partition)
            self._skips_pending[key] = self._skips_pending.get(key, 0) + n

    def _store_skips(self) -> None:
        """Add the skips counted since the last store to the group's counts (describe_group);
        kept for the next try if the write fails."""
        pending, self._skips_pending = self._skips_pending, {}
        try:
            with self._engine.write() as conn:
                groups.add_skipped(conn, self._group, [(t, p, n) for (t, p), n in pending.items()])  # type: ignore[arg-type]
        except Exception:
            for key, n in pending.items():
                self._skips_pending[key] = self._skips_pending.get(key, 0) + n
            raise

    def skipped_records(self) -> dict[TopicPartition, int]:
        """Per partition, how many records this consumer jumped over because ``auto_offset_reset``
        moved a position or committed offset that had fallen below the log start (each jump is
        also a warning on the ``sqlog`` logger). Partitions with no skip are left out."""
        self._check_open()
        return dict(self._skipped)

    def _resolve(self, part: _Partition) -> int:
        if part.position is None:
            start, end = self._bounds(part)
            committed = groups.fetch(self._conn, self._group, part.topic_id, part.tp.partition) if self._group else None
            if committed is not None and start <= committed[0] <= end:
                part.position = committed[0]
            else:
                part.position = self._reset_position(part, None if committed is None else committed[0], start, end)
        return part.position

    def position(self, tp: TopicPartition) -> int:
        """The offset of the next record this consumer will read from ``tp``."""
        self._check_open()
        with translated(self._path):
            try:
                position = self._resolve(self._part(tp))
            except UnknownTopicOrPartitionError:
                if not self._rebind():
                    raise
                position = self._resolve(self._part(tp))
        if self._skips_pending:
            self._store_skips()
        return position

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` at the next poll (checked against the log then)."""
        self._check_open()
        check_offset(offset, "offset")
        self._part(tp).position = offset
        self._buffer.clear()

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        """Move to the log start offset of each partition (all assigned ones if none given)."""
        self._seek_bound(partitions, 0)

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        """Move to the high watermark of each partition (all assigned ones if none given)."""
        self._seek_bound(partitions, 1)

    def _seek_bound(self, partitions: tuple[TopicPartition, ...], which: int) -> None:
        self._check_open()
        with translated(self._path):
            for tp in partitions or tuple(self._parts):
                part = self._part(tp)
                try:
                    bound = self._bounds(part)[which]
                except UnknownTopicOrPartitionError:
                    if not self._rebind():
                        raise
                    part = self._part(tp)
                    bound = self._bounds(part)[which]
                part.position = bound
        self._buffer.clear()

    def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The log start offset of each partition (the first offset still stored)."""
        return {tp: self._any_bounds(tp)[0] for tp in _iterable(partitions, "beginning_offsets()", "TopicPartitions")}

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The high watermark of each partition (the offset the next record will get)."""
        return {tp: self._any_bounds(tp)[1] for tp in _iterable(partitions, "end_offsets()", "TopicPartitions")}

    def _any_bounds(self, tp: TopicPartition) -> tuple[int, int]:
        self._check_open()
        meta = self._existing(tp)  # first: it checks the fields the dict lookup hashes
        part = self._parts.get(tp)
        if part is not None and part.topic_id != meta.topic_id:
            self._rebind()
            part = self._parts.get(tp)
        part = part or _Partition(tp, meta.topic_id)
        with translated(self._path):
            return self._bounds(part)

    def offsets_for_times(
        self, timestamps: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """For each partition, the earliest stored offset whose timestamp is >= the given one."""
        self._check_open()
        if not isinstance(timestamps, Mapping):
            raise InvalidConfigError("offsets_for_times() takes a dict {TopicPartition: timestamp_ms}")
        out: dict[TopicPartition, OffsetAndTimestamp | None] = {}
        for tp, ts in timestamps.items():
            check_offset(ts, f"timestamp for {tp!r}")
            meta = self._existing(tp)
            with translated(self._path):
                out[tp] = self._offset_for_time(meta.topic_id, tp.partition, ts)
        return out

    def _offset_for_time(self, topic_id: int, partition: int, ts: int) -> OffsetAndTimestamp | None:
        hit = partitions.offset_for_time(self._conn, topic_id, partition, ts)
        return None if hit is None else OffsetAndTimestamp(*hit)

    def pause(self, *partitions: TopicPartition) -> None:
        """Stop returning records from these partitions until ``resume()``."""
        self._check_open()
        for tp in partitions:
            self._part(tp).paused = True
        self._buffer.clear()

    def resume(self, *partitions: TopicPartition) -> None:
        """Return records from these partitions again."""
        self._check_open()
        for tp in partitions:
            self._part(tp).paused = False

    def paused(self) -> set[TopicPartition]:
        """The partitions paused now."""
        self._check_open()
        return {tp for tp, part in self._parts.items() if part.paused}

    # -- fetching --------------------------------------------------------------------------
    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> list[Record]:
        """Return the next records (at most ``max_records``), waiting up to ``timeout_ms`` for some."""
        self._check_open()
        deadline, limit = poll_deadline(timeout_ms, max_records, self._max_records)
        self._buffer.clear()
        return self._poll(deadline, limit, advance=True)

    def _poll(self, deadline: float, limit: int, advance: bool) -> list[Any]:
        if self._subscription is None and not self._manual:
            raise IllegalStateError("poll() before subscribe() or assign()")
        grouped = self._membership is not None and self._subscription is not None
        if grouped:
            self._coordinate()
        if self._auto_commit and time.monotonic() >= self._next_commit:
            try:
                self._commit_positions()
            except CommitFailedError:
                pass  # as in Kafka, a failed auto-commit is not the caller's error; the next poll rejoins

        def attempt(first: bool) -> list[Record]:
            if grouped:
                if not first:
                    self._coordinate()
            else:
                self._refresh()
            records = self._fetch(limit, advance)
            if grouped and self._membership.lost is not None:  # type: ignore[union-attr]
                return RETRY  # lost meanwhile: these partitions may be another's now; rejoin first
            return records

        # Nothing new: sleep until this process commits, checking every few ms for others.
        records = read_blocking(self._engine, self._conn, deadline, attempt, lambda: self._wake_early(grouped),
                                lambda: self._refresh_at if self._subscription is not None else None)
        if self._skips_pending:
            try:
                self._store_skips()
            except SqlogError:
                pass  # never lose the records read (locked, disk full...): the count goes with the next poll
        return records

    def _wake_early(self, grouped: bool) -> bool:
        """Stop a blocked poll's wait: closed meanwhile (raises), subscribed topics due for a look,
        or the group membership lost (a member blocked in poll() counts as polling)."""
        self._check_open()
        if self._subscription is not None and time.monotonic() >= self._refresh_at:
            return True
        if grouped:
            self._membership.polled()  # type: ignore[union-attr]
            return self._membership.lost is not None  # type: ignore[union-attr]
        return False

    def _fetch(self, limit: int, advance: bool) -> list[Any]:
        """Read up to ``limit`` records from the unpaused partitions, round robin. ``advance``:
        return the records and move the positions past them; else return them as runs for
        `_Buffer` ((partition, records) each, the records `_Rows` where they could be read
        column-wise) and leave the positions."""
        parts = [p for p in self._parts.values() if not p.paused]
        if not parts:
            return []
        n = len(parts)
        start = self._rr % n
        self._rr += 1
        out: list[Any] = []  # Records, or runs
        count = 0
        moved: list[tuple[_Partition, int]] = []
        kd, vd = self._key_de, self._value_de
        for i in range(n):
            part = parts[(start + i) % n]
            pos = self._resolve(part)
            try:
                pos, columns = partitions.read(
                    self._conn, part.select, part.topic_id, part.tp.partition, pos, limit - count,
                    partial(self._reset_position, part), part.name,
                )
            except apsw.SQLError:  # the partition table went away: the topic was deleted
                if self._membership is not None and self._subscription is not None:
                    self._refresh_at = 0.0  # the group rebalances at the next coordination
                    self._seen_gen = None
                    return []
                self._refresh(force=True)
                if self._manual:
                    if self._rebind():  # created again meanwhile: read the new topic, as Kafka does
                        return self._fetch(limit, advance)
                    raise UnknownTopicOrPartitionError(
                        f"{part.tp} no longer exists (topic deleted?); poll() reads it again once it is created"
                    ) from None
                return []
            part.position = pos  # moved if retention passed it (auto_offset_reset)
            if not columns:
                continue
            offsets, stamps, keys, values, headers, checks = columns
            damaged = self._check_crcs and mismatches(keys, values, headers, checks)
            if damaged:
                good = damaged[0]
                if not count and not good:
                    raise _corrupt(part.tp, offsets[0])
                # Return what came before the damaged record; the next poll starts at it and raises.
                offsets, stamps, keys, values, headers = (c[:good] for c in (offsets, stamps, keys, values, headers))
                if not good:
                    break
            topic, p = part.tp.topic, part.tp.partition
            try:
                kcol, vcol = deserialize_column(kd, keys), deserialize_column(vd, values)
            except Exception:
                # A record failed: go one by one to find it, returning what came before it; the
                # next poll starts at it and raises.
                one: list[Record] = []
                try:
                    self._deserialize(topic, p, zip(offsets, stamps, keys, values, headers), kd, vd, one)
                except SerializationError:
                    if not count and not one:
                        raise
                    if one:
                        moved.append((part, one[-1].offset + 1))
                        count += len(one)
                        out += one if advance else [(part.tp, one)]
                    break
                count += len(one)
                out += one if advance else [(part.tp, one)]
            else:
                if advance:
                    # Column-wise, all in C: zip() lays out each record's fields and tuple.__new__
                    # makes the Record of them, with no Python code per record.
                    out.extend(map(_new_tuple, repeat(Record), zip(
                        repeat(topic), repeat(p), offsets, stamps, kcol, vcol,
                        map(decode_headers, headers) if any(headers) else repeat(()),
                    )))
                else:
                    hcol = tuple(map(decode_headers, headers)) if any(headers) else ((),) * len(offsets)
                    out.append((part.tp, _Rows(topic, p, (offsets, stamps, kcol, vcol, hcol))))
                count += len(offsets)
            moved.append((part, offsets[-1] + 1))
            if damaged or count >= limit:
                break
        if advance:
            for part, position in moved:
                part.position = position
        return out

    # -- for front doors that wait without blocking a thread (sqlog.aio) ---------------------
    def fetch(self, max_records: int | None = None) -> int:
        """One poll that neither waits nor hands out: with the buffer empty, read up to
        ``max_records`` into it (group coordination and auto-commit run as in ``poll()``);
        positions move only as `take` hands records out, so dropping the buffer loses nothing.
        Returns how many records are buffered."""
        self._check_open()
        _, limit = poll_deadline(0, max_records, self._max_records)
        if not self._buffer:
            self._fill(0.0, limit)
        return len(self._buffer)

    def _fill(self, deadline: float, limit: int) -> None:
        self._buffer.fill(self._poll(deadline, limit, advance=False))

    def take(self, max_records: int) -> list[Record]:
        """Hand out up to ``max_records`` buffered records in order, moving each partition's
        position past the last one handed out. No I/O: cheap enough for an event loop."""
        runs = self._hand_out(max_records)
        if len(runs) == 1:
            return runs[0][1]
        return list(chain.from_iterable(records for _, records in runs))

    def take_grouped(self, max_records: int) -> dict[TopicPartition, list[Record]]:
        """As `take`, by partition (aiokafka's ``getmany()`` shape): slices of the buffer, with
        no work per record."""
        out: dict[TopicPartition, list[Record]] = {}
        for tp, records in self._hand_out(max_records):
            if tp in out:
                out[tp] = out[tp] + records
            else:
                out[tp] = records
        return out

    def _hand_out(self, max_records: int) -> list[tuple[TopicPartition, list[Record]]]:
        runs = self._buffer.take(max_records)
        parts = self._parts
        for tp, records in runs:
            part = parts.get(tp)
            if part is not None:
                part.position = records[-1].offset + 1
        return runs

    @staticmethod
    def _deserialize(topic: str, p: int, rows: Iterable[tuple[Any, ...]], kd: Any, vd: Any, out: list[Record]) -> None:
        for o, ts, k, v, h in rows:
            try:
                key, value = deserialize(kd, vd, k, v)
            except Exception as exc:
                raise deserialize_error(
                    topic, p, o, exc, f"seek(TopicPartition({topic!r}, {p}), {o + 1}) to skip it"
                ) from exc
            out.append(Record(topic, p, o, ts, key, value, decode_headers(h) if h else ()))

    def __iter__(self) -> Iterator[Record]:
        return self

    def __next__(self) -> Record:
        """The next record, blocking; stops after ``consumer_timeout_ms`` without one (if set)."""
        self._check_open()
        next_from(self._buffer, self._iter_timeout_ms, lambda deadline: self._fill(deadline, self._max_records))
        # Iteration advances one record at a time so a commit never covers unread records.
        return self._hand_out(1)[0][1][0]

    # -- commits ---------------------------------------------------------------------------
    def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata | int] | None = None) -> None:
        """Store, per partition, the offset of the next record to read (default: current positions)."""
        self._check_open()
        if self._group is None:
            raise IllegalStateError("commit() needs a group_id; create the consumer with group_id=...")
        if offsets is None:
            # Positions as they are, checked as commit({tp: offset}) checks them: one sought past
            # the high watermark raises CommitFailedError here too, never a silent no-op.
            self._commit_positions(explicit=True)
            return
        if not isinstance(offsets, Mapping):
            raise InvalidConfigError("commit() takes a dict {TopicPartition: offset or OffsetAndMetadata}")
        rows = []
        for tp, om in offsets.items():
            om = groups.offset_and_metadata(om, f"commit offset for {tp!r}", f"commit metadata for {tp!r}")
            meta = self._existing(tp)
            rows.append((tp, meta.topic_id, om.offset, om.metadata))
        with self._engine.write() as conn:
            groups.commit(conn, self._group, rows, self._fence())

    def _commit_positions(self, only: Iterable[TopicPartition] | None = None, explicit: bool = False) -> None:
        parts = self._parts if only is None else {tp: self._parts[tp] for tp in only}
        rows = [(tp, part.topic_id, part.position, "") for tp, part in parts.items() if part.position is not None]
        if only is None:
            self._next_commit = time.monotonic() + self._auto_commit_s
        if rows:
            # Auto-commit leaves out a position sought past the end until a fetch has validated it.
            with self._engine.write() as conn:
                groups.commit(conn, self._group, rows, self._fence(), skip_beyond_end=not explicit)  # type: ignore[arg-type]

    def _fence(self) -> groups.Fence:
        """Commits of a group member are fenced by ownership and claim generation. A consumer outside
        the group (assign(), or subscribed but not joined yet: Kafka's generation -1) may commit only
        while the group has no live members, as Kafka's broker rules."""
        m = self._membership
        if self._subscription is None or m is None:
            return groups.Fence(None)
        if m.lost is not None:
            raise CommitFailedError(
                f"this consumer is not a member of group {self._group!r} any more ({m.lost}); its partitions "
                "may belong to others now and the commit was not applied; poll() to rejoin"
            )
        if m.member_id is None:
            return groups.Fence(None)
        return groups.Fence(m.member_id, {(p.topic_id, p.tp.partition): p.generation for p in self._parts.values()})

    def committed(self, tp: TopicPartition, metadata: bool = False) -> int | OffsetAndMetadata | None:
        """The group's committed offset for ``tp``, or None; with ``metadata=True`` (kafka-python's
        shape) an `OffsetAndMetadata` with the metadata string committed with it."""
        self._check_open()
        if self._group is None:
            raise IllegalStateError("committed() needs a group_id")
        check_bool("metadata", metadata)
        meta = self._existing(tp)
        with translated(self._path):
            found = groups.fetch(self._conn, self._group, meta.topic_id, tp.partition)
        if found is None:
            return None
        return OffsetAndMetadata(found[0], found[1]) if metadata else found[0]

    # -- lifecycle -------------------------------------------------------------------------
    def _meta(self, topic: str) -> topics.TopicMeta:
        self._valid_topic(topic)
        with translated(self._path):
            return topics.require(self._conn, topic)

    def _existing(self, tp: object) -> topics.TopicMeta:
        """Check ``tp`` is a TopicPartition of an existing topic and partition; its topic's metadata."""
        if not isinstance(tp, TopicPartition):
            raise InvalidConfigError(f"expected a sqlog.TopicPartition, not {tp!r}")
        meta = self._meta(tp.topic)
        if type(tp.partition) is not int or not 0 <= tp.partition < meta.partitions:
            raise UnknownTopicOrPartitionError(
                f"topic {tp.topic!r} has partitions 0..{meta.partitions - 1}, not {tp.partition!r}"
            )
        return meta

    @staticmethod
    def _valid_topic(topic: object) -> str:
        return topics.validate_name(topic)

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError("the consumer is closed")
        if self._engine.closed:
            raise LogClosedError("the log this consumer reads is closed")

    def close(self, autocommit: bool = True) -> None:
        """Commit positions (with auto commit on), then release the connection; idempotent."""
        if self._closed:
            return
        try:
            if self._membership is not None:
                auto, self._auto_commit = self._auto_commit, self._auto_commit and autocommit
                try:
                    self._leave_group()
                finally:
                    self._auto_commit = auto
                    self._membership.close()
            else:
                if autocommit and self._auto_commit and not self._engine.closed:
                    self._commit_positions()
                if self._listener is not None and self._parts:
                    self._listener.on_revoked(set(self._parts))
        finally:
            self._closed = True
            self._engine.untrack(self)
            self._conn.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
