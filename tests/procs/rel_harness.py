"""Parent-side helpers of the reliability suite: run ``rel_worker.py`` children, read what they
acknowledged, and check a log against it. Every wait has a timeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import sqlog

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WORKER = HERE / "rel_worker.py"
sys.path.insert(0, str(HERE))

from rel_worker import headers_for, parse_value, value_for  # noqa: E402

__all__ = ["Child", "headers_for", "parse_value", "read_all", "value_for"]


class ChildFailed(AssertionError):
    pass


class Child:
    """A ``rel_worker.py`` process; its stdout lines are collected by a thread as they come."""

    def __init__(self, role: str, args: dict[str, Any], stderr_dir: Path, stdin: bool = False) -> None:
        self.role = role
        self.stderr_path = stderr_dir / f"{role}-{os.getpid()}-{id(self)}-{time.monotonic_ns()}.stderr"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        with open(self.stderr_path, "w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKER), role, json.dumps(args)],
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=stderr, text=True, bufsize=1, env=env,
            )
        self.lines: list[str] = []
        self.eof = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.endswith("\n"):
                break  # cut short by a kill: not a complete report, so not counted
            with self._cond:
                self.lines.append(line[:-1])
                self._cond.notify_all()
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text()[-4000:]
        except OSError:
            return "<no stderr>"

    def wait_line(self, prefix: str, timeout: float, start: int = 0) -> str:
        """The first line (from index ``start``) beginning with ``prefix``; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if line.startswith(prefix):
                        return line
                start = len(self.lines)
                remaining = deadline - time.monotonic()
                if self.eof or remaining <= 0:
                    raise ChildFailed(
                        f"{self.role}: no {prefix!r} line ({'exited' if self.eof else f'within {timeout} s'}); "
                        f"last lines {self.lines[-3:]}; stderr:\n{self.stderr()}"
                    )
                self._cond.wait(remaining)

    def count(self, prefix: str) -> int:
        with self._cond:
            return sum(1 for line in self.lines if line.startswith(prefix))

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.drain()

    def drain(self, timeout: float = 30.0) -> list[str]:
        """Wait for exit and EOF (so every line the child flushed is in ``lines``)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise ChildFailed(f"{self.role}: still running after {timeout} s; stderr:\n{self.stderr()}") from None
        self._reader.join(timeout=timeout)
        if self._reader.is_alive():
            raise ChildFailed(f"{self.role}: stdout still open {timeout} s after exit")
        return self.lines

    def finish(self, timeout: float = 60.0) -> list[str]:
        """Wait for a normal exit (status 0)."""
        lines = self.drain(timeout)
        if self.proc.returncode != 0:
            raise ChildFailed(f"{self.role} exited with {self.proc.returncode}; stderr:\n{self.stderr()}")
        return lines

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


def read_all(log: sqlog.Log, topic: str, partitions: int) -> dict[int, list[sqlog.Record]]:
    """Every stored record of ``topic``, per partition, through a fresh consumer (no waiting)."""
    consumer = log.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
    tps = [sqlog.TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning()
    out: dict[int, list[sqlog.Record]] = {p: [] for p in range(partitions)}
    while batch := consumer.poll(timeout_ms=0, max_records=5000):
        for record in batch:
            out[record.partition].append(record)
    consumer.close()
    return out
