"""benchmarks/bench_core.py runs and reports every workload: correctness of the script, not speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_core.py"
WORKLOADS = {"send_100b", "send_1kib", "poll_100b", "durable_send_1t", "durable_send_8t"}


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
