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
KAFKA_LAN = "192.168.1.20:9093"  # where its security block expects `sqlog serve --sasl` with TLS


def _serve(db: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """`sqlog serve` on a free port, with auto-created topics; returns it and HOST:PORT."""
    server = subprocess.Popen([str(BIN / "sqlog"), "--db", str(db), "serve", "--port", "0",
                               "--auto-create-partitions", "1", *extra], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    line = server.stdout.readline()
    assert line.startswith("listening on "), line
    return server, line.split()[-1]


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_readme_python_block_runs_twice(tmp_path: Path, index: int) -> None:
    code = _blocks("python")[index]
    server = None
    env = dict(os.environ)
    if KAFKA in code:  # a Kafka client: run it against a real `sqlog serve` (on a free port)
        server, address = _serve(tmp_path / "app.db")
        code = code.replace(KAFKA, address)
    elif KAFKA_LAN in code:  # SASL_SSL: a user, and ca.pem beside the block (certificates made here)
        from server_helpers import Certs, add_user

        certs = Certs(str(tmp_path))
        add_user(str(tmp_path / "app.db"), "alice", "readme password")
        env["SQLOG_PASSWORD"] = "readme password"
        server, address = _serve(tmp_path / "app.db", "--sasl", *certs.serve_args())
        code = code.replace(KAFKA_LAN, address)
    try:
        for run in (1, 2):
            done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                                  timeout=60, env=env)
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
