"""The users ``sqlog serve`` authenticates (SASL/PLAIN and SASL/SCRAM-SHA-256), stored in the log
file as SCRAM credentials (salt, iterations, StoredKey, ServerKey), never as passwords.

``sqlog --db app.db users add alice --password-stdin`` or, in Python::

    from sqlog.server import add_user, list_users, remove_user
    add_user(log, "alice", "s3cret")      # adds, or sets a new password
    list_users(log)                       # [User(name='alice', mechanism='SCRAM-SHA-256', ...)]
    remove_user(log, "alice")

A running server reads the credentials at each login: a change applies to the next connection
(connections already authenticated stay so).
"""

from __future__ import annotations

import unicodedata

import apsw
import attrs

from ..errors import InvalidConfigError, SqlogError
from ..log import Log
from . import scram

MAX_NAME = 255
MAX_PASSWORD = 1024


class UnknownUserError(SqlogError):
    """No user of that name is stored in the log."""


@attrs.frozen
class User:
    """A stored user: its name, SASL mechanism of the credential, and PBKDF2 iterations."""

    name: str
    mechanism: str
    iterations: int


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        raise InvalidConfigError(f"a user name must be 1 to {MAX_NAME} characters, not {name!r}")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise InvalidConfigError(f"a user name cannot hold control or unassigned characters: {name!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidConfigError(f"a user name must be valid Unicode: {name!r}") from None
    return name


def add_user(log: Log, name: str, password: str, *, iterations: int = scram.DEFAULT_ITERATIONS) -> User:
    """Store ``name`` with ``password`` (replacing its password if it exists): a new random salt and
    PBKDF2-HMAC-SHA-256 with ``iterations`` (4096 to 16384, Kafka's bounds)."""
    _check_name(name)
    if not isinstance(password, str) or not 0 < len(password) <= MAX_PASSWORD or "\x00" in password:
        raise InvalidConfigError(f"a password must be 1 to {MAX_PASSWORD} characters without NUL")
    try:
        secret = password.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidConfigError("a password must be valid Unicode (it has a lone surrogate)") from None
    if type(iterations) is not int or not scram.MIN_ITERATIONS <= iterations <= scram.MAX_ITERATIONS:
        raise InvalidConfigError(f"iterations must be an integer from {scram.MIN_ITERATIONS} to "
                                 f"{scram.MAX_ITERATIONS}, not {iterations!r}")
    cred = scram.credential(secret, iterations)
    with log.engine.write() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO scram_credentials(name, mechanism, salt, iterations, stored_key, server_key)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (name, scram.MECHANISM, cred.salt, cred.iterations, cred.stored_key, cred.server_key))
    return User(name, scram.MECHANISM, iterations)


def remove_user(log: Log, name: str) -> None:
    """Delete ``name``'s credentials; `UnknownUserError` if there are none."""
    _check_name(name)
    with log.engine.write() as conn:
        conn.execute("DELETE FROM scram_credentials WHERE name = ?", (name,))
        if not conn.changes():
            raise UnknownUserError(f"no user {name!r} in {log.engine.path} ('sqlog users list' shows them)")


def list_users(log: Log) -> list[User]:
    """Every stored user, by name."""
    with log.engine.read() as conn:
        rows = conn.execute("SELECT name, mechanism, iterations FROM scram_credentials ORDER BY name, mechanism")
        return [User(*row) for row in rows]


def lookup(conn: apsw.Connection, name: str) -> scram.ScramCredential | None:
    """The SCRAM-SHA-256 credential of ``name``, or None; ``conn`` is a connection to the log."""
    row = conn.execute("SELECT salt, iterations, stored_key, server_key FROM scram_credentials"
                       " WHERE name = ? AND mechanism = ?", (name, scram.MECHANISM)).fetchone()
    return None if row is None else scram.ScramCredential(*row)
