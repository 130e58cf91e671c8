"""Partition assignors: who should own which partition of a consumer group (pure functions, no SQL).

`assign` computes a group's target assignment from its members' subscriptions and the topics'
partition counts with one of `STRATEGIES`: Kafka's range and round-robin assignors, and a sticky
one that keeps partitions where they were and moves as few as possible. Deterministic (members
are ordered by member_id, topics by name), so every member that computes it gets one answer;
`groups` stores that answer in the transaction that changes the membership.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from .errors import InvalidConfigError

STRATEGIES = ("range", "roundrobin", "sticky", "cooperative-sticky")
"""``partition_assignment_strategy`` values; the protocol is always incremental (cooperative)."""

Key = tuple[int, int]  # (topic_id, partition)


def assign(
    strategy: str,
    members: Mapping[str, Collection[str]],
    topics: Mapping[str, tuple[int, int]],
    previous: Mapping[Key, str] | None = None,
) -> dict[Key, str]:
    """The target assignment: ``(topic_id, partition) -> member_id``.

    ``members`` maps member_id to its subscribed topic names, ``topics`` maps a topic name to
    ``(topic_id, partition count)``. Deterministic: depends only on the arguments (members are
    ordered by member_id, topics by name). ``previous`` is used by the sticky strategies only.
    """
    if strategy == "range":
        return _range(members, topics)
    if strategy == "roundrobin":
        return _roundrobin(members, topics)
    if strategy in ("sticky", "cooperative-sticky"):
        return _sticky(members, topics, previous or {})
    raise InvalidConfigError(f"partition_assignment_strategy must be one of {STRATEGIES}, not {strategy!r}")


def _range(members: Mapping[str, Collection[str]], topics: Mapping[str, tuple[int, int]]) -> dict[Key, str]:
    """Kafka's RangeAssignor: per topic, consecutive ranges; the first members take one more."""
    out: dict[Key, str] = {}
    for name in sorted(topics):
        topic_id, n = topics[name]
        subs = sorted(m for m, t in members.items() if name in t)
        if not subs:
            continue
        q, r = divmod(n, len(subs))
        p = 0
        for i, member in enumerate(subs):
            for _ in range(q + (1 if i < r else 0)):
                out[(topic_id, p)] = member
                p += 1
    return out


def _roundrobin(members: Mapping[str, Collection[str]], topics: Mapping[str, tuple[int, int]]) -> dict[Key, str]:
    """Kafka's RoundRobinAssignor: all partitions in (topic, partition) order dealt out in turn."""
    order = sorted(members)
    out: dict[Key, str] = {}
    i = 0
    for name in sorted(topics):
        topic_id, n = topics[name]
        if not any(name in members[m] for m in order):
            continue
        for p in range(n):
            while name not in members[order[i % len(order)]]:
                i += 1
            out[(topic_id, p)] = order[i % len(order)]
            i += 1
    return out


def _sticky(
    members: Mapping[str, Collection[str]], topics: Mapping[str, tuple[int, int]], previous: Mapping[Key, str]
) -> dict[Key, str]:
    """Keep every partition where it was if its member is still eligible, then balance by moving
    as few as possible: counts end within one of each other wherever subscriptions allow."""
    eligible: dict[Key, list[str]] = {}
    for name in sorted(topics):
        topic_id, n = topics[name]
        subs = sorted(m for m, t in members.items() if name in t)
        if subs:
            for p in range(n):
                eligible[(topic_id, p)] = subs
    owned: dict[str, list[Key]] = {m: [] for m in members}
    out: dict[Key, str] = {}
    for key, subs in eligible.items():
        prev = previous.get(key)
        if prev in owned and prev in subs:
            out[key] = prev
            owned[prev].append(key)
    for key, subs in eligible.items():
        if key not in out:
            member = min(subs, key=lambda m: (len(owned[m]), m))
            out[key] = member
            owned[member].append(key)
    # Move one partition at a time from a most loaded member to a least loaded eligible one;
    # the sum of squared counts falls at each move, so this ends.
    moved = True
    while moved:
        moved = False
        for giver in sorted(owned, key=lambda m: (-len(owned[m]), m)):
            for key in sorted(owned[giver], reverse=True):
                taker = min(eligible[key], key=lambda m: (len(owned[m]), m))
                if len(owned[giver]) - len(owned[taker]) >= 2:
                    owned[giver].remove(key)
                    owned[taker].append(key)
                    out[key] = taker
                    moved = True
                    break
            if moved:
                break
    return out
