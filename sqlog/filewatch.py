"""Hear other processes' commits through the file system instead of polling for them.

On Linux, one inotify watch (through ctypes: no dependency) on the log's directory reports every
write to the log's WAL by any process on this machine; a commit in WAL mode always writes the
WAL. `FileWatch` runs one small thread per open log that blocks in ``poll()`` on the inotify
descriptor and calls ``on_change`` for each batch of such writes: no timer, no CPU while nothing
is written. Elsewhere (or where inotify is unavailable: no libc symbol, too many watches)
`FileWatch.start` returns None and the caller keeps polling ``PRAGMA data_version``.

A write event says only that the WAL changed, not that a commit is visible yet: SQLite writes the
frames, then updates the WAL index in shared memory. `storage.wait_for_commit` therefore looks at
``data_version`` a few times over the next milliseconds after an event (and, as a safety net, at
a slow steady pace).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import sys
import threading
from collections.abc import Callable

IN_MODIFY = 0x00000002
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_init1.restype = ctypes.c_int
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_add_watch.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


INOTIFY = _libc()
"""The C library when it has inotify (Linux), else None: then `FileWatch.start` gives None and
waits fall back to polling. Tests set it to None to exercise that fallback."""


class FileWatch:
    """Calls ``on_change`` (from its own thread) whenever any process writes ``path``'s WAL."""

    def __init__(self, fd: int, wal_name: bytes, on_change: Callable[[], None]) -> None:
        self._fd = fd
        self._wal_name = wal_name
        self._on_change = on_change
        self._stop_r, self._stop_w = os.pipe()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="sqlog-filewatch", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, path: str, on_change: Callable[[], None]) -> FileWatch | None:
        """A watch on ``path``'s WAL, or None where the platform offers none (then poll)."""
        if INOTIFY is None:
            return None
        fd = INOTIFY.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            return None
        directory, name = os.path.split(os.path.abspath(path))
        # The directory, not the file: the WAL may not exist yet, and is found by name.
        if INOTIFY.inotify_add_watch(fd, os.fsencode(directory), IN_MODIFY | IN_CREATE | IN_MOVED_TO) < 0:
            os.close(fd)
            return None
        return cls(fd, os.fsencode(name + "-wal"), on_change)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        try:
            while True:
                ready = {fd for fd, _ in poller.poll()}
                if self._stop_r in ready:
                    return
                try:
                    data = os.read(self._fd, 64 * 1024)
                except BlockingIOError:
                    continue
                if self._relevant(data):
                    self._on_change()
        except OSError:
            return  # closed under it: the caller falls back to its steady checks
        finally:
            os.close(self._fd)
            os.close(self._stop_r)

    def _relevant(self, data: bytes) -> bool:
        pos = 0
        while pos + _EVENT.size <= len(data):
            _, mask, _, length = _EVENT.unpack_from(data, pos)
            name = data[pos + _EVENT.size : pos + _EVENT.size + length].rstrip(b"\0")
            pos += _EVENT.size + length
            if mask & IN_Q_OVERFLOW or name == self._wal_name:
                return True
        return False

    def close(self) -> None:
        """Stop the thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            os.write(self._stop_w, b"x")
        finally:
            os.close(self._stop_w)
