"""The seed flow: produce an order, consume it, process it, commit, wait for more.

Run it twice: the second run's consumer resumes at the offset the first one committed.

    python examples/orders.py [PATH]      # PATH defaults to orders.db in the current directory
"""

from __future__ import annotations

import sys

import sqlog


def main(path: str = "orders.db") -> None:
    with sqlog.open(path) as log:
        log.create_topic("orders", partitions=1, exist_ok=True)  # a rerun finds it and goes on
        order_id = log.describe_topic("orders").partitions[0].high_watermark + 1

        with log.producer(value_serializer=sqlog.JSON) as producer:
            md = producer.send("orders", {"order_id": order_id, "item": "book"}).get(timeout=5)
            print(f"event stored in {md.topic!r} partition {md.partition} offset {md.offset}")

        consumer = log.consumer(
            group_id="billing",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            value_deserializer=sqlog.JSON,
        )
        with consumer:
            consumer.subscribe(["orders"])
            tp = sqlog.TopicPartition("orders", 0)
            previous = consumer.committed(tp)
            if previous is None:
                print("group 'billing' has no committed offset yet: reading from the beginning")
            else:
                print(f"group 'billing' resumes at its committed offset {previous}")
            records = consumer.poll(timeout_ms=1000)
            for record in records:
                print(f"consumer reads partition {record.partition} offset {record.offset}: {record.value}")
                print(f"order {record.value['order_id']} processed")
            consumer.commit()
            print(f"offset {consumer.committed(tp)} committed")
            print("no new events, waiting (1 s) ...")
            more = consumer.poll(timeout_ms=1000)
            print(f"{len(more)} new events; run again to resume from offset {consumer.committed(tp)}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
