"""Consumer groups without a broker: committed offsets, membership, assignment and ownership.

Everything lives in the log file, so threads and processes on this machine agree:

- ``group_members``: one row per live member, with its subscription and last heartbeat. A
  background thread per member heartbeats every ``heartbeat_interval_ms``; anyone who sees a
  heartbeat older than the member's ``session_timeout_ms`` deletes the member (and, on this host,
  a member whose process is gone: pid plus start time, a speed-up on top of the timeout; that
  decision is `liveness.is_dead`). Heartbeat ages are measured on `clock.monotonic_ms`, never the
  wall clock, so a clock step neither expires live members nor keeps dead ones.
- ``group_targets``: the target assignment, recomputed deterministically (`assignors.assign`:
  range, roundrobin or sticky) in the same transaction that changes the membership, so every
  member reads one answer.
- ``partition_owners``: who owns each partition now. A member claims a partition of its target
  only where no row exists, and releases (deletes) a row only at its own ``poll()`` after its
  ``on_revoked`` ran, or by leaving. The primary key keeps a partition from being owned twice.
- ``consumer_groups.generation``: bumped by every change of the three tables above except
  heartbeats, so a member's ``poll()`` checks for work with one cheap ``SELECT``.

Commits are fenced inside their own write transaction: each partition's owner row must be this
member's, claimed at the generation the member knows (`check_fence`).

This module owns group ids, committed offsets (store, fetch, commit, alter, reset), the
membership tables and their protocol (join, heartbeat, expire, rebalance, claim, release, leave),
the `Membership` heartbeat thread, fencing, and describe/delete. Who should own what is
`assignors`; whether a member's process is alive is `liveness`.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import apsw
import attrs

from . import clock, liveness, topics
from .assignors import Key, assign
from .config import check_offset
from .errors import (
    CommitFailedError,
    GroupIdNotFoundError,
    GroupNotEmptyError,
    InconsistentGroupProtocolError,
    InvalidConfigError,
    LogClosedError,
    SqlogError,
    UnknownTopicOrPartitionError,
)
from .partitions import bounds as read_bounds
from .partitions import offset_for_time
from .storage import clock_now
from .types import GroupDescription, GroupPartitionDescription, MemberDescription, OffsetAndMetadata, TopicPartition


# -- group ids -----------------------------------------------------------------------------
def storable_str(value: object, what: str, max_len: int | None = None) -> str:
    """``value`` if it is a str SQLite can store (UTF-8 encodable: no lone surrogates) and, with
    ``max_len``, of 1 to ``max_len`` characters; else InvalidConfigError naming ``what``."""
    if isinstance(value, str) and (max_len is None or 1 <= len(value) <= max_len):
        try:
            value.encode()
        except UnicodeEncodeError:
            pass
        else:
            return value
    size = "" if max_len is None else f" of 1 to {max_len} characters"
    raise InvalidConfigError(f"{what} must be a str{size} (encodable as UTF-8), not {value!r}")


def offset_and_metadata(value: object, what: str, metadata_what: str) -> OffsetAndMetadata:
    """A commit's value as `OffsetAndMetadata`: an int offset (the next record to read) or one
    already; the offset in SQLite's range and the metadata storable. ``what`` and
    ``metadata_what`` name them in the InvalidConfigError."""
    if isinstance(value, int) and type(value) is not bool:
        value = OffsetAndMetadata(value)
    if not isinstance(value, OffsetAndMetadata):
        raise InvalidConfigError(f"{what} must be an int >= 0 or OffsetAndMetadata, not {value!r}")
    check_offset(value.offset, what)
    storable_str(value.metadata, metadata_what)
    return value


def validate_group_id(group_id: object) -> str:
    return storable_str(group_id, "group_id", 255)


# -- committed offsets ---------------------------------------------------------------------
def store(conn: apsw.Connection, group_id: str, offsets: Iterable[tuple[int, int, int, str]]) -> None:
    """Write ``(topic_id, partition, offset, metadata)`` rows; run inside a write transaction."""
    now = clock.wall_ms()  # commit_ms is a Kafka timestamp
    conn.executemany(
        "INSERT INTO committed_offsets(group_id, topic_id, partition, offset, metadata, commit_ms)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(group_id, topic_id, partition) DO UPDATE SET"
        " offset = excluded.offset, metadata = excluded.metadata, commit_ms = excluded.commit_ms",
        [(group_id, t, p, o, m, now) for t, p, o, m in offsets],
    )


def add_skipped(conn: apsw.Connection, group_id: str, skipped: Iterable[tuple[int, int, int]]) -> None:
    """Add ``(topic_id, partition, records)`` to the group's skipped counts (partitions it has
    committed on); run inside a write transaction."""
    conn.executemany(
        "UPDATE committed_offsets SET skipped = skipped + ? WHERE group_id = ? AND topic_id = ? AND partition = ?",
        [(n, group_id, t, p) for t, p, n in skipped],
    )


def fetch(conn: apsw.Connection, group_id: str, topic_id: int, partition: int) -> tuple[int, str] | None:
    """The committed ``(offset, metadata)`` of one partition, or None."""
    row = conn.execute(
        "SELECT offset, metadata FROM committed_offsets WHERE group_id = ? AND topic_id = ? AND partition = ?",
        (group_id, topic_id, partition),
    ).fetchone()
    return (row[0], row[1]) if row else None


def committed(conn: apsw.Connection, group_id: str) -> list[tuple[str, int, int, str]]:
    """Every committed ``(topic name, partition, offset, metadata)`` of a group, sorted."""
    return list(conn.execute(
        "SELECT t.name, c.partition, c.offset, c.metadata FROM committed_offsets c JOIN topics t USING (topic_id)"
        " WHERE c.group_id = ? ORDER BY t.name, c.partition",
        (group_id,),
    ))


# -- membership, inside write transactions -------------------------------------------------
@attrs.frozen
class MemberInfo:
    """What a member writes about itself when it joins (internal)."""

    member_id: str
    client_id: str
    subscription: tuple[str, ...]
    strategy: str
    session_timeout_ms: int
    pid: int = attrs.field(factory=os.getpid)
    host: str = attrs.field(factory=lambda: liveness.HOST)
    pid_namespace: str = attrs.field(factory=lambda: liveness.PID_NAMESPACE)
    pid_start_time: int | None = attrs.field(factory=lambda: liveness.start_time(os.getpid()))


def generation(conn: apsw.Connection, group_id: str) -> int:
    """The group's generation (-1 if the group does not exist): one primary-key lookup."""
    row = conn.execute("SELECT generation FROM consumer_groups WHERE group_id = ?", (group_id,)).fetchone()
    return -1 if row is None else row[0]


def _bump(conn: apsw.Connection, group_id: str) -> int:
    row = conn.execute(
        "UPDATE consumer_groups SET generation = generation + 1 WHERE group_id = ? RETURNING generation",
        (group_id,),
    ).fetchone()
    return -1 if row is None else row[0]


_MEMBER_LIVENESS = (
    "SELECT member_id, pid, pid_namespace, pid_start_time, heartbeat_ms, session_timeout_ms"
    " FROM group_members WHERE group_id = ?"
)


def _split_live(conn: apsw.Connection, sql: str, group_id: str, now: int) -> tuple[list[str], list[str]]:
    """``(live, dead)`` ids, each sorted, of the ``(member_id, pid, pid_namespace, pid_start_time,
    heartbeat_ms, timeout_ms)`` rows ``sql`` selects for the group, as of ``now``."""
    live: list[str] = []
    dead: list[str] = []
    rows: list[Any] = conn.execute(sql, (group_id,)).fetchall()
    for member_id, pid, namespace, start, beat, timeout_ms in rows:
        (dead if liveness.is_dead(pid, namespace, start, beat, timeout_ms, now) else live).append(member_id)
    return sorted(live), sorted(dead)


def _dead_members(conn: apsw.Connection, group_id: str, now: int) -> tuple[list[str], list[str]]:
    """``(live, dead)`` member ids, each sorted, as of ``now`` (`clock.monotonic_ms`)."""
    return _split_live(conn, _MEMBER_LIVENESS, group_id, now)


# A Kafka-protocol member waiting in JoinGroup lives for its rebalance timeout (it cannot heartbeat
# meanwhile), any other for its session timeout; the pid is the serving process's.
_PROTOCOL_MEMBER_LIVENESS = (
    "SELECT member_id, pid, pid_namespace, pid_start_time, heartbeat_ms, CASE WHEN join_id IS NULL"
    " THEN session_timeout_ms ELSE max(session_timeout_ms, rebalance_timeout_ms) END"
    " FROM protocol_members WHERE group_id = ?"
)


def protocol_members(conn: apsw.Connection, group_id: str, now: int | None = None) -> tuple[list[str], list[str]]:
    """``(live, dead)`` ids, each sorted, of the group's Kafka-protocol members (the clients of
    `sqlog serve`, whose group state is server/coordinator.py's) as of ``now`` (default now).
    A member does not outlive the process serving it."""
    return _split_live(conn, _PROTOCOL_MEMBER_LIVENESS, group_id, clock.monotonic_ms() if now is None else now)


def live_member_ids(conn: apsw.Connection, group_id: str, now: int | None = None) -> list[str]:
    """The live members' ids, sorted, as of ``now`` (`clock.monotonic_ms`, default now)."""
    return _dead_members(conn, group_id, clock.monotonic_ms() if now is None else now)[0]


def _remove_member(conn: apsw.Connection, group_id: str, member_id: str) -> bool:
    conn.execute("DELETE FROM partition_owners WHERE group_id = ? AND member_id = ?", (group_id, member_id))
    conn.execute("DELETE FROM group_members WHERE group_id = ? AND member_id = ?", (group_id, member_id))
    return conn.changes() > 0


def expire(conn: apsw.Connection, group_id: str, now: int) -> list[str]:
    """Delete members past their session timeout as of ``now`` (`clock.monotonic_ms`), or whose
    process on this host is gone."""
    dead = _dead_members(conn, group_id, now)[1]
    for member_id in dead:
        _remove_member(conn, group_id, member_id)
    return dead


def _group_topics(conn: apsw.Connection, subscriptions: Iterable[Collection[str]]) -> dict[str, tuple[int, int]]:
    out = {}
    for name in sorted(set().union(*subscriptions)):
        row = conn.execute(
            "SELECT t.topic_id, (SELECT count(*) FROM partitions p WHERE p.topic_id = t.topic_id)"
            " FROM topics t WHERE t.name = ?",
            (name,),
        ).fetchone()
        if row is not None:
            out[name] = (row[0], row[1])
    return out


def compute_target(conn: apsw.Connection, group_id: str) -> tuple[dict[Key, str], dict[Key, str]]:
    """``(stored target, target computed from the members and topics now)``; reads only."""
    row = conn.execute("SELECT strategy FROM consumer_groups WHERE group_id = ?", (group_id,)).fetchone()
    previous = {
        (t, p): m for t, p, m in conn.execute(
            "SELECT topic_id, partition, member_id FROM group_targets WHERE group_id = ?", (group_id,)
        )
    }
    if row is None:
        return previous, {}
    members = {
        m: frozenset(s.split(",")) if s else frozenset()
        for m, s in conn.execute("SELECT member_id, subscription FROM group_members WHERE group_id = ?", (group_id,))
    }
    return previous, assign(row[0], members, _group_topics(conn, members.values()), previous)


def rebalance(conn: apsw.Connection, group_id: str, always: bool = True) -> int:
    """Store the target computed from the current members and topics; bump the generation.

    With ``always=False`` nothing is written (and -1 returned) if the target is unchanged.
    """
    previous, target = compute_target(conn, group_id)
    if target != previous:
        conn.execute("DELETE FROM group_targets WHERE group_id = ?", (group_id,))
        conn.executemany(
            "INSERT INTO group_targets(group_id, topic_id, partition, member_id) VALUES (?, ?, ?, ?)",
            [(group_id, t, p, m) for (t, p), m in sorted(target.items())],
        )
    elif not always:
        return -1
    return _bump(conn, group_id)


def join(conn: apsw.Connection, group_id: str, info: MemberInfo) -> int:
    """Add a member (expiring dead ones first) and recompute the target; returns the generation."""
    now = clock.monotonic_ms()
    expire(conn, group_id, now)
    kafka_members = protocol_members(conn, group_id, now)[0]
    if kafka_members:
        raise InconsistentGroupProtocolError(
            f"group {group_id!r} has {len(kafka_members)} live Kafka-protocol member(s) (clients of sqlog serve, "
            f"e.g. {kafka_members[0]!r}); a sqlog consumer cannot join the same group: use another group_id, "
            "or join once they have left"
        )
    others = {r[0] for r in conn.execute("SELECT strategy FROM group_members WHERE group_id = ?", (group_id,))}
    if others and others != {info.strategy}:
        raise InconsistentGroupProtocolError(
            f"group {group_id!r} uses partition_assignment_strategy {min(others)!r}; "
            f"join it with the same strategy, not {info.strategy!r}"
        )
    conn.execute(
        "INSERT INTO consumer_groups(group_id, generation, strategy, created_ms) VALUES (?, 0, ?, ?)"
        " ON CONFLICT(group_id) DO UPDATE SET strategy = excluded.strategy",
        (group_id, info.strategy, clock.wall_ms()),
    )
    conn.execute(
        "INSERT INTO group_members(group_id, member_id, client_id, host, pid, pid_namespace, pid_start_time,"
        " subscription, strategy, session_timeout_ms, joined_ms, heartbeat_ms)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (group_id, info.member_id, info.client_id, info.host, info.pid, info.pid_namespace, info.pid_start_time,
         ",".join(info.subscription), info.strategy, info.session_timeout_ms, now, now),
    )
    return rebalance(conn, group_id)


def heartbeat(conn: apsw.Connection, group_id: str, member_id: str, now: int) -> bool:
    """Stamp the member's heartbeat at ``now`` (`clock.monotonic_ms`); False if it is no longer a
    member (expired or left)."""
    conn.execute(
        "UPDATE group_members SET heartbeat_ms = ? WHERE group_id = ? AND member_id = ?", (now, group_id, member_id)
    )
    return conn.changes() > 0


def leave(conn: apsw.Connection, group_id: str, member_id: str) -> None:
    """Delete the member and its ownership rows; the others rebalance at their next poll."""
    if _remove_member(conn, group_id, member_id):
        rebalance(conn, group_id)


def resubscribe(conn: apsw.Connection, group_id: str, member_id: str, subscription: tuple[str, ...]) -> bool:
    conn.execute(
        "UPDATE group_members SET subscription = ? WHERE group_id = ? AND member_id = ?",
        (",".join(subscription), group_id, member_id),
    )
    if not conn.changes():
        return False
    rebalance(conn, group_id)
    return True


def _named(conn: apsw.Connection, sql: str, args: tuple[Any, ...]) -> dict[Key, tuple[str, int]]:
    return {(t, p): (name, g) for t, p, name, g in conn.execute(sql, args)}


def member_view(
    conn: apsw.Connection, group_id: str, member_id: str
) -> tuple[dict[Key, str], dict[Key, int]] | None:
    """``(target {key: topic name}, owned {key: claim generation})`` of a member; None if it is gone."""
    if conn.execute(
        "SELECT 1 FROM group_members WHERE group_id = ? AND member_id = ?", (group_id, member_id)
    ).fetchone() is None:
        return None
    target = _named(
        conn,
        "SELECT g.topic_id, g.partition, t.name, 0 FROM group_targets g JOIN topics t USING (topic_id)"
        " WHERE g.group_id = ? AND g.member_id = ?",
        (group_id, member_id),
    )
    owned = conn.execute(
        "SELECT topic_id, partition, generation FROM partition_owners WHERE group_id = ? AND member_id = ?",
        (group_id, member_id),
    )
    return {k: v[0] for k, v in target.items()}, {(t, p): g for t, p, g in owned}


def claim(conn: apsw.Connection, group_id: str, member_id: str) -> tuple[int, dict[Key, str]] | None:
    """Take every partition of the member's target that nobody owns.

    Returns ``(generation of the claim, {key: topic name})``, or None if the member is gone.
    """
    if conn.execute(
        "SELECT 1 FROM group_members WHERE group_id = ? AND member_id = ?", (group_id, member_id)
    ).fetchone() is None:
        return None
    free = _named(
        conn,
        "SELECT g.topic_id, g.partition, t.name, 0 FROM group_targets g JOIN topics t USING (topic_id)"
        " WHERE g.group_id = ? AND g.member_id = ? AND NOT EXISTS (SELECT 1 FROM partition_owners o"
        " WHERE o.group_id = g.group_id AND o.topic_id = g.topic_id AND o.partition = g.partition)",
        (group_id, member_id),
    )
    if not free:
        return generation(conn, group_id), {}
    gen = _bump(conn, group_id)
    now = clock.wall_ms()
    conn.executemany(
        "INSERT INTO partition_owners(group_id, topic_id, partition, member_id, generation, claimed_ms)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(group_id, t, p, member_id, gen, now) for t, p in sorted(free)],
    )
    return gen, {k: v[0] for k, v in free.items()}


def release(conn: apsw.Connection, group_id: str, member_id: str, keys: Iterable[Key]) -> None:
    """Give up ownership (only rows this member still holds) so the target owner can claim them."""
    conn.executemany(
        "DELETE FROM partition_owners WHERE group_id = ? AND topic_id = ? AND partition = ? AND member_id = ?",
        [(group_id, t, p, member_id) for t, p in keys],
    )
    _bump(conn, group_id)


@attrs.frozen
class Fence:
    """Who commits: a member with the claim generation of each partition it owns, or (member_id
    None) a standalone consumer, which may commit only while the group has no live members."""

    member_id: str | None
    generations: Mapping[Key, int] = attrs.field(factory=dict)


def check_fence(conn: apsw.Connection, group_id: str, fence: Fence, parts: Iterable[tuple[TopicPartition, int]]) -> None:
    """Raise CommitFailedError unless ``fence`` may commit each ``(tp, topic_id)``; in the commit's transaction."""
    if fence.member_id is None:
        if live_member_ids(conn, group_id):
            raise CommitFailedError(
                f"group {group_id!r} has live members: a consumer using assign() cannot commit for it "
                "(as in Kafka); use another group_id, or subscribe() to join the group"
            )
        return
    if conn.execute(
        "SELECT 1 FROM group_members WHERE group_id = ? AND member_id = ?", (group_id, fence.member_id)
    ).fetchone() is None:
        raise CommitFailedError(
            f"member {fence.member_id} is no longer in group {group_id!r} (session timed out, or more than "
            "max_poll_interval_ms between polls); its partitions went to others and the commit was not "
            "applied; poll() to rejoin"
        )
    for tp, topic_id in parts:
        row = conn.execute(
            "SELECT member_id, generation FROM partition_owners WHERE group_id = ? AND topic_id = ? AND partition = ?",
            (group_id, topic_id, tp.partition),
        ).fetchone()
        if row is None or row[0] != fence.member_id or row[1] != fence.generations.get((topic_id, tp.partition)):
            raise CommitFailedError(
                f"cannot commit {tp.topic}-{tp.partition}: this member does not own it (now "
                f"{'unowned' if row is None else 'owned by ' + row[0] + ' since generation ' + str(row[1])}); "
                "the commit was not applied"
            )


def fence_for(conn: apsw.Connection, group_id: str, member_id: str, generation_id: int,
              keys: Iterable[Key]) -> Fence:
    """The fence of a member known by its group metadata (a transaction's offsets): it may commit
    a partition it owns by a claim no newer than ``generation_id``, i.e. one it has held since
    that metadata was taken. ``member_id`` "" (outside the group): a standalone committer."""
    if not member_id:
        return Fence(None)
    owned: dict[Key, int] = {}
    for t, p in keys:
        row = conn.execute(
            "SELECT generation FROM partition_owners WHERE group_id = ? AND topic_id = ? AND partition = ?"
            " AND member_id = ?",
            (group_id, t, p, member_id),
        ).fetchone()
        if row is not None and row[0] <= generation_id:
            owned[(t, p)] = row[0]
    return Fence(member_id, owned)


# -- a member, with its heartbeat thread ---------------------------------------------------
class Membership:
    """One consumer's membership of a group. Its heartbeat thread keeps the member alive, expires
    dead members and leaves the group after ``max_poll_interval_ms`` without a poll; it writes in
    short transactions through ``write`` and never calls user code."""

    def __init__(self, write: Callable[[], AbstractContextManager[apsw.Connection]], group_id: str, client_id: str,
                 strategy: str, session_timeout_ms: int, heartbeat_interval_ms: int,
                 max_poll_interval_ms: int) -> None:
        self._write = write
        self.group_id = group_id
        self.client_id = client_id
        self.strategy = strategy
        self.session_timeout_ms = session_timeout_ms
        self._interval_s = heartbeat_interval_ms / 1000
        self._max_poll_s = max_poll_interval_ms / 1000
        self.member_id: str | None = None
        self.generation = -1
        self.lost: str | None = None  # why the membership ended behind the consumer's back
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_poll = time.monotonic()
        self._pid = os.getpid()

    def polled(self) -> None:
        self._last_poll = time.monotonic()

    def join(self, subscription: tuple[str, ...]) -> None:
        member_id = f"{self.client_id}-{uuid.uuid4()}"
        info = MemberInfo(member_id, self.client_id, subscription, self.strategy, self.session_timeout_ms)
        with self._write() as conn:
            gen = join(conn, self.group_id, info)
        with self._lock:
            self.member_id, self.generation, self.lost = member_id, gen, None
        self._last_poll = time.monotonic()
        if self._thread is None or self._pid != os.getpid():
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._heartbeat_loop, name=f"sqlog-heartbeat-{self.group_id}",
                                            daemon=True)
            self._thread.start()

    def take_lost(self) -> str | None:
        """If the membership ended (expired, or left for a missed poll), forget it and say why."""
        if self.lost is None:
            return None
        with self._lock:
            reason, self.lost = self.lost, None
            if reason is not None:
                self.member_id, self.generation = None, -1
            return reason

    def mark_lost(self, member_id: str, reason: str) -> None:
        with self._lock:
            if self.member_id == member_id and self.lost is None:
                self.lost = reason

    def leave(self) -> None:
        """Leave at once (close, unsubscribe): partitions move without waiting for a timeout."""
        with self._lock:
            member_id, self.member_id, self.generation, self.lost = self.member_id, None, -1, None
        if member_id is not None:
            with self._write() as conn:
                leave(conn, self.group_id, member_id)

    def close(self) -> None:
        self._stop.set()
        try:
            self.leave()
        except LogClosedError:
            pass  # the session expires instead
        finally:
            thread = self._thread
            if thread is not None and thread is not threading.current_thread() and self._pid == os.getpid():
                thread.join(timeout=max(1.0, 2 * self._interval_s))

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            member_id = self.member_id
            if member_id is None or self.lost is not None:
                continue
            try:
                self._beat(member_id)
            except LogClosedError:
                return
            except (SqlogError, apsw.Error):
                continue  # a busy or failing file: try again at the next beat; the session timeout decides

    def _beat(self, member_id: str) -> None:
        if time.monotonic() - self._last_poll > self._max_poll_s:
            # As in Kafka: a member that stopped polling leaves, so its partitions move on.
            with self._write() as conn:
                leave(conn, self.group_id, member_id)
            self.mark_lost(member_id, "more than max_poll_interval_ms between polls")
            return
        with self._write() as conn:
            now = clock.monotonic_ms()  # read under the write lock: no later stamp is in the file
            alive = heartbeat(conn, self.group_id, member_id, now)
            if alive and expire(conn, self.group_id, now):
                rebalance(conn, self.group_id)
        if not alive:
            self.mark_lost(member_id, "session timed out (no heartbeat within session_timeout_ms)")


# -- admin ---------------------------------------------------------------------------------
def list_groups(conn: apsw.Connection) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT group_id FROM consumer_groups UNION SELECT group_id FROM committed_offsets"
        " UNION SELECT group_id FROM protocol_groups ORDER BY 1"
    )]


def _exists(conn: apsw.Connection, group_id: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM consumer_groups WHERE group_id = ?1)"
        " OR EXISTS (SELECT 1 FROM committed_offsets WHERE group_id = ?1)"
        " OR EXISTS (SELECT 1 FROM protocol_groups WHERE group_id = ?1)",
        (group_id,),
    ).fetchone()
    return row is not None and row[0] == 1


def describe(conn: apsw.Connection, group_id: str) -> GroupDescription:
    """Live members (native ones, else the Kafka-protocol members of ``sqlog serve``) with what they
    own and are meant to own; per partition the committed offset, log end offset, lag and owner."""
    validate_group_id(group_id)
    if not _exists(conn, group_id):
        raise GroupIdNotFoundError(f"no consumer group {group_id!r}; log.list_groups() lists them")
    now = clock_now(conn)
    to_wall = clock.wall_offset_ms()  # liveness times are shown as wall-clock ms, now minus their age
    names = dict(conn.execute("SELECT topic_id, name FROM topics"))
    grow = conn.execute("SELECT generation, strategy FROM consumer_groups WHERE group_id = ?", (group_id,)).fetchone()
    live = set(live_member_ids(conn, group_id, now))
    owners = {(t, p): (m, g) for t, p, m, g in conn.execute(
        "SELECT topic_id, partition, member_id, generation FROM partition_owners WHERE group_id = ?", (group_id,)
    ) if m in live}
    targets = {(t, p): m for t, p, m in conn.execute(
        "SELECT topic_id, partition, member_id FROM group_targets WHERE group_id = ?", (group_id,)
    ) if t in names}

    def tps(keys: Iterable[Key]) -> frozenset[TopicPartition]:
        return frozenset(TopicPartition(names[t], p) for t, p in keys if t in names)

    members = tuple(
        MemberDescription(m, client, host, pid, tuple(sub.split(",")) if sub else (),
                          tps(k for k, (o, _) in owners.items() if o == m),
                          tps(k for k, o in targets.items() if o == m), joined + to_wall, beat + to_wall)
        for m, client, host, pid, sub, joined, beat in conn.execute(
            "SELECT member_id, client_id, host, pid, subscription, joined_ms, heartbeat_ms FROM group_members"
            " WHERE group_id = ? ORDER BY member_id", (group_id,)
        ) if m in live
    )
    generation, strategy = grow if grow else (-1, None)
    kafka = None if members else _protocol_view(conn, group_id, now, to_wall, names)
    if kafka is not None:
        state, generation, strategy, members, owners = kafka
        targets = {k: o for k, (o, _) in owners.items()}
    elif not members:
        state = "Empty"
    elif all(m in live and k in owners and owners[k][0] == m for k, m in targets.items()) and all(
        targets.get(k) == o for k, (o, _) in owners.items()
    ):
        state = "Stable"  # every partition of the target owned by its live target member
    else:
        state = "PreparingRebalance"  # a partition waits for a release, a claim or a dead member's expiry
    committed, skipped, metadata = {}, {}, {}
    for t, p, o, n, m in conn.execute(
        "SELECT topic_id, partition, offset, skipped, metadata FROM committed_offsets WHERE group_id = ?", (group_id,)
    ):
        committed[(t, p)], skipped[(t, p)], metadata[(t, p)] = o, n, m
    parts = []
    for key in sorted(set(committed) | set(owners) | (set(targets) if members else set()),
                      key=lambda k: (names.get(k[0], ""), k[1])):
        end = conn.execute("SELECT next_offset FROM partitions WHERE topic_id = ? AND partition = ?", key).fetchone()
        if end is None or key[0] not in names:
            continue
        c = committed.get(key)
        parts.append(GroupPartitionDescription(names[key[0]], key[1], c, end[0], None if c is None else max(end[0] - c, 0),
                                               owners[key][0] if key in owners else None,
                                               skipped=skipped.get(key, 0), metadata=metadata.get(key, "")))
    return GroupDescription(group_id, state, generation, strategy, members, tuple(parts))


def _protocol_view(conn: apsw.Connection, group_id: str, now: int, to_wall: int, names: Mapping[int, str]
                   ) -> tuple[str, int, str | None, tuple[MemberDescription, ...], dict[Key, tuple[str, int]]] | None:
    """A Kafka-protocol group with live members as `describe` shows it: ``(state, generation,
    assignor, members, owners)``, a member's pid being its serving process's; None without live
    members. The clients assign, so what a member owns is also its target."""
    live = set(protocol_members(conn, group_id, now)[0])
    row = conn.execute("SELECT state, generation, protocol FROM protocol_groups WHERE group_id = ?",
                       (group_id,)).fetchone()
    if not live or row is None:
        return None
    ids = {name: t for t, name in names.items()}
    members = []
    owners: dict[Key, tuple[str, int]] = {}
    for m, client, host, pid, sub, assigned, joined, beat in conn.execute(
        "SELECT member_id, client_id, client_host, pid, subscription, assigned, joined_ms, heartbeat_ms"
        " FROM protocol_members WHERE group_id = ? ORDER BY member_id", (group_id,)
    ):
        if m not in live:
            continue
        mine = []
        for item in assigned.split(",") if assigned else ():
            topic, _, p = item.rpartition(":")
            if topic in ids:
                owners[(ids[topic], int(p))] = (m, row[1])
                mine.append(TopicPartition(topic, int(p)))
        members.append(MemberDescription(m, client, host, pid, tuple(sub.split(",")) if sub else (),
                                         frozenset(mine), frozenset(mine), joined + to_wall, beat + to_wall))
    return row[0], row[1], row[2], tuple(members), owners


def require_empty(conn: apsw.Connection, group_id: str, what: str) -> None:
    """Expire dead members, then refuse ``what`` while live members remain (as Kafka does)."""
    validate_group_id(group_id)
    if expire(conn, group_id, clock.monotonic_ms()):
        rebalance(conn, group_id)
    live = live_member_ids(conn, group_id) + protocol_members(conn, group_id)[0]
    if live:
        raise GroupNotEmptyError(
            f"cannot {what} group {group_id!r}: it has {len(live)} live member(s) ({', '.join(live[:3])}); "
            "close its consumers first (or wait session_timeout_ms for dead ones to expire)"
        )


def delete(conn: apsw.Connection, group_id: str) -> None:
    """Delete an empty group with its committed offsets; inside a write transaction."""
    require_empty(conn, group_id, "delete")
    if not _exists(conn, group_id):
        raise GroupIdNotFoundError(f"no consumer group {group_id!r}; log.list_groups() lists them")
    for table in ("committed_offsets", "partition_owners", "group_targets", "group_members", "consumer_groups",
                  "protocol_members", "protocol_groups"):
        conn.execute(f"DELETE FROM {table} WHERE group_id = ?", (group_id,))


# -- committed offsets: commit, alter, reset -------------------------------------------------
def commit(conn: apsw.Connection, group_id: str, rows: list[tuple[TopicPartition, int, int, str]],
           fence: Fence | None = None, skip_beyond_end: bool = False) -> None:
    """Store ``(tp, topic_id, offset, metadata)`` rows inside the caller's write transaction; an
    offset beyond the high watermark is refused (CommitFailedError), or left out with
    ``skip_beyond_end`` (auto-commit). With a ``fence``, only if the committer owns every
    partition, checked in the same transaction."""
    if fence is not None:
        check_fence(conn, group_id, fence, [(tp, t) for tp, t, _, _ in rows])
    keep = []
    for row in rows:
        tp, topic_id, offset, _ = row
        found = conn.execute(
            "SELECT next_offset FROM partitions WHERE topic_id = ? AND partition = ?", (topic_id, tp.partition)
        ).fetchone()
        if found is None:
            if skip_beyond_end:
                continue
            raise CommitFailedError(f"cannot commit {tp}: the topic no longer exists")
        if offset > found[0]:
            if skip_beyond_end:
                continue
            raise CommitFailedError(
                f"cannot commit offset {offset} for {tp.topic}-{tp.partition}: beyond its high watermark {found[0]} "
                "(nothing was committed); seek() to an offset within the log, or poll() to apply auto_offset_reset"
            )
        keep.append(row)
    store(conn, group_id, [(t, tp.partition, o, m) for tp, t, o, m in keep])


def alter_offsets(conn: apsw.Connection, group_id: str, offsets: Iterable[tuple[TopicPartition, int, str]]) -> None:
    """Set ``(tp, offset, metadata)`` committed offsets of a group with no live members; each
    within ``[log_start_offset, high_watermark]`` of its partition."""
    require_empty(conn, group_id, "alter offsets of")
    stored = []
    for tp, offset, metadata in offsets:
        topic_id, start, end = _partition_bounds(conn, tp)
        if not start <= offset <= end:
            raise InvalidConfigError(f"offset {offset} for {tp.topic}-{tp.partition} is outside its log [{start}, {end}]")
        stored.append((topic_id, tp.partition, offset, metadata))
    store(conn, group_id, stored)


def reset_offsets(conn: apsw.Connection, group_id: str, to: str | int,
                  partitions: Iterable[TopicPartition | str] | None, dry_run: bool = False) -> dict[TopicPartition, int]:
    """Move a group's committed offsets (of a group with no live members) to "earliest", "latest"
    or the first record at or after a timestamp (else the end); returns the new offsets
    (``dry_run``: only computes them)."""
    require_empty(conn, group_id, "reset offsets of")
    if partitions is None:
        names = dict(conn.execute("SELECT topic_id, name FROM topics"))
        wanted = [TopicPartition(names[t], p) for t, p in conn.execute(
            "SELECT topic_id, partition FROM committed_offsets WHERE group_id = ? ORDER BY 1, 2", (group_id,)
        ) if t in names]
    else:
        wanted = []
        for item in partitions:
            if isinstance(item, TopicPartition):
                wanted.append(item)
            else:
                meta = topics.require(conn, item)
                wanted.extend(TopicPartition(meta.name, p) for p in range(meta.partitions))
    out: dict[TopicPartition, int] = {}
    stored = []
    for tp in wanted:
        topic_id, start, end = _partition_bounds(conn, tp)
        if to == "earliest":
            offset = start
        elif to == "latest":
            offset = end
        else:
            hit = offset_for_time(conn, topic_id, tp.partition, to)  # type: ignore[arg-type]
            offset = end if hit is None else hit[0]
        out[tp] = offset
        stored.append((topic_id, tp.partition, offset, ""))
    if not dry_run:
        store(conn, group_id, stored)
    return out


def _partition_bounds(conn: apsw.Connection, tp: TopicPartition) -> tuple[int, int, int]:
    """``(topic_id, log start, high watermark)`` of an existing partition."""
    if not isinstance(tp, TopicPartition):
        raise InvalidConfigError(f"expected a TopicPartition, not {tp!r}")
    meta = topics.require(conn, tp.topic)
    if type(tp.partition) is not int or not 0 <= tp.partition < meta.partitions:
        raise UnknownTopicOrPartitionError(
            f"topic {tp.topic!r} has partitions 0..{meta.partitions - 1}, not {tp.partition!r}"
        )
    start, end = read_bounds(conn, meta.topic_id, tp.partition, f"{tp.topic}-{tp.partition}")
    return meta.topic_id, start, end
