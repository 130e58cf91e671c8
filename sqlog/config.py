"""Option checks and limits shared by the log and its clients, so each rule and its message
exist once: unknown config keys, int ranges, timeouts and file paths."""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

from .errors import InvalidConfigError

MAX_INT32 = 2**31 - 1
"""Kafka's int configs (ms, counts), SQLite's busy timeout (a C int), and as ms any wait a thread
can take (about 24.8 days)."""
MAX_INT64 = 2**63 - 1
"""SQLite's INTEGER: offsets, timestamps, byte counts."""


def check_config(given: dict[str, Any], defaults: dict[str, Any], what: str) -> dict[str, Any]:
    """``defaults`` updated with ``given``; InvalidConfigError naming every unknown key and the known ones."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise InvalidConfigError(f"unknown {what} config {', '.join(unknown)}; known: {', '.join(sorted(defaults))}")
    return {**defaults, **given}


def check_int(name: str, value: object, minimum: int = 0, maximum: int | None = MAX_INT32,
              allow_none: bool = False) -> Any:
    """``value`` if it is an int in range (or None with ``allow_none``); else InvalidConfigError."""
    if value is None and allow_none:
        return None
    if type(value) is not int or value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise InvalidConfigError(f"{name} must be an int {bounds}{' or None' if allow_none else ''}, not {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    if type(value) is not bool:
        raise InvalidConfigError(f"{name} must be True or False, not {value!r}")
    return value


def check_offset(value: object, what: str) -> None:
    """An offset: an int from 0 to SQLite's largest INTEGER."""
    if type(value) is not int or not 0 <= value <= MAX_INT64:
        raise InvalidConfigError(f"{what} must be an int from 0 to 2**63-1, not {value!r}")


def check_ms(name: str, value: object) -> float:
    """A wait in milliseconds (an int or float >= 0); a float between 0 and 1 is refused, since it
    is almost always seconds meant (confluent-kafka's ``poll(1.0)``), and would busy-wait."""
    if type(value) not in (int, float) or not 0 <= value < math.inf:  # type: ignore[operator]
        raise InvalidConfigError(f"{name} must be a number of milliseconds >= 0, not {value!r}")
    if type(value) is float and 0 < value < 1:
        raise InvalidConfigError(
            f"{name} is in milliseconds: {value!r} means {value} ms, not {value} s (confluent-kafka's poll() "
            f"takes seconds; sqlog, like kafka-python and Kafka's Java client, takes ms); "
            f"pass {name}={round(value * 1000)} for {value} s"
        )
    return value  # type: ignore[return-value]


def check_timeout(timeout: object) -> None:
    """A wait's ``timeout``: None (no limit) or a finite number of seconds >= 0."""
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout < math.inf
    ):
        raise InvalidConfigError(f"timeout must be None or a number of seconds >= 0, not {timeout!r}")


def check_path(path: object) -> str:
    """A file system path as a str; not ':memory:' or '' (each connection would get its own database)."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidConfigError(f"path must be a str or os.PathLike, not {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise InvalidConfigError("path must be a str path, not bytes")
    if text in ("", ":memory:") or text.startswith("file:"):
        raise InvalidConfigError(f"path {text!r} is not a file: sqlog needs a file that every connection shares")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise InvalidConfigError(f"path {text!r} cannot be encoded for the file system") from None
    if "\0" in text:
        raise InvalidConfigError("path contains a NUL character")
    return text


# -- every config key, once: (name, default, meaning) per client ----------------------------------
# The defaults dicts the clients check against, their docstrings (`describe`) and the README's
# "Config reference" section (`reference_markdown`, written by tools/config_reference.py and
# compared by tests/test_config_docs.py) all come from these tables.


class Option(NamedTuple):
    """One config key: its name, its default and what it means."""

    name: str
    default: Any
    meaning: str


KIB, MIB = 1024, 1024 * 1024

OPEN_OPTIONS: tuple[Option, ...] = (
    Option("durability", "normal", '"normal": an acknowledged send survives a process crash; "full" '
           "(synchronous=FULL) survives power loss too, at an fsync per commit"),
    Option("busy_timeout_ms", 10_000, "how long a write waits for another process's lock"),
    Option("retention_ms", None, "log-wide default for topics without their own, stored in the file "
           "(-1 = forever; None/omitted = keep what is stored)"),
    Option("retention_bytes", None, "log-wide default per partition, stored in the file "
           "(-1 = no limit; None/omitted = keep what is stored)"),
    Option("retention_check_interval_ms", 60_000, "how often the background retention sweeper runs (None = off)"),
    Option("wal_checkpoint_interval_ms", 1_000, "how often the background thread checkpoints the WAL (None = off)"),
    Option("wal_limit_bytes", 64 * MIB, "WAL size past which a checkpoint escalates to TRUNCATE"),
    Option("journal_size_limit", 32 * MIB, "what SQLite truncates the WAL to after a checkpoint"),
    Option("max_db_bytes", None, "cap on the database file plus its WAL: a write past it raises DiskFullError "
           "and stores nothing (None = no cap)"),
)

PRODUCER_OPTIONS: tuple[Option, ...] = (
    Option("value_serializer", None, "bytes pass through (None); sqlog.JSON, sqlog.STRING or any callable "
           "value -> bytes"),
    Option("key_serializer", None, "as value_serializer, for keys"),
    Option("linger_ms", 5, "how long a send may wait for others to share its transaction (Kafka 4.0's default)"),
    Option("batch_size", 128 * KIB, "bytes a transaction collects before the sending thread writes it itself"),
    Option("max_record_bytes", MIB, "largest record (key + value + headers) accepted; "
           "RecordTooLargeError past it"),
    Option("metadata_max_age_ms", 5_000, "how long topic metadata (partition counts) is cached"),
    Option("transactional_id", None, "makes log.producer() a sqlog.TransactionalProducer (init_transactions(), "
           "begin/commit/abort_transaction()); its epoch in the file fences older instances"),
    Option("transaction_timeout_ms", 60_000, "an open transaction older than this is aborted"),
    Option("max_transaction_bytes", 64 * MIB, "key + value + headers one transaction may hold in memory; "
           "TransactionTooLargeError past it"),
)

CONSUMER_OPTIONS: tuple[Option, ...] = (
    Option("group_id", None, "consumer group: commits and subscribe() partition sharing (None: no group)"),
    Option("auto_offset_reset", "latest", 'where to start without a valid committed offset: "earliest", '
           '"latest" or "none" (raise OffsetOutOfRange)'),
    Option("enable_auto_commit", True, "commit the positions of returned records on poll() and close()"),
    Option("auto_commit_interval_ms", 5_000, "how often auto commit commits"),
    Option("key_deserializer", None, "bytes -> key: None (bytes as stored), sqlog.JSON, sqlog.STRING or a callable"),
    Option("value_deserializer", None, "as key_deserializer, for values"),
    Option("max_poll_records", 500, "most records one poll() returns"),
    Option("check_crcs", True, "verify each record's checksum (Kafka's check.crcs): CorruptRecordError if damaged"),
    Option("consumer_timeout_ms", None, "iteration (for record in consumer) stops after this long without a "
           "record (None: never)"),
    Option("metadata_max_age_ms", 5_000, "how often subscribed topics are looked up for new partitions or topics"),
    Option("client_id", "sqlog", "prefix of the member id, shown by describe_group"),
    Option("partition_assignment_strategy", "range", '"range", "roundrobin", "sticky" or "cooperative-sticky"'),
    Option("session_timeout_ms", 45_000, "a member silent this long is dropped from its group"),
    Option("heartbeat_interval_ms", None, "how often the background thread heartbeats (None: a third of "
           "session_timeout_ms, at most 3000)"),
    Option("max_poll_interval_ms", 300_000, "a member that goes this long without poll() leaves its group"),
    Option("isolation_level", "read_uncommitted", 'Kafka\'s "read_uncommitted" or "read_committed", accepted: both '
           "see the same here, since only committed transactions are ever stored"),
)

SHARE_CONSUMER_OPTIONS: tuple[Option, ...] = (
    Option("auto_offset_reset", "earliest", 'where a share group starts a partition it never read: "earliest" '
           '(a job enqueued before the first worker must still be done) or "latest"'),
    Option("record_lock_duration_ms", 30_000, "how long an acquired record stays locked to this consumer"),
    Option("delivery_count_limit", 5, "deliveries after which a record is archived (and dead-lettered)"),
    Option("dead_letter_topic", None, "existing topic that gets a copy of each archived record, with "
           "__dlq.errors.* headers (None: none)"),
    Option("acknowledgement_mode", "explicit", '"explicit": acknowledge() every record before the next poll; '
           '"implicit": the next poll(), commit() or close() accepts them'),
    Option("key_deserializer", None, "bytes -> key: None (bytes as stored), sqlog.JSON, sqlog.STRING or a callable"),
    Option("value_deserializer", None, "as key_deserializer, for values"),
    Option("max_poll_records", 500, "most records one poll() acquires"),
    Option("check_crcs", True, "verify each record's checksum: a damaged record is rejected"),
    Option("partition_max_record_locks", 2_000, "in-flight window per partition (Kafka's "
           "group.share.partition.max.record.locks)"),
    Option("consumer_timeout_ms", None, "iteration stops after this long without a record (None: never)"),
    Option("acknowledgement_commit_callback", None, "called as callback(offsets: dict[TopicPartition, set[int]], "
           "exception) after acknowledgements were applied (exception: InvalidRecordStateError or None)"),
)

CLIENT_OPTIONS: dict[str, tuple[tuple[Option, ...], str]] = {
    "sqlog.open()": (OPEN_OPTIONS, 'sqlog.open(path, **options)'),
    "producer": (PRODUCER_OPTIONS, "log.producer(**config)"),
    "consumer": (CONSUMER_OPTIONS, "log.consumer(**config)"),
    "share consumer": (SHARE_CONSUMER_OPTIONS, "log.share_consumer(group_id, **config)"),
}
"""Each table, by what it configures, with the call that takes it."""


def defaults(options: tuple[Option, ...]) -> dict[str, Any]:
    """``{name: default}`` of a table: what `check_config` checks given keys against."""
    return {o.name: o.default for o in options}


def _show(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= KIB and value % KIB == 0:
        return f"{value // MIB} MiB" if value % MIB == 0 else f"{value // KIB} KiB"
    return repr(value)


def describe(options: tuple[Option, ...]) -> str:
    """The table as docstring lines: ``- name (default): meaning``."""
    return "\n".join(f"- ``{o.name}`` ({_show(o.default)}): {o.meaning}" for o in options)


def reference_markdown() -> str:
    """The README's "Config reference" section body: one markdown table per client."""
    parts = []
    for what, (options, call) in CLIENT_OPTIONS.items():
        rows = "\n".join(f"| `{o.name}` | `{_show(o.default)}` | {o.meaning} |" for o in options)
        parts.append(f"**{what}**: `{call}`\n\n| key | default | meaning |\n|---|---|---|\n{rows}")
    return "\n\n".join(parts)
