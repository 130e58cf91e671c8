"""A hypothesis state machine: a transactional producer (begin, send, send offsets, send with a
message id, commit, abort, crash, a zombie replaced) against a model of what is committed.

After every step the file must hold exactly the committed transactions' records, dense from
offset 0, and the group's committed offset of the last committed transaction that sent one.
"""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import sqlog
from sqlog import TopicPartition as TP

INPUTS = 20


class TransactionModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="sqlog-txn-model-")
        self.path = f"{self.dir}/m.db"
        self.log = sqlog.open(self.path, retention_check_interval_ms=None)
        self.log.create_topic("in")
        self.log.create_topic("out", dedupe_window_ms=3_600_000)
        with self.log.producer() as p:
            for i in range(INPUTS):
                p.send("in", b"%d" % i)
        self.producer = self._new_producer()
        self.committed: list[bytes] = []  # the model: "out" as committed
        self.ids: set[str] = set()  # message ids committed
        self.offset: int | None = None  # group "g"'s committed offset
        self.open = False
        self.txn: list[tuple[bytes, str | None]] = []
        self.txn_offset: int | None = None
        self.n = 0

    def _new_producer(self) -> sqlog.TransactionalProducer:
        producer = self.log.producer(transactional_id="t")
        assert isinstance(producer, sqlog.TransactionalProducer)
        producer.init_transactions()
        return producer

    def teardown(self) -> None:
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @precondition(lambda self: not self.open)
    @rule()
    def begin(self) -> None:
        self.producer.begin_transaction()
        self.open = True
        self.txn, self.txn_offset = [], None

    @precondition(lambda self: self.open)
    @rule(with_id=st.booleans(), id_no=st.integers(0, 5))
    def send(self, with_id: bool, id_no: int) -> None:
        self.n += 1
        value = b"v%d" % self.n
        mid = f"m{id_no}" if with_id else None
        self.producer.send("out", value, message_id=mid)
        self.txn.append((value, mid))

    @precondition(lambda self: self.open)
    @rule(offset=st.integers(0, INPUTS))
    def send_offsets(self, offset: int) -> None:
        self.producer.send_offsets_to_transaction({TP("in", 0): offset}, "g")
        self.txn_offset = offset

    @precondition(lambda self: self.open)
    @rule()
    def commit(self) -> None:
        self.producer.commit_transaction()
        self.open = False
        for value, mid in self.txn:
            if mid is None or mid not in self.ids:
                self.committed.append(value)
                if mid is not None:
                    self.ids.add(mid)
        if self.txn_offset is not None:
            self.offset = self.txn_offset

    @precondition(lambda self: self.open)
    @rule()
    def abort(self) -> None:
        self.producer.abort_transaction()
        self.open = False

    @rule()
    def crash(self) -> None:
        """The process ends (here: the log closes) with the transaction open: nothing of it remains."""
        self.log.close()
        self.log = sqlog.open(self.path, retention_check_interval_ms=None)
        self.producer = self._new_producer()
        self.open = False

    @precondition(lambda self: self.open)
    @rule()
    def zombie_replaced(self) -> None:
        replacement = self._new_producer()
        try:
            self.producer.commit_transaction()
        except sqlog.ProducerFencedError:
            pass
        else:
            raise AssertionError("a fenced producer committed")
        self.producer = replacement
        self.open = False

    @invariant()
    def file_matches_model(self) -> None:
        consumer = self.log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
        consumer.assign([TP("out", 0)])
        records = []
        while batch := consumer.poll(timeout_ms=0):
            records.extend(batch)
        consumer.close()
        assert [r.value for r in records] == self.committed
        assert [r.offset for r in records] == list(range(len(self.committed)))
        groups = self.log.list_groups()
        got = self.log.describe_group("g").partitions[0].committed_offset if "g" in groups else None
        assert got == self.offset


TransactionModel.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
test_transactions_model = TransactionModel.TestCase
