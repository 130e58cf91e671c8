"""The exception hierarchy: every error sqlog raises is a `SqlogError`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import apsw


class SqlogError(Exception):
    """Base class of every error sqlog raises."""


class InvalidConfigError(SqlogError, ValueError):
    """A configuration key is unknown or its value is out of range."""


class InvalidTopicError(SqlogError, ValueError):
    """A topic name breaks Kafka's rule: 1 to 249 of ``[A-Za-z0-9._-]``, not ``.`` or ``..``."""


class UnknownTopicOrPartitionError(SqlogError):
    """The topic does not exist, or has no such partition."""


class TopicAlreadyExistsError(SqlogError):
    """``create_topic`` was given the name of an existing topic."""


class InvalidPartitionsError(SqlogError, ValueError):
    """A partition count is not positive, or would shrink a topic."""


class RecordTooLarge(SqlogError):
    """A record's key, value and headers exceed the producer's ``max_record_bytes``."""


class InvalidRecordError(SqlogError, ValueError):
    """A record the topic refuses, e.g. one without a key sent to a compacted topic (Kafka's
    InvalidRecordException)."""


class SerializationError(SqlogError):
    """A key or value could not be turned into bytes, or back."""


class OffsetOutOfRange(SqlogError):
    """A position is outside ``[log_start_offset, high_watermark]`` and ``auto_offset_reset`` is "none"."""


class CommitFailedError(SqlogError):
    """An offset commit was refused and not applied."""


class GroupNotEmptyError(SqlogError):
    """A group admin change was refused because the group has live members; stop them (or wait for them to expire)."""


class GroupIdNotFoundError(SqlogError):
    """No consumer group of that id exists (no members and no committed offsets)."""


class InconsistentGroupProtocolError(SqlogError):
    """A consumer joined with a ``partition_assignment_strategy`` other than the live members'."""


class IllegalStateError(SqlogError):
    """A call made in the wrong state, e.g. ``poll()`` before ``subscribe()``/``assign()``."""


class LogClosedError(SqlogError):
    """The log, producer or consumer has been closed."""


class NotASqlogLogError(SqlogError):
    """The file exists but is not a sqlog log (another SQLite database, or not SQLite at all)."""


class SchemaTooNewError(SqlogError):
    """The file was written by a newer sqlog whose schema this version does not know."""


class DiskFullError(SqlogError):
    """The disk (or the database's page limit) is full; nothing in the failed write was stored."""


class DatabaseLockedError(SqlogError):
    """Another connection held the write lock for longer than ``busy_timeout_ms``."""


class ReadOnlyError(SqlogError):
    """The log's file or directory cannot be written."""


class StorageError(SqlogError):
    """SQLite reported an I/O or corruption error."""


class CorruptRecordError(StorageError):
    """A stored record does not match its checksum: it changed on disk after it was written.

    ``topic``, ``partition`` and ``offset`` name it; ``seek()`` past it to read on, and run
    ``sqlog check`` to list every damaged record.
    """

    def __init__(self, message: str, topic: str, partition: int, offset: int) -> None:
        super().__init__(message)
        self.topic = topic
        self.partition = partition
        self.offset = offset


class SqlogTimeoutError(SqlogError, TimeoutError):
    """An operation did not finish within the timeout it was given."""


class InvalidRecordStateError(CommitFailedError):
    """Share-group acknowledgements refused: the record's lock had expired and it was delivered
    again (or archived, or removed by retention). Nothing of those records was applied; the
    other acknowledgements in the same commit were. ``records`` lists the refused ones."""

    def __init__(self, message: str, records: tuple[Any, ...] = ()) -> None:
        super().__init__(message)
        self.records = records

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.args[0], self.records)


def damaged_advice(path: str) -> str:
    """What to do about a damaged file: said by every error that reports damage."""
    return (f"run `sqlog --db {path} check` (or log.check()) to list what is wrong, "
            "and restore the log from a copy taken before the damage")


@contextlib.contextmanager
def translated(path: str) -> Iterator[None]:
    """Turn apsw's errors into sqlog's, with a message that says what to do."""
    try:
        yield
    except SqlogError:
        raise
    except apsw.FullError as exc:
        raise DiskFullError(
            f"{path}: the disk is full (or the page limit is reached); free space and retry"
        ) from exc
    except apsw.BusyError as exc:
        raise DatabaseLockedError(
            f"{path}: another process held the database lock past busy_timeout_ms; "
            "retry, or raise busy_timeout_ms"
        ) from exc
    except apsw.NotADBError as exc:
        raise NotASqlogLogError(f"{path}: not a sqlog log (not an SQLite database)") from exc
    except apsw.ReadOnlyError as exc:
        raise ReadOnlyError(
            f"{path}: the log is read-only; check permissions on the file and its directory"
        ) from exc
    except apsw.CantOpenError as exc:
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise StorageError(
                f"{path}: the directory {directory} does not exist; create it first "
                "(sqlog.open creates the log file, not its directory)"
            ) from exc
        if not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK) or (
            os.path.exists(path) and not os.access(path, os.W_OK)
        ):
            raise ReadOnlyError(
                f"{path}: the log is read-only; check permissions on the file and its directory"
            ) from exc
        raise StorageError(
            f"{path}: cannot open the log; check that the directory exists and is writable"
        ) from exc
    except apsw.CorruptError as exc:
        raise StorageError(f"{path}: the file is damaged (SQLite: {exc}); {damaged_advice(path)}") from exc
    except apsw.IOError as exc:
        raise StorageError(f"{path}: SQLite reported {type(exc).__name__}: {exc}") from exc
    except UnicodeDecodeError as exc:  # TEXT that is not UTF-8: only a damaged cell holds that
        raise StorageError(f"{path}: damaged text in the file ({exc}); {damaged_advice(path)}") from exc
    except apsw.ConnectionClosedError as exc:
        raise LogClosedError(f"{path}: the log is closed") from exc


class ProducerFencedError(SqlogError):
    """A newer producer with the same ``transactional_id`` called ``init_transactions()``: this one is a zombie."""


class TransactionAbortedError(SqlogError):
    """The transaction was aborted (e.g. it outlived ``transaction_timeout_ms``): nothing of it is visible."""


class TransactionTooLargeError(SqlogError):
    """A transaction's records passed ``max_transaction_bytes``: commit what it holds, or abort."""

