"""Kafka's wire primitives: big-endian integers, strings, arrays, varints, tagged fields.

`Reader` raises `Malformed` (a `sqlog.SqlogError`) on anything that runs past the end or is
absurd, so a bad request closes its connection and nothing else.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import SqlogError

T = TypeVar("T")

_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")

MAX_ARRAY = 1 << 20
"""Most elements any array in a request may claim: more is an absurd size, not a request."""


class Malformed(SqlogError):
    """A request that cannot be parsed: the server closes that connection."""


class Reader:
    """Reads one request's fields in order from a bytes buffer."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos

    def _take(self, n: int) -> int:
        pos = self.pos
        if n < 0 or pos + n > len(self.buf):
            raise Malformed(f"request truncated: wanted {n} bytes at {pos} of {len(self.buf)}")
        self.pos = pos + n
        return pos

    def int8(self) -> int:
        return int(_I8.unpack_from(self.buf, self._take(1))[0])

    def int16(self) -> int:
        return int(_I16.unpack_from(self.buf, self._take(2))[0])

    def int32(self) -> int:
        return int(_I32.unpack_from(self.buf, self._take(4))[0])

    def int64(self) -> int:
        return int(_I64.unpack_from(self.buf, self._take(8))[0])

    def boolean(self) -> bool:
        return self.int8() != 0

    def raw(self, n: int) -> bytes:
        pos = self._take(n)
        return self.buf[pos : pos + n]

    def nullable_bytes(self) -> bytes | None:
        n = self.int32()
        return None if n < 0 else self.raw(n)

    def nullable_string(self) -> str | None:
        n = self.int16()
        if n < 0:
            return None
        try:
            return self.raw(n).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Malformed(f"a string is not UTF-8: {exc}") from None

    def string(self) -> str:
        s = self.nullable_string()
        if s is None:
            raise Malformed("a required string is null")
        return s

    def array(self, item: Callable[[Reader], T]) -> list[T]:
        return self.nullable_array(item) or []

    def nullable_array(self, item: Callable[[Reader], T]) -> list[T] | None:
        n = self.int32()
        if n < 0:
            return None
        if n > MAX_ARRAY or n > len(self.buf) - self.pos:  # every element takes at least a byte
            raise Malformed(f"an array claims {n} elements in a {len(self.buf)}-byte request")
        return [item(self) for _ in range(n)]

    def uvarint(self) -> int:
        shift = result = 0
        while True:
            b = self.buf[self._take(1)]
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise Malformed("a varint is longer than 10 bytes")

    def varint(self) -> int:
        n = self.uvarint()
        return (n >> 1) ^ -(n & 1)

    def tagged_fields(self) -> None:
        """Skip a flexible version's tagged fields (none of them is used here)."""
        for _ in range(self.uvarint()):
            self.uvarint()
            self._take(self.uvarint())

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise Malformed(f"{len(self.buf) - self.pos} bytes left over after the request")


class Writer:
    """Builds one response: append fields in order, then `bytes()`."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def int8(self, v: int) -> Writer:
        self.parts.append(_I8.pack(v))
        return self

    def int16(self, v: int) -> Writer:
        self.parts.append(_I16.pack(v))
        return self

    def int32(self, v: int) -> Writer:
        self.parts.append(_I32.pack(v))
        return self

    def int64(self, v: int) -> Writer:
        self.parts.append(_I64.pack(v))
        return self

    def boolean(self, v: bool) -> Writer:
        return self.int8(1 if v else 0)

    def raw(self, b: bytes) -> Writer:
        self.parts.append(b)
        return self

    def string(self, s: str | None) -> Writer:
        if s is None:
            return self.int16(-1)
        b = s.encode("utf-8")
        self.parts.append(_I16.pack(len(b)))
        self.parts.append(b)
        return self

    def nullable_bytes(self, b: bytes | None) -> Writer:
        if b is None:
            return self.int32(-1)
        self.parts.append(_I32.pack(len(b)))
        self.parts.append(b)
        return self

    def array(self, items: Any, item: Callable[[Writer, Any], object]) -> Writer:
        items = list(items)
        self.int32(len(items))
        for x in items:
            item(self, x)
        return self

    def uvarint(self, n: int) -> Writer:
        self.parts.append(uvarint(n))
        return self

    def bytes(self) -> bytes:
        return b"".join(self.parts)


def uvarint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def varint(n: int) -> bytes:
    """Zig-zag encoded signed varint (also Kafka's varlong)."""
    return uvarint((n << 1) ^ (n >> 63))
