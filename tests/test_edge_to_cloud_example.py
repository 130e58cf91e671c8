"""examples/edge_to_cloud.py runs to its own checks: readings pushed through an outage (retention's
drops warned and counted), commands pulled, nothing still stored missing from the cluster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("confluent_kafka")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "edge_to_cloud.py"


def test_edge_to_cloud_example(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(EXAMPLE), str(tmp_path / "edge.db"), "6"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "uplink down" in proc.stdout and "uplink UP" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1].startswith("every reading still on the device is on the cluster")
