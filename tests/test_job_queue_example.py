"""examples/job_queue.py runs to its own checks: a crashed worker's jobs redelivered, the poison job dead-lettered."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "job_queue.py"


def test_job_queue_example(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(EXAMPLE), str(tmp_path / "jobs.db")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "CRASH" in proc.stdout and "redelivered" in proc.stdout and "dead letter" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1].startswith("ok in")
