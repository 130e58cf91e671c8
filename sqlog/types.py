"""Public value classes: frozen and comparable, with Kafka's names; slotted attrs classes, except the
records consumers return (`Record`, `ShareRecord`: named tuples, built by the hundred thousand)."""

from __future__ import annotations

import collections
from typing import Any, NamedTuple

import attrs

Headers = tuple[tuple[str, "bytes | None"], ...]


@attrs.frozen(order=True)
class TopicPartition:
    """One partition of one topic."""

    topic: str
    partition: int


class Record(NamedTuple):
    """A record read by a consumer. ``key``/``value`` are deserialized; ``headers`` are raw.

    A named tuple, as kafka-python's ``ConsumerRecord``: ``poll()`` builds them by the hundred
    thousand a second from the fetched rows with no Python code per record, which a frozen attrs
    class cannot do (its ``__init__`` alone cost as much as fetching the row). So it compares,
    hashes and unpacks as a tuple of its fields, in this order, and is immutable.
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: Any
    value: Any
    headers: Headers = ()


# Record's fields, in Record's order, then delivery_count (with Record's defaults, and 1).
_ShareFields = collections.namedtuple(  # noqa: PYI024 - its types come from Record and ShareRecord
    "_ShareFields", (*Record._fields, "delivery_count"), defaults=(*Record._field_defaults.values(), 1)
)


class ShareRecord(_ShareFields, Record):  # type: ignore[misc]  # both are tuples of the same leading fields
    """A record delivered by a share consumer (queue mode): a `Record` (``isinstance`` holds, and
    the fields are Record's, in Record's order) plus ``delivery_count``, 1 on its first delivery
    to the share group and one more on each redelivery. As a tuple it has that eighth field, so
    it never equals a `Record`."""

    __slots__ = ()
    delivery_count: int


@attrs.frozen
class RecordMetadata:
    """Where a sent record was stored; returned by the future of ``Producer.send``."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    duplicate: bool = False  # send(message_id=...) found the id in the topic's dedupe window: the original's metadata


@attrs.frozen
class OffsetAndMetadata:
    """A committed offset (the next record to read) with an optional note."""

    offset: int
    metadata: str = ""


@attrs.frozen
class OffsetAndTimestamp:
    """An answer of ``offsets_for_times``: the first offset at or after the timestamp."""

    offset: int
    timestamp_ms: int


@attrs.frozen
class PartitionDescription:
    """A partition's state: offsets ``[log_start_offset, high_watermark)`` are stored."""

    partition: int
    log_start_offset: int
    high_watermark: int
    bytes: int
    records: int


@attrs.frozen
class TopicDescription:
    """A topic's partitions and the retention in force (its own or the log's default; None = forever).

    ``retention_policy`` "interest": retention removes only what every group reading the topic is done with.
    """

    name: str
    partitions: list[PartitionDescription]
    retention_ms: int | None
    retention_bytes: int | None
    retention_policy: str = "limits"
    cleanup_policy: str = "delete"
    delete_retention_ms: int = 86_400_000
    min_compaction_lag_ms: int = 0
    max_compaction_lag_ms: int | None = None
    min_cleanable_dirty_ratio: float = 0.5
    dedupe_window_ms: int | None = None  # send(message_id=...) dedupes within it; None = off


@attrs.frozen
class PartitionSweep:
    """What retention deleted from one partition (a prefix), and what compaction removed (records
    superseded by a later one of the same key, and tombstones older than delete_retention_ms)."""

    records: int
    bytes: int
    compacted_records: int = 0
    compacted_bytes: int = 0


@attrs.frozen
class SweepResult:
    """What one ``Log.sweep()`` did: deletions per partition and pages given back to the disk."""

    deleted: dict[TopicPartition, PartitionSweep]
    pages_freed: int

    @property
    def records(self) -> int:
        return sum(d.records for d in self.deleted.values())

    @property
    def compacted_records(self) -> int:
        return sum(d.compacted_records for d in self.deleted.values())

    @property
    def bytes(self) -> int:
        return sum(d.bytes for d in self.deleted.values())


@attrs.frozen
class CheckReport:
    """What ``Log.check()`` found: one line per violated invariant (a damaged record is one);
    ``ok`` when there are none. ``unverified`` says, per partition, how many records were
    written before sqlog stored checksums: they are read as stored, without a check."""

    violations: list[str]
    unverified: dict[TopicPartition, int] = attrs.field(factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations


@attrs.frozen
class ConsumerGroupMetadata:
    """A group member's identity, as Kafka's ``groupMetadata()``: generation -1 and member "" outside a group."""

    group_id: str | None
    generation_id: int
    member_id: str


@attrs.frozen
class MemberDescription:
    """A live member of a consumer group: who it is, what it owns and what the group means it to own."""

    member_id: str
    client_id: str
    host: str
    pid: int
    subscription: tuple[str, ...]
    assignment: frozenset[TopicPartition]  # the partitions it owns now
    target_assignment: frozenset[TopicPartition]  # what the group's assignor gives it
    # Wall-clock ms (since the epoch) measured back from now by the age on sqlog's steady liveness
    # clock: ages stay right across a wall-clock step, though the times then shift with the step.
    joined_ms: int
    last_heartbeat_ms: int


@attrs.frozen
class GroupPartitionDescription:
    """One partition as a group sees it: ``lag`` is ``log_end_offset - committed_offset`` (None: nothing committed)."""

    topic: str
    partition: int
    committed_offset: int | None
    log_end_offset: int
    lag: int | None
    owner: str | None  # member_id, or None while nobody owns it
    metadata: str = ""
    """The metadata string committed with the offset (``OffsetAndMetadata.metadata``)."""
    skipped: int = 0
    """Records the group's consumers jumped over when ``auto_offset_reset`` moved a committed
    offset or position that had fallen below the log start (counted once the group has committed here)."""


@attrs.frozen
class GroupDescription:
    """A consumer group's state (Kafka's "Empty", "Stable" or "PreparingRebalance"), members and offsets."""

    group_id: str
    state: str
    generation: int
    strategy: str | None
    members: tuple[MemberDescription, ...]
    partitions: tuple[GroupPartitionDescription, ...]

    @property
    def lag(self) -> int:
        """The sum of the partitions' lags (partitions with nothing committed count as 0)."""
        return sum(p.lag or 0 for p in self.partitions)


@attrs.frozen
class SharePartitionState:
    """One partition as a share group sees it.

    ``start_offset`` (Kafka's share-partition start offset): everything below is done.
    ``log_end_offset``: the partition's high watermark (as consumer groups name it).
    ``in_flight``: records from ``start_offset`` delivered at least once and not yet behind it,
    of which ``acquired`` are locked by a consumer, ``available`` can be delivered again
    (released, or their lock expired), ``acknowledged`` and ``archived`` are done.
    ``dead_lettered``: a running count of the records archived so far (rejected, or past
    ``delivery_count_limit``; each copied to the dead-letter topic when one is set).
    ``lag`` is every record not done yet: the queue's depth in this partition.
    """

    topic: str
    partition: int
    start_offset: int
    log_end_offset: int
    in_flight: int
    acquired: int
    available: int
    acknowledged: int
    archived: int
    dead_lettered: int
    lag: int

    @property
    def high_watermark(self) -> int:
        """The same as ``log_end_offset`` (its former name)."""
        return self.log_end_offset

    @property
    def end_offset(self) -> int:
        """The end of the in-flight window: the next offset never delivered yet."""
        return self.start_offset + self.in_flight


@attrs.frozen
class ShareGroupDescription:
    """A share group's partitions and its state: "Stable" while some consumer holds a record
    under an unexpired lock, "Empty" otherwise, "Dead" for a group that does not exist."""

    group_id: str
    state: str
    partitions: tuple[SharePartitionState, ...]

    @property
    def lag(self) -> int:
        """Records not done yet, over all partitions."""
        return sum(p.lag for p in self.partitions)
