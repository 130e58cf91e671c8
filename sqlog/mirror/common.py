"""What push and pull share: the handle a mirror runs behind, its progress, retries with backoff,
and the remote cluster's metadata."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from ..errors import SqlogError

logger = logging.getLogger("sqlog.mirror")
kafka_logger = logging.getLogger("sqlog.mirror.librdkafka")  # librdkafka's own log lines

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
METADATA_TIMEOUT_S = 10.0


class MirrorError(SqlogError):
    """The mirror cannot go on (a remote topic with too few partitions, a fatal Kafka error, a
    config librdkafka refuses); its cursor stays where the cluster last acknowledged."""


@attrs.frozen
class PartitionProgress:
    """One mirrored partition: ``position`` is the cursor (next local offset for push, next remote
    offset for pull) as stored; ``end`` the source's end offset last seen; ``lag`` their distance."""

    topic: str
    partition: int
    position: int | None
    end: int | None

    @property
    def lag(self) -> int | None:
        if self.end is None:
            return None
        return max(0, self.end - (self.position or 0))


@attrs.frozen
class MirrorProgress:
    """A snapshot of a mirror: ``state`` is "connecting", "running", "retrying", "done" (``once``
    reached its end), "stopped" or "failed"; ``records`` were acknowledged by the destination since
    the start; ``skipped`` were removed by retention before they were mirrored (each skip is also a
    warning on the ``sqlog.mirror`` logger); ``retries`` counts backoffs after uplink faults."""

    direction: str
    state: str
    records: int
    records_per_s: float
    skipped: int
    retries: int
    last_error: str | None
    partitions: tuple[PartitionProgress, ...]

    @property
    def lag(self) -> int:
        return sum(p.lag or 0 for p in self.partitions)

    def lag_by_topic(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.partitions:
            out[p.topic] = out.get(p.topic, 0) + (p.lag or 0)
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the CLI's ``--format json`` line)."""
        return {"direction": self.direction, "state": self.state, "records": self.records,
                "records_per_s": round(self.records_per_s, 1), "skipped": self.skipped, "retries": self.retries,
                "last_error": self.last_error, "lag": self.lag_by_topic(),
                "partitions": [{"topic": p.topic, "partition": p.partition, "position": p.position,
                                "end": p.end, "lag": p.lag} for p in self.partitions]}


class Stopped(Exception):
    """The handle was asked to stop (internal: unwinds a wait)."""


class Status:
    """The mutable state a mirror's thread updates and ``MirrorHandle.progress()`` reads."""

    def __init__(self, direction: str) -> None:
        self.direction = direction
        self.lock = threading.Lock()
        self.state = "connecting"
        self.records = 0
        self.skipped = 0
        self.retries = 0
        self.last_error: str | None = None
        self.positions: dict[tuple[str, int], int | None] = {}
        self.ends: dict[tuple[str, int], int | None] = {}
        self.samples: deque[tuple[float, int]] = deque([(time.monotonic(), 0)], maxlen=64)

    def add_records(self, n: int) -> None:
        with self.lock:
            self.records += n
            now = time.monotonic()
            if now - self.samples[-1][0] >= 0.25:
                self.samples.append((now, self.records))

    def snapshot(self) -> MirrorProgress:
        with self.lock:
            now = time.monotonic()
            while len(self.samples) > 1 and now - self.samples[0][0] > 10:
                self.samples.popleft()
            t0, r0 = self.samples[0]
            rate = (self.records - r0) / (now - t0) if now > t0 else 0.0
            parts = tuple(PartitionProgress(t, p, self.positions.get((t, p)), self.ends.get((t, p)))
                          for t, p in sorted(set(self.positions) | set(self.ends)))
            return MirrorProgress(self.direction, self.state, self.records, rate, self.skipped, self.retries,
                                  self.last_error, parts)


class MirrorHandle:
    """A mirror running in a background thread: ``progress()``, ``stop()``, ``join()``; also a
    context manager that stops and joins on exit."""

    def __init__(self, direction: str, run: Callable[[MirrorHandle], None]) -> None:
        self.status = Status(direction)
        self._stop = threading.Event()
        self._run = run
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"sqlog-mirror-{direction}", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self._run(self)
            self.set_state("stopped" if self._stop.is_set() and self.status.state != "done" else "done")
        except BaseException as exc:  # reported by join()
            self._error = exc
            self.set_state("failed")
            self.status.last_error = str(exc)
            logger.error("mirror %s failed: %s", self.status.direction, exc)

    # -- for the mirror's thread -----------------------------------------------------------
    def set_state(self, state: str) -> None:
        with self.status.lock:
            self.status.state = state

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def sleep(self, seconds: float) -> None:
        """Wait, or raise `Stopped` as soon as stop() is called."""
        if self._stop.wait(seconds):
            raise Stopped

    def retry(self, backoff: Backoff, error: BaseException | str) -> None:
        """An uplink fault: note it, count a retry, and back off (interruptible by stop())."""
        with self.status.lock:
            self.status.retries += 1
            self.status.last_error = str(error)
            self.status.state = "retrying"
        delay = backoff.next()
        logger.warning("mirror %s: %s; retrying in %.1f s", self.status.direction, error, delay)
        self.sleep(delay)

    def on_kafka_error(self, err: KafkaError) -> None:
        """librdkafka's error_cb: the cluster unreachable and the like (it keeps retrying itself)."""
        with self.status.lock:
            self.status.last_error = err.str()
            if err.code() == KafkaError._ALL_BROKERS_DOWN and self.status.state == "running":
                self.status.state = "disconnected"
        logger.info("mirror %s: %s", self.status.direction, err.str())

    def running_again(self) -> None:
        """Records got through after a fault."""
        with self.status.lock:
            if self.status.state in ("retrying", "disconnected"):
                self.status.state = "running"

    # -- public ----------------------------------------------------------------------------
    def progress(self) -> MirrorProgress:
        """Records mirrored, rate over the last seconds, lag per partition, skips, retries, state."""
        return self.status.snapshot()

    def stop(self) -> None:
        """Ask the mirror to stop: it finishes what is in flight, stores its cursor and ends."""
        self._stop.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> MirrorProgress:
        """Wait for the end (``once``, or after stop()); the final progress. Raises the error that
        ended the mirror, if any (`MirrorError` and other `SqlogError`s)."""
        self._thread.join(timeout)
        if self._error is not None:
            raise self._error
        return self.progress()

    def __enter__(self) -> MirrorHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.join()


class Backoff:
    """Exponential backoff: 0.5 s doubling to 30 s; reset() after a success."""

    def __init__(self, first: float = BACKOFF_FIRST_S, cap: float = BACKOFF_MAX_S) -> None:
        self.first, self.cap, self.delay = first, cap, first

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.cap, self.delay * 2)
        return delay

    def reset(self) -> None:
        self.delay = self.first


def kafka_config(bootstrap_servers: str, config: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """librdkafka settings: ``defaults``, then the user's ``config`` (security, compression, linger)."""
    if not isinstance(bootstrap_servers, str) or not bootstrap_servers:
        raise MirrorError(f"bootstrap_servers must be 'host:port[,host:port...]', not {bootstrap_servers!r}")
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap_servers, "logger": kafka_logger, **defaults}
    for key, value in (config or {}).items():
        if not isinstance(key, str):
            raise MirrorError(f"config keys are librdkafka property names, not {key!r}")
        conf[key] = value
    return conf


def check_topics(topics: Iterable[str] | str) -> list[str]:
    names = [topics] if isinstance(topics, str) else list(topics)
    if not names or not all(isinstance(t, str) and t for t in names):
        raise MirrorError(f"topics must be a non-empty list of topic names, not {topics!r}")
    return list(dict.fromkeys(names))


def remote_partitions(conf: Mapping[str, Any], topic: str, timeout: float = METADATA_TIMEOUT_S) -> int | None:
    """The remote topic's partition count, None when it does not exist. Raises KafkaException when
    the cluster cannot be reached."""
    admin = AdminClient(connection_config(conf))
    md = admin.list_topics(topic, timeout=timeout)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        if t is not None and t.error is not None and t.error.code() not in UNKNOWN_TOPIC_CODES:
            raise KafkaException(t.error)
        return None
    return len(t.partitions)


def connection_config(conf: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of ``conf`` that say how to reach the cluster (address, security, timeouts),
    for the admin and helper clients beside the mirror's producer or consumer."""
    return {k: v for k, v in conf.items() if k in CONNECTION_KEYS or k.startswith(("security.", "ssl.", "sasl."))}


CONNECTION_KEYS = {"bootstrap.servers", "logger", "client.id", "socket.timeout.ms", "reconnect.backoff.ms",
              "reconnect.backoff.max.ms", "client.dns.lookup", "broker.address.family"}
UNKNOWN_TOPIC_CODES = {3, -188}  # UNKNOWN_TOPIC_OR_PART (broker), _UNKNOWN_TOPIC (local)


def describe(exc: BaseException) -> str:
    """A Kafka exception's message (librdkafka's error string)."""
    err = exc.args[0] if exc.args else None
    return err.str() if isinstance(err, KafkaError) else str(exc)
