"""The README's examples run as written, twice in a row in the same directory (a rerun must not
trip over what the first run created): every ```python block, and the ```bash block of the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BIN = Path(sys.executable).parent


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), re.M | re.S)


KAFKA = "127.0.0.1:9092"  # where the README's Kafka-client block expects `sqlog serve`


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_readme_python_block_runs_twice(tmp_path: Path, index: int) -> None:
    code = _blocks("python")[index]
    server = None
    if KAFKA in code:  # a Kafka client: run it against a real `sqlog serve` (on a free port)
        server = subprocess.Popen([str(BIN / "sqlog"), "--db", str(tmp_path / "app.db"), "serve", "--port", "0",
                                   "--auto-create-partitions", "1"], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("listening on "), line
        code = code.replace(KAFKA, line.split()[-1])
    try:
        for run in (1, 2):
            done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                                  timeout=60)
            assert done.returncode == 0, f"run {run}:\n{code}\n{done.stderr}"
    finally:
        if server is not None:
            server.terminate()
            assert server.wait(timeout=30) == 0


def test_readme_cli_block_runs_twice(tmp_path: Path) -> None:
    (cli,) = [b for b in _blocks("bash") if "sqlog topics create" in b]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for run in (1, 2):
        done = subprocess.run(["bash", "-e", "-c", cli], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, env=env)
        assert done.returncode == 0, f"run {run}:\n{done.stdout}\n{done.stderr}"
    assert "already exists" in done.stdout
