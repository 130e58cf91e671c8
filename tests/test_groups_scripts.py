"""The group benchmark (--quick) and the work-queue example run to the end (nothing about speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_groups_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_groups.py"), "--quick", "--json",
                           str(out)], check=False, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert set(results["rebalance_ms"]) == {"join", "leave", "die", "die (timeout only)"}
    assert {"1 member process", "2 member processes", "4 member processes"} <= set(results["throughput_rps"])
    assert all(v > 0 for v in results["throughput_rps"].values())


def test_work_queue_example_loses_no_job() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "work_queue.py")], check=False, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SIGKILL w2" in done.stdout and "missing: 0" in done.stdout
