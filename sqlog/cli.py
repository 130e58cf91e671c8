"""The ``sqlog`` console script: topics, produce, consume, groups and upkeep over the public API.

Kafka users reach for ``kafka-topics``, ``kafka-console-producer``, ``kafka-console-consumer``,
``kafka-consumer-groups``, ``kafka-share-groups`` and ``kcat``; this is the same at hand for one
sqlog file (``groups`` covers consumer groups and share groups)::

    sqlog --db app.db topics create orders --partitions 3
    printf 'user-7:hello\\n' | sqlog --db app.db produce orders --key-separator :
    sqlog --db app.db consume orders --from-beginning --print-key --timeout-ms 1000
    sqlog --db app.db groups describe billing
    sqlog --db app.db groups reset-offsets billing --topic orders --to-earliest --execute

Only the public API (``import sqlog``) and the standard library are used. Exit status: 0 on
success, 1 on a sqlog error (one ``sqlog: error: ...`` line on stderr) or a failed ``check``,
2 on a usage error (as argparse), 130 when interrupted (Ctrl-C).

``consume --format json`` prints one object per line: ``topic``, ``partition``, ``offset``,
``timestamp`` (ms since the epoch), ``key``, ``value`` and ``headers`` (a list of
``[name, value]`` pairs, in order). A key, value or header value is ``null`` when absent, a
JSON string when its bytes are valid UTF-8, and otherwise an object ``{"base64": "..."}``
holding the bytes in standard base64.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import select
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlog

ENV_DB = "SQLOG_DB"
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A user mistake found by the CLI itself: printed as one line, exit status 1."""


# -- argument types (argparse turns their ValueError/ArgumentTypeError into a usage error) ----
def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, not {text!r}")
    return value


def _retention(text: str) -> int:
    value = _int(text)
    if value != -1 and value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or -1 (keep forever), not {text!r}")
    return value


def _offset(text: str) -> int | str:
    if text in ("earliest", "latest"):
        return text
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an offset >= 0, 'earliest' or 'latest', not {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _iso_datetime(text: str) -> int:
    """ISO 8601 date-time -> ms since the epoch; without a zone it is local time (as in Kafka)."""
    cleaned = text.strip()
    if cleaned[-1:] in ("Z", "z"):  # Python 3.10's fromisoformat does not take the Z suffix
        cleaned = cleaned[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 date-time: {text!r} (e.g. 2024-05-01T12:00:00, 2024-05-01T12:00:00.000Z "
            "or 2024-05-01T14:00:00+02:00)") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # a naive time is this machine's local time
    since_epoch = moment - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return -(-since_epoch // timedelta(milliseconds=1))  # rounded up: records at or after the moment


def _header(text: str) -> tuple[str, bytes]:
    name, eq, value = text.partition("=")
    if not eq or not name:
        raise argparse.ArgumentTypeError(f"a header is NAME=VALUE, not {text!r}")
    return name, value.encode("utf-8", "surrogateescape")


# -- opening the log ---------------------------------------------------------------------------
def _db_path(args: argparse.Namespace) -> str:
    path = args.db or os.environ.get(ENV_DB)
    if not path:
        args.parser.error(f"no log given: pass --db PATH or set {ENV_DB}")
    return path  # type: ignore[no-any-return]


@contextmanager
def _open_log(args: argparse.Namespace, create: bool = False) -> Iterator[sqlog.Log]:
    """Open the log without upkeep threads; a missing file is an error unless ``create``."""
    path = _db_path(args)
    if os.path.isdir(path):
        raise CliError(f"{path} is a directory, not a sqlog log")
    if not create:
        if not os.path.exists(path):
            raise CliError(f"no such log: {path}")
        if os.path.getsize(path) == 0 and not os.path.exists(path + "-wal"):
            # SQLite would take an empty file as a new database: a reading command must not make one.
            raise CliError(f"{path} is an empty file, not a sqlog log (create a topic in it first)")
    log = sqlog.open(path, retention_check_interval_ms=None, wal_checkpoint_interval_ms=None)
    try:
        yield log
    finally:
        log.close()


def _describe(log: sqlog.Log, topic: str, partitions: Iterable[int | None] = ()) -> sqlog.TopicDescription:
    """The topic's description, after checking that each partition named exists (None: none named).

    An unknown topic or partition gets a message that names the fix, before anything is done.
    """
    try:
        d = log.describe_topic(topic)
    except sqlog.UnknownTopicOrPartitionError:
        raise CliError(f"unknown topic {topic!r}: create it with 'sqlog topics create {topic}'") from None
    count = len(d.partitions)
    for partition in partitions:
        if partition is not None and partition >= count:
            raise CliError(f"topic {topic!r} has partitions 0..{count - 1}, not {partition}")
    return d


def _describe_all(log: sqlog.Log) -> list[sqlog.TopicDescription]:
    """Every topic's description, by name; a topic deleted by another process meanwhile is left out."""
    descriptions = []
    for name in log.list_topics():
        try:
            descriptions.append(log.describe_topic(name))
        except sqlog.UnknownTopicOrPartitionError:
            continue
    return descriptions


# -- output helpers ----------------------------------------------------------------------------
def _table(headers: list[str], rows: list[list[Any]]) -> str:
    """Left-aligned columns, two spaces apart, for people."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _human_ms(ms: int | None) -> str:
    if ms is None:
        return "forever"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms} ({ms // size}{unit})"
    return str(ms)


def _or_forever(limit: int | None) -> int | str:
    """A retention limit as shown to people: None (no limit) is "forever"."""
    return "forever" if limit is None else limit


def _retention_text(description: sqlog.TopicDescription) -> str:
    dedupe = "" if description.dedupe_window_ms is None else f"  dedupe.window.ms={description.dedupe_window_ms}"
    return (f"retention.ms={_human_ms(description.retention_ms)}  "
            f"retention.bytes={_or_forever(description.retention_bytes)}{dedupe}")


def _topic_json(d: sqlog.TopicDescription) -> dict[str, Any]:
    return {
        "name": d.name,
        "retention_ms": d.retention_ms,
        "retention_bytes": d.retention_bytes,
        "cleanup_policy": d.cleanup_policy,
        "delete_retention_ms": d.delete_retention_ms,
        "min_compaction_lag_ms": d.min_compaction_lag_ms,
        "max_compaction_lag_ms": d.max_compaction_lag_ms,
        "min_cleanable_dirty_ratio": d.min_cleanable_dirty_ratio,
        "dedupe_window_ms": d.dedupe_window_ms,
        "records": sum(p.records for p in d.partitions),
        "bytes": sum(p.bytes for p in d.partitions),
        "partitions": [
            {"partition": p.partition, "log_start_offset": p.log_start_offset,
             "high_watermark": p.high_watermark, "records": p.records, "bytes": p.bytes}
            for p in d.partitions
        ],
    }


# -- topics ------------------------------------------------------------------------------------
# Kafka's topic config names (kafka-topics.sh --config NAME=VALUE) -> (sqlog's name, parse).
def _ratio(text: str) -> float:
    return float(text)


def _lag(text: str) -> int | None:
    return None if text in ("-1", str(2**63 - 1)) else int(text)


TOPIC_CONFIGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "cleanup.policy": ("cleanup_policy", str),
    "delete.retention.ms": ("delete_retention_ms", int),
    "min.compaction.lag.ms": ("min_compaction_lag_ms", int),
    "max.compaction.lag.ms": ("max_compaction_lag_ms", _lag),
    "min.cleanable.dirty.ratio": ("min_cleanable_dirty_ratio", _ratio),
    "retention.ms": ("retention_ms", int),
    "retention.bytes": ("retention_bytes", int),
}


def _configs(args: argparse.Namespace) -> dict[str, Any]:
    """``--config NAME=VALUE`` options as keyword arguments of create_topic / alter_topic."""
    out: dict[str, Any] = {}
    for item in args.config or ():
        name, sep, value = item.partition("=")
        if not sep or name not in TOPIC_CONFIGS:
            raise CliError(f"--config {item!r}: give NAME=VALUE, NAME one of {', '.join(TOPIC_CONFIGS)}")
        key, parse = TOPIC_CONFIGS[name]
        try:
            out[key] = parse(value)
        except ValueError:
            raise CliError(f"--config {item!r}: {value!r} is not a valid value for {name}") from None
    return out


def _compaction_text(d: sqlog.TopicDescription) -> str:
    if d.cleanup_policy == "delete":
        return "cleanup.policy=delete"
    max_lag = "none" if d.max_compaction_lag_ms is None else d.max_compaction_lag_ms
    return (f"cleanup.policy={d.cleanup_policy}  delete.retention.ms={d.delete_retention_ms}  "
            f"min.compaction.lag.ms={d.min_compaction_lag_ms}  max.compaction.lag.ms={max_lag}  "
            f"min.cleanable.dirty.ratio={d.min_cleanable_dirty_ratio}")


def cmd_topics_create(args: argparse.Namespace) -> int:
    configs = _configs(args)
    for key in ("retention_ms", "retention_bytes"):
        if getattr(args, key) is not None:
            configs[key] = getattr(args, key)
    with _open_log(args, create=True) as log:
        existed = args.if_not_exists and args.name in log.list_topics()
        log.create_topic(args.name, partitions=args.partitions,
                         dedupe_window_ms=None if args.dedupe_window_ms in (None, -1) else args.dedupe_window_ms,
                         exist_ok=args.if_not_exists, **configs)
    print(f"Topic {args.name} already exists." if existed else f"Created topic {args.name}.")
    return 0


def cmd_topics_list(args: argparse.Namespace) -> int:
    with _open_log(args) as log:
        topics = [_topic_json(d) for d in _describe_all(log)]
    if args.format == "json":
        _print_json(topics)
    elif topics:
        rows = [[t["name"], len(t["partitions"]), t["records"], t["bytes"], _or_forever(t["retention_ms"]),
                 _or_forever(t["retention_bytes"])] for t in topics]
        print(_table(["TOPIC", "PARTITIONS", "RECORDS", "BYTES", "RETENTION-MS", "RETENTION-BYTES"], rows))
    return 0


def cmd_topics_describe(args: argparse.Namespace) -> int:
    with _open_log(args) as log:
        described = _describe_all(log) if args.name is None else [_describe(log, args.name)]
    if args.format == "json":
        # One topic named: its object; none named: a list of every topic's.
        _print_json(_topic_json(described[0]) if args.name is not None else [_topic_json(d) for d in described])
        return 0
    for i, d in enumerate(described):
        if i:
            print()
        print(f"Topic: {d.name}  partitions={len(d.partitions)}  {_retention_text(d)}  {_compaction_text(d)}")
        rows = [[p.partition, p.log_start_offset, p.high_watermark, p.records, p.bytes] for p in d.partitions]
        print(_table(["PARTITION", "LOG-START", "HIGH-WATERMARK", "RECORDS", "BYTES"], rows))
    return 0


def cmd_topics_alter(args: argparse.Namespace) -> int:
    changes = {k: v for k, v in (("partitions", args.partitions), ("retention_ms", args.retention_ms),
                                 ("retention_bytes", args.retention_bytes)) if v is not None}
    changes.update(_configs(args))
    if args.dedupe_window_ms is not None:
        changes["dedupe_window_ms"] = None if args.dedupe_window_ms == -1 else args.dedupe_window_ms
    if not changes:
        args.parser.error("nothing to alter: give --partitions, --retention-ms, --retention-bytes, --config "
                          "or --dedupe-window-ms")
    with _open_log(args) as log:
        _describe(log, args.name)
        d = log.alter_topic(args.name, **changes)
    print(f"Altered topic {d.name}: partitions={len(d.partitions)}  {_retention_text(d)}  {_compaction_text(d)}")
    return 0


def cmd_topics_delete(args: argparse.Namespace) -> int:
    with _open_log(args) as log:
        _describe(log, args.name)
        log.delete_topic(args.name)
    print(f"Deleted topic {args.name}.")
    return 0


# -- produce -----------------------------------------------------------------------------------
def cmd_produce(args: argparse.Namespace) -> int:
    separator = None
    if args.key_separator is not None:
        if not args.key_separator:
            args.parser.error("--key-separator must not be empty")
        separator = args.key_separator.encode("utf-8", "surrogateescape")
    headers = args.header or None
    with _open_log(args) as log:
        _describe(log, args.topic, [args.partition])
        producer = log.producer()
        sent = 0
        try:
            for lineno, line in enumerate(sys.stdin.buffer, 1):
                if line.endswith(b"\n"):
                    line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
                key = None
                if separator is not None:
                    key, found, line = line.partition(separator)
                    if not found:
                        raise CliError(f"line {lineno} has no key separator {args.key_separator!r}")
                try:
                    producer.send(args.topic, line, key=key, headers=headers, partition=args.partition)
                except sqlog.SqlogError as exc:
                    raise CliError(f"line {lineno}: {exc}") from None
                sent += 1
        finally:
            producer.close()  # flushes: everything sent is durable once this returns
            print(f"{sent} record{'' if sent == 1 else 's'} produced", file=sys.stderr)
    return 0


# -- consume -----------------------------------------------------------------------------------
def _json_bytes(data: bytes | None) -> Any:
    """A JSON string for UTF-8 bytes, ``{"base64": ...}`` otherwise, None for absent."""
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def _json_line(record: sqlog.Record) -> bytes:
    obj = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp_ms,
        "key": _json_bytes(record.key),
        "value": _json_bytes(record.value),
        "headers": [[name, _json_bytes(value)] for name, value in record.headers],
    }
    try:
        return json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # a header name with a lone surrogate: escape it instead
        return json.dumps(obj).encode("ascii") + b"\n"


def _text_line(record: sqlog.Record, args: argparse.Namespace) -> bytes:
    """kafka-console-consumer's text line: [CreateTime:ts] [Partition:p] [Offset:o] [headers] [key] value,
    tab-separated, each field as its --print-* option asks."""
    fields = []
    if args.print_timestamp:
        fields.append(b"CreateTime:%d" % record.timestamp_ms)
    if args.print_partition:
        fields.append(b"Partition:%d" % record.partition)
    if args.print_offset:
        fields.append(b"Offset:%d" % record.offset)
    if args.print_headers:
        fields.append(b",".join(k.encode("utf-8", "surrogateescape") + b":" + (b"null" if v is None else v)
                                for k, v in record.headers) or b"NO_HEADERS")
    if args.print_key:
        fields.append(b"null" if record.key is None else record.key)
    fields.append(b"null" if record.value is None else record.value)
    return b"\t".join(fields) + b"\n"


_TEMPLATE = re.compile(r"%(.)|\\(.)", re.S)


def _template_renderer(template: str) -> Callable[[sqlog.Record], bytes]:
    """kcat's -f: %t topic, %p partition, %o offset, %k key, %s value, %S value size, %K key size,
    %T timestamp (ms), %h headers (k=v,...), %% a percent; \\n \\t \\\\ escapes."""
    escapes = {"n": b"\n", "t": b"\t", "\\": b"\\"}
    parts: list[Any] = []  # bytes, or a one-letter code
    pos = 0
    for m in _TEMPLATE.finditer(template):
        parts.append(template[pos:m.start()].encode())
        code, escape = m.group(1), m.group(2)
        if escape is not None:
            if escape not in escapes:
                raise CliError(f"--format: unknown escape \\{escape} (known: \\n \\t \\\\)")
            parts.append(escapes[escape])
        elif code == "%":
            parts.append(b"%")
        elif code in "tpoTkKsSh":
            parts.append(code)
        else:
            raise CliError(f"--format: unknown %{code} (known: %t %p %o %k %K %s %S %T %h %%)")
        pos = m.end()
    parts.append(template[pos:].encode())

    def render(r: sqlog.Record) -> bytes:
        out = []
        for part in parts:
            if isinstance(part, bytes):
                out.append(part)
            elif part == "t":
                out.append(r.topic.encode())
            elif part == "p":
                out.append(b"%d" % r.partition)
            elif part == "o":
                out.append(b"%d" % r.offset)
            elif part == "T":
                out.append(b"%d" % r.timestamp_ms)
            elif part == "k":
                out.append(r.key or b"")
            elif part == "K":
                out.append(b"%d" % (-1 if r.key is None else len(r.key)))
            elif part == "s":
                out.append(r.value or b"")
            elif part == "S":
                out.append(b"%d" % (-1 if r.value is None else len(r.value)))
            else:  # "h"
                out.append(b",".join(k.encode("utf-8", "surrogateescape") + b"=" + (v or b"") for k, v in r.headers))
        return b"".join(out)

    return render


def cmd_consume(args: argparse.Namespace) -> int:
    if args.offset is not None and args.partition is None:
        args.parser.error("--offset needs --partition")
    if args.offset is not None and args.from_beginning:
        args.parser.error("--offset and --from-beginning cannot be used together")
    out = sys.stdout.buffer
    render: Callable[[sqlog.Record], bytes]
    if args.format == "json":
        render = _json_line
    elif args.format == "text":
        render = lambda r: _text_line(r, args)  # noqa: E731
    else:
        render = _template_renderer(args.format)
    with _open_log(args) as log:
        _describe(log, args.topic, [args.partition])
        config: dict[str, Any] = {
            "auto_offset_reset": "earliest" if args.from_beginning else "latest",
            "enable_auto_commit": False,
        }
        if args.group is not None:
            config["group_id"] = args.group
        consumer = log.consumer(**config)
        try:
            if args.partition is None:
                consumer.subscribe([args.topic])
            else:
                tp = sqlog.TopicPartition(args.topic, args.partition)
                consumer.assign([tp])
                if args.offset == "earliest":
                    consumer.seek_to_beginning(tp)
                elif args.offset == "latest":
                    consumer.seek_to_end(tp)
                elif args.offset is not None:
                    consumer.seek(tp, args.offset)
            _consume_loop(args, consumer, out, render)
        finally:
            consumer.close()
    return 0


def _consume_loop(args: argparse.Namespace, consumer: sqlog.Consumer, out: Any,
                  render: Callable[[sqlog.Record], bytes]) -> None:
    """Print records until --max-messages, or --timeout-ms with nothing new; commit each printed batch."""
    idle_s = None if args.timeout_ms is None else args.timeout_ms / 1000
    deadline = None if idle_s is None else time.monotonic() + idle_s
    printed = 0
    while args.max_messages is None or printed < args.max_messages:
        _check_reader(out)
        wait_ms = 200.0 if deadline is None else min(200.0, max(0.0, deadline - time.monotonic()) * 1000)
        limit = 500 if args.max_messages is None else min(500, args.max_messages - printed)
        records = consumer.poll(timeout_ms=wait_ms, max_records=limit)
        if not records:
            if deadline is not None and time.monotonic() >= deadline:
                break
            continue
        out.write(b"".join(render(r) for r in records))
        out.flush()
        printed += len(records)
        if args.group is not None:
            # Commit exactly what was printed: the next offset of each partition seen.
            offsets = {sqlog.TopicPartition(r.topic, r.partition): r.offset + 1 for r in records}
            consumer.commit(offsets)
        if idle_s is not None:
            deadline = time.monotonic() + idle_s


def _check_reader(out: Any) -> None:
    """Raise BrokenPipeError once nobody reads stdout (``| head`` exited), even while idle.

    A follower that writes only when a record arrives would otherwise outlive its reader.
    """
    if not hasattr(select, "poll"):
        return
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        return
    poller = select.poll()
    poller.register(fd, 0)  # no events asked for: only POLLERR / POLLHUP / POLLNVAL come back
    for _, revents in poller.poll(0):
        if revents & select.POLLERR:  # a pipe whose read end is closed
            raise BrokenPipeError(32, "stdout reader has gone")


# -- groups ------------------------------------------------------------------------------------
# Consumer groups and share groups (queue mode) are separate namespaces: one id can name both.
KINDS = ("consumer", "share")


def _kinds(args: argparse.Namespace) -> tuple[str, ...]:
    """The group kinds a command looks at: both, or the one --type names."""
    kind = getattr(args, "type", None)
    return KINDS if kind is None else (kind,)


def _unknown_group(group_id: str, kinds: tuple[str, ...]) -> CliError:
    if len(kinds) == 1:
        return CliError(f"unknown {kinds[0]} group {group_id!r}: 'sqlog groups list' lists them")
    return CliError(f"unknown group {group_id!r}: no consumer group or share group has this id; "
                    "'sqlog groups list' lists them")


def _consumer_group(log: sqlog.Log, group_id: str) -> sqlog.GroupDescription | None:
    """The consumer group's description, or None if there is no such consumer group."""
    try:
        return log.describe_group(group_id)
    except sqlog.GroupIdNotFoundError:
        return None


def _share_group(log: sqlog.Log, group_id: str) -> sqlog.ShareGroupDescription | None:
    """The share group's description, or None if there is no such share group."""
    d = log.describe_share_group(group_id)
    return None if d.state == "Dead" else d


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _partitions_text(tps: Iterable[sqlog.TopicPartition]) -> str:
    """Kafka's ASSIGNMENT notation: ``orders(0,2),audit(1)``; "-" for none."""
    by_topic: dict[str, list[int]] = {}
    for tp in sorted(tps):
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    if not by_topic:
        return "-"
    return ",".join(f"{topic}({','.join(map(str, parts))})" for topic, parts in by_topic.items())


def _age_text(ms: int) -> str:
    ms = max(ms, 0)
    return f"{ms / 1000:.1f}s ago" if ms < 60_000 else f"{ms // 1000}s ago"


def _tps_json(tps: Iterable[sqlog.TopicPartition]) -> list[dict[str, Any]]:
    return [{"topic": tp.topic, "partition": tp.partition} for tp in sorted(tps)]


def _group_json(d: sqlog.GroupDescription, now_ms: int) -> dict[str, Any]:
    members = {m.member_id: m for m in d.members}
    return {
        "group": d.group_id,
        "type": "consumer",
        "state": d.state,
        "generation": d.generation,
        "strategy": d.strategy,
        "lag": d.lag,
        "partitions": [
            {"topic": p.topic, "partition": p.partition, "committed_offset": p.committed_offset,
             "log_end_offset": p.log_end_offset, "lag": p.lag, "member_id": p.owner,
             "host": members[p.owner].host if p.owner in members else None,
             "client_id": members[p.owner].client_id if p.owner in members else None,
             "metadata": p.metadata, "skipped": p.skipped}
            for p in d.partitions
        ],
        "members": [
            {"member_id": m.member_id, "client_id": m.client_id, "host": m.host, "pid": m.pid,
             "subscription": list(m.subscription), "assignment": _tps_json(m.assignment),
             "target_assignment": _tps_json(m.target_assignment), "joined_ms": m.joined_ms,
             "last_heartbeat_ms": m.last_heartbeat_ms, "heartbeat_age_ms": max(now_ms - m.last_heartbeat_ms, 0)}
            for m in d.members
        ],
    }


def _share_group_json(d: sqlog.ShareGroupDescription) -> dict[str, Any]:
    return {
        "group": d.group_id,
        "type": "share",
        "state": d.state,
        "lag": d.lag,
        "partitions": [
            {"topic": p.topic, "partition": p.partition, "start_offset": p.start_offset,
             "log_end_offset": p.log_end_offset, "in_flight": p.in_flight,
             "acquired": p.acquired, "available": p.available, "acknowledged": p.acknowledged,
             "archived": p.archived, "dead_lettered": p.dead_lettered, "lag": p.lag}
            for p in d.partitions
        ],
    }


def cmd_groups_list(args: argparse.Namespace) -> int:
    kinds = _kinds(args)
    with _open_log(args) as log:
        listed = sorted([(g, "consumer") for g in (log.list_groups() if "consumer" in kinds else ())]
                        + [(g, "share") for g in (log.list_share_groups() if "share" in kinds else ())])
        if args.format == "json":
            entries = []
            for group_id, kind in listed:
                if kind == "consumer":
                    d = _consumer_group(log, group_id)
                    if d is not None:  # else deleted by another process meanwhile
                        entries.append({"group": d.group_id, "type": kind, "state": d.state,
                                        "generation": d.generation, "members": len(d.members), "lag": d.lag})
                else:
                    s = _share_group(log, group_id)
                    if s is not None:
                        entries.append({"group": s.group_id, "type": kind, "state": s.state,
                                        "generation": None, "members": None, "lag": s.lag})
    if args.format == "json":
        _print_json(entries)
    elif listed:
        print(_table(["GROUP", "TYPE"], [[group_id, kind] for group_id, kind in listed]))
    return 0


def _print_consumer_group(d: sqlog.GroupDescription, now: int) -> None:
    members = {m.member_id: m for m in d.members}
    rows = []
    for p in d.partitions:
        owner = members.get(p.owner) if p.owner is not None else None
        rows.append([d.group_id, p.topic, p.partition, "-" if p.committed_offset is None else p.committed_offset,
                     p.log_end_offset, "-" if p.lag is None else p.lag, p.owner or "-",
                     owner.host if owner else "-", owner.client_id if owner else "-"])
    print(_table(["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "CONSUMER-ID", "HOST",
                  "CLIENT-ID"], rows))
    print()
    if d.members:
        print(_table(["CONSUMER-ID", "HOST", "PID", "CLIENT-ID", "ASSIGNMENT", "TARGET", "LAST-HEARTBEAT"],
                     [[m.member_id, m.host, m.pid, m.client_id, _partitions_text(m.assignment),
                       _partitions_text(m.target_assignment), _age_text(now - m.last_heartbeat_ms)]
                      for m in d.members]))
    else:
        print(f"Consumer group {d.group_id!r} has no active members.")
    print()
    print(f"Group {d.group_id}: state={d.state}  generation={d.generation}  "
          f"strategy={d.strategy or '-'}  members={len(d.members)}  lag={d.lag}")


def _print_share_group(d: sqlog.ShareGroupDescription) -> None:
    print(_table(["GROUP", "TOPIC", "PARTITION", "START-OFFSET", "LOG-END-OFFSET", "IN-FLIGHT", "ACQUIRED",
                  "AVAILABLE", "ACKNOWLEDGED", "ARCHIVED", "DEAD-LETTERED", "LAG"],
                 [[d.group_id, p.topic, p.partition, p.start_offset, p.log_end_offset, p.in_flight, p.acquired,
                   p.available, p.acknowledged, p.archived, p.dead_lettered, p.lag] for p in d.partitions]))
    print()
    print(f"Share group {d.group_id}: state={d.state}  lag={d.lag}")


def cmd_groups_describe(args: argparse.Namespace) -> int:
    kinds = _kinds(args)
    with _open_log(args) as log:
        consumer = _consumer_group(log, args.group) if "consumer" in kinds else None
        share = _share_group(log, args.group) if "share" in kinds else None
    if consumer is None and share is None:
        raise _unknown_group(args.group, kinds)
    now = _now_ms()
    if args.format == "json":
        found = ([_group_json(consumer, now)] if consumer is not None else []) + (
            [_share_group_json(share)] if share is not None else [])
        _print_json(found[0] if len(found) == 1 else found)  # both kinds: a list of the two
        return 0
    if consumer is not None:
        _print_consumer_group(consumer, now)
    if share is not None:
        if consumer is not None:
            print()
        _print_share_group(share)
    return 0


def _refuse_active(group_id: str, members: int) -> CliError:
    return CliError(f"cannot reset offsets of consumer group {group_id!r}: it has {members} live member(s); "
                    "stop its consumers first (as in Kafka, only an inactive group's offsets can be reset)")


def _reset_to(args: argparse.Namespace) -> str | int | None:
    """The ``to`` of `sqlog.Log.reset_group_offsets` that the mode names: "earliest", "latest" or a
    time in ms; None for --to-offset and --shift-by, which that call does not take."""
    if args.to_earliest:
        return "earliest"
    if args.to_latest:
        return "latest"
    if args.to_datetime is not None:
        return max(args.to_datetime, 0)
    return None


def _moved_offsets(args: argparse.Namespace, group: sqlog.GroupDescription | None,
                   tps: list[sqlog.TopicPartition],
                   bounds: dict[int, tuple[int, int]]) -> dict[sqlog.TopicPartition, int]:
    """--to-offset and --shift-by, as ``kafka-consumer-groups`` computes them: clamped to each
    partition's [log start, log end]."""
    def clamp(tp: sqlog.TopicPartition, offset: int) -> int:
        start, end = bounds[tp.partition]
        new = min(max(offset, start), end)
        if new != offset:
            print(f"Note: {tp.topic}-{tp.partition}: offset {offset} is outside its log [{start}, {end}]; "
                  f"clamped to {new}.", file=sys.stderr)
        return new

    if args.to_offset is not None:
        return {tp: clamp(tp, args.to_offset) for tp in tps}
    committed = {} if group is None else {
        sqlog.TopicPartition(p.topic, p.partition): p.committed_offset
        for p in group.partitions if p.committed_offset is not None}
    if not args.partition:  # the whole topic: shift what the group has committed on it
        tps = [tp for tp in tps if tp in committed]
    missing = [tp for tp in tps if tp not in committed]
    if missing or not tps:
        where = f"{missing[0].topic}-{missing[0].partition}" if missing else f"topic {args.topic!r}"
        raise CliError(f"cannot shift: group {args.group!r} has no committed offset on {where} "
                       "(use --to-earliest, --to-latest, --to-offset or --to-datetime)")
    return {tp: clamp(tp, committed[tp] + args.shift_by) for tp in tps}


def cmd_groups_reset_offsets(args: argparse.Namespace) -> int:
    with _open_log(args) as log:
        d = _describe(log, args.topic, args.partition or ())
        tps = [sqlog.TopicPartition(d.name, p) for p in sorted(set(args.partition or range(len(d.partitions))))]
        # As in Kafka, resetting a consumer group that does not exist yet creates it, but not
        # beside a share group of that id.
        group = _consumer_group(log, args.group)
        if group is None and _share_group(log, args.group) is not None:
            raise CliError(f"{args.group!r} is a share group, not a consumer group: reset-offsets moves only "
                           "consumer groups' committed offsets")
        if group is not None and group.members:
            raise _refuse_active(args.group, len(group.members))
        bounds = {p.partition: (p.log_start_offset, p.high_watermark) for p in d.partitions}
        to = _reset_to(args)
        if to is None:
            new = _moved_offsets(args, group, tps, bounds)
            if args.execute:
                log.alter_group_offsets(args.group, new)
        else:
            # One transaction that checks the group is empty, computes and (with --execute) stores them.
            new = log.reset_group_offsets(args.group, to, partitions=tps, dry_run=not args.execute)
    ordered = sorted(new.items())
    if args.format == "json":
        _print_json({"group": args.group, "executed": bool(args.execute),
                     "offsets": [{"topic": tp.topic, "partition": tp.partition, "new_offset": offset}
                                 for tp, offset in ordered]})
    else:
        print(_table(["GROUP", "TOPIC", "PARTITION", "NEW-OFFSET"],
                     [[args.group, tp.topic, tp.partition, offset] for tp, offset in ordered]))
    if not args.execute:
        print("Dry run: no offsets were changed; pass --execute to apply them.", file=sys.stderr)
    return 0


def cmd_groups_delete(args: argparse.Namespace) -> int:
    kinds = _kinds(args)
    deleted, refusals = [], []
    with _open_log(args) as log:
        for kind in kinds:
            try:
                (log.delete_group if kind == "consumer" else log.delete_share_group)(args.group)
            except sqlog.GroupIdNotFoundError:
                continue
            except sqlog.GroupNotEmptyError as exc:
                refusals.append(str(exc))
                continue
            deleted.append(kind)
    for kind in deleted:
        print(f"Deleted {kind} group {args.group}.")
    if refusals:
        raise CliError("; ".join(refusals))
    if not deleted:
        raise _unknown_group(args.group, kinds)
    return 0


# -- upkeep ------------------------------------------------------------------------------------
def cmd_sweep(args: argparse.Namespace) -> int:
    with _open_log(args) as log:
        result = log.sweep()
    deleted = sorted(result.deleted.items())
    if args.format == "json":
        _print_json({
            "deleted": [{"topic": tp.topic, "partition": tp.partition, "records": s.records, "bytes": s.bytes,
                         "compacted_records": s.compacted_records, "compacted_bytes": s.compacted_bytes}
                        for tp, s in deleted],
            "records": result.records, "bytes": result.bytes, "pages_freed": result.pages_freed,
        })
        return 0
    if deleted:
        compacted = sum(s.compacted_bytes for _, s in deleted)
        if not result.compacted_records:
            print(_table(["TOPIC", "PARTITION", "RECORDS", "BYTES"],
                         [[tp.topic, tp.partition, s.records, s.bytes] for tp, s in deleted]))
            print(f"Removed {result.records} records ({result.bytes} bytes); {result.pages_freed} pages freed.")
            return 0
        print(_table(["TOPIC", "PARTITION", "RECORDS", "BYTES", "COMPACTED-RECORDS", "COMPACTED-BYTES"],
                     [[tp.topic, tp.partition, s.records, s.bytes, s.compacted_records, s.compacted_bytes]
                      for tp, s in deleted]))
        print(f"Removed {result.records} records ({result.bytes} bytes) by retention, "
              f"{result.compacted_records} ({compacted} bytes) by compaction; {result.pages_freed} pages freed.")
    else:
        print(f"Nothing to remove; {result.pages_freed} pages freed.")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    """Print a key's latest value in a topic (its table view); exit 1 when it has none."""
    with _open_log(args) as log:
        _describe(log, args.topic)
        table = log.table(args.topic)
        value = table.get(args.key.encode(), _MISSING)
    if value is _MISSING:
        raise CliError(f"no key {args.key!r} in topic {args.topic!r} (never written, or deleted by a tombstone)")
    if args.format == "json":
        _print_json({"topic": args.topic, "key": args.key, "value": _json_bytes(value)})
    else:
        sys.stdout.buffer.write(value + b"\n")
    return 0


_MISSING: Any = object()


def cmd_stats(args: argparse.Namespace) -> int:
    path = _db_path(args)
    with _open_log(args) as log:
        stats = log.stats()
        descriptions = _describe_all(log)
    freelist_bytes = stats["freelist_count"] * stats["page_size"]
    data = {
        "file": os.path.abspath(path),
        "db_bytes": stats["db_bytes"],
        "wal_bytes": stats["wal_bytes"],
        "shm_bytes": stats["shm_bytes"],
        "page_size": stats["page_size"],
        "page_count": stats["page_count"],
        "freelist_count": stats["freelist_count"],
        "freelist_bytes": freelist_bytes,
        "topics": len(descriptions),
        "partitions": sum(len(d.partitions) for d in descriptions),
        "records": sum(p.records for d in descriptions for p in d.partitions),
        "record_bytes": sum(p.bytes for d in descriptions for p in d.partitions),
    }
    if args.format == "json":
        _print_json(data)
        return 0
    lines = [
        ("file", data["file"]),
        ("file size", _human_bytes(stats["db_bytes"])),
        ("WAL size", _human_bytes(stats["wal_bytes"])),
        ("shm size", _human_bytes(stats["shm_bytes"])),
        ("pages", f"{stats['page_count']} of {stats['page_size']} B"),
        ("free pages", f"{stats['freelist_count']} ({_human_bytes(freelist_bytes)})"),
        ("topics", data["topics"]),
        ("partitions", data["partitions"]),
        ("records", data["records"]),
        ("record bytes", _human_bytes(data["record_bytes"])),
    ]
    width = max(len(label) for label, _ in lines) + 1
    for label, value in lines:
        print(f"{label + ':':<{width}} {value}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    with _open_log(args) as log:
        report = log.check()
    for tp, count in sorted(report.unverified.items()):
        print(f"{tp.topic}-{tp.partition}: {count} records written before checksums (not verified)")
    if report.ok:
        print("ok")
        return 0
    for violation in report.violations:
        print(violation)
    return EXIT_ERROR


# -- the parser --------------------------------------------------------------------------------
def _command(subparsers: Any, name: str, summary: str, func: Callable[[argparse.Namespace], int],
             description: str | None = None) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(name, help=summary, description=description or summary)
    parser.set_defaults(func=func, parser=parser)
    return parser


class _SubcommandFormatter(argparse.HelpFormatter):
    """Keeps a long subcommand name (``reset-offsets``) on the same line as its summary.

    argparse measures subcommand names two columns short of where it prints them.
    """

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        subactions = getattr(action, "_get_subactions", None)
        for sub in subactions() if subactions is not None else ():
            width = len(self._format_action_invocation(sub)) + self._current_indent + 2 * self._indent_increment
            self._action_max_length = max(self._action_max_length, width)


def _consume_format(text: str) -> str:
    if text in ("text", "json") or "%" in text:
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: use text, json, or a template with %-codes such as '%p:%o %s\\n'")


def _format_option(parser: argparse.ArgumentParser,
                   summary: str = "text (default): aligned for people; json: one document for scripts") -> None:
    """The --format option of every command that prints: text or json."""
    parser.add_argument("--format", choices=("text", "json"), default="text", help=summary)


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", metavar="NAME=VALUE",
                        help="a topic config under Kafka's name, e.g. cleanup.policy=compact (repeatable): "
                             + ", ".join(TOPIC_CONFIGS))


def _retention_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--retention-ms", type=_retention, metavar="MS",
                        help="delete records older than MS milliseconds (-1 = keep forever)")
    parser.add_argument("--retention-bytes", type=_retention, metavar="B",
                        help="keep at most B bytes per partition, oldest deleted first (-1 = no limit)")
    parser.add_argument("--dedupe-window-ms", type=_retention, metavar="MS",
                        help="send(message_id=...) stores an id once within MS milliseconds (-1 = off, the default)")


def _add_topics(subparsers: Any) -> None:
    topics = subparsers.add_parser("topics", help="create, list, describe, alter and delete topics",
                                   description="Create, list, describe, alter and delete topics.")
    commands = topics.add_subparsers(dest="topics_command", metavar="COMMAND", required=True)

    p = _command(commands, "create", "create a topic", cmd_topics_create,
                 "Create a topic (and the log file, if it does not exist yet).")
    p.add_argument("name", help="topic name: 1 to 249 of letters, digits, '.', '_', '-'")
    p.add_argument("--partitions", type=_positive_int, default=1, metavar="N", help="partition count (default 1)")
    p.add_argument("--if-not-exists", action="store_true",
                   help="succeed quietly if the topic already exists with this partition count")
    _retention_options(p)
    _config_option(p)

    p = _command(commands, "list", "list topics with partitions, records and retention", cmd_topics_list)
    _format_option(p)

    p = _command(commands, "describe", "show a topic's retention and each partition's offsets and size",
                 cmd_topics_describe)
    p.add_argument("name", nargs="?", help="topic name (default: every topic; json: then a list)")
    _format_option(p)

    p = _command(commands, "alter", "grow a topic's partitions or change its retention", cmd_topics_alter,
                 "Grow a topic's partition count (never shrink, as in Kafka) or change its retention.")
    p.add_argument("name", help="topic name")
    p.add_argument("--partitions", type=_positive_int, metavar="N", help="new partition count (only grows)")
    _retention_options(p)
    _config_option(p)

    p = _command(commands, "delete", "delete a topic with its records and committed offsets", cmd_topics_delete)
    p.add_argument("name", help="topic name")


def _add_produce(subparsers: Any) -> None:
    p = _command(subparsers, "produce", "send one record per stdin line to a topic", cmd_produce,
                 "Send one record per line of stdin (without its newline) to an existing topic "
                 "('sqlog topics create' makes it, and the log file); everything is durable when the "
                 "command exits, and the count goes to stderr.")
    p.add_argument("topic", help="topic name")
    p.add_argument("--key-separator", metavar="SEP",
                   help="split each line once at SEP into key and value (a line without SEP is an error)")
    p.add_argument("--partition", type=_non_negative_int, metavar="N",
                   help="send every record to partition N (default: by key hash, or sticky for no key)")
    p.add_argument("--header", type=_header, action="append", metavar="K=V",
                   help="add header K with value V to every record (repeatable)")


def _add_consume(subparsers: Any) -> None:
    p = _command(subparsers, "consume", "print records of a topic, following new ones", cmd_consume,
                 "Print records of a topic, one per line, and keep following new ones (like "
                 "kafka-console-consumer) until --max-messages or --timeout-ms. Text format prints the "
                 "value (key<TAB>value with --print-key; a missing key or value prints as null); "
                 "json prints one object per line with topic, partition, offset, timestamp, key, value "
                 "and headers ([name, value] pairs), bytes that are not UTF-8 as {\"base64\": ...}.")
    p.add_argument("topic", help="topic name")
    p.add_argument("--group", metavar="G",
                   help="consumer group: start from its committed offsets and commit what is printed")
    p.add_argument("--from-beginning", action="store_true",
                   help="start at the log start when there is no committed offset (default: only new records)")
    p.add_argument("--partition", type=_non_negative_int, metavar="N", help="read only partition N")
    p.add_argument("--offset", type=_offset, metavar="O",
                   help="with --partition: start at offset O, 'earliest' or 'latest'")
    p.add_argument("--max-messages", type=_positive_int, metavar="N", help="exit after printing N records")
    p.add_argument("--timeout-ms", type=_non_negative_int, metavar="MS",
                   help="exit after MS milliseconds without a new record (default: follow forever)")
    p.add_argument("--format", type=_consume_format, default="text", metavar="FORMAT",
                   help="text (default), json (one object per line), or a kcat-like template such as "
                        "'%%p:%%o %%k=%%s\\n' (%%t topic, %%p partition, %%o offset, %%T timestamp, %%k key, "
                        "%%s value, %%K/%%S key/value size, %%h headers, %%%% percent; \\n \\t escapes)")
    p.add_argument("--print-key", action="store_true", help="text format: print the key before the value")
    p.add_argument("--print-headers", action="store_true",
                   help="text format: print the headers (name:value,... or NO_HEADERS) before key and value")
    p.add_argument("--print-partition", action="store_true", help="text format: print Partition:N first")
    p.add_argument("--print-offset", action="store_true", help="text format: print Offset:N first")
    p.add_argument("--print-timestamp", action="store_true", help="text format: print CreateTime:MS first")


def _type_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--type", choices=KINDS, help="only consumer groups or only share groups (default: both)")


def _add_groups(subparsers: Any) -> None:
    groups = subparsers.add_parser(
        "groups", help="list, describe, reset offsets of and delete consumer groups and share groups",
        formatter_class=_SubcommandFormatter,
        description="List, describe, reset the committed offsets of, and delete consumer groups "
                    "(like kafka-consumer-groups), and list, describe and delete share groups (queue mode, "
                    "like kafka-share-groups). The two are separate namespaces: one id can name a consumer "
                    "group and a share group, and then describe and delete act on both (--type picks one).")
    commands = groups.add_subparsers(dest="groups_command", metavar="COMMAND", required=True)

    p = _command(commands, "list", "list consumer and share groups with their type", cmd_groups_list,
                 "List the consumer groups (those with live members or committed offsets) and the share "
                 "groups: GROUP and TYPE (consumer or share), sorted by id; --format json adds each group's "
                 "state and total lag, and a consumer group's generation and member count (null for a "
                 "share group).")
    _type_option(p)
    _format_option(p)

    p = _command(commands, "describe", "show a group's offsets, lag, members and state",
                 cmd_groups_describe,
                 "Show a consumer group: per partition its committed offset (CURRENT-OFFSET, '-' when "
                 "nothing is committed), log end offset, lag and owning member; then each live member "
                 "(id, host, pid, client id, partitions owned and meant to own, last heartbeat) and the "
                 "group's state and generation. Show a share group: per partition its start offset "
                 "(everything below is done), log end offset and the records in flight, of them acquired "
                 "(locked by a consumer), available (to deliver again) and archived; then its state and lag. "
                 "An id that names both shows both, consumer group first (--format json: a list of the two).")
    p.add_argument("group", help="group id")
    _type_option(p)
    _format_option(p)

    p = _command(commands, "reset-offsets", "move a consumer group's offsets; dry run unless --execute",
                 cmd_groups_reset_offsets,
                 "Move a consumer group's committed offsets on a topic, like kafka-consumer-groups "
                 "--reset-offsets: by default a dry run that prints the new offsets (GROUP TOPIC PARTITION "
                 "NEW-OFFSET) and changes nothing; --execute applies them. Refused while the group has "
                 "live members. New offsets are clamped to [log start, log end]. Consumer groups only: "
                 "a share group's id (with no consumer group of that id) is an error.")
    p.add_argument("group", help="consumer group id (a group that does not exist yet is created by --execute)")
    p.add_argument("--topic", required=True, metavar="T", help="the topic whose offsets move")
    p.add_argument("--partition", type=_non_negative_int, action="append", metavar="N",
                   help="only partition N (repeatable; default: every partition of the topic)")
    to = p.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true", help="to the log start offset")
    to.add_argument("--to-latest", action="store_true", help="to the log end offset (skip everything stored)")
    to.add_argument("--to-offset", type=_non_negative_int, metavar="N", help="to offset N")
    to.add_argument("--to-datetime", type=_iso_datetime, metavar="ISO8601",
                    help="to the first record at or after this time, or the log end if none (e.g. "
                         "2024-05-01T12:00:00 in local time, or with Z / +02:00)")
    to.add_argument("--shift-by", type=_int, metavar="N",
                    help="move the committed offset by N (negative: back); without --partition, only "
                         "the partitions the group has committed move")
    run = p.add_mutually_exclusive_group()
    run.add_argument("--dry-run", action="store_true", help="only print the new offsets (the default)")
    run.add_argument("--execute", action="store_true", help="store the new offsets")
    _format_option(p)

    p = _command(commands, "delete", "delete an inactive group and its offsets or share state",
                 cmd_groups_delete,
                 "Delete a consumer group with its committed offsets (refused while it has live members) "
                 "and/or a share group with its state (refused while a consumer holds one of its records "
                 "under a lock): whichever of the two exists, both if both (--type picks one).")
    p.add_argument("group", help="group id")
    _type_option(p)


def _add_get(subparsers: Any) -> None:
    p = _command(subparsers, "get", "print a key's latest value in a topic (the topic as a table)", cmd_get,
                 "Print the latest value of KEY in TOPIC: what log.table(TOPIC)[KEY] returns (an index "
                 "lookup on compacted topics). Exit 1 when the key has no value (never written, or deleted).")
    p.add_argument("topic", help="topic name")
    p.add_argument("key", help="the key, as text (its UTF-8 bytes)")
    _format_option(p)


def _add_upkeep(subparsers: Any) -> None:
    p = _command(subparsers, "sweep", "apply retention now; print what was removed and pages freed", cmd_sweep)
    _format_option(p)
    p = _command(subparsers, "stats", "show file, WAL and free-page sizes, topics and records", cmd_stats)
    _format_option(p)
    _command(subparsers, "check", "verify the file and sqlog's invariants (exit 1 on any violation)", cmd_check,
             "Run SQLite's integrity check and sqlog's own (dense offsets, batch index, byte counts, "
             "committed offsets); print 'ok', or each violation and exit 1.")


def _server() -> Any:
    """The ``sqlog.server`` subpackage, which needs the kafka extra."""
    try:
        import sqlog.server
    except ImportError as exc:
        raise CliError(f"sqlog serve needs the kafka extra ({exc.name} is missing): "
                       "pip install 'sqlog[kafka]'") from None
    return sqlog.server


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the Kafka protocol over the log until SIGINT/SIGTERM."""
    if args.tls_key and not args.tls_cert:
        args.parser.error("--tls-key needs --tls-cert")
    _server().serve(_db_path(args), args.host, args.port, allow_anonymous=args.allow_anonymous,
                    auto_create_partitions=args.auto_create_partitions, sasl=args.sasl, tls_cert=args.tls_cert,
                    tls_key=args.tls_key, advertised_host=args.advertised_host)
    return 0


def _read_password(args: argparse.Namespace) -> str:
    """The new password: stdin's first line with --password-stdin, else typed twice at the terminal."""
    if args.password_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    if not sys.stdin.isatty():
        raise CliError("stdin is not a terminal: pass the password on stdin with --password-stdin")
    import getpass

    password = getpass.getpass(f"Password for {args.name}: ")
    if getpass.getpass("Again: ") != password:
        raise CliError("the two passwords differ; nothing was changed")
    return password


def cmd_users_add(args: argparse.Namespace) -> int:
    server = _server()
    password = _read_password(args)
    with _open_log(args, create=True) as log:
        existed = any(u.name == args.name for u in server.list_users(log))
        user = server.add_user(log, args.name, password,
                               **({} if args.iterations is None else {"iterations": args.iterations}))
    print(f"{'Changed the password of' if existed else 'Added'} user {user.name} "
          f"({user.mechanism}, {user.iterations} iterations).")
    return 0


def cmd_users_remove(args: argparse.Namespace) -> int:
    with _open_log(args) as log:
        _server().remove_user(log, args.name)
    print(f"Removed user {args.name}.")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    with _open_log(args) as log:
        users = _server().list_users(log)
    if args.format == "json":
        _print_json([{"name": u.name, "mechanism": u.mechanism, "iterations": u.iterations} for u in users])
    elif users:
        print(_table(["USER", "MECHANISM", "ITERATIONS"], [[u.name, u.mechanism, u.iterations] for u in users]))
    return 0


def _add_users(subparsers: Any) -> None:
    users = subparsers.add_parser(
        "users", help="add, remove and list the users sqlog serve authenticates (SASL)",
        description="Add, remove and list the users 'sqlog serve --sasl' lets in (SASL/PLAIN and "
                    "SASL/SCRAM-SHA-256, like kafka-configs --alter --entity-type users). Passwords are "
                    "stored only as salted SCRAM-SHA-256 keys (PBKDF2-HMAC-SHA-256) in the log file. A running "
                    "server sees changes at the next login. Needs sqlog[kafka].")
    commands = users.add_subparsers(dest="users_command", metavar="COMMAND", required=True)
    p = _command(commands, "add", "add a user, or set a new password for one", cmd_users_add,
                 "Add a user, or set a new password for an existing one. The password is typed twice at "
                 "the terminal, or read from the first line of stdin with --password-stdin.")
    p.add_argument("name", help="user name (sasl.username in the client)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin's first line")
    p.add_argument("--iterations", type=int, metavar="N",
                   help="PBKDF2 iterations, 4096 to 16384 (default 8192)")
    p = _command(commands, "remove", "remove a user (its open connections stay open)", cmd_users_remove)
    p.add_argument("name", help="user name")
    p = _command(commands, "list", "list the users with their mechanism and iterations", cmd_users_list)
    _format_option(p)


def _add_serve(subparsers: Any) -> None:
    p = _command(subparsers, "serve", "serve the Kafka protocol over the log (for any Kafka client)", cmd_serve,
                 "A Kafka broker endpoint (one broker, id 0) over the log file: kafka-python, confluent-kafka "
                 "and other Kafka clients produce, fetch, commit and join groups through it. Prints "
                 "'listening on HOST:PORT' when ready; stops on SIGINT/SIGTERM. Listens on 127.0.0.1 unless --host; "
                 "any other address needs --sasl with --tls-cert/--tls-key (users from 'sqlog users add'), or "
                 "--allow-anonymous. Needs sqlog[kafka].")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=9092, help="port (default: 9092; 0 picks a free one)")
    p.add_argument("--allow-anonymous", action="store_true",
                   help="allow listening on a non-loopback address without authentication")
    p.add_argument("--sasl", action="store_true",
                   help="clients must log in (SASL PLAIN or SCRAM-SHA-256) as a user from 'sqlog users add'; "
                        "needs --tls-cert off loopback")
    p.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain (PEM)")
    p.add_argument("--tls-key", metavar="PEM", help="the certificate's private key (default: in --tls-cert)")
    p.add_argument("--advertised-host", metavar="HOST",
                   help="the host clients are told to connect to (default: --host; 127.0.0.1 for 0.0.0.0)")
    p.add_argument("--auto-create-partitions", type=int, metavar="N", default=None,
                   help="create unknown topics clients name, with N partitions (default: off)")


def _config_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE (a librdkafka property), not {text!r}")
    return key, value


def _progress_line(progress: Any) -> str:
    lag = " ".join(f"{t}={n}" for t, n in progress.lag_by_topic().items()) or "-"
    line = (f"{progress.direction}: {progress.state}, {progress.records} records ({progress.records_per_s:.0f}/s), "
            f"lag {lag}")
    if progress.skipped:
        line += f", {progress.skipped} skipped by retention"
    if progress.retries:
        line += f", {progress.retries} retries"
    if progress.last_error and progress.state != "done":
        line += f", last error: {progress.last_error}"
    return line


def cmd_mirror(args: argparse.Namespace) -> int:
    """Run ``sqlog.mirror.push`` or ``pull`` until done (--once) or SIGTERM/SIGINT, printing progress."""
    import logging
    import signal

    try:
        from . import mirror
    except ImportError as exc:
        raise CliError(f"sqlog mirror needs the mirror extra ({exc.name} is missing): "
                       "pip install 'sqlog[mirror]'") from None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("sqlog: %(levelname)s: %(message)s"))
    logging.getLogger("sqlog").addHandler(handler)
    logging.getLogger("sqlog").setLevel(logging.INFO if args.verbose else logging.WARNING)
    logging.getLogger("sqlog.mirror.librdkafka").setLevel(logging.INFO if args.verbose else logging.CRITICAL)
    path = _db_path(args)
    if args.mirror_command == "push" and not os.path.exists(path):
        raise CliError(f"no such log: {path}")
    config = dict(args.config or [])
    with sqlog.open(path) as log:
        if args.mirror_command == "push":
            handle = mirror.push(log, args.bootstrap_servers, args.topic, remote_topic_prefix=args.remote_topic_prefix,
                                 group=args.group, exactly_once=args.exactly_once,
                                 transactional_id=args.transactional_id, once=args.once, config=config)
        else:
            handle = mirror.pull(log, args.bootstrap_servers, args.topic, group=args.group, once=args.once,
                                 config=config)
        previous = {sig: signal.signal(sig, lambda *_: handle.stop()) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            def show(progress: Any) -> None:
                print(json.dumps(progress.to_dict()) if args.format == "json" else _progress_line(progress),
                      flush=True)

            while handle.running:
                handle.join(args.progress_interval)
                if handle.running:
                    show(handle.progress())
            show(handle.join())
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
    return 0


def _add_mirror(subparsers: Any) -> None:
    mirror = subparsers.add_parser(
        "mirror", help="push local topics to a Kafka cluster, or pull the cluster's topics into the log",
        formatter_class=_SubcommandFormatter,
        description="Bridge the log and a Kafka cluster (confluent-kafka; needs sqlog[mirror]). push forwards "
                    "every record of local topics, partition p to partition p, with its cursor in the log as "
                    "a consumer group (sqlog groups describe GROUP); pull appends the cluster's records with the "
                    "remote offsets stored in the same SQLite transaction. Both retry with backoff while the "
                    "cluster is unreachable, print a progress line every few seconds, and stop cleanly on "
                    "SIGTERM/SIGINT (exit 0); --once ends at the end offsets seen at the start. Exit 1 on an "
                    "error the mirror cannot retry (e.g. a remote topic with too few partitions).")
    commands = mirror.add_subparsers(dest="mirror_command", metavar="COMMAND", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--bootstrap-servers", required=True, metavar="HOST:PORT[,...]", help="the cluster")
        p.add_argument("--topic", action="append", required=True, metavar="TOPIC", help="a topic (repeatable)")
        p.add_argument("--once", action="store_true", help="mirror what is there now, then exit 0")
        p.add_argument("--config", action="append", type=_config_pair, metavar="KEY=VALUE",
                       help="a librdkafka property (security, compression, linger; repeatable)")
        p.add_argument("--progress-interval", type=float, default=5.0, metavar="SECONDS",
                       help="seconds between progress lines (default: 5)")
        p.add_argument("-v", "--verbose", action="store_true", help="also log librdkafka's and the mirror's info lines")
        _format_option(p, "progress lines as text or JSON objects")

    p = _command(commands, "push", "forward local topics' records to the cluster (at-least-once, or exactly-once)",
                 cmd_mirror,
                 "Forward every record of the local --topics to the cluster: partition p to partition p of "
                 "PREFIX+topic (created with the local partition count when missing; fewer remote partitions is "
                 "an error), keys, values, headers and timestamps unchanged. The cursor is the local consumer "
                 "group --group, advanced once the cluster acknowledged (acks=all, idempotent producer). "
                 "--exactly-once: a transactional producer commits each batch with its progress on the cluster "
                 "(transactional offsets of the group --transactional-id), read back after a restart.")
    common(p)
    p.add_argument("--remote-topic-prefix", default="", metavar="PREFIX", help="prefix of the remote topic names")
    p.add_argument("--group", default="sqlog-mirror", help="the local group holding the cursor (default: sqlog-mirror)")
    p.add_argument("--exactly-once", action="store_true", help="transactional producer, progress kept on the cluster")
    p.add_argument("--transactional-id", default=None,
                   help="--exactly-once: the producer's transactional.id and cluster group (default: GROUP.HOSTNAME)")
    p = _command(commands, "pull", "append the cluster's records to local topics, exactly once", cmd_mirror,
                 "Consume the --topics from the cluster (read_committed) and append them to the same-named local "
                 "topics (created with the remote partition count when missing), partition p to partition p, with "
                 "the remote offsets stored as the local group --group's committed offsets in the same SQLite "
                 "transaction: a crash neither loses nor duplicates a record. The offsets are also committed to "
                 "the cluster's group --group.")
    common(p)
    p.add_argument("--group", required=True, help="the consumer group, on the cluster and in the log")


COMMANDS: tuple[Callable[[Any], None], ...] = (_add_topics, _add_produce, _add_consume, _add_get, _add_groups,
                                               _add_upkeep, _add_serve, _add_users, _add_mirror)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sqlog",
        description="Kafka's event log on one SQLite file: topics, produce, consume, consumer and share groups "
                    "and upkeep.",
        epilog=f"The log file comes from --db or the {ENV_DB} environment variable.",
    )
    parser.add_argument("--db", metavar="PATH", help=f"the log file (default: ${ENV_DB})")
    parser.add_argument("--version", action="version", version=f"%(prog)s {sqlog.__version__}")
    parser.set_defaults(parser=parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(subparsers)
    return parser


def _error(message: str) -> None:
    print(f"sqlog: error: {message}", file=sys.stderr)


def _quiet_stdout() -> None:
    """After EPIPE: point stdout at devnull so the interpreter's final flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        status = args.func(args)
        sys.stdout.flush()
        return status
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except CliError as exc:
        _error(str(exc))
    except sqlog.SqlogError as exc:
        _error(str(exc))
    except OSError as exc:
        _error(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
