"""benchmarks/bench_queue.py --quick runs every row it can and reports it: the script works (no speed assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_queue.py"


def test_bench_queue_quick_reports_every_side(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--jobs", "300", "--json", str(out), "--dir", str(tmp_path),
         "--timeout", "170"],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    doc = json.loads(out.read_text())
    assert doc["meta"]["quick"] is True and doc["meta"]["workers"] == [1, 2, 4]
    sides = {row["side"] for row in doc["rows"]} | set(doc["meta"]["skipped"])
    assert {"sqlog", "sqlog commit", "sqlog x100", "persist-queue", "litequeue"} <= sides
    for row in doc["rows"]:
        if row["side"].startswith("sqlog"):
            assert row["jobs_per_s"] > 0, row
            assert row["missing"] == 0 and row["duplicates"] == 0, row  # every job exactly once
        assert row["side"] in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"], "temporary files removed"
