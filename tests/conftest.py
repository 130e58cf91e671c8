"""Shared fixtures: a log file in tmp_path, and every log a test opens closed after it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import sqlog
import sqlog.log


@pytest.fixture(autouse=True)
def _close_every_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[sqlog.Log]]:
    """Track each Log a test opens (directly or through sqlog.open) and close it afterwards."""
    opened: list[sqlog.Log] = []
    original_init = sqlog.log.Log.__init__

    def tracking_init(self: sqlog.Log, *args: object, **kwargs: object) -> None:
        original_init(self, *args, **kwargs)  # type: ignore[arg-type]
        opened.append(self)

    monkeypatch.setattr(sqlog.log.Log, "__init__", tracking_init)
    yield opened
    for log in opened:
        log.close()


@pytest.fixture
def log_path(tmp_path: Path) -> str:
    return str(tmp_path / "log.db")


@pytest.fixture
def log(log_path: str) -> sqlog.Log:
    return sqlog.open(log_path)
