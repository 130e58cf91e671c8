"""Concurrency stress: producer and consumer threads AND processes on one log file for a
bounded time, checked against a model.

Producers (threads in this process and in child processes, several producer ids each) send
``pid:seq`` records in random bursts, keyed and unkeyed, over several partitions, and report
every acknowledged record. Consumers (threads here and child processes; some plain, some in a
group that commits after every poll and restarts from its committed offsets now and then) read
every partition from offset 0 while the producers run, then to the final high watermarks. A
checker thread runs ``log.check()`` on live snapshots all along.

Checked: nothing acknowledged is lost (each at the offset its get()/flush() reported, with its
value), nothing is stored twice, each producer's records keep their send order within a
partition, offsets are dense, and every consumer saw each partition exactly once, in offset
order, byte-for-byte what the log holds.

Default run: about 5 s of load. Long run (about 60 s, more participants):

    .venv/bin/python -m pytest -m slow tests/test_stress.py
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import sqlog

sys.path.insert(0, str(Path(__file__).resolve().parent / "procs"))
from rel_harness import Child, parse_value, read_all, value_for  # noqa: E402
from rel_worker import consume_checked, stress_send_loop  # noqa: E402

TOPIC = "stress"


class Collector:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, lines: list[str]) -> None:
        with self.lock:
            self.lines.extend(lines)


def run_stress(tmp_path: Path, seconds: float, partitions: int, producer_procs: int, producer_threads: int,
               consumer_procs: int, consumer_threads: int) -> dict[str, Any]:
    path = str(tmp_path / "stress.db")
    stop_file = str(tmp_path / "stop")
    options = {"wal_limit_bytes": 256 * 1024, "wal_checkpoint_interval_ms": 100}
    log = sqlog.open(path, **options)
    log.create_topic(TOPIC, partitions=partitions)
    children: list[Child] = []
    errors: list[str] = []
    threads: list[threading.Thread] = []
    try:
        consumer_args = [
            {"path": path, "topic": TOPIC, "partitions": partitions, "stop_file": stop_file,
             "max_seconds": seconds + 90, "seed": i, "open": options,
             **({"group": f"group-{i}", "restart_every": 5 + 7 * i} if i % 2 else {})}
            for i in range(consumer_procs + consumer_threads)
        ]
        for args in consumer_args[:consumer_procs]:
            children.append(Child("stress_consume", args, tmp_path))
        producers = [
            Child("stress_produce", {"path": path, "topic": TOPIC, "pid": f"proc{i}", "seed": i, "threads": 2,
                                     "seconds": seconds, "batch_size": [512, 16_384][i % 2], "linger_ms": [0, 2][i % 2],
                                     "open": options}, tmp_path)
            for i in range(producer_procs)
        ]
        children.extend(producers)
        for child in children:
            child.wait_line("ready", timeout=60)

        # in-process participants, started once every child is ready
        acks = Collector()
        thread_results: dict[int, list[str]] = {}
        deadline = time.monotonic() + seconds
        producer = log.producer(batch_size=4096, linger_ms=1)

        def guarded(name: str, body: Any) -> None:
            try:
                body()
            except BaseException as exc:  # noqa: BLE001
                errors.append(f"{name}: {exc!r}")

        for t in range(producer_threads):
            threads.append(threading.Thread(target=guarded, args=(
                f"producer thread {t}",
                lambda t=t: stress_send_loop(producer, TOPIC, f"thread{t}", 99, deadline, acks))))
        for i, args in enumerate(consumer_args[consumer_procs:]):
            def consume(i: int = i, args: dict[str, Any] = args) -> None:
                thread_results[i] = consume_checked(log, args)

            threads.append(threading.Thread(target=guarded, args=(f"consumer thread {i}", consume)))
        checks = [0]

        def checker() -> None:
            while time.monotonic() < deadline:
                report = log.check()
                assert report.ok, report.violations
                checks[0] += 1
                time.sleep(0.2)

        threads.append(threading.Thread(target=guarded, args=("checker", checker)))
        for thread in threads:
            thread.start()

        for child in producers:
            child.finish(timeout=seconds + 120)
        for thread in threads[:producer_threads]:
            thread.join(timeout=120)
            assert not thread.is_alive(), "a producer thread hung"
        producer.close(timeout=60)
        Path(stop_file).touch()  # all producers are done: consumers read to the end and report
        for child in children:
            child.finish(timeout=120)
        for thread in threads:
            thread.join(timeout=120)
            assert not thread.is_alive(), "a consumer or checker thread hung"
        assert not errors, errors

        # -- the model ------------------------------------------------------------------------
        failed = [line for child in producers for line in child.lines if line.startswith("error ")]
        assert not failed, failed
        ack_lines = acks.lines + [line for child in producers for line in child.lines if line.startswith("ack ")]
        acked = {}
        for line in ack_lines:
            _, pid, seq, part, offset = line.split()
            assert (pid, int(seq)) not in acked, f"{pid}:{seq} acknowledged twice"
            acked[(pid, int(seq))] = (int(part), int(offset))
        report = log.check()
        assert report.ok, report.violations
        stored = read_all(log, TOPIC, partitions)
        where: dict[tuple[str, int], tuple[int, int]] = {}
        digests = {}
        for part, records in stored.items():
            assert [r.offset for r in records] == list(range(len(records))), f"partition {part} not dense"
            last: dict[str, int] = {}
            digest = hashlib.sha256()
            for r in records:
                pid, seq = parse_value(r.value)
                assert r.value == value_for(pid, seq), f"damaged value at {part}/{r.offset}"
                assert (pid, seq) not in where, f"{pid}:{seq} stored twice: {where[(pid, seq)]} and {(part, r.offset)}"
                where[(pid, seq)] = (part, r.offset)
                assert seq > last.get(pid, -1), f"{pid}'s records out of order in partition {part} at {r.offset}"
                last[pid] = seq
                digest.update(b"%d:%s;" % (r.offset, r.value))
            digests[part] = (len(records), digest.hexdigest())
        lost = {k: v for k, v in acked.items() if where.get(k) != v}
        assert not lost, f"{len(lost)} acknowledged records lost or moved, e.g. {list(lost.items())[:5]}"
        # every record stored was acknowledged (all producers ended normally, so all were)
        assert len(where) == len(acked), f"{len(where)} stored, {len(acked)} acknowledged"

        consumer_reports = [[line for line in child.lines if line.startswith(("read ", "bad "))]
                            for child in children[:consumer_procs]] + list(thread_results.values())
        assert len(consumer_reports) == consumer_procs + consumer_threads
        for i, lines in enumerate(consumer_reports):
            bad = [line for line in lines if line.startswith("bad")]
            assert not bad, f"consumer {i} ({consumer_args[i]}): {bad}"
            seen = {int(p): (int(n), d) for _, p, n, d in (line.split() for line in lines)}
            assert seen == digests, f"consumer {i} did not read exactly what the log holds"
        return {"records": len(where), "per_partition": [digests[p][0] for p in range(partitions)],
                "checks_during_load": checks[0], "consumers": len(consumer_reports)}
    finally:
        for child in children:
            child.cleanup()
        Path(stop_file).touch()
        for thread in threads:
            thread.join(timeout=30)
        log.close()


def test_stress_threads_and_processes(tmp_path: Path) -> None:
    stats = run_stress(tmp_path, seconds=3.5, partitions=3, producer_procs=2, producer_threads=2,
                       consumer_procs=2, consumer_threads=2)
    assert stats["records"] > 0 and all(stats["per_partition"])
    print(f"stress: {stats}")


@pytest.mark.slow
def test_stress_threads_and_processes_long(tmp_path: Path) -> None:
    stats = run_stress(tmp_path, seconds=60.0, partitions=4, producer_procs=3, producer_threads=3,
                       consumer_procs=3, consumer_threads=3)
    assert stats["records"] > 0 and all(stats["per_partition"])
    print(f"stress: {stats}")
