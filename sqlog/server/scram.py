"""SCRAM-SHA-256 (RFC 5802, RFC 7677) and PLAIN (RFC 4616) for ``sqlog serve``: what a password
becomes when stored, and the server's side of each exchange.

A password is stored only as a SCRAM credential: a random salt, the PBKDF2-HMAC-SHA-256 iteration
count, ``StoredKey = H(HMAC(SaltedPassword, "Client Key"))`` and
``ServerKey = HMAC(SaltedPassword, "Server Key")``. SCRAM checks the client's proof against
StoredKey and proves the server knows ServerKey; PLAIN derives StoredKey from the password it is
sent and compares. Names and passwords are their UTF-8 bytes without SASLprep, as Kafka's clients
send them. Standard library only; every comparison of secrets is constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets

import attrs

from ..errors import SqlogError

MECHANISM = "SCRAM-SHA-256"
MIN_ITERATIONS = 4096  # RFC 7677's floor, Kafka's too
MAX_ITERATIONS = 16384  # Kafka's ceiling: PLAIN runs PBKDF2 once per login on the server
DEFAULT_ITERATIONS = 8192
SALT_BYTES = 32
KEY_BYTES = 32  # SHA-256's digest size
_NONCE = re.compile(r"[\x21-\x2b\x2d-\x7e]{1,256}")  # printable ASCII but ','


class AuthenticationFailed(SqlogError):
    """A SASL exchange that cannot succeed; ``str()`` is what the client is told (nothing about
    whether the user exists), ``reason`` what the server logs."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


def invalid_credentials(mechanism: str, reason: str) -> AuthenticationFailed:
    """Kafka's answer to a wrong name or password (the same for both)."""
    return AuthenticationFailed(
        f"Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}",
        reason)


@attrs.frozen
class ScramCredential:
    """What the log stores for a user: never the password."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


def credential(password: bytes, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> ScramCredential:
    """The credential for ``password`` (a fresh random salt unless one is given)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
    stored_key = hashlib.sha256(_hmac(salted, b"Client Key")).digest()
    return ScramCredential(salt, iterations, stored_key, _hmac(salted, b"Server Key"))


def stand_in(secret: bytes, name: str) -> ScramCredential:
    """A credential for a user that does not exist: the same salt for the same name every time
    (RFC 5802 section 9), and keys no password gives, so the exchange fails only at the proof."""
    salt = _hmac(secret, b"salt\x00" + name.encode())
    return ScramCredential(salt, DEFAULT_ITERATIONS, secrets.token_bytes(KEY_BYTES), secrets.token_bytes(KEY_BYTES))


def password_matches(cred: ScramCredential, password: bytes) -> bool:
    """PLAIN's check: does ``password`` derive the stored key? (Runs PBKDF2: milliseconds.)"""
    return hmac.compare_digest(credential(password, cred.iterations, cred.salt).stored_key, cred.stored_key)


def parse_plain(message: bytes) -> tuple[str, bytes]:
    """RFC 4616's ``[authzid] NUL authcid NUL passwd``: the user name and the password."""
    parts = message.split(b"\x00")
    if len(parts) != 3:
        raise AuthenticationFailed("Invalid SASL/PLAIN response: expected 3 tokens separated by NUL")
    authzid, authcid, password = parts
    try:
        name, authz = authcid.decode("utf-8"), authzid.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthenticationFailed("Invalid SASL/PLAIN response: the user name is not UTF-8") from None
    if not name or not password:
        raise AuthenticationFailed("Invalid SASL/PLAIN response: empty user name or password")
    if authz and authz != name:
        raise AuthenticationFailed("Authentication failed: the authorization id must be empty or the user name")
    return name, password


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _malformed(f"{what} is not base64") from None


def _malformed(why: str) -> AuthenticationFailed:
    return AuthenticationFailed(f"Invalid SCRAM message: {why}")


def _unescape(saslname: str) -> str:
    """RFC 5802's saslname: ``=2C`` is ',' and ``=3D`` is '='; any other '=' is an error."""
    if re.search(r"=(?!2C|3D)", saslname):
        raise _malformed("a user name with a bad '=' escape")
    return saslname.replace("=2C", ",").replace("=3D", "=")


class ScramExchange:
    """The server's side of one SCRAM-SHA-256 exchange: `client_first` names the user, the
    caller looks up its credential (or a `stand_in`) for `server_first`, then `client_final`
    checks the proof and returns the server-final message with ServerSignature."""

    def __init__(self, server_nonce: str | None = None) -> None:
        """``server_nonce``: the server's part of the nonce, random unless given (known-answer tests)."""
        self.name = ""
        self._server_part = server_nonce or secrets.token_urlsafe(24)
        self._gs2_header = ""
        self._first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._cred: ScramCredential | None = None
        self._known = False

    def client_first(self, message: bytes) -> str:
        """Parse ``gs2-header n=NAME,r=NONCE[,ext]``; returns the user name."""
        try:
            text = message.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("not UTF-8") from None
        cbind, authzid, bare = (text.split(",", 2) + ["", ""])[:3]
        if cbind.startswith("p="):
            raise _malformed("channel binding is not supported (use a client-first message starting 'n,,')")
        if cbind not in ("n", "y") or (authzid and not authzid.startswith("a=")):
            raise _malformed("a client-first message must start with 'n,,' or 'n,a=NAME,'")
        attrs_ = bare.split(",")
        if len(attrs_) < 2 or not attrs_[0].startswith("n=") or not attrs_[1].startswith("r="):
            raise _malformed("a client-first message needs n=NAME,r=NONCE")
        for ext in attrs_[2:]:
            if ext.startswith("m=") or ext == "tokenauth=true":  # mandatory extension / delegation token
                raise AuthenticationFailed(f"Unsupported SCRAM extension: {ext.split('=', 1)[0]}")
        name = _unescape(attrs_[0][2:])
        if not name:
            raise _malformed("an empty user name")
        if authzid and _unescape(authzid[2:]) != name:
            raise AuthenticationFailed("Authentication failed: the authorization id must be the user name")
        if not _NONCE.fullmatch(attrs_[1][2:]):
            raise _malformed("the client nonce must be 1-256 printable characters without ','")
        self.name, self._gs2_header, self._first_bare = name, f"{cbind},{authzid},", bare
        self._nonce = attrs_[1][2:] + self._server_part
        return name

    def server_first(self, cred: ScramCredential, known: bool) -> bytes:
        """The server-first message for the user's credential (``known=False``: a stand-in)."""
        self._cred, self._known = cred, known
        self._server_first = f"r={self._nonce},s={base64.b64encode(cred.salt).decode()},i={cred.iterations}"
        return self._server_first.encode()

    def client_final(self, message: bytes) -> bytes:
        """Check ``c=GS2,r=NONCE[,ext],p=PROOF``; returns ``v=ServerSignature``."""
        assert self._cred is not None, "server_first comes first"
        try:
            text = message.decode("ascii")
        except UnicodeDecodeError:
            raise _malformed("a client-final message is not ASCII") from None
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        fields = without_proof.split(",")
        if not sep or len(fields) < 2 or not fields[0].startswith("c=") or not fields[1].startswith("r="):
            raise _malformed("a client-final message needs c=...,r=...,p=...")
        if _b64decode(fields[0][2:], "the channel binding") != self._gs2_header.encode():
            raise _malformed("the channel binding does not repeat the client-first message's header")
        if not hmac.compare_digest(fields[1][2:].encode(), self._nonce.encode()):
            raise _malformed("the nonce is not the one the server sent")
        proof = _b64decode(proof_b64, "the proof")
        if len(proof) != KEY_BYTES:
            raise _malformed(f"the proof has {len(proof)} bytes, not {KEY_BYTES}")
        auth_message = f"{self._first_bare},{self._server_first},{without_proof}".encode()
        signature = _hmac(self._cred.stored_key, auth_message)
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        matches = hmac.compare_digest(hashlib.sha256(client_key).digest(), self._cred.stored_key)
        if not (matches and self._known):
            raise invalid_credentials(MECHANISM, f"user {self.name!r}: "
                                                 + ("wrong password" if self._known else "no such user"))
        return b"v=" + base64.b64encode(_hmac(self._cred.server_key, auth_message))
