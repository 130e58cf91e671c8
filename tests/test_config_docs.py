"""Every config key is documented from one source (sqlog.config's option tables): the keys each
client accepts, its docstrings, sqlog.open()'s signature and the README's reference section must
all agree, so they cannot drift."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import sqlog
import sqlog.engine
from sqlog import config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
# At import: conftest wraps Log.__init__ later. The log's own options and the engine's (which Log
# passes on as **options) together are sqlog.open()'s.
OPEN_PARAMS = {**inspect.signature(sqlog.engine.Engine.__init__).parameters,
               **inspect.signature(sqlog.Log.__init__).parameters}
OPEN_PARAMS.pop("options")


def _names(options: tuple[config.Option, ...]) -> list[str]:
    return [o.name for o in options]


def _unknown_key_list(call: object) -> set[str]:
    with pytest.raises(sqlog.InvalidConfigError) as info:
        call()  # type: ignore[operator]
    return set(str(info.value).split("known: ")[1].split(", "))


def test_clients_accept_exactly_the_documented_keys(log: sqlog.Log) -> None:
    producer, consumer, share = log.producer(), log.consumer(), log.share_consumer("g")
    try:
        for client, options in ((producer, config.PRODUCER_OPTIONS), (consumer, config.CONSUMER_OPTIONS),
                                (share, config.SHARE_CONSUMER_OPTIONS)):
            assert list(client.config) == _names(options)
            for o in options:
                if o.name != "heartbeat_interval_ms":  # None in the table: derived from the session timeout
                    assert client.config[o.name] == o.default, o.name
    finally:
        producer.close(), consumer.close(), share.close()
    assert _unknown_key_list(lambda: log.producer(lingerms=1)) == set(_names(config.PRODUCER_OPTIONS))
    assert _unknown_key_list(lambda: log.consumer(groupid="g")) == set(_names(config.CONSUMER_OPTIONS))
    assert _unknown_key_list(lambda: log.share_consumer("g", x=1)) == set(_names(config.SHARE_CONSUMER_OPTIONS))


def test_open_options_match_the_table(tmp_path: Path) -> None:
    assert {n: p.default for n, p in OPEN_PARAMS.items() if n not in ("self", "path")} == config.defaults(config.OPEN_OPTIONS)
    assert _unknown_key_list(lambda: sqlog.open(str(tmp_path / "x.db"), durabilty="full")) == set(
        _names(config.OPEN_OPTIONS))


@pytest.mark.parametrize("doc, options", [
    (sqlog.open.__doc__, config.OPEN_OPTIONS),
    (sqlog.Producer.__doc__, config.PRODUCER_OPTIONS), (sqlog.Log.producer.__doc__, config.PRODUCER_OPTIONS),
    (sqlog.Consumer.__doc__, config.CONSUMER_OPTIONS), (sqlog.Log.consumer.__doc__, config.CONSUMER_OPTIONS),
    (sqlog.ShareConsumer.__doc__, config.SHARE_CONSUMER_OPTIONS),
    (sqlog.Log.share_consumer.__doc__, config.SHARE_CONSUMER_OPTIONS),
])
def test_docstrings_list_every_key_with_its_default(doc: str, options: tuple[config.Option, ...]) -> None:
    listed = re.findall(r"^- ``(\w+)`` \(", doc, re.M)
    assert listed == _names(options)
    for o in options:
        assert o.meaning in doc


def test_readme_reference_is_generated_from_the_tables() -> None:
    assert config.reference_markdown() in README
    for options, _ in config.CLIENT_OPTIONS.values():
        for o in options:
            assert f"| `{o.name}` |" in README
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "config_reference.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_readme_names_the_consumer_calls_a_new_user_looks_for() -> None:
    for name in ("client_id", "assignment()", "subscription()", "unsubscribe"):
        assert name in README
