"""Consumer groups in one process: assignors, threads as members, fencing, listeners, admin."""

from __future__ import annotations

import threading
import time

import apsw
import pytest

import sqlog
import sqlog.assignors as assignors
import sqlog.groups as groups
import sqlog.storage as storage
import sqlog.topics as topics
from sqlog import TopicPartition as TP
from helpers import fill, freeze_heartbeats, member, settle


def parts(consumer: sqlog.Consumer) -> set[int]:
    return {tp.partition for tp in consumer.assignment()}


# -- assignors -----------------------------------------------------------------------------
def test_range_assignor_matches_kafka() -> None:
    members = {"a": {"t", "u"}, "b": {"t", "u"}, "c": {"t"}}
    topics = {"t": (1, 7), "u": (2, 3)}
    target = assignors.assign("range", members, topics)
    assert [target[(1, p)] for p in range(7)] == ["a", "a", "a", "b", "b", "c", "c"]
    assert [target[(2, p)] for p in range(3)] == ["a", "a", "b"]
    assert assignors.assign("range", dict(reversed(list(members.items()))), topics) == target  # order-free


def test_roundrobin_assignor_matches_kafka() -> None:
    members = {"a": {"t", "u"}, "b": {"t", "u"}, "c": {"t"}}
    target = assignors.assign("roundrobin", members, {"t": (1, 4), "u": (2, 3)})
    assert [target[(1, p)] for p in range(4)] == ["a", "b", "c", "a"]
    assert [target[(2, p)] for p in range(3)] == ["b", "a", "b"]  # c is skipped: not subscribed to u


@pytest.mark.parametrize("strategy", assignors.STRATEGIES)
@pytest.mark.parametrize("n_members,n_parts", [(1, 4), (3, 6), (4, 10), (5, 3)])
def test_assignors_are_balanced_and_total(strategy: str, n_members: int, n_parts: int) -> None:
    members = {f"m{i}": {"t"} for i in range(n_members)}
    target = assignors.assign(strategy, members, {"t": (7, n_parts)})
    assert set(target) == {(7, p) for p in range(n_parts)}
    counts = [sum(1 for m in target.values() if m == name) for name in members]
    assert max(counts) - min(counts) <= 1


def test_sticky_keeps_owners_and_moves_the_minimum() -> None:
    topics = {"t": (1, 6)}
    three = assignors.assign("sticky", {"a": {"t"}, "b": {"t"}, "c": {"t"}}, topics)
    two = assignors.assign("sticky", {"a": {"t"}, "c": {"t"}}, topics, three)
    assert all(two[k] == owner for k, owner in three.items() if owner != "b")  # only b's partitions move
    four = assignors.assign("sticky", {"a": {"t"}, "c": {"t"}, "d": {"t"}}, topics, two)
    moved = [k for k in two if four[k] != two[k]]
    assert len(moved) == 2 and all(four[k] == "d" for k in moved)


def test_unknown_strategy_is_refused(log: sqlog.Log) -> None:
    with pytest.raises(sqlog.InvalidConfigError, match="partition_assignment_strategy"):
        log.consumer(group_id="g", partition_assignment_strategy="eager")
    with pytest.raises(sqlog.InvalidConfigError, match="heartbeat_interval_ms"):
        log.consumer(group_id="g", session_timeout_ms=100, heartbeat_interval_ms=100)


def test_heartbeat_interval_is_derived_from_a_short_session_timeout(log: sqlog.Log) -> None:
    """session_timeout_ms alone (below the 3000 ms default heartbeat) must work: the heartbeat
    interval becomes a third of it, and the member stays in the group past the timeout."""
    assert log.consumer(group_id="g").config["heartbeat_interval_ms"] == 3000  # Kafka's default
    assert log.consumer(group_id="g", session_timeout_ms=6000).config["heartbeat_interval_ms"] == 2000
    log.create_topic("t", partitions=2)
    fill(log, "t", 10, 2)
    first = log.consumer(group_id="g", auto_offset_reset="earliest", enable_auto_commit=False,
                         session_timeout_ms=1000)
    assert first.config["heartbeat_interval_ms"] == 333
    first.subscribe(["t"])
    got: list[int] = []
    deadline = time.monotonic() + 10
    while len(got) < 10:
        assert time.monotonic() < deadline, got
        got.extend(r.offset for r in first.poll(timeout_ms=50))
    assert parts(first) == {0, 1}
    end = time.monotonic() + 2.5  # more than twice the session timeout, heartbeats keep it alive
    while time.monotonic() < end:
        first.poll(timeout_ms=100)
        assert parts(first) == {0, 1}
    (described,) = log.describe_group("g").members
    assert described.member_id.startswith("sqlog")
    assert time.time() * 1000 - described.last_heartbeat_ms < 1000
    first.commit()
    assert first.committed(TP("t", 0)) == 5


def test_contradictory_heartbeat_and_session_timeout_are_refused(log: sqlog.Log) -> None:
    with pytest.raises(sqlog.InvalidConfigError, match="heartbeat_interval_ms must be > 0 and below"):
        log.consumer(group_id="g", session_timeout_ms=1000, heartbeat_interval_ms=1000)
    with pytest.raises(sqlog.InvalidConfigError, match="heartbeat_interval_ms must be > 0 and below"):
        log.consumer(group_id="g", session_timeout_ms=1000, heartbeat_interval_ms=0)
    with pytest.raises(sqlog.InvalidConfigError, match="session_timeout_ms must be at least 2"):
        log.consumer(group_id="g", session_timeout_ms=1)
    log.consumer(group_id="g", session_timeout_ms=2).close()
    assert log.consumer(group_id="g", heartbeat_interval_ms=None).config["heartbeat_interval_ms"] == 3000


# -- members in one process ----------------------------------------------------------------
def test_three_members_split_six_partitions(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=6)
    fill(log, "t", 600, 6)
    consumers = [member(log) for _ in range(3)]
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + 10
    while len(seen) < 600 or any(len(parts(c)) != 2 for c in consumers):
        assert time.monotonic() < deadline
        for c in consumers:
            seen += [(r.partition, r.offset) for r in c.poll(timeout_ms=5)]
    owned = [parts(c) for c in consumers]
    assert sorted(set().union(*owned)) == list(range(6)) and sum(map(len, owned)) == 6
    assert len(seen) == len(set(seen)) == 600  # auto-commit on revocation: nothing read twice
    desc = log.describe_group("g")
    assert desc.state == "Stable" and desc.strategy == "range"
    assert {m.member_id: set(m.assignment) for m in desc.members} == {
        c.group_metadata().member_id: c.assignment() for c in consumers
    }


def test_threads_polling_concurrently_never_share_a_partition(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=4)
    stop = threading.Event()
    events: list[tuple[float, str, str, int, int]] = []  # (time, member, kind, partition, generation)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(name: str, lifetime: float) -> None:
        try:
            consumer: sqlog.Consumer

            class Audit(sqlog.ConsumerRebalanceListener):
                def on_assigned(self, ps: set[sqlog.TopicPartition]) -> None:
                    gen = consumer.group_metadata().generation_id
                    with lock:
                        events.extend((time.time(), name, "+", tp.partition, gen) for tp in ps)

                def on_revoked(self, ps: set[sqlog.TopicPartition]) -> None:
                    with lock:
                        events.extend((time.time(), name, "-", tp.partition, 0) for tp in ps)

            consumer = member(log, listener=Audit(), partition_assignment_strategy="cooperative-sticky")
            end = time.monotonic() + lifetime
            while not stop.is_set() and time.monotonic() < end:
                consumer.poll(timeout_ms=10)
            consumer.close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"m{i}", 0.6 + 0.4 * i)) for i in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.15)
    with log.producer() as producer:
        for i in range(400):
            producer.send("t", b"x", partition=i % 4)
    for t in threads:
        t.join(20)
    stop.set()
    assert not errors, errors
    holder: dict[int, str] = {}
    last_gen: dict[int, int] = {}
    for _, name, kind, p, gen in sorted(events):
        if kind == "+":
            assert p not in holder, f"partition {p} assigned to {name} while {holder[p]} held it"
            assert gen > last_gen.get(p, -1), "ownership generations of a partition only rise"
            holder[p], last_gen[p] = name, gen
        else:
            assert holder.pop(p) == name
    assert len(last_gen) == 4 and not holder  # every partition was owned; everyone closed


def test_close_hands_over_at_once(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=4)
    a, b = member(log, session_timeout_ms=60_000), member(log, session_timeout_ms=60_000)
    settle([a, b], lambda: len(parts(a)) == len(parts(b)) == 2)
    start = time.monotonic()
    a.close()
    settle([b], lambda: parts(b) == {0, 1, 2, 3})
    assert time.monotonic() - start < 1.0
    assert [m.member_id for m in log.describe_group("g").members] == [b.group_metadata().member_id]


def test_listener_callbacks_follow_ownership(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=2)
    calls: list[tuple[str, str, set[int]]] = []

    def listener(name: str) -> sqlog.ConsumerRebalanceListener:
        class L(sqlog.ConsumerRebalanceListener):
            def on_assigned(self, ps: set[sqlog.TopicPartition]) -> None:
                calls.append((name, "assigned", {tp.partition for tp in ps}))

            def on_revoked(self, ps: set[sqlog.TopicPartition]) -> None:
                calls.append((name, "revoked", {tp.partition for tp in ps}))

        return L()

    a = member(log, listener=listener("a"), client_id="a", partition_assignment_strategy="sticky")
    a.poll(timeout_ms=10)
    assert calls == [("a", "assigned", {0, 1})] and parts(a) == {0, 1}
    b = member(log, listener=listener("b"), client_id="b", partition_assignment_strategy="sticky")
    settle([a, b], lambda: len(parts(a)) == len(parts(b)) == 1)
    moved = parts(b)
    assert calls[1:] == [("a", "revoked", moved), ("b", "assigned", moved)]
    b.close()
    assert calls[-1] == ("b", "revoked", moved)
    settle([a], lambda: parts(a) == {0, 1})
    assert calls[-1] == ("a", "assigned", moved)


def test_new_owner_starts_from_the_committed_offset(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=1)
    fill(log, "t", 10, 1)
    a = member(log, enable_auto_commit=False)
    assert [r.offset for r in a.poll(timeout_ms=100, max_records=4)] == [0, 1, 2, 3]
    a.commit()
    a.poll(timeout_ms=10, max_records=3)  # read 4..6 but never commit them
    a.close()
    b = member(log)
    assert [r.offset for r in b.poll(timeout_ms=200)] == list(range(4, 10))


def test_commit_is_fenced_inside_the_transaction(log: sqlog.Log, monkeypatch: pytest.MonkeyPatch) -> None:
    """A member whose session expired (its heartbeat thread frozen) is refused by the commit
    transaction itself, and nothing of the commit is written."""
    log.create_topic("t", partitions=2)
    fill(log, "t", 20, 2)
    a = member(log, enable_auto_commit=False)
    a.poll(timeout_ms=100)
    a.commit()
    committed = {p: a.committed(TP("t", p)) for p in (0, 1)}
    freeze_heartbeats(monkeypatch, a)  # a stalled process
    a.seek(TP("t", 0), 3)
    b = member(log)
    start = time.monotonic()
    settle([b], lambda: parts(b) == {0, 1}, timeout=5)
    waited = time.monotonic() - start
    assert 1.0 <= waited <= 1.5 + 1.0, waited  # a's process is alive: only the session timeout expires it
    assert a.assignment() == {TP("t", 0), TP("t", 1)}  # a has not noticed: nothing told it yet
    with pytest.raises(sqlog.CommitFailedError, match="no longer in group"):
        a.commit()
    with pytest.raises(sqlog.CommitFailedError):
        a.commit({TP("t", 0): 1})
    assert {p: b.committed(TP("t", p)) for p in (0, 1)} == committed


def test_commit_for_a_partition_owned_by_another_is_refused_whole(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=2)
    fill(log, "t", 20, 2)
    a, b = member(log, enable_auto_commit=False), member(log, enable_auto_commit=False)
    settle([a, b], lambda: len(parts(a)) == len(parts(b)) == 1)
    mine, theirs = TP("t", parts(a).pop()), TP("t", parts(b).pop())
    with pytest.raises(sqlog.CommitFailedError, match=f"t-{theirs.partition}.*owned by"):
        a.commit({mine: 5, theirs: 5})
    assert a.committed(mine) is None and a.committed(theirs) is None
    a.commit({mine: 5})
    assert a.committed(mine) == 5


def test_fence_checks_the_claim_generation(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=1)
    a = member(log)
    a.poll(timeout_ms=10)
    with log.engine.write() as conn:
        meta = conn.execute("SELECT topic_id FROM topics WHERE name = 't'").fetchone()
        (gen,) = conn.execute("SELECT generation FROM partition_owners WHERE group_id = 'g'").fetchone()
        groups.check_fence(conn, "g", groups.Fence(a.group_metadata().member_id, {(meta[0], 0): gen}),
                           [(TP("t", 0), meta[0])])
        with pytest.raises(sqlog.CommitFailedError):
            groups.check_fence(conn, "g", groups.Fence(a.group_metadata().member_id, {(meta[0], 0): gen - 1}),
                               [(TP("t", 0), meta[0])])


def test_member_past_max_poll_interval_leaves_and_rejoins(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=2)
    fill(log, "t", 10, 2)
    lost: list[set[sqlog.TopicPartition]] = []

    class L(sqlog.ConsumerRebalanceListener):
        def on_lost(self, ps: set[sqlog.TopicPartition]) -> None:
            lost.append(ps)

    a = member(log, listener=L(), max_poll_interval_ms=400, enable_auto_commit=False)
    a.poll(timeout_ms=100)
    first_id = a.group_metadata().member_id
    time.sleep(0.8)  # a slow job: no poll()
    assert log.describe_group("g").members == ()
    assert a.assignment() == set()
    with pytest.raises(sqlog.CommitFailedError, match="not a member of group 'g' any more .*max_poll_interval_ms"):
        a.commit()
    a.poll(timeout_ms=100)
    assert lost == [{TP("t", 0), TP("t", 1)}]
    assert a.group_metadata().member_id not in ("", first_id) and parts(a) == {0, 1}


def test_blocking_poll_counts_as_polling(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=1)
    a = member(log, max_poll_interval_ms=300)
    a.poll(timeout_ms=900)  # nothing arrives; blocked in poll() is not stalling
    assert a.group_metadata().member_id and [m.member_id for m in log.describe_group("g").members] == [
        a.group_metadata().member_id
    ]


def test_unsubscribe_leaves_the_group(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=2)
    a, b = member(log), member(log)
    settle([a, b], lambda: len(parts(a)) == len(parts(b)) == 1)
    a.unsubscribe()
    settle([b], lambda: parts(b) == {0, 1}, timeout=1)
    a.subscribe(["t"])
    settle([a, b], lambda: len(parts(a)) == len(parts(b)) == 1)


def test_subscribe_before_the_topic_exists(log: sqlog.Log) -> None:
    a = member(log, ["later"], metadata_max_age_ms=50)
    assert a.poll(timeout_ms=20) == [] and a.assignment() == set()
    log.create_topic("later", partitions=3)
    fill(log, "later", 3, 3)
    got: list[sqlog.Record] = []
    deadline = time.monotonic() + 5
    while len(got) < 3:
        assert time.monotonic() < deadline
        got += a.poll(timeout_ms=20)
    assert parts(a) == {0, 1, 2}


def test_partitions_added_are_assigned(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=2)
    a, b = member(log), member(log)
    settle([a, b], lambda: len(parts(a)) == len(parts(b)) == 1)
    log.alter_topic("t", partitions=4)
    settle([a, b], lambda: len(parts(a)) == len(parts(b)) == 2)


def test_deleting_a_subscribed_topic_revokes_its_partitions(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=2)
    log.create_topic("u", partitions=1)
    a = member(log, ["t", "u"])
    settle([a], lambda: len(a.assignment()) == 3)
    log.delete_topic("t")
    settle([a], lambda: a.assignment() == {TP("u", 0)})
    assert {p.topic for p in log.describe_group("g").partitions} <= {"u"}


def test_mixed_strategies_are_refused(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=2)
    member(log).poll(timeout_ms=10)
    other = member(log, partition_assignment_strategy="roundrobin")
    with pytest.raises(sqlog.InconsistentGroupProtocolError, match="range"):
        other.poll(timeout_ms=10)


def test_subscribed_consumer_not_yet_joined_commits_like_kafka_generation_minus_one(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=1)
    fill(log, "t", 5, 1)
    early = member(log)
    early.commit({TP("t", 0): 3})  # the group is empty: applied
    assert early.committed(TP("t", 0)) == 3
    a = member(log)
    a.poll(timeout_ms=10)
    late = member(log)
    with pytest.raises(sqlog.CommitFailedError, match="live members"):
        late.commit({TP("t", 0): 4})


def test_standalone_consumer_commits_only_to_an_empty_group(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=1)
    fill(log, "t", 5, 1)
    solo = log.consumer(group_id="g", enable_auto_commit=False)
    solo.assign([TP("t", 0)])
    solo.commit({TP("t", 0): 2})
    assert solo.committed(TP("t", 0)) == 2
    a = member(log)
    a.poll(timeout_ms=10)
    with pytest.raises(sqlog.CommitFailedError, match="live members"):
        solo.commit({TP("t", 0): 4})
    a.close()
    solo.commit({TP("t", 0): 4})


def test_non_group_consumers_are_unchanged(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=3)
    fill(log, "t", 9, 3)
    c = log.consumer(auto_offset_reset="earliest")
    c.subscribe(["t"])
    assert len(c.poll(timeout_ms=100)) == 9 and parts(c) == {0, 1, 2}
    assert log.list_groups() == []


def test_iterating_a_group_member(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=2)
    fill(log, "t", 6, 2)
    c = member(log, consumer_timeout_ms=300)
    assert sorted((r.partition, r.offset) for r in c) == [(p, o) for p in (0, 1) for o in range(3)]


def test_poll_stays_cheap_when_nothing_changes(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=4)
    c = member(log, session_timeout_ms=45_000, heartbeat_interval_ms=3000)
    c.poll(timeout_ms=10)
    gen = log.describe_group("g").generation
    start = time.perf_counter()
    for _ in range(2000):
        c.poll()
    per_poll = (time.perf_counter() - start) / 2000
    assert log.describe_group("g").generation == gen  # no rebalance traffic
    assert per_poll < 0.002, f"{per_poll * 1e6:.0f} µs a poll"


# -- admin ---------------------------------------------------------------------------------
def test_describe_list_delete(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=2)
    fill(log, "t", 10, 2)
    with pytest.raises(sqlog.GroupIdNotFoundError):
        log.describe_group("g")
    a = member(log, client_id="billing-1")
    settle([a], lambda: len(a.poll(timeout_ms=10)) == 0 and parts(a) == {0, 1})
    a.commit()
    desc = log.describe_group("g")
    assert log.list_groups() == ["g"]
    assert desc.state == "Stable" and desc.lag == 0 and desc.generation > 0
    (m,) = desc.members
    assert m.client_id == "billing-1" and m.member_id.startswith("billing-1-") and m.subscription == ("t",)
    assert m.assignment == m.target_assignment == {TP("t", 0), TP("t", 1)}
    assert m.pid > 0 and m.host and m.last_heartbeat_ms >= m.joined_ms
    assert [(p.partition, p.committed_offset, p.log_end_offset, p.lag, p.owner) for p in desc.partitions] == [
        (0, 5, 5, 0, m.member_id), (1, 5, 5, 0, m.member_id)
    ]
    fill(log, "t", 4, 2)
    assert log.describe_group("g").lag == 4
    with pytest.raises(sqlog.GroupNotEmptyError, match="live member"):
        log.delete_group("g")
    a.close()
    assert log.describe_group("g").state == "Empty"
    assert log.check().ok
    log.delete_group("g")
    assert log.list_groups() == []
    with pytest.raises(sqlog.GroupIdNotFoundError):
        log.delete_group("g")


def test_alter_and_reset_offsets(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=2)
    with log.producer() as producer:
        for i in range(10):
            producer.send("t", b"x", partition=i % 2, timestamp_ms=1000 + i)
    a = member(log)
    a.poll(timeout_ms=10)
    with pytest.raises(sqlog.GroupNotEmptyError):
        log.alter_group_offsets("g", {TP("t", 0): 1})
    with pytest.raises(sqlog.GroupNotEmptyError):
        log.reset_group_offsets("g", "earliest")
    a.close()
    log.alter_group_offsets("g", {TP("t", 0): 1, TP("t", 1): sqlog.OffsetAndMetadata(2, "by hand")})
    assert [p.committed_offset for p in log.describe_group("g").partitions] == [1, 2]
    with pytest.raises(sqlog.InvalidConfigError, match="outside"):
        log.alter_group_offsets("g", {TP("t", 0): 99})
    assert log.reset_group_offsets("g", "latest") == {TP("t", 0): 5, TP("t", 1): 5}
    assert log.reset_group_offsets("g", "earliest", ["t"]) == {TP("t", 0): 0, TP("t", 1): 0}
    # Partition 0 holds timestamps 1000, 1002, ...; partition 1 holds 1001, 1003, ...
    assert log.reset_group_offsets("g", 1005) == {TP("t", 0): 3, TP("t", 1): 2}
    assert log.reset_group_offsets("g", 9999, [TP("t", 1)]) == {TP("t", 1): 5}
    b = member(log)
    assert sorted((r.partition, r.offset) for r in b.poll(timeout_ms=100)) == [(0, 3), (0, 4)]


def test_dead_members_do_not_block_admin(log: sqlog.Log, monkeypatch: pytest.MonkeyPatch) -> None:
    log.create_topic("t", partitions=1)
    a = member(log)
    a.poll(timeout_ms=10)
    freeze_heartbeats(monkeypatch, a)
    with log.engine.write() as conn:  # as if its last heartbeat were long ago
        conn.execute("UPDATE group_members SET heartbeat_ms = heartbeat_ms - 10000")
    assert log.describe_group("g").members == ()
    log.alter_group_offsets("g", {TP("t", 0): 0})  # expires the dead member, then applies


def test_schema_1_file_is_migrated(log_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Plus the compaction columns (migration 6 adds only what is missing) and the batch index's
    # tail columns (storage.add_index_tail, likewise): today's topic and producer code, standing
    # in for the old sqlog, reads them.
    monkeypatch.setattr(storage, "MIGRATIONS", (*storage.MIGRATIONS[:1], storage.MIGRATIONS[5], storage.add_index_tail))
    monkeypatch.setattr(storage, "SCHEMA_VERSION", 2)
    old = sqlog.open(log_path)
    old.engine.conn.execute("PRAGMA user_version = 1")
    with old.engine.write() as conn:  # not create_topic(): its description reads later schemas' columns
        topics.create(conn, "t", 1, None, None)
    with old.producer() as producer:
        producer.send("t", b"kept").get()
    old.close()
    monkeypatch.undo()
    log = sqlog.open(log_path)
    c = member(log)
    assert [r.value for r in c.poll(timeout_ms=100)] == [b"kept"]
    conn = apsw.Connection(log_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == storage.SCHEMA_VERSION >= 2
    conn.close()


def test_reset_group_offsets_dry_run_stores_nothing(log: sqlog.Log) -> None:
    log.create_topic("t", partitions=2)
    with log.producer() as producer:
        for i in range(10):
            producer.send("t", b"x", partition=i % 2, timestamp_ms=1_000 + i)
    log.alter_group_offsets("g", {TP("t", 0): 1, TP("t", 1): 2})
    planned = log.reset_group_offsets("g", "latest", dry_run=True)
    assert planned == {TP("t", 0): 5, TP("t", 1): 5}
    assert {p.partition: p.committed_offset for p in log.describe_group("g").partitions} == {0: 1, 1: 2}
    assert log.reset_group_offsets("g", 1_004, dry_run=True) == {TP("t", 0): 2, TP("t", 1): 2}
    assert log.reset_group_offsets("g", "latest") == planned
    assert {p.partition: p.committed_offset for p in log.describe_group("g").partitions} == {0: 5, 1: 5}
    with pytest.raises(sqlog.InvalidConfigError, match="dry_run"):
        log.reset_group_offsets("g", "latest", dry_run="yes")  # type: ignore[arg-type]


def test_committed_metadata_reads_back(log: sqlog.Log) -> None:
    """kafka-python's committed(tp, metadata=True): the OffsetAndMetadata that was committed;
    describe_group shows the metadata too."""
    log.create_topic("t", partitions=2)
    tp0, tp1 = sqlog.TopicPartition("t", 0), sqlog.TopicPartition("t", 1)
    c = log.consumer(group_id="g", enable_auto_commit=False)
    c.assign([tp0, tp1])
    assert c.committed(tp0) is None and c.committed(tp0, metadata=True) is None
    c.commit({tp0: sqlog.OffsetAndMetadata(0, "batch 7, host a"), tp1: 0})
    assert c.committed(tp0) == 0
    assert c.committed(tp0, metadata=True) == sqlog.OffsetAndMetadata(0, "batch 7, host a")
    assert c.committed(tp1, metadata=True) == sqlog.OffsetAndMetadata(0, "")
    with pytest.raises(sqlog.InvalidConfigError, match="metadata"):
        c.committed(tp0, metadata="yes")  # type: ignore[arg-type]
    c.close()
    parts = {p.partition: p.metadata for p in log.describe_group("g").partitions}
    assert parts == {0: "batch 7, host a", 1: ""}
