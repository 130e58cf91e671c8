"""Idempotent producers in the file: InitProducerId's ids and each producer's sequences per partition.

Kafka's broker keeps, per producer id and partition, the producer's epoch and its last five
batches' sequence ranges; a batch repeating one of them is a retry (answered with the offset it
got, not stored again), a batch that does not follow the last sequence is out of order. Here
that state is the ``producer_state`` table, read and updated inside the produce's own write
transaction (`Sequences`), so a retry is recognised whichever process serving the file it
reaches, and after a restart; ids come from one counter in ``settings``, unique across processes.
"""

from __future__ import annotations

import struct

import apsw

from ..clock import wall_ms

NONE = 0
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_PRODUCER_EPOCH = 47

KEPT_BATCHES = 5  # Kafka keeps the last five batches per producer and partition
EXPIRATION_MS = 86_400_000  # Kafka's producer.id.expiration.ms: idle producers' state is forgotten
_ENTRY = struct.Struct(">iiq")  # first sequence, last sequence, base offset

Entry = tuple[int, int, int]
Key = tuple[int, int, int]  # (producer id, topic id, partition)


def allocate(conn: apsw.Connection) -> int:
    """A new producer id (never handed out before on this file), forgetting the state of
    producers idle for longer than `EXPIRATION_MS`; inside a write transaction."""
    conn.execute("DELETE FROM producer_state WHERE updated_ms < ?", (wall_ms() - EXPIRATION_MS,))
    row = conn.execute(
        "INSERT INTO settings(key, value) VALUES ('next_producer_id', 1)"
        " ON CONFLICT(key) DO UPDATE SET value = value + 1 RETURNING value"
    ).fetchone()
    return int(row[0])


class Sequences:
    """The sequence checks of one produce's write transaction: `check` each batch before its
    append, `appended` after it, and `store` before the transaction commits."""

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn
        self.state: dict[Key, tuple[int, list[Entry]] | None] = {}
        self.changed: set[Key] = set()

    def _load(self, key: Key) -> tuple[int, list[Entry]] | None:
        if key not in self.state:
            row = self.conn.execute(
                "SELECT epoch, batches FROM producer_state WHERE producer_id = ? AND topic_id = ? AND partition = ?",
                key,
            ).fetchone()
            self.state[key] = None if row is None else (
                row[0], [_ENTRY.unpack_from(row[1], i) for i in range(0, len(row[1]), _ENTRY.size)])
        return self.state[key]

    def check(self, key: Key, epoch: int, first: int, count: int) -> tuple[int, str, int]:
        """``(NONE, "", -1)`` to append; ``(NONE, "duplicate", base offset)`` for a retried batch;
        or ``(error code, message, -1)``."""
        known = self._load(key)
        if known is None:
            return NONE, "", -1  # a producer this file has no state of (new, or forgotten): accept, as Kafka
        stored_epoch, entries = known
        if epoch < stored_epoch:
            return INVALID_PRODUCER_EPOCH, f"producer epoch {epoch} is older than {stored_epoch}", -1
        last = first + count - 1
        if epoch == stored_epoch:
            for e_first, e_last, base in entries:
                if e_first == first and e_last == last:
                    return NONE, "duplicate", base
            if first == (entries[-1][1] + 1) & 0x7FFFFFFF:
                return NONE, "", -1
        elif first == 0:  # a bumped epoch starts its sequences again
            return NONE, "", -1
        return (OUT_OF_ORDER_SEQUENCE_NUMBER,
                f"sequence {first} does not follow {entries[-1][1]} for producer {key[0]}", -1)

    def appended(self, key: Key, epoch: int, first: int, count: int, base: int) -> None:
        known = self._load(key)
        entries = [] if known is None or known[0] != epoch else known[1]
        self.state[key] = (epoch, [*entries, (first, first + count - 1, base)][-KEPT_BATCHES:])
        self.changed.add(key)

    def store(self) -> None:
        if not self.changed:
            return
        now = wall_ms()
        rows = []
        for key in self.changed:
            epoch, entries = self.state[key]  # type: ignore[misc]
            rows.append((*key, epoch, b"".join(_ENTRY.pack(*e) for e in entries), now))
        self.conn.executemany(
            "INSERT INTO producer_state(producer_id, topic_id, partition, epoch, batches, updated_ms)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(producer_id, topic_id, partition) DO UPDATE SET"
            " epoch = excluded.epoch, batches = excluded.batches, updated_ms = excluded.updated_ms",
            rows,
        )
        self.changed.clear()
