"""Kafka's classic group protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) for protocol clients.

Membership lives in this server's memory, on its event loop; committed offsets live in the file
(`groups.store`), so they are one set with sqlog's native consumers. The clients assign
partitions themselves (the leader runs range / roundrobin / sticky and sends the result in SyncGroup).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import attrs

NONE = 0
ILLEGAL_GENERATION = 22
INCONSISTENT_GROUP_PROTOCOL = 23
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
REBALANCE_IN_PROGRESS = 27
MEMBER_ID_REQUIRED = 79

INITIAL_DELAY_S = 0.1
"""A new group waits this long for more members before its first generation (Kafka: 3 s)."""


@attrs.define(eq=False)
class Member:
    member_id: str
    client_id: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocols: list[tuple[str, bytes]]
    client_host: str = ""
    last_seen: float = attrs.field(factory=time.monotonic)
    assignment: bytes = b""
    join: asyncio.Future[Any] | None = None
    sync: asyncio.Future[Any] | None = None


@attrs.define(eq=False)
class Group:
    group_id: str
    state: str = "Empty"  # Empty, PreparingRebalance, CompletingRebalance, Stable
    generation: int = 0
    protocol_type: str = ""
    protocol: str | None = None
    leader: str | None = None
    members: dict[str, Member] = attrs.field(factory=dict)
    pending: set[str] = attrs.field(factory=set)
    timer: asyncio.TimerHandle | None = None
    delay_until: float = 0.0


class Coordinator:
    """Every protocol group of one server."""

    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}

    def group(self, group_id: str) -> Group:
        g = self.groups.get(group_id)
        if g is None:
            g = self.groups[group_id] = Group(group_id)
        return g

    def live(self, group_id: str) -> bool:
        g = self.groups.get(group_id)
        return g is not None and bool(g.members)

    async def join(self, group_id: str, member_id: str, client_id: str, protocol_type: str,
                   protocols: list[tuple[str, bytes]], session_timeout_ms: int, rebalance_timeout_ms: int,
                   require_known_id: bool, client_host: str = "") -> dict[str, Any]:
        """JoinGroup: returns the response's fields once the generation forms."""
        g = self.group(group_id)
        if not 1000 <= session_timeout_ms <= 30 * 60_000:
            return {"error": INVALID_SESSION_TIMEOUT, "member_id": member_id}
        if g.members and (protocol_type != g.protocol_type or
                          not self._common(g, protocols, skip=member_id)):
            return {"error": INCONSISTENT_GROUP_PROTOCOL, "member_id": member_id}
        if not member_id:
            member_id = f"{client_id or 'member'}-{uuid.uuid4()}"
            if require_known_id:
                g.pending.add(member_id)
                return {"error": MEMBER_ID_REQUIRED, "member_id": member_id}
        elif member_id not in g.members and member_id not in g.pending:
            return {"error": UNKNOWN_MEMBER_ID, "member_id": member_id}
        g.pending.discard(member_id)
        m = g.members.get(member_id)
        if m is None:
            m = g.members[member_id] = Member(member_id, client_id, session_timeout_ms, rebalance_timeout_ms,
                                              protocols, client_host)
        else:
            m.protocols, m.session_timeout_ms, m.rebalance_timeout_ms = protocols, session_timeout_ms, rebalance_timeout_ms
        g.protocol_type = protocol_type
        m.last_seen = time.monotonic()
        if m.join is not None and not m.join.done():  # a second join supersedes the first
            m.join.set_result({"error": REBALANCE_IN_PROGRESS, "member_id": member_id})
        joined = m.join = asyncio.get_running_loop().create_future()
        self._prepare(g)
        self._maybe_complete(g)  # may complete the generation (and clear m.join) at once
        return dict(await joined)

    @staticmethod
    def _common(g: Group, protocols: list[tuple[str, bytes]], skip: str = "") -> list[str]:
        names = [n for n, _ in protocols]
        for mid, m in g.members.items():
            if mid != skip:
                theirs = {n for n, _ in m.protocols}
                names = [n for n in names if n in theirs]
        return names

    def _prepare(self, g: Group) -> None:
        """Start a rebalance: members must rejoin within the longest rebalance timeout."""
        if g.state == "PreparingRebalance":
            return
        first = g.state == "Empty"
        g.state = "PreparingRebalance"
        for m in g.members.values():  # members waiting in SyncGroup must rejoin
            if m.sync is not None and not m.sync.done():
                m.sync.set_result((REBALANCE_IN_PROGRESS, b""))
        loop = asyncio.get_running_loop()
        g.delay_until = loop.time() + (INITIAL_DELAY_S if first else 0.0)
        if first:
            loop.call_later(INITIAL_DELAY_S, self._maybe_complete, g)
        if g.timer is not None:
            g.timer.cancel()
        timeout = max(m.rebalance_timeout_ms for m in g.members.values()) / 1000
        g.timer = loop.call_later(timeout, self._complete, g, True)

    def _maybe_complete(self, g: Group) -> None:
        if g.state != "PreparingRebalance" or not g.members:
            return
        if asyncio.get_running_loop().time() < g.delay_until:
            return  # a new group waits INITIAL_DELAY_S for more members
        if all(m.join is not None and not m.join.done() for m in g.members.values()):
            self._complete(g, False)

    def _complete(self, g: Group, drop_missing: bool) -> None:
        """Form the next generation from the members that rejoined."""
        if g.state != "PreparingRebalance":
            return
        if g.timer is not None:
            g.timer.cancel()
            g.timer = None
        for mid, m in list(g.members.items()):
            if m.join is None or m.join.done():
                if not drop_missing:
                    return
                del g.members[mid]
        if not g.members:
            g.state, g.leader, g.protocol = "Empty", None, None
            g.generation += 1
            return
        g.generation += 1
        first = next(iter(g.members.values()))
        g.protocol = (self._common(g, first.protocols) or [first.protocols[0][0]])[0]
        if g.leader not in g.members:
            g.leader = first.member_id
        g.state = "CompletingRebalance"
        leader = g.members[g.leader]
        everyone = [(mid, dict(m.protocols).get(g.protocol, b"")) for mid, m in g.members.items()]
        for mid, m in g.members.items():
            assert m.join is not None
            m.assignment = b""
            m.join.set_result({"error": NONE, "generation": g.generation, "protocol": g.protocol,
                               "leader": leader.member_id, "member_id": mid,
                               "members": everyone if mid == g.leader else []})
            m.join = None
            m.last_seen = time.monotonic()

    async def sync(self, group_id: str, generation: int, member_id: str,
                   assignments: list[tuple[str, bytes]]) -> tuple[int, bytes]:
        g = self.group(group_id)
        m = g.members.get(member_id)
        if m is None:
            return UNKNOWN_MEMBER_ID, b""
        if generation != g.generation:
            return ILLEGAL_GENERATION, b""
        if g.state == "PreparingRebalance":
            return REBALANCE_IN_PROGRESS, b""
        m.last_seen = time.monotonic()
        if g.state == "Stable":
            return NONE, m.assignment
        if member_id == g.leader:
            given = dict(assignments)
            for mid, other in g.members.items():
                other.assignment = given.get(mid, b"")
            g.state = "Stable"
            for other in g.members.values():
                if other.sync is not None and not other.sync.done():
                    other.sync.set_result((NONE, other.assignment))
            return NONE, m.assignment
        synced = m.sync = asyncio.get_running_loop().create_future()
        return tuple(await synced)  # type: ignore[return-value]

    def heartbeat(self, group_id: str, generation: int, member_id: str) -> int:
        g = self.group(group_id)
        m = g.members.get(member_id)
        if m is None:
            return UNKNOWN_MEMBER_ID
        m.last_seen = time.monotonic()
        if g.state == "PreparingRebalance":
            return REBALANCE_IN_PROGRESS
        if generation != g.generation:
            return ILLEGAL_GENERATION
        return NONE

    def leave(self, group_id: str, member_id: str) -> int:
        g = self.group(group_id)
        m = g.members.pop(member_id, None)
        if m is None:
            return UNKNOWN_MEMBER_ID
        if m.join is not None and not m.join.done():
            m.join.set_result({"error": UNKNOWN_MEMBER_ID, "member_id": member_id})
        self._rebalance_after_loss(g)
        return NONE

    def _rebalance_after_loss(self, g: Group) -> None:
        if not g.members:
            if g.timer is not None:
                g.timer.cancel()
                g.timer = None
            g.state, g.leader, g.protocol = "Empty", None, None
            g.generation += 1
            return
        if g.state == "PreparingRebalance":
            self._maybe_complete(g)
        else:
            self._prepare(g)

    def check_commit(self, group_id: str, generation: int, member_id: str) -> int:
        """May this member commit offsets now? 0 or a Kafka error code."""
        g = self.groups.get(group_id)
        if g is None or not g.members:
            return NONE if generation < 0 else ILLEGAL_GENERATION if member_id else NONE
        if generation < 0 and not member_id:
            return REBALANCE_IN_PROGRESS  # an admin commit while members are live
        m = g.members.get(member_id)
        if m is None:
            return UNKNOWN_MEMBER_ID
        m.last_seen = time.monotonic()
        if generation != g.generation:
            return ILLEGAL_GENERATION
        if g.state == "CompletingRebalance":  # as Kafka: a commit while preparing is the old generation's last
            return REBALANCE_IN_PROGRESS
        return NONE

    def expire(self) -> None:
        """Drop members silent past their session timeout (members waiting in a join are alive)."""
        now = time.monotonic()
        for g in list(self.groups.values()):
            dead = [mid for mid, m in g.members.items()
                    if (m.join is None or m.join.done()) and now - m.last_seen > m.session_timeout_ms / 1000]
            for mid in dead:
                del g.members[mid]
            if dead:
                self._rebalance_after_loss(g)

    def describe(self, group_id: str) -> Group | None:
        return self.groups.get(group_id)

    def listing(self) -> list[tuple[str, str]]:
        """(group id, protocol type) of every group with members."""
        return [(g.group_id, g.protocol_type) for g in self.groups.values() if g.members]
