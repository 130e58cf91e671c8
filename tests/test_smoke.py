import sqlog


def test_seed_flow_round_trip(log: sqlog.Log) -> None:
    log.create_topic("orders")
    with log.producer(value_serializer=sqlog.JSON) as producer:
        md = producer.send("orders", {"order_id": 1, "item": "book"}).get(timeout=5)
    assert (md.topic, md.partition, md.offset) == ("orders", 0, 0)
    consumer = log.consumer(group_id="billing", auto_offset_reset="earliest", enable_auto_commit=False,
                            value_deserializer=sqlog.JSON)
    consumer.subscribe(["orders"])
    records = consumer.poll(timeout_ms=1000)
    assert [(r.partition, r.offset, r.value) for r in records] == [(0, 0, {"order_id": 1, "item": "book"})]
    consumer.commit()
    assert consumer.committed(sqlog.TopicPartition("orders", 0)) == 1
    assert consumer.poll(timeout_ms=50) == []
