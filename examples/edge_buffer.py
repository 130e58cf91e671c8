"""An edge sensor buffering readings in sqlog under size retention while its uplink comes and goes.

The sensor writes a reading every millisecond or so into a topic capped at 64 KiB. The
uplink is up for a second, down for two (simulated): while it is down, readings pile up and
retention drops the oldest; while it is up, a forwarder resumes from its committed offset,
and when retention overtook it, jumps to the oldest reading still stored. Each second a line
shows the disk in use, and at the end a check that every gap in what was forwarded lies
below the log start (expired), i.e. no unexpired reading was skipped.

    python examples/edge_buffer.py [PATH] [SECONDS]
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time

import sqlog

BUDGET = 64 * 1024


def main(path: str | None = None, seconds: float = 8.0) -> None:
    path = path or os.path.join(tempfile.mkdtemp(prefix="edge-"), "edge.db")
    log = sqlog.open(path, retention_check_interval_ms=500, wal_checkpoint_interval_ms=200,
                     wal_limit_bytes=1024 * 1024, journal_size_limit=512 * 1024)
    if "readings" not in log.list_topics():
        log.create_topic("readings", retention_bytes=BUDGET)
    tp = sqlog.TopicPartition("readings", 0)
    stop = threading.Event()
    uplink_up = threading.Event()
    forwarded: list[int] = []
    gaps: list[tuple[int, int, int]] = []  # (first skipped, last skipped, log start seen)

    def sensor() -> None:
        with log.producer(value_serializer=sqlog.JSON, linger_ms=20) as producer:
            n = 0
            while not stop.is_set():
                producer.send("readings", {"n": n, "celsius": 20 + (n % 50) / 10, "spectrum": "0123456789" * 10})
                n += 1
                time.sleep(0.001)

    def forwarder() -> None:
        consumer = log.consumer(group_id="uplink", auto_offset_reset="earliest",
                                enable_auto_commit=False, value_deserializer=sqlog.JSON)
        consumer.assign([tp])
        last = None
        while not stop.is_set():
            if not uplink_up.wait(0.1):
                continue
            records = consumer.poll(timeout_ms=100, max_records=200)
            for record in records:
                if last is not None and record.offset != last + 1:
                    gaps.append((last + 1, record.offset - 1, consumer.beginning_offsets([tp])[tp]))
                last = record.offset
                forwarded.append(record.offset)  # "upload" it
            if records:
                consumer.commit()
        consumer.close()

    threads = [threading.Thread(target=sensor), threading.Thread(target=forwarder)]
    for t in threads:
        t.start()
    start = time.monotonic()
    peak_disk = 0
    try:
        while (elapsed := time.monotonic() - start) < seconds:
            up = int(elapsed) % 3 == 0
            (uplink_up.set if up else uplink_up.clear)()
            part = log.describe_topic("readings").partitions[0]
            stats = log.stats()
            disk = stats["db_bytes"] + stats["wal_bytes"]
            peak_disk = max(peak_disk, disk)
            print(f"t={elapsed:4.1f}s uplink {'UP  ' if up else 'down'} stored offsets "
                  f"[{part.log_start_offset}, {part.high_watermark}) {part.bytes:6d} B "
                  f"forwarded {len(forwarded):6d}  disk {disk / 1024:7.1f} KiB")
            time.sleep(1.0)
    finally:
        stop.set()
        uplink_up.set()
        for t in threads:
            t.join()
    part = log.describe_topic("readings").partitions[0]
    skipped = sum(b - a + 1 for a, b, _ in gaps)
    print(f"\nproduced {part.high_watermark} readings; forwarded {len(forwarded)}; "
          f"{skipped} expired by retention before the uplink came back")
    print(f"peak disk (database + WAL): {peak_disk / 1024:.1f} KiB for a {BUDGET // 1024} KiB budget")
    bad = [g for g in gaps if g[1] >= g[2]]
    assert all(b > a for a, b in zip(forwarded, forwarded[1:])), "forwarded offsets must increase"
    assert not bad, f"skipped readings that were still stored: {bad}"
    print("every gap lies below the log start: no unexpired reading was skipped")
    log.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None, float(sys.argv[2]) if len(sys.argv) > 2 else 8.0)
