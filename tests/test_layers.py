"""tools/check_layers.py: DESIGN.md's layering rule, checked on the repository and on tiny fake packages."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "check_layers.py"


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--root", str(root), *args],
                          capture_output=True, text=True, timeout=60)


def fake(tmp_path: Path, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Write files (paths relative to the fake repository) and run the checker on them."""
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return run(tmp_path)


def lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stdout.splitlines()


CLEAN = {
    "sqlog/__init__.py": "from .log import Log\nfrom .types import Point\n",
    "sqlog/cli.py": "import sqlog\nimport os\n\ndef main():\n    os._exit(sqlog.Log()._replace())\n",
    "sqlog/log.py": """\
        from typing import TYPE_CHECKING
        from . import storage
        from .types import Point
        if TYPE_CHECKING:
            from sqlog.storage import connect

        class Log:
            def __init__(self):
                self._conn = storage.connect()

            def same(self, other: "Log | None") -> bool:
                return other is not None and other._conn is self._conn

            def load(self):
                from .types import Point  # function level, pointing down: fine
                return Point(1, 2)._asdict(), self._conn
        """,
    "sqlog/storage.py": "from .types import Point\n\ndef connect():\n    return Point(0, 0)\n",
    "sqlog/types.py": "from typing import NamedTuple\n\nclass Point(NamedTuple):\n    x: int\n    y: int\n",
    "sqlog/server/__init__.py": "from . import kafka\n",
    "sqlog/server/kafka.py": "import sqlog\nfrom .. import log\nfrom ..types import Point\n",
}


def test_clean_package_passes(tmp_path: Path) -> None:
    result = fake(tmp_path, CLEAN)
    assert (result.returncode, result.stdout) == (0, ""), result.stdout + result.stderr


def test_cycle_in_one_layer_is_reported_once(tmp_path: Path) -> None:
    result = fake(tmp_path, {**CLEAN, "sqlog/errors.py": "from . import types\n",
                             "sqlog/types.py": "from .errors import Oops\n"})
    assert result.returncode == 1
    assert lines(result) == ["sqlog/errors.py:1: import cycle: errors -> types -> errors"]


def test_upward_imports_are_reported_wherever_they_are(tmp_path: Path) -> None:
    result = fake(tmp_path, {**CLEAN, "sqlog/storage.py": """\
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from sqlog.log import Log

        def connect():
            from . import writer
            import sqlog.partitions
        """, "sqlog/writer.py": "", "sqlog/partitions.py": ""})
    assert result.returncode == 1
    out = lines(result)
    assert "sqlog/storage.py:3: upward import: storage (layer 9) imports log (layer 3)" in out
    assert "sqlog/storage.py:6: upward import: storage (layer 9) imports writer (layer 5)" in out
    assert "sqlog/storage.py:7: upward import: storage (layer 9) imports partitions (layer 8)" in out
    assert "sqlog/log.py:2: import cycle: log -> storage -> log" in out
    assert len(out) == 4, out


def test_underscore_names_of_other_objects_are_reported(tmp_path: Path) -> None:
    result = fake(tmp_path, {**CLEAN, "sqlog/storage.py": """\
        from .types import _helper
        from . import types

        class Reader:
            def read(self, c, log):
                return c._limit, self._log._track, types._private(), log.__class__
        """})
    assert result.returncode == 1
    assert lines(result) == [
        "sqlog/storage.py:1: private name: imports _helper from types",
        "sqlog/storage.py:6: private name: c._limit",
        "sqlog/storage.py:6: private name: self._log._track",
        "sqlog/storage.py:6: private name: types._private",
    ]


def test_module_missing_from_the_table(tmp_path: Path) -> None:
    result = fake(tmp_path, {**CLEAN, "sqlog/gadget.py": "from .types import Point\n"})
    assert result.returncode == 1
    assert lines(result) == [
        "sqlog/gadget.py:1: module gadget is not in the layer table (add it to the layer table)"]


def test_tests_option_reports_without_failing(tmp_path: Path) -> None:
    fake(tmp_path, {**CLEAN,
                    "tests/test_x.py": "from sqlog.log import _hidden\n\ndef test(log):\n    log._conn\n"})
    assert run(tmp_path).stdout == ""
    result = run(tmp_path, "--tests")
    assert result.returncode == 0
    assert lines(result) == ["tests/test_x.py:1: private name: imports _hidden from log (report only)",
                             "tests/test_x.py:4: private name: log._conn (report only)"]


def test_repository_layers_are_clean() -> None:
    result = run(ROOT)
    assert result.returncode == 0, f"tools/check_layers.py found violations:\n{result.stdout}{result.stderr}"
