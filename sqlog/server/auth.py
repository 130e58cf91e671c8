"""Who may talk to ``sqlog serve``: TLS, and SASL authentication against the log's users.

Kafka's security protocols map to the server's options: PLAINTEXT (neither), SSL (``tls_cert``),
SASL_SSL (``tls_cert`` + ``sasl``) and SASL_PLAINTEXT (``sasl`` alone, on a loopback address
only: off this machine PLAIN would carry the password in clear and, even after SCRAM, every
request could be read or taken over on the wire).

On a SASL listener each connection starts behind a `Gate`: until it has authenticated, only
ApiVersions, SaslHandshake (v0: raw SASL tokens follow, v1: SaslAuthenticate requests) and
SaslAuthenticate are served, frames are at most `MAX_SASL_BYTES`, and the whole login must end
within `Authenticator.deadline_s`; anything else closes the connection. Failed logins are answered
(SASL_AUTHENTICATION_FAILED with a message the client reports), then closed after
`Authenticator.failure_delay_s`, as Kafka's ``connection.failed.authentication.delay.ms``.
Credential reads and PLAIN's PBKDF2 run on the authenticator's own thread, so a flood of logins
queues behind itself and never holds a thread that serves requests.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
import ssl
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import apsw

from ..errors import InvalidConfigError, SqlogError
from ..log import Log
from . import scram, users
from .wire import Malformed, Reader, Writer

log_ = logging.getLogger("sqlog.server")

SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36
API_VERSIONS = 18
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
SASL_AUTHENTICATION_FAILED = 58
MECHANISMS = ("PLAIN", scram.MECHANISM)
MAX_SASL_BYTES = 512 * 1024  # Kafka's sasl.server.max.receive.size: an unauthenticated frame's limit
_CORRELATION = struct.Struct(">i")


class Refused(SqlogError):
    """A connection that must close: ``response`` (if any) is written first, after which the
    server waits `Authenticator.failure_delay_s` before closing."""

    def __init__(self, reason: str, response: bytes | None = None) -> None:
        super().__init__(reason)
        self.response = response


def tls_context(cert: str | os.PathLike[str], key: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or later) with the PEM certificate chain ``cert`` and
    its private key ``key`` (None: the key is in ``cert``); `InvalidConfigError` if they do not load."""

    def no_passphrase() -> str:
        raise InvalidConfigError(f"{key or cert}: the private key is encrypted; give an unencrypted key file")

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(os.fspath(cert), None if key is None else os.fspath(key), password=no_passphrase)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidConfigError(f"cannot load the TLS certificate {os.fspath(cert)!s}"
                                 f"{f' and key {os.fspath(key)!s}' if key is not None else ''}: {exc}") from None
    return ctx


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listener_tls(host: str, sasl: bool, allow_anonymous: bool, cert: str | None, key: str | None
                 ) -> ssl.SSLContext | None:
    """Check a listener's security options against its address; its TLS context, or None.

    Off loopback, clients must authenticate (``sasl``, which then needs TLS) unless
    ``allow_anonymous`` says anyone who reaches the port may read and write the log.
    """
    if key is not None and cert is None:
        raise InvalidConfigError("--tls-key needs --tls-cert (the certificate the key belongs to)")
    local = is_loopback(host)
    if not local and not sasl and not allow_anonymous:
        raise InvalidConfigError(
            f"refusing to listen on {host} without authentication: anyone who can reach the port could read "
            "and write this log. Pass --sasl with --tls-cert/--tls-key (users from 'sqlog users add'), listen "
            "on 127.0.0.1, or pass --allow-anonymous (allow_anonymous=True) to accept anyone")
    if sasl and cert is None and not local:
        raise InvalidConfigError(
            f"refusing SASL without TLS on {host}: PLAIN would send passwords in clear, and after any login "
            "the connection could be read and taken over on the network; give --tls-cert and --tls-key "
            "(SASL without TLS is allowed on loopback addresses only)")
    return None if cert is None else tls_context(cert, key)


def handshake_body(error: int, mechanisms: tuple[str, ...] = MECHANISMS) -> bytes:
    """A SaslHandshake response (v0 and v1 are alike)."""
    return Writer().int16(error).array(mechanisms, Writer.string).bytes()


def authenticate_body(version: int, error: int, message: str | None, token: bytes) -> bytes:
    """A SaslAuthenticate response, v0 or v1 (v1 adds the session lifetime: 0, no re-authentication)."""
    w = Writer().int16(error).string(message).nullable_bytes(token)
    if version >= 1:
        w.int64(0)
    return w.bytes()


class Authenticator:
    """A server's SASL side: the log's users, the mechanisms, and one thread for the slow parts.

    ``deadline_s``: how long a connection may take from accept to authenticated.
    ``failure_delay_s``: how long a failed login waits before its connection closes.
    """

    def __init__(self, log: Log, *, deadline_s: float = 30.0, failure_delay_s: float = 0.1) -> None:
        self.log = log
        self.deadline_s = deadline_s
        self.failure_delay_s = failure_delay_s
        self._secret = secrets.token_bytes(32)  # the stand-in salts of names that are not users
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sqlog-serve-auth")
        self._local = threading.local()
        self._conns: list[apsw.Connection] = []

    def has_users(self) -> bool:
        return bool(users.list_users(self.log))

    def gate(self, peer: object) -> Gate:
        """The state of one new connection."""
        return Gate(self, peer)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for conn in self._conns:
            conn.close()
        self._conns.clear()

    async def credential(self, name: str) -> tuple[scram.ScramCredential, bool]:
        """``name``'s SCRAM credential and True, or a stand-in and False if there is no such user."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._credential, name)

    async def plain(self, message: bytes) -> str:
        """Check a SASL/PLAIN message; returns the user name or raises `scram.AuthenticationFailed`."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._plain, message)

    def _credential(self, name: str) -> tuple[scram.ScramCredential, bool]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.log.engine.reader()
            self._conns.append(conn)
        cred = users.lookup(conn, name)
        return (scram.stand_in(self._secret, name), False) if cred is None else (cred, True)

    def _plain(self, message: bytes) -> str:
        name, password = scram.parse_plain(message)
        cred, known = self._credential(name)
        if not (scram.password_matches(cred, password) and known):  # PBKDF2 either way: same time
            raise scram.invalid_credentials("PLAIN", f"user {name!r}: " + ("wrong password" if known else "no such user"))
        return name


class Gate:
    """One connection's SASL state until it authenticates; `open` once it has."""

    def __init__(self, auth: Authenticator, peer: object) -> None:
        self.auth = auth
        self.peer = peer
        self.open = False
        self.principal: str | None = None
        self.deadline = time.monotonic() + auth.deadline_s
        self._mechanism: str | None = None
        self._raw = False  # after a v0 handshake: the next frames are bare SASL tokens
        self._scram: scram.ScramExchange | None = None

    def time_left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    async def handle(self, frame: bytes, dispatch: Callable[[bytes], Awaitable[bytes | None]]) -> bytes:
        """Answer one frame received before authentication; raises `Refused` or `Malformed` to close."""
        if self._raw:
            try:
                return await self._step(frame)
            except scram.AuthenticationFailed as exc:
                raise Refused(self._failed(exc)) from None  # v0 has no error response: close
        r = Reader(frame)
        key, version, correlation = r.int16(), r.int16(), r.int32()
        r.nullable_string()  # client id
        head = _CORRELATION.pack(correlation)
        if key == API_VERSIONS:
            response = await dispatch(frame)
            assert response is not None
            return response
        if key == SASL_HANDSHAKE:
            if not 0 <= version <= 1:
                raise Malformed(f"SaslHandshake v{version} is not supported (v0-1 are)")
            mechanism = r.string()
            r.done()
            if self._mechanism is not None:
                raise Refused("a second SaslHandshake", head + handshake_body(ILLEGAL_SASL_STATE))
            if mechanism not in MECHANISMS:
                raise Refused(f"SASL mechanism {mechanism!r} is not enabled",
                              head + handshake_body(UNSUPPORTED_SASL_MECHANISM))
            self._mechanism, self._raw = mechanism, version == 0
            return head + handshake_body(0)
        if key == SASL_AUTHENTICATE:
            if not 0 <= version <= 1:
                raise Malformed(f"SaslAuthenticate v{version} is not supported (v0-1 are)")
            token = r.nullable_bytes()
            r.done()
            if self._mechanism is None or token is None:
                message = "SaslAuthenticate before SaslHandshake" if token is not None else "null auth bytes"
                raise Refused(message, head + authenticate_body(version, ILLEGAL_SASL_STATE, message, b""))
            try:
                return head + authenticate_body(version, 0, None, await self._step(token))
            except scram.AuthenticationFailed as exc:
                raise Refused(self._failed(exc),
                              head + authenticate_body(version, SASL_AUTHENTICATION_FAILED, str(exc), b"")) from None
        raise Malformed(f"api key {key} before authenticating (only ApiVersions, SaslHandshake and "
                        "SaslAuthenticate are served until then)")

    def _failed(self, exc: scram.AuthenticationFailed) -> str:
        return f"SASL/{self._mechanism} authentication failed: {exc.reason}"

    async def _step(self, token: bytes) -> bytes:
        """One SASL token in, the server's token out; sets `open` when the exchange succeeded."""
        if self._mechanism == "PLAIN":
            self._authenticated(await self.auth.plain(token))
            return b""
        if self._scram is None:
            self._scram = scram.ScramExchange()
            name = self._scram.client_first(token)
            cred, known = await self.auth.credential(name)
            return self._scram.server_first(cred, known)
        final = self._scram.client_final(token)
        self._authenticated(self._scram.name)
        return final

    def _authenticated(self, name: str) -> None:
        self.open, self.principal, self._raw = True, name, False
        log_.info("%s authenticated as %r with SASL/%s", self.peer, name, self._mechanism)
