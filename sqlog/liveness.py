"""Is a group member still alive? Its session timeout, and on this host its process (no SQL).

A member is dead once its last heartbeat is older than its session timeout, measured on
`clock.monotonic_ms`. On top of that, a member whose process on this machine is gone is dead at
once: the member records its pid, this process's `PID_NAMESPACE` (boot id plus pid namespace)
and the process's start time (/proc/<pid>/stat), and anyone in the same namespace sees the
process gone or its pid reused. Pids are never judged across pid namespaces (a container sharing
the file) or boots: there only the session timeout decides.

`groups` stores these facts when a member joins and asks `is_dead` when it expires members.
"""

from __future__ import annotations

import os
import socket

from . import clock


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def pid_namespace() -> str:
    """Boot id plus pid namespace: two members' pids are comparable only when these match."""
    try:
        return clock.BOOT_ID + "/" + os.readlink("/proc/self/ns/pid") if clock.BOOT_ID else ""
    except OSError:
        return ""


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone (or a zombie)."""
    try:
        stat = _read(f"/proc/{int(pid)}/stat")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    if not fields or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


PID_NAMESPACE = pid_namespace()
"""This process's `pid_namespace()` ("" where it cannot be known), read at each use: a test
process may set it to pose as a member in another pid namespace."""

HOST = socket.gethostname()
"""This machine's host name, recorded (and shown) with each member."""


def process_gone(pid: int, namespace: str, start: int | None) -> bool:
    """True if the process ``pid`` that started at ``start`` in ``namespace`` is known to be gone:
    only when ``namespace`` is this process's, else its pid means nothing here."""
    return bool(namespace) and namespace == PID_NAMESPACE and start is not None and start_time(pid) != start


def is_dead(pid: int, namespace: str, start: int | None, heartbeat: int, session_ms: int, now: int) -> bool:
    """Whether a member is dead: no heartbeat within ``session_ms``, or its process is gone.

    ``heartbeat`` and ``now`` are `clock.monotonic_ms` readings."""
    if heartbeat + session_ms < now:
        return True
    # The fast path for a crashed process on this host; never trusted across pid namespaces.
    return process_gone(pid, namespace, start)
