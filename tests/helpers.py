"""Helpers shared by several test modules: ``from helpers import read_all, ...``.

pytest puts tests/ on sys.path (tests/ has a conftest.py and no __init__.py; default "prepend"
import mode), so test modules import it by name; a script under tests/procs/ run on its own would
first put tests/ on sys.path (none needs to yet). Plain functions; fixtures stay in conftest.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

import sqlog

# -- opening and filling a log ---------------------------------------------------------------


def open_log(path: str, **options: Any) -> sqlog.Log:
    """``sqlog.open`` with no background retention sweeps (a test sweeps when it asks)."""
    options.setdefault("retention_check_interval_ms", None)
    return sqlog.open(path, **options)


def fill(log: sqlog.Log, topic: str, n: int, partitions: int, create: bool = False) -> None:
    """Send ``n`` records valued ``b"0"``, ``b"1"``, ... round-robin over ``partitions``
    (creating the topic first if ``create``)."""
    if create:
        log.create_topic(topic, partitions=partitions)
    with log.producer() as producer:
        for i in range(n):
            producer.send(topic, b"%d" % i, partition=i % partitions)


def read_all(log: sqlog.Log, topic: str, partition: int = 0, **config: Any) -> list[sqlog.Record]:
    """Every record of one partition from its start, through a fresh consumer (``config`` added
    to its settings), until a 50 ms poll returns nothing."""
    consumer = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False, **config)
    try:
        consumer.assign([sqlog.TopicPartition(topic, partition)])
        out: list[sqlog.Record] = []
        while batch := consumer.poll(timeout_ms=50):
            out.extend(batch)
        return out
    finally:
        consumer.close()


# -- errors ----------------------------------------------------------------------------------


def raises_sqlog_error(call: Callable[[], Any], expected: type[sqlog.SqlogError] = sqlog.SqlogError) -> sqlog.SqlogError:
    """``call`` must raise ``expected`` (a SqlogError) with a message; anything else (a raw apsw
    error, TypeError...) or no error fails the test. Returns the error."""
    try:
        call()
    except sqlog.SqlogError as exc:
        assert isinstance(exc, expected), f"{type(exc).__name__} is not {expected.__name__}: {exc}"
        assert str(exc), "the error has no message"
        return exc
    except BaseException as exc:  # noqa: BLE001
        pytest.fail(f"raised {type(exc).__module__}.{type(exc).__name__} instead of a SqlogError: {exc!r}")
    pytest.fail(f"no error raised (expected {expected.__name__})")


def success_or_sqlog_error(call: Callable[[], Any]) -> tuple[bool, Any]:
    """``(True, result)`` or ``(False, the SqlogError)``; any other exception fails the test."""
    try:
        return True, call()
    except sqlog.SqlogError as exc:
        return False, exc
    except BaseException as exc:  # noqa: BLE001
        pytest.fail(f"raised {type(exc).__module__}.{type(exc).__name__} instead of a SqlogError: {exc!r}")


# -- consumer-group members in one process ---------------------------------------------------

FAST = {"session_timeout_ms": 1500, "heartbeat_interval_ms": 100}


def member(log: sqlog.Log, topics: list[str] | None = None, listener: Any = None, **cfg: Any) -> sqlog.Consumer:
    """A consumer of group "g" (earliest, FAST liveness unless ``cfg`` says otherwise)
    subscribed to ``topics`` (["t"] by default)."""
    config = {"group_id": "g", "auto_offset_reset": "earliest", **FAST, **cfg}
    consumer = log.consumer(**config)
    consumer.subscribe(topics or ["t"], listener=listener)
    return consumer


def settle(consumers: list[sqlog.Consumer], check: Callable[[], bool], timeout: float = 10) -> None:
    """Poll every consumer (5 ms each) until ``check()`` holds; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, [c.assignment() for c in consumers]
        for c in consumers:
            c.poll(timeout_ms=5)


def freeze_heartbeats(monkeypatch: pytest.MonkeyPatch, consumer: sqlog.Consumer) -> None:
    """Make ``consumer``'s heartbeats stop reaching the file, as if its process had stalled
    (SIGSTOP): its heartbeat thread runs on, but `sqlog.groups.heartbeat` no longer stamps it."""
    import sqlog.groups as groups

    frozen = consumer.group_metadata().member_id
    real = groups.heartbeat

    def heartbeat(conn: Any, group_id: str, member_id: str, now: int) -> bool:
        return True if member_id == frozen else real(conn, group_id, member_id, now)

    monkeypatch.setattr(groups, "heartbeat", heartbeat)
