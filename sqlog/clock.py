"""The two clocks sqlog reads: wall time for Kafka timestamps, and a steady clock for liveness.

Liveness (consumer-group heartbeats and session expiry, share-group record locks) is a matter of
durations, so it must not follow the wall clock, which NTP, an administrator or a laptop waking
up can step by hours: forward, every live member would expire at once; backward, a dead one
would stay "alive" for as long as the step. `monotonic_ms` never steps and is shared by every
process of one boot: CLOCK_BOOTTIME on Linux (it keeps counting across suspend, so a suspended
machine's sessions and locks have run out when it wakes, as the wall clock would say), elsewhere
the system-wide CLOCK_MONOTONIC (or ``time.monotonic_ns``).

Its readings mean nothing after a reboot, so the file records the boot they belong to
(`CLOCK_ID`, in the ``settings`` table; see ``storage.adopt_clock``).

Kafka timestamps (record timestamps, ``commit_ms``, ``created_ms``) stay wall clock: `wall_ms`.
"""

from __future__ import annotations

import time


def _boot_id() -> str:
    """This boot's id (Linux), or "" where the system does not say."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


BOOT_ID = _boot_id()

if hasattr(time, "CLOCK_BOOTTIME"):
    _CLOCK: int | None = time.CLOCK_BOOTTIME
    _NAME = "boottime"
elif hasattr(time, "CLOCK_MONOTONIC"):
    _CLOCK = time.CLOCK_MONOTONIC
    _NAME = "monotonic"
else:  # Windows: no clock_gettime; monotonic_ns is the system-wide performance counter
    _CLOCK = None
    _NAME = "monotonic"

CLOCK_ID = f"{_NAME}:{BOOT_ID}"
"""Which clock and boot `monotonic_ms` readings belong to; stored in the file with them. Without a
boot id (not Linux) a reboot is told by readings that lie in the future (``storage.adopt_clock``)."""


def monotonic_ms() -> int:
    """Milliseconds on this boot's steady clock: the time base of every liveness deadline."""
    if _CLOCK is None:
        return time.monotonic_ns() // 1_000_000
    return time.clock_gettime_ns(_CLOCK) // 1_000_000


def wall_ms() -> int:
    """Milliseconds since the epoch (the wall clock): Kafka timestamps, never liveness."""
    return time.time_ns() // 1_000_000


def wall_offset_ms() -> int:
    """``wall_ms() - monotonic_ms()`` now: added to a `monotonic_ms` reading, gives it as wall-clock
    ms measured back from now by its age (a wall-clock step since the reading moves the result with
    the wall clock, never the age it shows)."""
    return wall_ms() - monotonic_ms()
