"""Serializers (objects to bytes and back) and the stored form of record headers."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from .errors import InvalidConfigError, SerializationError
from .types import Headers

_BYTES_LIKE = (bytes, bytearray, memoryview)


@attrs.frozen
class Serde:
    """A pair of functions: ``serialize`` (object -> bytes) and ``deserialize`` (bytes -> object)."""

    serialize: Callable[[Any], bytes]
    deserialize: Callable[[bytes], Any]


def _json_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


JSON = Serde(_json_dumps, json.loads)
"""JSON documents, UTF-8 encoded and compact."""

STRING = Serde(str.encode, bytes.decode)
"""Text as UTF-8."""


def serde_function(spec: Serde | Callable[[Any], Any] | None, what: str, direction: str) -> Callable[[Any], Any] | None:
    """The function a config value names: ``what`` is e.g. "value_serializer"; ``direction`` is
    "serialize" or "deserialize" (the half of a `Serde` to use); None means bytes as they are."""
    if spec is None:
        return None
    if isinstance(spec, Serde):
        return getattr(spec, direction)  # type: ignore[no-any-return]
    if callable(spec):
        return spec
    raise InvalidConfigError(f"{what} must be sqlog.JSON, sqlog.STRING, a Serde or a callable, not {spec!r}")


def to_bytes(obj: Any, fn: Callable[[Any], bytes] | None, what: str) -> bytes | None:
    """Serialize ``obj`` (``None`` stays ``None``, a tombstone) and check the result is bytes."""
    if obj is None:
        return None
    if fn is not None:
        try:
            obj = fn(obj)
        except Exception as exc:
            raise SerializationError(f"{what} serializer failed on {type(obj).__name__}: {exc}") from exc
    if type(obj) is bytes:
        return obj
    if isinstance(obj, _BYTES_LIKE):
        return bytes(obj)
    raise SerializationError(
        f"{what} must be bytes, not {type(obj).__name__}; "
        f"set {what}_serializer (e.g. sqlog.JSON or sqlog.STRING)"
    )


_HDR = struct.Struct(">Hi")


def encode_headers(headers: Iterable[tuple[str, bytes | None]] | None) -> bytes | None:
    """Pack headers as (u16 key length, i32 value length or -1 for None, key, value) entries."""
    if not headers:
        return None
    if isinstance(headers, (Mapping, str, bytes, bytearray)):
        raise SerializationError(
            f"headers must be a list of (str, bytes) pairs; got a {type(headers).__name__}"
            + ("; pass list(headers.items())" if isinstance(headers, Mapping) else "")
        )
    out = bytearray()
    try:
        pairs = list(headers)
    except TypeError as exc:
        raise SerializationError("headers must be a list of (str, bytes) pairs") from exc
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise SerializationError(f"headers must be (str, bytes) pairs, got {pair!r}")
        key, value = pair
        if not isinstance(key, str):
            raise SerializationError(f"a header key must be str, not {type(key).__name__}")
        kb = key.encode("utf-8", "surrogatepass")
        if len(kb) > 0xFFFF:
            raise SerializationError("a header key must be under 64 KiB")
        if value is None:
            out += _HDR.pack(len(kb), -1) + kb
        elif isinstance(value, _BYTES_LIKE):
            out += _HDR.pack(len(kb), len(value)) + kb + bytes(value)
        else:
            raise SerializationError(
                f"header {key!r} must have a bytes value (or None), not {type(value).__name__}"
            )
    return bytes(out) if pairs else None


def decode_headers(blob: bytes | None) -> Headers:
    """Unpack what ``encode_headers`` stored."""
    if not blob:
        return ()
    out = []
    pos, end = 0, len(blob)
    while pos < end:
        klen, vlen = _HDR.unpack_from(blob, pos)
        pos += _HDR.size
        key = blob[pos : pos + klen].decode("utf-8", "surrogatepass")
        pos += klen
        if vlen < 0:
            out.append((key, None))
        else:
            out.append((key, blob[pos : pos + vlen]))
            pos += vlen
    return tuple(out)
