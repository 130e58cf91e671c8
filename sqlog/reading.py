"""What the two reading clients share, so each rule exists once: `consumer.Consumer` and
`share.ShareConsumer` check poll()'s arguments, block in poll() until a commit may have brought
something, deserialize keys and values, and iterate (``for record in consumer``, bounded by
``consumer_timeout_ms``) the same way.

Each client keeps what differs: what one attempt at reading does (a fetch from partitions, or a
share transaction that acquires records), what wakes its wait early, and what happens to a record
that fails to deserialize (the consumer stops before it; the share consumer releases it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence, Sized
from typing import Any, TypeVar

from .config import MAX_INT32, check_ms
from .engine import Engine
from .errors import InvalidConfigError, SerializationError, translated
from .storage import data_version, wait_for_commit

T = TypeVar("T")

RETRY: Any = object()
"""Returned by a `read_blocking` attempt: try again at once, without waiting and whatever the deadline."""

ITERATION_SLICE_S = 1.0
"""How long one poll inside ``__next__`` blocks at most, so a long iteration polls regularly."""


def poll_deadline(timeout_ms: object, max_records: object, default_max_records: int) -> tuple[float, int]:
    """Check ``poll(timeout_ms, max_records)``'s arguments: the monotonic deadline and the record
    limit (``default_max_records``, the max_poll_records config, when ``max_records`` is None)."""
    check_ms("timeout_ms", timeout_ms)
    limit = default_max_records if max_records is None else max_records
    if type(limit) is not int or not 1 <= limit <= MAX_INT32:
        raise InvalidConfigError(f"max_records must be an int from 1 to {MAX_INT32}, not {max_records!r}")
    return time.monotonic() + timeout_ms / 1000, limit  # type: ignore[operator]


def read_blocking(engine: Engine, conn: Any, deadline: float, attempt: Callable[[bool], T],
                  stop: Callable[[], bool], next_stop: Callable[[], float | None] | None = None) -> T:
    """Call ``attempt(first)`` until it returns something truthy or ``deadline`` (monotonic) passes;
    between attempts, sleep until a commit may have brought something new.

    Each attempt runs after taking the commit signal's sequence number and ``conn``'s
    data_version, inside `translated`, so a commit made while it reads wakes the wait that follows
    (this process's at once, other processes' within `storage.WAKE_CHECK_S`). ``attempt`` may
    return `RETRY` to go again at once; ``stop()`` ends a wait early (it may raise, e.g. closed);
    ``next_stop()`` says when (monotonic) ``stop()`` must be asked next at the latest, if it
    knows. Returns the last attempt's result.
    """
    signal = engine.signal
    path = engine.path
    first = True
    while True:
        seq = signal.seq
        with translated(path):
            # The version a wait compares against; a call that will not wait (poll(0), fetch())
            # saves the statement.
            version = data_version(conn) if deadline > time.monotonic() else 0
            result = attempt(first)
        first = False
        if result is RETRY:
            continue
        if result or time.monotonic() >= deadline:
            return result
        wait_for_commit(signal, conn, path, seq, version, deadline, stop, next_stop)


def deserialize(key_de: Callable[[bytes], Any] | None, value_de: Callable[[bytes], Any] | None,
                key: bytes | None, value: bytes | None) -> tuple[Any, Any]:
    """A record's key and value through the configured deserializers: None stays None, and without
    a deserializer the bytes are returned as stored. A deserializer's exception propagates: turn it
    into the client's error with `deserialize_error`."""
    return (key if key_de is None or key is None else key_de(key),
            value if value_de is None or value is None else value_de(value))


def deserialize_column(de: Callable[[bytes], Any] | None, column: Sequence[bytes | None]) -> Sequence[Any]:
    """Many records' keys (or values) through a deserializer at once, with no Python code per
    record when none is None; None stays None and without a deserializer the column is returned
    as it is. A deserializer's exception propagates (it does not say which record: find it with
    `deserialize` one by one)."""
    if de is None:
        return column
    if None in column:
        return [None if c is None else de(c) for c in column]
    return list(map(de, column))


def deserialize_error(topic: str, partition: int, offset: int, exc: Exception, then: str) -> SerializationError:
    """The SerializationError for a record whose deserializer raised ``exc``; ``then`` says what
    happens to the record and what to do."""
    return SerializationError(f"{topic}-{partition} offset {offset}: deserializer failed ({exc}); {then}")


def next_from(buffer: Sized, timeout_ms: int | None, fill: Callable[[float], object]) -> None:
    """For ``__next__``: return once ``buffer`` holds a record, calling ``fill(deadline)`` (a
    blocking poll until that monotonic deadline, at most `ITERATION_SLICE_S` away) until it does;
    StopIteration after ``timeout_ms`` (consumer_timeout_ms; None: never) without one."""
    if buffer:
        return
    deadline = math.inf if timeout_ms is None else time.monotonic() + timeout_ms / 1000
    while not buffer:
        now = time.monotonic()
        if now >= deadline:
            raise StopIteration
        fill(min(deadline, now + ITERATION_SLICE_S))
