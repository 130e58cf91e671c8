"""Option checks and limits shared by the log and its clients, so each rule and its message
exist once: unknown config keys, int ranges, timeouts and file paths."""

from __future__ import annotations

import math
import os
from typing import Any

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
