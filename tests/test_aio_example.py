"""examples/aio_jobs.py runs: every job enqueued by the asyncio service is done once by the worker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "aio_jobs.py"


def test_aio_jobs_example(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(EXAMPLE), str(tmp_path / "jobs.db")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "all 10 jobs done: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]" in proc.stdout
    assert "job 3 failed (delivery 1); released" in proc.stdout
    assert "done job 3 (delivery 2)" in proc.stdout
