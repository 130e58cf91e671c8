"""A consume-transform-produce worker for test_transactions_processes.py.

Usage: ctp_worker.py DB TRANSACTIONAL_ID. Reads "in" as a member of group "ctp", writes one
"out" record per input (value "<partition>:<offset>") and the input offsets in one transaction,
until SIGKILLed or SIGTERMed. After an aborted transaction it rewinds to the committed offsets.
"""

from __future__ import annotations

import signal
import sys

import sqlog

stop = False


def _stop(*_: object) -> None:
    global stop
    stop = True


def main() -> None:
    db, tid = sys.argv[1], sys.argv[2]
    signal.signal(signal.SIGTERM, _stop)
    log = sqlog.open(db)
    consumer = log.consumer(group_id="ctp", auto_offset_reset="earliest", enable_auto_commit=False,
                            isolation_level="read_committed", session_timeout_ms=1500, heartbeat_interval_ms=100)
    consumer.subscribe(["in"])
    producer = log.producer(transactional_id=tid)
    producer.init_transactions()
    while not stop:
        records = consumer.poll(timeout_ms=100, max_records=10)
        if not records:
            continue
        producer.begin_transaction()
        for r in records:
            producer.send("out", b"%d:%d" % (r.partition, r.offset), key=r.value)
        producer.send_offsets_to_transaction(
            {sqlog.TopicPartition(r.topic, r.partition): r.offset + 1 for r in records}, consumer.group_metadata()
        )
        try:
            producer.commit_transaction()
        except (sqlog.CommitFailedError, sqlog.TransactionAbortedError):
            for tp in consumer.assignment():  # rewind: the aborted records must be done again
                committed = consumer.committed(tp)
                if committed is None:
                    consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, committed)
    producer.close()
    consumer.close()
    log.close()


if __name__ == "__main__":
    main()
