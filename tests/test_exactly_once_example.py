"""examples/exactly_once.py runs to its own checks: a consume-transform-produce worker crashing
mid-transaction leaves no trace (one invoice per order), and a job-queue worker crashing between
its result and its commit has its job done once by another (one result per job)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "exactly_once.py"


def test_exactly_once_example(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(EXAMPLE), str(tmp_path / "eo.db")],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    out = proc.stdout
    assert out.count("CRASH") == 2, out
    assert "400 invoices for 400 orders; group lag 0" in out and "30 results for 30 jobs" in out, out
    assert out.rstrip().splitlines()[-1].startswith("ok in")
