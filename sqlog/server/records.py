"""Kafka record batches (magic v2): decoding what producers send, encoding what fetches return.

Compression: none, gzip, snappy (raw and xerial-framed), lz4 (frame) and zstd through cramjam;
checksums are CRC-32C (crc32c). Stored rows are sqlog's own ``(ts, key, value, headers)``, so a
record produced here is the same row a native ``send()`` writes.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import cramjam
from crc32c import crc32c

from ..clock import wall_ms
from ..errors import SqlogError
from ..serde import decode_headers, encode_headers
from .wire import Malformed, Reader, varint

# Kafka error codes a bad batch earns (per partition, the connection stays open).
CORRUPT_MESSAGE = 2
UNSUPPORTED_FOR_MESSAGE_FORMAT = 43
UNSUPPORTED_COMPRESSION_TYPE = 76
INVALID_RECORD = 87

_HEADER = struct.Struct(">qiibIhiqqqhii")  # base offset .. record count: 61 bytes
HEADER_BYTES = _HEADER.size
_CRC_FROM = 21  # the CRC covers attributes to the end
_XERIAL = b"\x82SNAPPY\x00"
_U32 = struct.Struct(">I")
CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


class BadBatch(SqlogError):
    """A record batch that cannot be stored; ``code`` is the Kafka error for its partition."""

    def __init__(self, message: str, code: int = CORRUPT_MESSAGE) -> None:
        super().__init__(message)
        self.code = code


Row = tuple[int, bytes | None, bytes | None, bytes | None]
"""``(timestamp_ms, key, value, stored headers)``: what `retention.append_rows` takes."""


class Batch(NamedTuple):
    """One decoded producer batch."""

    producer_id: int
    producer_epoch: int
    base_sequence: int
    rows: list[Row]
    nbytes: int
    max_ts: int


def _decompress(codec: int, data: bytes) -> bytes:
    try:
        if codec == 1:
            return bytes(cramjam.gzip.decompress(data))
        if codec == 2:
            if data.startswith(_XERIAL):  # Java's and kafka-python's framing: [u32 len][raw block]...
                out, pos = bytearray(), 16
                while pos < len(data):
                    (n,) = _U32.unpack_from(data, pos)
                    out += bytes(cramjam.snappy.decompress_raw(data[pos + 4 : pos + 4 + n]))
                    pos += 4 + n
                return bytes(out)
            return bytes(cramjam.snappy.decompress_raw(data))
        if codec == 3:
            return bytes(cramjam.lz4.decompress(data))
        if codec == 4:
            return bytes(cramjam.zstd.decompress(data))
    except Exception as exc:  # cramjam raises its own DecompressionError (and struct its own)
        raise BadBatch(f"cannot decompress a {CODECS[codec]} batch: {exc}") from None
    raise BadBatch(f"unknown compression codec {codec}", UNSUPPORTED_COMPRESSION_TYPE)


def decode(records: bytes, max_record_bytes: int) -> list[Batch]:
    """The batches in a produce request's ``records`` field; BadBatch if any is damaged."""
    out = []
    pos, end = 0, len(records)
    while pos < end:
        if end - pos < HEADER_BYTES:
            raise BadBatch("a record batch is truncated")
        (_, length, _, magic, crc, attrs, last_delta, base_ts, max_ts, pid, epoch, base_seq,
         count) = _HEADER.unpack_from(records, pos)
        if magic != 2:
            raise BadBatch(f"record batch magic {magic}: only v2 is supported", UNSUPPORTED_FOR_MESSAGE_FORMAT)
        stop = pos + 12 + length
        if length < HEADER_BYTES - 12 or stop > end:
            raise BadBatch("a record batch's length runs past its data")
        if crc32c(records[pos + _CRC_FROM : stop]) != crc:
            raise BadBatch("a record batch fails its CRC-32C")
        if attrs & 0x30:
            raise BadBatch("transactional and control batches are not supported", INVALID_RECORD)
        if count < 0 or count > length:
            raise BadBatch(f"a record batch claims {count} records")
        body = records[pos + HEADER_BYTES : stop]
        codec = attrs & 0x07
        if codec:
            body = _decompress(codec, body)
        append_time = wall_ms() if attrs & 0x08 or base_ts < 0 else None
        rows, nbytes, top = _records(body, count, base_ts, append_time, max_record_bytes)
        out.append(Batch(pid, epoch, base_seq, rows, nbytes, top))
        pos = stop
    return out


def _records(body: bytes, count: int, base_ts: int, append_time: int | None,
             max_record_bytes: int) -> tuple[list[Row], int, int]:
    r = Reader(body)
    rows: list[Row] = []
    nbytes = 0
    top = -1
    try:
        for _ in range(count):
            size = r.varint()
            start = r.pos
            r.int8()  # record attributes: unused
            ts_delta = r.varint()
            r.varint()  # offset delta: offsets are assigned at append
            n = r.varint()
            key = None if n < 0 else r.raw(n)
            n = r.varint()
            value = None if n < 0 else r.raw(n)
            headers = []
            for _ in range(r.varint()):
                hk = r.raw(r.varint()).decode("utf-8", "surrogatepass")
                n = r.varint()
                headers.append((hk, None if n < 0 else r.raw(n)))
            if r.pos - start != size:
                raise BadBatch("a record's length does not match its fields")
            stored = encode_headers(headers)
            size = len(key or b"") + len(value or b"") + len(stored or b"")
            if size > max_record_bytes:
                raise BadBatch(f"a record of {size} bytes is over the {max_record_bytes}-byte limit", 10)
            ts = append_time if append_time is not None else base_ts + ts_delta
            top = max(top, ts)
            nbytes += size
            rows.append((ts, key, value, stored))
        r.done()
    except (Malformed, UnicodeDecodeError) as exc:
        raise BadBatch(f"a record batch is malformed: {exc}") from None
    if not rows:
        raise BadBatch("an empty record batch", INVALID_RECORD)
    return rows, nbytes, top


def _part(b: bytes | None) -> bytes:
    return b"\x01" if b is None else varint(len(b)) + b  # varint(-1) == b"\x01"


def encode(rows: list[tuple[Any, ...]]) -> bytes:
    """One uncompressed v2 batch of stored ``(offset, ts, key, value, headers, check)`` rows
    (`partitions.select_from`'s columns; consecutive offsets)."""
    base = rows[0][0]
    base_ts = rows[0][1]
    max_ts = base_ts
    parts = []
    for offset, ts, key, value, hdr, _ in rows:
        if ts > max_ts:
            max_ts = ts
        if hdr:
            hs = decode_headers(hdr)
            htext = varint(len(hs)) + b"".join(_part(k.encode("utf-8", "surrogatepass")) + _part(v) for k, v in hs)
        else:
            htext = b"\x00"
        body = b"\x00" + varint(ts - base_ts) + varint(offset - base) + _part(key) + _part(value) + htext
        parts.append(varint(len(body)))
        parts.append(body)
    recs = b"".join(parts)
    last_delta = rows[-1][0] - base
    tail = struct.pack(">hiqqqhii", 0, last_delta, base_ts, max_ts, -1, -1, -1, len(rows)) + recs
    return struct.pack(">qiibI", base, 9 + len(tail), 0, 2, crc32c(tail)) + tail
