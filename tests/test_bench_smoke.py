"""benchmarks/bench_core.py runs and reports every workload: correctness of the script, not speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_core.py"
WORKLOADS = {"send_100b", "send_1kib", "poll_100b", "poll_100b_nocrc", "durable_send_1t", "durable_send_8t"}


def test_bench_core_quick_writes_every_workload(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out), "--dir", str(tmp_path), "--timeout", "110"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    doc = json.loads(out.read_text())
    rows = {row["workload"]: row for row in doc["workloads"]}
    assert set(rows) == WORKLOADS
    for name, row in rows.items():
        assert row["records"] > 0, name
        assert row["sqlog_rps"] > 0 and row["raw_rps"] > 0 and row["ratio"] > 0, name
        assert row["rounds"] and all(r["sqlog_rps"] > 0 and r["raw_rps"] > 0 for r in row["rounds"]), name
        assert row["title"] in proc.stdout, name  # the table printed it
    vs = rows["durable_send_8t"]["vs_1_thread"]
    assert vs["sqlog_1t_rps"] > 0 and vs["ratio"] > 0
    assert doc["meta"]["quick"] is True
    # The temporary database files are removed: only the JSON is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]


RETENTION_SCRIPT = SCRIPT.parent / "bench_retention.py"


def test_bench_retention_quick_writes_every_workload(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(RETENTION_SCRIPT), "--quick", "--json", str(out), "--dir", str(tmp_path),
         "--timeout", "110"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    doc = json.loads(out.read_text())
    rows = {row["workload"]: row for row in doc["workloads"]}
    assert set(rows) == {"sweep_time", "sweep_size", "produce_sweeper"}
    for name in ("sweep_time", "sweep_size"):
        row = rows[name]
        assert row["records"] > 0 and row["deleted"] > 0, name
        assert row["seconds"] > 0 and row["sweep_rps"] > 0 and row["sweep_mbps"] > 0, name
        assert row["pages_freed"] > 0 and row["disk_before_bytes"] > 0, name
        busy = row["with_producer"]
        assert busy["sweep_rps"] > 0 and busy["producer_sends"] > 0 and busy["producer_max_wait_ms"] > 0, name
        assert len(row["rounds"]) == doc["meta"]["rounds"], name
        assert row["title"] in proc.stdout, name  # the table printed it
    produce = rows["produce_sweeper"]
    assert produce["off_rps"] > 0 and produce["on_rps"] > 0 and produce["ratio"] > 0
    assert produce["off_disk_bytes"] > 0 and produce["on_disk_bytes"] > 0
    assert produce["off_retention_deleted"] > 0  # retention really deleted, even with the sweeper off
    assert all(r["ratio"] > 0 for r in produce["rounds"])
    assert produce["title"] in proc.stdout
    assert doc["meta"]["quick"] is True
    # The temporary database files are removed: only the JSON is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]


RUN_SCRIPT = SCRIPT.parent / "run.py"
RUN_WORKLOADS = {
    "send_100b", "send_1kib", "send_16kib", "send_bulk", "poll_100b", "durable_send", "latency_in_process",
    "latency_across_processes", "idle_cpu", "aio", "scale", "txn_ctp", "send_message_id", "peers_produce",
    "peers_consume", "peers_durable", "compaction", "server", "mirror", "queue",
}


def test_bench_run_quick_reports_every_workload(tmp_path: Path) -> None:
    """The suite's entry command in --quick mode (what CI runs): exit 0, the table, the JSON with
    every workload; peers, the bulk path and the chart may be skipped when not installed."""
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    proc = subprocess.run(
        [sys.executable, str(RUN_SCRIPT), "--quick", "--json", str(out), "--png", str(png), "--dir", str(tmp_path),
         "--timeout", "110", "-q"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    doc = json.loads(out.read_text())
    assert doc["meta"]["quick"] is True
    assert set(doc["workloads"]) == RUN_WORKLOADS
    for name, w in doc["workloads"].items():
        assert w["status"] in {"ok", "skipped"}, (name, w)
        if w["status"] == "skipped":
            assert w["note"], name
    must_run = RUN_WORKLOADS - {"send_bulk", "peers_produce", "peers_consume", "peers_durable"}
    assert all(doc["workloads"][k]["status"] == "ok" for k in must_run)
    rows = doc["rows"]
    assert {r["workload"] for r in rows} == RUN_WORKLOADS
    for r in rows:
        assert r["title"] in proc.stdout, r["title"]  # the table printed it
        if r["status"] == "ok":
            assert r["sqlog"] is not None and r["sqlog"] > 0 and r["baseline"] is not None, r
        if r["target"] != "-" and r["status"] == "ok":
            assert r["met"] in (True, False), r
    assert "met?" in proc.stdout and "target" in proc.stdout
    scale = doc["workloads"]["scale"]["data"]
    assert scale["by_level"]["0"]["sqlog"]["append_rps"] > 0 and scale["open_ms"]["sqlog"] > 0
    lat = doc["workloads"]["latency_across_processes"]["data"]
    assert lat["sqlog"]["pooled"]["count"] == lat["raw"]["pooled"]["count"] > 0
    # A chart when matplotlib is importable, else a note saying why not.
    assert png.exists() or "matplotlib is not installed" in proc.stdout
    # The temporary files are removed: only the outputs are left.
    assert {p.name for p in tmp_path.iterdir()} <= {"bench.json", "bench.png"}


def test_bench_compaction_quick(tmp_path: Path) -> None:
    """benchmarks/bench_compaction.py --quick runs and reports every measurement."""
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "bench_compaction.py"), "--quick"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for text in ("compact 20,000 records over 200 keys", "over 20,000 keys", "raw DELETE on a (key, offset) index",
                 "send() keyed 100 B", "lookups/s"):
        assert text in proc.stdout, proc.stdout


TXN_SCRIPT = SCRIPT.parent / "bench_txn.py"


def test_bench_txn_quick_writes_both_workloads(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(TXN_SCRIPT), "--quick", "--json", str(out), "--dir", str(tmp_path), "--timeout", "110",
         "-q"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    rows = {row["workload"]: row for row in json.loads(out.read_text())["workloads"]}
    assert set(rows) == {"txn_ctp", "send_message_id"}
    assert rows["txn_ctp"]["txn_rps"] > 0 and rows["txn_ctp"]["plain_rps"] > 0
    assert rows["send_message_id"]["ids_rps"] > 0 and rows["send_message_id"]["ratio"] > 0


AIO_SCRIPT = SCRIPT.parent / "bench_aio.py"


def test_bench_aio_quick_reports_every_number(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(AIO_SCRIPT), "--quick", "--json", str(out), "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    data = json.loads(out.read_text())["data"]
    for key in ("sync_send_rps", "async_send_rps", "sync_consume_rps", "async_consume_rps",
                "sync_latency_p50_ms", "async_latency_p50_ms", "async_latency_p99_ms", "stall_worst_ms",
                "idle_stall_worst_ms"):
        assert data[key] > 0, key
    assert data["send_ratio"] > 0 and data["consume_ratio"] > 0
    assert "async getmany() / sync poll()" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]
