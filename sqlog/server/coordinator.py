"""Kafka's classic group protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) for protocol clients.

The group's state is in the file (``protocol_groups`` and ``protocol_members``, see storage.py),
so every process serving the file is one coordinator: each request is a short write transaction
on it, and a JoinGroup or SyncGroup that must wait for the other members waits for commits (this
process's or another's, as a long-polling fetch does) and reads the group again. Committed
offsets are `groups.store`'s, one set with sqlog's native consumers. The clients assign partitions
themselves: the leader runs range / roundrobin / sticky and sends the result in SyncGroup.

One group id is either a protocol group or a native one while it has live members: a JoinGroup
meeting live native members gets INCONSISTENT_GROUP_PROTOCOL, and `groups.join` refuses a native
consumer meeting live protocol members; both checks run in the joiner's write transaction, so
whichever joins second is refused. Liveness of protocol members is `groups.protocol_members`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import apsw
import attrs

from .. import clock, groups, liveness
from ..engine import Engine
from .wire import Malformed, Reader, Writer

log_ = logging.getLogger("sqlog.server")

NONE = 0
ILLEGAL_GENERATION = 22
INCONSISTENT_GROUP_PROTOCOL = 23
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
REBALANCE_IN_PROGRESS = 27
MEMBER_ID_REQUIRED = 79

INITIAL_DELAY_MS = 100
"""A new group waits this long for more members before its first generation (Kafka: 3 s)."""
RECHECK_S = 0.1
"""A waiting JoinGroup / SyncGroup reads its group at least this often (commits wake it sooner)."""

PREPARING, COMPLETING, STABLE = "PreparingRebalance", "CompletingRebalance", "Stable"

_PID = os.getpid()
_PID_START = liveness.start_time(_PID)


@attrs.frozen
class Group:
    """A ``protocol_groups`` row."""

    group_id: str
    state: str
    generation: int
    protocol_type: str
    protocol: str | None
    leader: str | None
    delay_until_ms: int
    deadline_ms: int


@attrs.frozen
class Member:
    """A ``protocol_members`` row (without its serving process's facts)."""

    member_id: str
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocols: tuple[tuple[str, bytes], ...]
    join_id: int | None
    generation: int
    assignment: bytes
    joined_ms: int
    heartbeat_ms: int


def _encode(protocols: list[tuple[str, bytes]]) -> bytes:
    return Writer().array(protocols, lambda w, p: w.string(p[0]).nullable_bytes(p[1])).bytes()


def _decode(blob: bytes) -> tuple[tuple[str, bytes], ...]:
    return tuple(Reader(blob).array(lambda r: (r.string(), r.nullable_bytes() or b"")))


def subscribed_topics(protocol_type: str, protocols: list[tuple[str, bytes]]) -> str:
    """A consumer's subscription as ``protocol_members.subscription`` keeps it for describe_group:
    the topics of its first protocol's metadata (the consumer protocol: version, topics, ...),
    sorted and joined by ','; "" for another protocol type or metadata that does not parse."""
    if protocol_type != "consumer" or not protocols:
        return ""
    try:
        r = Reader(protocols[0][1])
        r.int16()
        return ",".join(sorted(set(r.array(Reader.string))))
    except Malformed:
        return ""


def assigned_partitions(assignment: bytes) -> str:
    """A consumer-protocol assignment (version, [(topic, [partition])], ...) as
    ``protocol_members.assigned`` keeps it: 'topic:partition' joined by ','; "" if it does not parse."""
    try:
        r = Reader(assignment)
        r.int16()
        return ",".join(f"{t}:{p}" for t, ps in r.array(lambda r: (r.string(), r.array(Reader.int32))) for p in ps)
    except Malformed:
        return ""


# -- the group in the file; every function below runs inside a write transaction -----------------
def _group(conn: apsw.Connection, group_id: str) -> Group | None:
    row = conn.execute(
        "SELECT group_id, state, generation, protocol_type, protocol, leader, delay_until_ms, deadline_ms"
        " FROM protocol_groups WHERE group_id = ?", (group_id,)).fetchone()
    return None if row is None else Group(*row)


_MEMBER = ("SELECT member_id, client_id, client_host, session_timeout_ms, rebalance_timeout_ms, protocols, join_id,"
           " generation, assignment, joined_ms, heartbeat_ms FROM protocol_members WHERE group_id = ?")


def _members(conn: apsw.Connection, group_id: str, member_id: str | None = None) -> list[Member]:
    """The group's members, oldest first (the first is the default leader); or the one ``member_id``."""
    sql, args = (_MEMBER + " AND member_id = ?", (group_id, member_id)) if member_id is not None else (
        _MEMBER + " ORDER BY joined_ms, member_id", (group_id,))
    return [Member(m, c, h, s, r, _decode(p), j, g, a, jm, hb)
            for m, c, h, s, r, p, j, g, a, jm, hb in conn.execute(sql, args)]


def _member(conn: apsw.Connection, group_id: str, member_id: str) -> Member | None:
    found = _members(conn, group_id, member_id)
    return found[0] if found else None


def _common(protocols: tuple[tuple[str, bytes], ...] | list[tuple[str, bytes]], members: list[Member]) -> list[str]:
    """The names in ``protocols`` (in its order) that every one of ``members`` supports too."""
    names = [n for n, _ in protocols]
    for m in members:
        theirs = {n for n, _ in m.protocols}
        names = [n for n in names if n in theirs]
    return names


def _set(conn: apsw.Connection, group_id: str, **columns: Any) -> None:
    conn.execute(f"UPDATE protocol_groups SET {', '.join(f'{k} = ?' for k in columns)} WHERE group_id = ?",
                 (*columns.values(), group_id))


def expire(conn: apsw.Connection, now: int, group_id: str) -> bool:
    """Delete members that are dead (`groups.protocol_members`) and rebalance without them."""
    dead = groups.protocol_members(conn, group_id, now)[1]
    conn.executemany("DELETE FROM protocol_members WHERE group_id = ? AND member_id = ?",
                     [(group_id, m) for m in dead])
    if dead:
        _after_loss(conn, now, group_id)
    return bool(dead)


def _after_loss(conn: apsw.Connection, now: int, group_id: str) -> None:
    g = _group(conn, group_id)
    if g is None:
        return
    if not _members(conn, group_id):
        # Empty: as Kafka, a group without members is dead (its committed offsets stay).
        conn.execute("DELETE FROM protocol_groups WHERE group_id = ?", (group_id,))
    elif g.state == PREPARING:
        maybe_complete(conn, now, group_id)
    else:
        _prepare(conn, now, g)


def _prepare(conn: apsw.Connection, now: int, g: Group) -> None:
    """Start a rebalance: members must rejoin within the longest rebalance timeout (members
    waiting in SyncGroup see the state and answer REBALANCE_IN_PROGRESS)."""
    if g.state == PREPARING:
        return
    timeout = max(m.rebalance_timeout_ms for m in _members(conn, g.group_id))
    delay = INITIAL_DELAY_MS if g.state == "Empty" else 0
    _set(conn, g.group_id, state=PREPARING, delay_until_ms=now + delay, deadline_ms=now + timeout)


def maybe_complete(conn: apsw.Connection, now: int, group_id: str) -> None:
    """Form the next generation once every member rejoined (after a new group's delay), or at the
    rebalance deadline without the members that did not."""
    g = _group(conn, group_id)
    if g is None or g.state != PREPARING:
        return
    members = _members(conn, group_id)
    missing = [m for m in members if m.join_id is None]
    if now < g.deadline_ms and (missing or now < g.delay_until_ms):
        return
    conn.executemany("DELETE FROM protocol_members WHERE group_id = ? AND member_id = ?",
                     [(group_id, m.member_id) for m in missing])
    members = [m for m in members if m.join_id is not None]
    if not members:
        conn.execute("DELETE FROM protocol_groups WHERE group_id = ?", (group_id,))
        return
    first = members[0]
    protocol = (_common(first.protocols, members) or [first.protocols[0][0]])[0]
    leader = g.leader if any(m.member_id == g.leader for m in members) else first.member_id
    generation = g.generation + 1
    _set(conn, group_id, state=COMPLETING, generation=generation, protocol=protocol, leader=leader)
    conn.execute("UPDATE protocol_members SET join_id = NULL, generation = ?, assignment = x'', assigned = '',"
                 " heartbeat_ms = ? WHERE group_id = ?", (generation, now, group_id))


def _needs_tick(conn: apsw.Connection, now: int, group_id: str) -> bool:
    """Whether `tick` would change the group: a dead member, or a rebalance that may complete."""
    g = _group(conn, group_id)
    if g is None:
        return False
    if groups.protocol_members(conn, group_id, now)[1]:
        return True
    if g.state != PREPARING:
        return False
    return now >= g.deadline_ms or (now >= g.delay_until_ms and all(m.join_id is not None
                                                                   for m in _members(conn, group_id)))


def tick(conn: apsw.Connection, now: int, group_id: str) -> None:
    """Expire dead members and complete a rebalance that can complete."""
    expire(conn, now, group_id)
    maybe_complete(conn, now, group_id)


def join(conn: apsw.Connection, now: int, group_id: str, member_id: str, client_id: str, client_host: str,
         protocol_type: str, protocols: list[tuple[str, bytes]], session_timeout_ms: int,
         rebalance_timeout_ms: int, known: bool) -> dict[str, Any] | int:
    """JoinGroup's write: the response's fields when it answers at once, else the join's id to
    wait for (`join_result`). ``known``: the member id was handed out (MEMBER_ID_REQUIRED)."""
    native = groups.live_member_ids(conn, group_id, now)
    if native:
        log_.warning("group %r has live sqlog-native members (%s): protocol members are refused",
                     group_id, ", ".join(native))
        return {"error": INCONSISTENT_GROUP_PROTOCOL, "member_id": member_id}
    expire(conn, now, group_id)
    g = _group(conn, group_id)
    members = _members(conn, group_id)
    mine = next((m for m in members if m.member_id == member_id), None)
    others = [m for m in members if m.member_id != member_id]
    if others and g is not None and (protocol_type != g.protocol_type or not _common(protocols, others)):
        return {"error": INCONSISTENT_GROUP_PROTOCOL, "member_id": member_id}
    if mine is None and not known:
        return {"error": UNKNOWN_MEMBER_ID, "member_id": member_id}
    if g is None:
        conn.execute("INSERT INTO protocol_groups(group_id, state, generation, protocol_type, delay_until_ms,"
                     " deadline_ms) VALUES (?, 'Empty', 0, ?, 0, 0)", (group_id, protocol_type))
    else:
        _set(conn, group_id, protocol_type=protocol_type)
    join_id = random.getrandbits(62)
    subscription = subscribed_topics(protocol_type, protocols)
    if mine is None:
        conn.execute(
            "INSERT INTO protocol_members(group_id, member_id, client_id, client_host, pid, pid_namespace,"
            " pid_start_time, session_timeout_ms, rebalance_timeout_ms, protocols, subscription, join_id, generation,"
            " joined_ms, heartbeat_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, -1, ?, ?)",
            (group_id, member_id, client_id, client_host, _PID, liveness.PID_NAMESPACE, _PID_START,
             session_timeout_ms, rebalance_timeout_ms, _encode(protocols), subscription, join_id, now, now))
    else:  # a rejoin (a second join supersedes a first one still waiting)
        conn.execute(
            "UPDATE protocol_members SET protocols = ?, subscription = ?, session_timeout_ms = ?,"
            " rebalance_timeout_ms = ?, join_id = ?, heartbeat_ms = ?, pid = ?, pid_namespace = ?, pid_start_time = ?"
            " WHERE group_id = ? AND member_id = ?",
            (_encode(protocols), subscription, session_timeout_ms, rebalance_timeout_ms, join_id, now, _PID,
             liveness.PID_NAMESPACE, _PID_START, group_id, member_id))
    g = _group(conn, group_id)
    assert g is not None
    _prepare(conn, now, g)
    maybe_complete(conn, now, group_id)
    return join_id


def join_result(conn: apsw.Connection, now: int, group_id: str, member_id: str, join_id: int
                ) -> dict[str, Any] | None | bool:
    """A waiting JoinGroup's answer: the response's fields, None to wait on, or True when the
    group needs a `tick` first. Reads only."""
    m = _member(conn, group_id, member_id)
    if m is None:
        return {"error": UNKNOWN_MEMBER_ID, "member_id": member_id}
    if m.join_id == join_id:
        return True if _needs_tick(conn, now, group_id) else None
    g = _group(conn, group_id)
    if m.join_id is not None or g is None or g.generation != m.generation:
        return {"error": REBALANCE_IN_PROGRESS, "member_id": member_id}  # superseded by a newer join
    everyone = []
    if g.leader == member_id:
        protocol = g.protocol or ""
        everyone = [(o.member_id, dict(o.protocols).get(protocol, b"")) for o in _members(conn, group_id)
                    if o.generation == g.generation]
    return {"error": NONE, "generation": g.generation, "protocol": g.protocol, "leader": g.leader,
            "member_id": member_id, "members": everyone}


def sync(conn: apsw.Connection, now: int, group_id: str, generation: int, member_id: str,
         assignments: list[tuple[str, bytes]]) -> tuple[int, bytes] | None:
    """SyncGroup's write: ``(error, assignment)``, or None to wait for the leader's (`sync_result`)."""
    expire(conn, now, group_id)
    g = _group(conn, group_id)
    m = _member(conn, group_id, member_id)
    if g is None or m is None:
        return UNKNOWN_MEMBER_ID, b""
    if generation != g.generation:
        return ILLEGAL_GENERATION, b""
    if g.state == PREPARING:
        return REBALANCE_IN_PROGRESS, b""
    conn.execute("UPDATE protocol_members SET heartbeat_ms = ? WHERE group_id = ? AND member_id = ?",
                 (now, group_id, member_id))
    if g.state == STABLE:
        return NONE, m.assignment
    if member_id != g.leader:
        return None
    given = dict(assignments)
    consumer = g.protocol_type == "consumer"
    conn.executemany(
        "UPDATE protocol_members SET assignment = ?, assigned = ? WHERE group_id = ? AND member_id = ?"
        " AND generation = ?",
        [(a, assigned_partitions(a) if consumer else "", group_id, o.member_id, generation)
         for o in _members(conn, group_id) for a in [given.get(o.member_id, b"")]])
    _set(conn, group_id, state=STABLE)
    return NONE, given.get(member_id, b"")


def sync_result(conn: apsw.Connection, group_id: str, generation: int, member_id: str) -> tuple[int, bytes] | None:
    """A waiting SyncGroup's answer, or None to wait on. Reads only."""
    g = _group(conn, group_id)
    m = _member(conn, group_id, member_id)
    if g is None or m is None:
        return UNKNOWN_MEMBER_ID, b""
    if g.generation != generation or g.state == PREPARING:
        return REBALANCE_IN_PROGRESS, b""
    return (NONE, m.assignment) if g.state == STABLE else None


def heartbeat(conn: apsw.Connection, now: int, group_id: str, generation: int, member_id: str) -> int:
    expire(conn, now, group_id)
    conn.execute("UPDATE protocol_members SET heartbeat_ms = ? WHERE group_id = ? AND member_id = ?",
                 (now, group_id, member_id))
    if not conn.changes():
        return UNKNOWN_MEMBER_ID
    g = _group(conn, group_id)
    assert g is not None
    if g.state == PREPARING:
        return REBALANCE_IN_PROGRESS
    return ILLEGAL_GENERATION if generation != g.generation else NONE


def leave(conn: apsw.Connection, now: int, group_id: str, member_id: str) -> int:
    conn.execute("DELETE FROM protocol_members WHERE group_id = ? AND member_id = ?", (group_id, member_id))
    if not conn.changes():
        return UNKNOWN_MEMBER_ID
    _after_loss(conn, now, group_id)
    return NONE


def check_commit(conn: apsw.Connection, now: int, group_id: str, generation: int, member_id: str) -> int:
    """May this member commit offsets now? 0 or a Kafka error code; inside the commit's own write
    transaction, so the answer still holds when the offsets are stored."""
    expire(conn, now, group_id)
    g = _group(conn, group_id)
    if g is None:
        return NONE if generation < 0 else ILLEGAL_GENERATION if member_id else NONE
    if generation < 0 and not member_id:
        return REBALANCE_IN_PROGRESS  # an admin commit while members are live
    conn.execute("UPDATE protocol_members SET heartbeat_ms = ? WHERE group_id = ? AND member_id = ?",
                 (now, group_id, member_id))
    if not conn.changes():
        return UNKNOWN_MEMBER_ID
    if generation != g.generation:
        return ILLEGAL_GENERATION
    if g.state == COMPLETING:  # as Kafka: a commit while preparing is the old generation's last
        return REBALANCE_IN_PROGRESS
    return NONE


def describe(conn: apsw.Connection, group_id: str) -> tuple[Group, list[Member]] | None:
    """The group and its live members, or None when it has none. Reads only."""
    g = _group(conn, group_id)
    if g is None:
        return None
    live = set(groups.protocol_members(conn, group_id)[0])
    members = [m for m in _members(conn, group_id) if m.member_id in live]
    return (g, members) if members else None


def listing(conn: apsw.Connection) -> list[tuple[str, str]]:
    """(group id, protocol type) of every protocol group with live members. Reads only."""
    now = clock.monotonic_ms()
    return [(gid, ptype) for gid, ptype in conn.execute("SELECT group_id, protocol_type FROM protocol_groups")
            if groups.protocol_members(conn, gid, now)[0]]


# -- the coordinator: the requests' waiting, over the functions above -----------------------------
Wake = Callable[[], asyncio.Event]
"""The event the next commit (of any process) sets; taken before reading, so no commit is missed."""
WaitFor = Callable[[asyncio.Event, float], Awaitable[None]]
"""Wait until the event is set or the timeout (seconds) passes."""


class Coordinator:
    """Every protocol group of the file, for one server: runs the steps above as write
    transactions on the server's database threads (``run``) and waits between them."""

    def __init__(self, engine: Engine, run: Callable[..., Awaitable[Any]], wake: Wake, wait_for: WaitFor) -> None:
        self.engine = engine
        self._run = run
        self._wake = wake
        self._wait_for = wait_for
        self._pending: dict[str, float] = {}  # member ids handed out with MEMBER_ID_REQUIRED -> expiry

    def _write_now(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self.engine.write() as conn:
            result = fn(conn, clock.monotonic_ms(), *args)  # read under the write lock
        self.engine.signal.notify()
        return result

    def write(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        """``fn(conn, now, *args)`` in a write transaction on a database thread."""
        return self._run(self._write_now, fn, *args)

    def _read_now(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self.engine.read() as conn:
            return fn(conn, *args)

    def read(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return self._run(self._read_now, fn, *args)

    async def join(self, group_id: str, member_id: str, client_id: str, protocol_type: str,
                   protocols: list[tuple[str, bytes]], session_timeout_ms: int, rebalance_timeout_ms: int,
                   require_known_id: bool, client_host: str = "") -> dict[str, Any]:
        """JoinGroup: returns the response's fields once the generation forms."""
        if not 1000 <= session_timeout_ms <= 30 * 60_000:
            return {"error": INVALID_SESSION_TIMEOUT, "member_id": member_id}
        now = time.monotonic()
        self._pending = {m: t for m, t in self._pending.items() if t > now}
        known = bool(member_id) and self._pending.pop(member_id, None) is not None
        if not member_id:
            member_id = f"{client_id or 'member'}-{uuid.uuid4()}"
            known = True
            if require_known_id:  # as Kafka: the client joins again with this id
                self._pending[member_id] = now + session_timeout_ms / 1000
                return {"error": MEMBER_ID_REQUIRED, "member_id": member_id}
        joined = await self.write(join, group_id, member_id, client_id, client_host, protocol_type, protocols,
                                  session_timeout_ms, rebalance_timeout_ms, known)
        if isinstance(joined, dict):
            return joined
        while True:
            wake = self._wake()
            res = await self.read(join_result, clock.monotonic_ms(), group_id, member_id, joined)
            if res is True:
                await self.write(tick, group_id)
                continue
            if res is not None:
                return res  # type: ignore[return-value]
            await self._wait_for(wake, RECHECK_S)

    async def sync(self, group_id: str, generation: int, member_id: str,
                   assignments: list[tuple[str, bytes]]) -> tuple[int, bytes]:
        res = await self.write(sync, group_id, generation, member_id, assignments)
        beat = time.monotonic()
        while res is None:
            wake = self._wake()
            res = await self.read(sync_result, group_id, generation, member_id)
            if res is None:
                if time.monotonic() - beat > 1.0:  # alive while it waits for the leader
                    beat = time.monotonic()
                    if await self.write(heartbeat, group_id, generation, member_id) == UNKNOWN_MEMBER_ID:
                        return UNKNOWN_MEMBER_ID, b""
                await self._wait_for(wake, RECHECK_S)
        return res  # type: ignore[no-any-return]

    def heartbeat(self, group_id: str, generation: int, member_id: str) -> Awaitable[int]:
        return self.write(heartbeat, group_id, generation, member_id)

    def leave(self, group_id: str, member_id: str) -> Awaitable[int]:
        return self.write(leave, group_id, member_id)

    def describe(self, group_id: str) -> Awaitable[tuple[Group, list[Member]] | None]:
        return self.read(describe, group_id)

    def listing(self) -> Awaitable[list[tuple[str, str]]]:
        return self.read(listing)

    def _tick_all(self) -> None:
        now = clock.monotonic_ms()
        with self.engine.read() as conn:
            due = [gid for (gid,) in conn.execute("SELECT group_id FROM protocol_groups").fetchall()
                   if _needs_tick(conn, now, gid)]
        for gid in due:
            self._write_now(tick, gid)

    def tick_all(self) -> Awaitable[None]:
        """Expire dead members and complete due rebalances of every group (the reaper's round)."""
        return self._run(self._tick_all)
