"""An edge device mirroring to a Kafka cluster with sqlog.mirror: readings go up, commands come down.

The "cluster" is librdkafka's mock (sqlog.mirror.MockCluster, in this process); point
``bootstrap_servers`` at a real one and nothing else changes. The sensor writes readings into a
local topic capped at 256 KiB; ``push`` forwards them as the uplink allows; ``pull`` brings the
cloud's commands into a local topic the device reads. After a couple of seconds the uplink goes
down (every broker stopped) long enough for retention to drop readings that were never sent,
then comes back: the mirror retries, says what retention skipped, and catches up. At the end it
checks that the cluster holds every reading still stored on the device, and every command.

    python examples/edge_to_cloud.py [PATH] [SECONDS]
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

import sqlog
from sqlog.mirror import MockCluster, pull, push

BUDGET = 256 * 1024


def remote_values(bootstrap: str, topic: str) -> list[bytes]:
    """Everything the cluster holds in partition 0 of ``topic``."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "audit", "enable.partition.eof": True,
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    out: list[bytes] = []
    while True:
        m = c.poll(5.0)
        if m is None or (m.error() and m.error().code() == KafkaError._PARTITION_EOF):
            break
        if not m.error():
            out.append(m.value())
    c.close()
    return out


def main(path: str | None = None, seconds: float = 8.0) -> None:
    logging.basicConfig(level=logging.WARNING, format="  [%(name)s] %(message)s")
    logging.getLogger("sqlog.mirror.librdkafka").setLevel(logging.CRITICAL)  # the broker-down chatter
    path = path or os.path.join(tempfile.mkdtemp(prefix="edge-"), "edge.db")
    with MockCluster(brokers=3) as cluster, sqlog.open(path, retention_check_interval_ms=200) as log:
        bootstrap = cluster.bootstrap_servers
        cluster.create_topic("readings", 1)
        cluster.create_topic("commands", 1)
        log.create_topic("readings", retention_bytes=BUDGET, exist_ok=True)
        stop = threading.Event()

        def sensor() -> None:
            with log.producer(value_serializer=sqlog.JSON, linger_ms=20) as producer:
                n = 0
                while not stop.is_set():
                    producer.send("readings", {"n": n, "celsius": 20 + (n % 50) / 10, "spectrum": "0123456789" * 10},
                                  key=b"sensor-1")
                    n += 1
                    time.sleep(0.0005)

        cloud = Producer({"bootstrap.servers": bootstrap})
        up = push(log, bootstrap, ["readings"], config={"message.timeout.ms": 2000})
        down = pull(log, bootstrap, ["commands"], group="device-1")
        t = threading.Thread(target=sensor)
        t.start()
        start = time.monotonic()
        outage = (seconds * 0.25, seconds * 0.55)
        try:
            while (elapsed := time.monotonic() - start) < seconds:
                link = not outage[0] <= elapsed < outage[1]
                (cluster.all_up if link else cluster.all_down)()
                if link:
                    cloud.produce("commands", b"set-interval %d" % int(elapsed), partition=0)
                    cloud.flush(5)
                p, c = up.progress(), down.progress()
                print(f"t={elapsed:4.1f}s uplink {'UP  ' if link else 'down'}  push {p.state:12s} {p.records:7d} "
                      f"sent, lag {p.lag:6d}, skipped {p.skipped:6d}  |  pull {c.records:3d} commands")
                time.sleep(1.0)
        finally:
            stop.set()
            t.join()
            cluster.all_up()
        # Let the mirror catch up with what the sensor wrote (its cursor, as the file has it: the
        # progress's end offsets are refreshed only twice a second), then stop both.
        deadline = time.monotonic() + 60
        while log.describe_group("sqlog-mirror").lag and time.monotonic() < deadline:
            time.sleep(0.2)
        up.stop()
        down.stop()
        p, c = up.join(), down.join()
        part = log.describe_topic("readings").partitions[0]
        reader = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=100_000)
        reader.assign([sqlog.TopicPartition("readings", 0)])
        stored = []
        while batch := reader.poll(timeout_ms=200):
            stored.extend(r.value for r in batch)
        reader.close()
        sent = set(remote_values(bootstrap, "readings"))
        print(f"\nsensor wrote {part.high_watermark} readings; the device stores [{part.log_start_offset}, "
              f"{part.high_watermark}) under a {BUDGET // 1024} KiB budget")
        print(f"push: {p.records} readings acknowledged by the cluster, {p.skipped} dropped by retention during "
              f"the outage (warned above), {p.retries} retries")
        print(f"pull: {c.records} commands appended locally; `sqlog groups describe sqlog-mirror` shows the push "
              "cursor")
        missing = [v for v in stored if v not in sent]
        assert not missing, f"{len(missing)} stored readings never reached the cluster"
        commands = log.describe_topic("commands").partitions[0].high_watermark
        assert commands == len(remote_values(bootstrap, "commands")) == c.records, "commands lost or doubled"
        print("every reading still on the device is on the cluster; every command reached the device")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None, float(sys.argv[2]) if len(sys.argv) > 2 else 8.0)
