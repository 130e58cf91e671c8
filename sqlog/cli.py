"""The ``sqlog`` console script: topics, produce, consume and upkeep over the public API.

Kafka users reach for ``kafka-topics``, ``kafka-console-producer``, ``kafka-console-consumer``
and ``kcat``; this is the same at hand for one sqlog file::

    sqlog --db app.db topics create orders --partitions 3
    printf 'user-7:hello\\n' | sqlog --db app.db produce orders --key-separator :
    sqlog --db app.db consume orders --from-beginning --print-key --timeout-ms 1000

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
import select
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def _describe(log: sqlog.Log, topic: str) -> sqlog.TopicDescription:
    """The topic's description; an unknown topic gets a message that names the CLI's fix."""
    try:
        return log.describe_topic(topic)
    except sqlog.UnknownTopicOrPartitionError:
        raise CliError(f"unknown topic {topic!r}: create it with 'sqlog topics create {topic}'") from None


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


def _retention_text(description: sqlog.TopicDescription) -> str:
    nbytes = description.retention_bytes
    return (f"retention.ms={_human_ms(description.retention_ms)}  "
            f"retention.bytes={'forever' if nbytes is None else nbytes}")


def _topic_json(d: sqlog.TopicDescription) -> dict[str, Any]:
    return {
        "name": d.name,
        "retention_ms": d.retention_ms,
        "retention_bytes": d.retention_bytes,
        "records": sum(p.records for p in d.partitions),
        "bytes": sum(p.bytes for p in d.partitions),
        "partitions": [
            {"partition": p.partition, "log_start_offset": p.log_start_offset,
             "high_watermark": p.high_watermark, "records": p.records, "bytes": p.bytes}
            for p in d.partitions
        ],
    }


# -- topics ------------------------------------------------------------------------------------
def cmd_topics_create(args: argparse.Namespace) -> int:
    with _open_log(args, create=True) as log:
        log.create_topic(args.name, partitions=args.partitions, retention_ms=args.retention_ms,
                         retention_bytes=args.retention_bytes)
    print(f"Created topic {args.name}.")
    return 0


def cmd_topics_list(args: argparse.Namespace) -> int:
    with _open_log(args) as log:
        descriptions = []
        for name in log.list_topics():
            try:
                descriptions.append(log.describe_topic(name))
            except sqlog.UnknownTopicOrPartitionError:
                continue  # deleted by another process meanwhile
    if args.format == "json":
        _print_json([_topic_json(d) for d in descriptions])
    elif descriptions:
        rows = [[d.name, len(d.partitions), sum(p.records for p in d.partitions), sum(p.bytes for p in d.partitions),
                 "forever" if d.retention_ms is None else d.retention_ms,
                 "forever" if d.retention_bytes is None else d.retention_bytes] for d in descriptions]
        print(_table(["TOPIC", "PARTITIONS", "RECORDS", "BYTES", "RETENTION-MS", "RETENTION-BYTES"], rows))
    return 0


def cmd_topics_describe(args: argparse.Namespace) -> int:
    with _open_log(args) as log:
        d = _describe(log, args.name)
    if args.format == "json":
        _print_json(_topic_json(d))
        return 0
    print(f"Topic: {d.name}  partitions={len(d.partitions)}  {_retention_text(d)}")
    rows = [[p.partition, p.log_start_offset, p.high_watermark, p.records, p.bytes] for p in d.partitions]
    print(_table(["PARTITION", "LOG-START", "HIGH-WATERMARK", "RECORDS", "BYTES"], rows))
    return 0


def cmd_topics_alter(args: argparse.Namespace) -> int:
    changes = {k: v for k, v in (("partitions", args.partitions), ("retention_ms", args.retention_ms),
                                 ("retention_bytes", args.retention_bytes)) if v is not None}
    if not changes:
        args.parser.error("nothing to alter: give --partitions, --retention-ms or --retention-bytes")
    with _open_log(args) as log:
        _describe(log, args.name)
        d = log.alter_topic(args.name, **changes)
    print(f"Altered topic {d.name}: partitions={len(d.partitions)}  {_retention_text(d)}")
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
    with _open_log(args, create=True) as log:
        d = _describe(log, args.topic)
        if args.partition is not None and args.partition >= len(d.partitions):
            raise CliError(f"topic {args.topic!r} has partitions 0..{len(d.partitions) - 1}, not {args.partition}")
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


def _text_line(record: sqlog.Record, print_key: bool) -> bytes:
    value = b"null" if record.value is None else record.value
    if print_key:
        return (b"null" if record.key is None else record.key) + b"\t" + value + b"\n"
    return value + b"\n"


def cmd_consume(args: argparse.Namespace) -> int:
    if args.offset is not None and args.partition is None:
        args.parser.error("--offset needs --partition")
    if args.offset is not None and args.from_beginning:
        args.parser.error("--offset and --from-beginning cannot be used together")
    out = sys.stdout.buffer
    render: Callable[[sqlog.Record], bytes]
    if args.format == "json":
        render = _json_line
    else:
        render = lambda r: _text_line(r, args.print_key)  # noqa: E731
    with _open_log(args) as log:
        d = _describe(log, args.topic)
        if args.partition is not None and args.partition >= len(d.partitions):
            raise CliError(f"topic {args.topic!r} has partitions 0..{len(d.partitions) - 1}, not {args.partition}")
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


# -- upkeep ------------------------------------------------------------------------------------
def cmd_sweep(args: argparse.Namespace) -> int:
    with _open_log(args) as log:
        result = log.sweep()
    deleted = sorted(result.deleted.items())
    if args.format == "json":
        _print_json({
            "deleted": [{"topic": tp.topic, "partition": tp.partition, "records": s.records, "bytes": s.bytes}
                        for tp, s in deleted],
            "records": result.records, "bytes": result.bytes, "pages_freed": result.pages_freed,
        })
        return 0
    if deleted:
        print(_table(["TOPIC", "PARTITION", "RECORDS", "BYTES"],
                     [[tp.topic, tp.partition, s.records, s.bytes] for tp, s in deleted]))
        print(f"Removed {result.records} records ({result.bytes} bytes); {result.pages_freed} pages freed.")
    else:
        print(f"Nothing to remove; {result.pages_freed} pages freed.")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    path = _db_path(args)
    with _open_log(args) as log:
        stats = log.stats()
        descriptions = []
        for name in log.list_topics():
            try:
                descriptions.append(log.describe_topic(name))
            except sqlog.UnknownTopicOrPartitionError:
                continue
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


def _format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="text (default): aligned for people; json: one document for scripts")


def _retention_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--retention-ms", type=_retention, metavar="MS",
                        help="delete records older than MS milliseconds (-1 = keep forever)")
    parser.add_argument("--retention-bytes", type=_retention, metavar="B",
                        help="keep at most B bytes per partition, oldest deleted first (-1 = no limit)")


def _add_topics(subparsers: Any) -> None:
    topics = subparsers.add_parser("topics", help="create, list, describe, alter and delete topics",
                                   description="Create, list, describe, alter and delete topics.")
    commands = topics.add_subparsers(dest="topics_command", metavar="COMMAND", required=True)

    p = _command(commands, "create", "create a topic", cmd_topics_create,
                 "Create a topic (and the log file, if it does not exist yet).")
    p.add_argument("name", help="topic name: 1 to 249 of letters, digits, '.', '_', '-'")
    p.add_argument("--partitions", type=_positive_int, default=1, metavar="N", help="partition count (default 1)")
    _retention_options(p)

    p = _command(commands, "list", "list topics with partitions, records and retention", cmd_topics_list)
    _format_option(p)

    p = _command(commands, "describe", "show a topic's config and each partition's offsets, records and bytes",
                 cmd_topics_describe)
    p.add_argument("name", help="topic name")
    _format_option(p)

    p = _command(commands, "alter", "grow a topic's partitions or change its retention", cmd_topics_alter,
                 "Grow a topic's partition count (never shrink, as in Kafka) or change its retention.")
    p.add_argument("name", help="topic name")
    p.add_argument("--partitions", type=_positive_int, metavar="N", help="new partition count (only grows)")
    _retention_options(p)

    p = _command(commands, "delete", "delete a topic with its records and committed offsets", cmd_topics_delete)
    p.add_argument("name", help="topic name")


def _add_produce(subparsers: Any) -> None:
    p = _command(subparsers, "produce", "send one record per stdin line to a topic", cmd_produce,
                 "Send one record per line of stdin (without its newline) to a topic; everything is "
                 "durable when the command exits, and the count goes to stderr. A missing log file is "
                 "created (empty), so create the topic first.")
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
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text (default) or json (one object per line)")
    p.add_argument("--print-key", action="store_true", help="text format: print key<TAB>value")


def _add_groups(subparsers: Any) -> None:
    """Consumer-group admin (``groups list|describe|reset-offsets|delete``) registers here.

    It is being built on another branch; nothing is registered until it lands whole.
    """


def _add_upkeep(subparsers: Any) -> None:
    p = _command(subparsers, "sweep", "apply retention now; print what was removed and pages freed", cmd_sweep)
    _format_option(p)
    p = _command(subparsers, "stats", "show file, WAL and free-page sizes, topics and records", cmd_stats)
    _format_option(p)
    _command(subparsers, "check", "verify the file and sqlog's invariants (exit 1 on any violation)", cmd_check,
             "Run SQLite's integrity check and sqlog's own (dense offsets, batch index, byte counts, "
             "committed offsets); print 'ok', or each violation and exit 1.")


COMMANDS: tuple[Callable[[Any], None], ...] = (_add_topics, _add_produce, _add_consume, _add_groups, _add_upkeep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sqlog",
        description="Kafka's event log on one SQLite file: topics, produce, consume and upkeep.",
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
