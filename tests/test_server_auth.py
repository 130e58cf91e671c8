"""`sqlog serve`'s security: TLS, SASL/PLAIN and SASL/SCRAM-SHA-256 against users stored hashed in
the file, and who may listen where. Real clients (confluent-kafka, kafka-python, aiokafka) over real
sockets; raw frames for what clients never send. Certificates are made per run (trustme)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("cramjam")
pytest.importorskip("trustme")
kafka = pytest.importorskip("kafka")
ck = pytest.importorskip("confluent_kafka")

import sqlog  # noqa: E402
from sqlog import InvalidConfigError  # noqa: E402
from sqlog.server import Server, UnknownUserError, add_user, list_users, remove_user  # noqa: E402
from sqlog.server import scram  # noqa: E402

from server_helpers import (  # noqa: E402
    CLI,
    Certs,
    Served,
    closed_by_peer,
    fuzz_latencies,
    recv_response,
    request,
    served,
)
from server_helpers import add_user as cli_add_user  # noqa: E402

PASSWORD = "correct horse battery"
MECHANISMS = ["PLAIN", "SCRAM-SHA-256"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(str(tmp_path_factory.mktemp("certs")))


@pytest.fixture
def secured(log_path: str, certs: Certs) -> Iterator[Served]:
    """A SASL_SSL server with user alice and a 2-partition topic t."""
    cli_add_user(log_path, "alice", PASSWORD)
    with sqlog.open(log_path) as log:
        log.create_topic("t", partitions=2)
    with served(log_path, "--sasl", *certs.serve_args()) as s:
        yield s


# A client's config keys: bootstrap, security protocol, CA file, mechanism, user name, password.
CK_KEYS = ("bootstrap.servers", "security.protocol", "ssl.ca.location", "sasl.mechanism", "sasl.username",
           "sasl.password")
KP_KEYS = ("bootstrap_servers", "security_protocol", "ssl_cafile", "sasl_mechanism", "sasl_plain_username",
           "sasl_plain_password")


def client_conf(keys: tuple[str, ...], s: Served, certs: Certs | None, mechanism: str | None, user: str = "alice",
                password: str = PASSWORD) -> dict[str, Any]:
    """A client's config for ``s``: TLS trusting ``certs``' CA if given, SASL if ``mechanism``."""
    bootstrap, protocol, ca, mech, username, secret = keys
    conf: dict[str, Any] = {bootstrap: s.bootstrap}
    if certs is not None:
        conf.update({protocol: "SSL", ca: certs.ca})
    if mechanism is not None:
        conf.update({protocol: "SASL_SSL" if certs else "SASL_PLAINTEXT", mech: mechanism, username: user,
                     secret: password})
    return conf


def ck_conf(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return client_conf(CK_KEYS, *args, **kwargs)


def kp_conf(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return client_conf(KP_KEYS, *args, **kwargs)


def ck_round_trip(conf: dict[str, Any], topic: str, n: int, group: str) -> list[bytes]:
    """Produce ``n`` records with confluent-kafka, then consume them back in group ``group``."""
    p = ck.Producer({**conf, "linger.ms": 5})
    for i in range(n):
        p.produce(topic, b"%s-%d" % (group.encode(), i), key=b"k%d" % i)
    assert p.flush(20) == 0
    c = ck.Consumer({**conf, "group.id": group, "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(got) < n and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None:
            assert m.error() is None, m.error()
            got.append(m.value())
    c.commit(asynchronous=False)
    c.close()
    return got


def kp_round_trip(conf: dict[str, Any], topic: str, n: int, group: str) -> list[bytes]:
    """Produce ``n`` records with kafka-python, then consume them back in group ``group``."""
    p = kafka.KafkaProducer(**conf)
    for f in [p.send(topic, b"%s-%d" % (group.encode(), i)) for i in range(n)]:
        f.get(timeout=20)
    p.close()
    c = kafka.KafkaConsumer(topic, group_id=group, auto_offset_reset="earliest", consumer_timeout_ms=10_000, **conf)
    got = []
    for m in c:
        got.append(m.value)
        if len(got) == n:
            break
    c.commit()
    c.close()
    return got


def expected(group: str, n: int) -> list[bytes]:
    return sorted(b"%s-%d" % (group.encode(), i) for i in range(n))


# -- real clients over SASL_SSL -----------------------------------------------------------------
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_confluent_sasl_ssl_produce_and_consume(secured: Served, certs: Certs, log_path: str, mechanism: str) -> None:
    got = ck_round_trip(ck_conf(secured, certs, mechanism), "t", 100, "ck")
    assert sorted(got) == expected("ck", 100)
    with sqlog.open(log_path) as log:  # the same log natively: the records and the group's commit
        assert sum(p.records for p in log.describe_topic("t").partitions) == 100
        assert sum(p.committed_offset or 0 for p in log.describe_group("ck").partitions) == 100


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_kafka_python_sasl_ssl_produce_and_consume(secured: Served, certs: Certs, mechanism: str) -> None:
    assert sorted(kp_round_trip(kp_conf(secured, certs, mechanism), "t", 50, "kp")) == expected("kp", 50)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_aiokafka_sasl_ssl_produce_and_consume(secured: Served, certs: Certs, mechanism: str) -> None:
    aiokafka = pytest.importorskip("aiokafka")
    from aiokafka.helpers import create_ssl_context

    conf = {"bootstrap_servers": secured.bootstrap, "security_protocol": "SASL_SSL", "sasl_mechanism": mechanism,
            "sasl_plain_username": "alice", "sasl_plain_password": PASSWORD}

    async def main() -> list[bytes]:
        p = aiokafka.AIOKafkaProducer(**conf, ssl_context=create_ssl_context(cafile=certs.ca))
        await p.start()
        try:
            for i in range(30):
                await p.send_and_wait("t", b"aio-%d" % i)
        finally:
            await p.stop()
        c = aiokafka.AIOKafkaConsumer("t", **conf, ssl_context=create_ssl_context(cafile=certs.ca),
                                      auto_offset_reset="earliest", group_id="aio")
        await c.start()
        got: list[bytes] = []
        try:
            deadline = time.monotonic() + 20
            while len(got) < 30 and time.monotonic() < deadline:
                for records in (await c.getmany(timeout_ms=500)).values():
                    got += [r.value for r in records]
        finally:
            await c.stop()
        return got

    assert sorted(asyncio.run(main())) == expected("aio", 30)


def ck_auth_error(conf: dict[str, Any]) -> Any:
    """None once a confluent-kafka client gets metadata with ``conf``; else the first error it reports."""
    errors: list[Any] = []
    p = ck.Producer({**conf, "error_cb": errors.append})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            p.list_topics(timeout=0.5)
            return None
        except ck.KafkaException:
            p.poll(0)  # serves error_cb
            if errors:
                return errors[0]
    raise AssertionError("neither metadata nor an error within 15 s")


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_wrong_password_and_unknown_user_are_refused_with_an_authentication_error(
        secured: Served, certs: Certs, log_path: str, mechanism: str, caplog: pytest.LogCaptureFixture) -> None:
    for user, password in [("alice", "wrong"), ("mallory", PASSWORD)]:
        err = ck_auth_error(ck_conf(secured, certs, mechanism, user, password))
        assert err is not None and err.code() == ck.KafkaError._AUTHENTICATION, err
        assert f"invalid credentials with SASL mechanism {mechanism}" in err.str()
    caplog.set_level(logging.WARNING, logger="kafka")
    with pytest.raises(kafka.errors.KafkaTimeoutError):
        kafka.KafkaProducer(**kp_conf(secured, certs, mechanism, "alice", "wrong"), bootstrap_timeout_ms=1500)
    assert "SaslAuthenticationFailedError" in caplog.text
    assert f"invalid credentials with SASL mechanism {mechanism}" in caplog.text
    assert ck_auth_error(ck_conf(secured, certs, mechanism)) is None  # the right one still gets in
    with sqlog.open(log_path) as log:
        assert all(p.high_watermark == 0 for p in log.describe_topic("t").partitions)


def test_a_client_without_sasl_or_tls_gets_nothing_from_a_sasl_ssl_server(secured: Served, certs: Certs) -> None:
    err = ck_auth_error(ck_conf(secured, certs, None))  # TLS but no SASL: the first request closes it
    assert err is not None
    with socket.create_connection((secured.host, secured.port), timeout=5) as sock:  # no TLS at all
        sock.sendall(request(18, 0, b""))
        assert closed_by_peer(sock)


# -- SSL only, SASL without TLS on loopback -------------------------------------------------------
def test_ssl_only(log_path: str, certs: Certs) -> None:
    with sqlog.open(log_path) as log:
        log.create_topic("t", partitions=2)
        log.create_topic("t2", partitions=2)
    with served(log_path, *certs.serve_args()) as s:
        assert sorted(ck_round_trip(ck_conf(s, certs, None), "t", 40, "ck")) == expected("ck", 40)
        assert sorted(kp_round_trip(kp_conf(s, certs, None), "t2", 40, "kp")) == expected("kp", 40)
        with socket.create_connection((s.host, s.port), timeout=5) as sock:  # plaintext to a TLS port
            sock.sendall(request(18, 0, b""))
            assert closed_by_peer(sock)
        plain = ck.Producer({"bootstrap.servers": s.bootstrap, "error_cb": lambda e: None})
        with pytest.raises(ck.KafkaException):
            plain.list_topics(timeout=2)


def test_sasl_without_tls_on_loopback(log_path: str) -> None:
    """SASL_PLAINTEXT is allowed on a loopback address (traffic never leaves the machine)."""
    cli_add_user(log_path, "alice", PASSWORD)
    with served(log_path, "--sasl", "--auto-create-partitions", "1") as s:
        got = ck_round_trip(ck_conf(s, None, "SCRAM-SHA-256"), "t", 20, "ck")
        assert sorted(got) == expected("ck", 20)
        assert ck_auth_error(ck_conf(s, None, "PLAIN", password="nope")).code() == ck.KafkaError._AUTHENTICATION


# -- who may listen where -------------------------------------------------------------------------
def serve_fails(log_path: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "--db", log_path, "serve", "--port", "0", *args], capture_output=True, text=True,
                          timeout=60)


def test_listening_beyond_loopback_needs_authentication(log_path: str, certs: Certs) -> None:
    done = serve_fails(log_path, "--host", "0.0.0.0")
    assert done.returncode == 1
    assert "refusing to listen on 0.0.0.0 without authentication" in done.stderr
    assert "--sasl" in done.stderr and "--allow-anonymous" in done.stderr
    done = serve_fails(log_path, "--host", "0.0.0.0", "--sasl")
    assert done.returncode == 1 and "refusing SASL without TLS on 0.0.0.0" in done.stderr
    done = serve_fails(log_path, "--host", "0.0.0.0", "--sasl", *certs.serve_args())
    assert done.returncode == 1 and "has no users yet" in done.stderr
    done = serve_fails(log_path, "--tls-cert", os.path.join(os.path.dirname(certs.ca), "missing.pem"))
    assert done.returncode == 1 and "cannot load the TLS certificate" in done.stderr
    done = serve_fails(log_path, "--tls-cert", certs.ca)  # a certificate without its key
    assert done.returncode == 1 and "cannot load the TLS certificate" in done.stderr
    assert serve_fails(log_path, "--tls-key", certs.key).returncode == 2  # usage error


def test_allow_anonymous_listens_on_every_address(log_path: str) -> None:
    with served(log_path, "--host", "0.0.0.0", "--allow-anonymous", "--auto-create-partitions", "1") as s:
        assert s.host == "0.0.0.0"
        s.bootstrap = f"127.0.0.1:{s.port}"
        assert sorted(ck_round_trip(ck_conf(s, None, None), "t", 20, "ck")) == expected("ck", 20)


def test_sasl_ssl_on_every_address(log_path: str, certs: Certs) -> None:
    cli_add_user(log_path, "alice", PASSWORD)
    with served(log_path, "--host", "0.0.0.0", "--sasl", *certs.serve_args(), "--auto-create-partitions", "1") as s:
        s.bootstrap = f"127.0.0.1:{s.port}"
        got = ck_round_trip(ck_conf(s, certs, "SCRAM-SHA-256"), "t", 20, "ck")
        assert sorted(got) == expected("ck", 20)
        assert ck_auth_error(ck_conf(s, certs, None)) is not None  # SSL without a login: refused


# -- the SASL frames themselves ---------------------------------------------------------------------
def handshake(mechanism: str, version: int = 1, correlation: int = 1) -> bytes:
    return request(17, version, struct.pack(">h", len(mechanism)) + mechanism.encode(), correlation)


def authenticate(token: bytes, version: int = 1, correlation: int = 2) -> bytes:
    return request(36, version, struct.pack(">i", len(token)) + token, correlation)


def auth_reply(sock: socket.socket, version: int = 1) -> tuple[int, int, str | None, bytes]:
    """(correlation, error, message, token) of a SaslAuthenticate response."""
    body = recv_response(sock)
    corr, error, n = struct.unpack_from(">ihh", body)
    pos = 8 + max(n, 0)
    message = body[8:pos].decode() if n >= 0 else None
    (size,) = struct.unpack_from(">i", body, pos)
    token = body[pos + 4 : pos + 4 + size]
    assert len(body) == pos + 4 + size + (8 if version >= 1 else 0)
    return corr, error, message, token


def raw_frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


@pytest.fixture
def sasl_plaintext(log_path: str) -> Iterator[Served]:
    cli_add_user(log_path, "alice", PASSWORD)
    with sqlog.open(log_path) as log:
        log.create_topic("t")
    with served(log_path, "--sasl") as s:
        yield s


def test_before_login_only_api_versions_and_sasl_are_served(sasl_plaintext: Served) -> None:
    s = sasl_plaintext
    connect = lambda: socket.create_connection((s.host, s.port), timeout=5)  # noqa: E731
    with connect() as sock:  # ApiVersions is answered and lists the SASL APIs
        sock.sendall(request(18, 0, b"", correlation=5))
        body = recv_response(sock)
        (n,) = struct.unpack_from(">i", body, 6)
        got = {k: (lo, hi) for k, lo, hi in struct.iter_unpack(">hhh", body[10 : 10 + 6 * n])}
        assert got[17] == (0, 1) and got[36] == (0, 1)
        sock.sendall(request(3, 1, b"\xff\xff\xff\xff"))  # Metadata before a login: closed, no answer
        assert closed_by_peer(sock)
    with connect() as sock:
        sock.sendall(authenticate(b"\x00alice\x00" + PASSWORD.encode()))  # no handshake first
        assert auth_reply(sock)[1] == 34  # ILLEGAL_SASL_STATE
        assert closed_by_peer(sock)
    with connect() as sock:
        sock.sendall(handshake("GSSAPI"))
        body = recv_response(sock)
        assert struct.unpack_from(">ihi", body) == (1, 33, 2)  # UNSUPPORTED_SASL_MECHANISM, 2 enabled
        assert b"PLAIN" in body and b"SCRAM-SHA-256" in body
        assert closed_by_peer(sock)
    with connect() as sock:  # a frame above 512 KiB before a login
        sock.sendall(struct.pack(">i", 600 * 1024) + b"\x00" * 1024)
        assert closed_by_peer(sock)
    with connect() as sock:  # a good PLAIN login, then everything is served
        sock.sendall(handshake("PLAIN"))
        assert struct.unpack_from(">ihi", recv_response(sock)) == (1, 0, 2)
        sock.sendall(authenticate(b"\x00alice\x00" + PASSWORD.encode()))
        assert auth_reply(sock) == (2, 0, None, b"")
        sock.sendall(request(3, 1, b"\xff\xff\xff\xff", correlation=3))
        assert struct.unpack_from(">i", recv_response(sock)) == (3,)
        sock.sendall(handshake("PLAIN", correlation=4))  # logged in already: refused, still open
        assert struct.unpack_from(">ih", recv_response(sock)) == (4, 34)
        sock.sendall(request(18, 0, b"", correlation=6))
        assert struct.unpack_from(">ih", recv_response(sock)) == (6, 0)


def scram_client(password: str) -> Any:
    """kafka-python's SCRAM client: an implementation independent of the server's."""
    from kafka.net.sasl.scram import ScramClient

    return ScramClient("alice", password, "SCRAM-SHA-256")


def test_scram_exchange_over_saslauthenticate(sasl_plaintext: Served) -> None:
    s = sasl_plaintext
    for version in (0, 1):
        with socket.create_connection((s.host, s.port), timeout=5) as sock:
            client = scram_client(PASSWORD)
            sock.sendall(handshake("SCRAM-SHA-256"))
            recv_response(sock)
            sock.sendall(authenticate(client.first_message(), version))
            corr, error, _, server_first = auth_reply(sock, version)
            assert error == 0 and server_first.startswith(b"r=" + client.nonce) and b",i=8192" in server_first
            client.process_server_first_message(server_first)
            sock.sendall(authenticate(client.final_message(), version, correlation=3))
            corr, error, _, server_final = auth_reply(sock, version)
            assert (corr, error) == (3, 0)
            client.process_server_final_message(server_final)  # raises unless ServerSignature is right
    with socket.create_connection((s.host, s.port), timeout=5) as sock:  # a wrong password
        client = scram_client("wrong")
        sock.sendall(handshake("SCRAM-SHA-256"))
        recv_response(sock)
        sock.sendall(authenticate(client.first_message()))
        client.process_server_first_message(auth_reply(sock)[3])
        sock.sendall(authenticate(client.final_message()))
        _, error, message, token = auth_reply(sock)
        assert (error, token) == (58, b"") and "invalid credentials" in (message or "")
        assert closed_by_peer(sock)


def test_sasl_handshake_v0_sends_raw_tokens(sasl_plaintext: Served) -> None:
    s = sasl_plaintext
    with socket.create_connection((s.host, s.port), timeout=5) as sock:  # PLAIN: an empty token back
        sock.sendall(handshake("PLAIN", version=0))
        assert struct.unpack_from(">ih", recv_response(sock)) == (1, 0)
        sock.sendall(raw_frame(b"alice\x00alice\x00" + PASSWORD.encode()))
        assert sock.recv(4) == b"\x00\x00\x00\x00"
        sock.sendall(request(3, 1, b"\xff\xff\xff\xff", correlation=9))
        assert struct.unpack_from(">i", recv_response(sock)) == (9,)
    with socket.create_connection((s.host, s.port), timeout=5) as sock:
        client = scram_client(PASSWORD)
        sock.sendall(handshake("SCRAM-SHA-256", version=0))
        recv_response(sock)
        sock.sendall(raw_frame(client.first_message()))
        client.process_server_first_message(recv_response(sock))
        sock.sendall(raw_frame(client.final_message()))
        client.process_server_final_message(recv_response(sock))
        sock.sendall(request(3, 1, b"\xff\xff\xff\xff", correlation=9))
        assert struct.unpack_from(">i", recv_response(sock)) == (9,)
    with socket.create_connection((s.host, s.port), timeout=5) as sock:  # v0 has no error: just closed
        sock.sendall(handshake("PLAIN", version=0))
        recv_response(sock)
        sock.sendall(raw_frame(b"\x00alice\x00wrong"))
        assert closed_by_peer(sock)


def test_a_connection_that_does_not_log_in_in_time_is_closed(log_path: str) -> None:
    async def main() -> None:
        with sqlog.open(log_path) as log:
            add_user(log, "alice", PASSWORD)
            server = Server(log, "127.0.0.1", 0, sasl=True)
            assert server.auth is not None
            server.auth.deadline_s = 0.5
            host, port = await server.start()
            try:
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(request(18, 0, b""))  # ApiVersions does not extend the deadline
                await reader.readexactly(4)
                started = time.monotonic()
                rest = await asyncio.wait_for(reader.read(), 10)  # the answer's body, then EOF
                assert 0.3 < time.monotonic() - started < 5 and len(rest) > 0  # closed at the deadline
                writer.close()
            finally:
                await server.close()

    asyncio.run(main())


# -- users: CLI, Python API, storage ------------------------------------------------------------
def sqlog_cli(log_path: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "--db", log_path, *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_users_command_adds_lists_changes_and_removes(log_path: str) -> None:
    done = sqlog_cli(log_path, "users", "add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0 and "Added user alice (SCRAM-SHA-256, 8192 iterations)" in done.stdout
    done = sqlog_cli(log_path, "users", "add", "bob", "--password-stdin", "--iterations", "4096", stdin="pw-b")
    assert done.returncode == 0
    assert sqlog_cli(log_path, "users", "list").stdout.split() == [
        "USER", "MECHANISM", "ITERATIONS", "alice", "SCRAM-SHA-256", "8192", "bob", "SCRAM-SHA-256", "4096"]
    assert json.loads(sqlog_cli(log_path, "users", "list", "--format", "json").stdout) == [
        {"name": "alice", "mechanism": "SCRAM-SHA-256", "iterations": 8192},
        {"name": "bob", "mechanism": "SCRAM-SHA-256", "iterations": 4096}]
    with served(log_path, "--sasl", "--auto-create-partitions", "1") as s:
        assert ck_auth_error(ck_conf(s, None, "PLAIN", "bob", "pw-b")) is None
        done = sqlog_cli(log_path, "users", "add", "bob", "--password-stdin", stdin="pw-b2\n")
        assert "Changed the password of user bob" in done.stdout
        assert ck_auth_error(ck_conf(s, None, "PLAIN", "bob", "pw-b")) is not None  # at once, no restart
        assert ck_auth_error(ck_conf(s, None, "SCRAM-SHA-256", "bob", "pw-b2")) is None
        assert sqlog_cli(log_path, "users", "remove", "bob").returncode == 0
        assert ck_auth_error(ck_conf(s, None, "SCRAM-SHA-256", "bob", "pw-b2")) is not None
    done = sqlog_cli(log_path, "users", "remove", "bob")
    assert done.returncode == 1 and "no user 'bob'" in done.stderr
    done = sqlog_cli(log_path, "users", "add", "carol", stdin="x\n")  # stdin is not a terminal
    assert done.returncode == 1 and "--password-stdin" in done.stderr
    done = sqlog_cli(log_path, "users", "add", "carol", "--password-stdin", "--iterations", "1000", stdin="x\n")
    assert done.returncode == 1 and "iterations must be an integer from 4096 to 16384" in done.stderr
    assert sqlog_cli(log_path, "users", "list").stdout.split()[3:] == ["alice", "SCRAM-SHA-256", "8192"]


def test_passwords_are_never_stored(log_path: str) -> None:
    secret = "a-password-to-find-in-the-file"
    with sqlog.open(log_path, wal_checkpoint_interval_ms=None) as log:
        add_user(log, "alice", secret)
        add_user(log, "bob", secret)
    data = b"".join(open(p, "rb").read() for p in (log_path, log_path + "-wal") if os.path.exists(p))
    assert b"alice" in data  # the row is there...
    for form in (secret.encode(), base64.b64encode(secret.encode()), secret.encode().hex().encode()):
        assert form not in data  # ...but not the password, in any plain form


def test_users_api_checks_its_arguments(log: sqlog.Log) -> None:
    user = add_user(log, "ünïcode user", "pässword", iterations=16384)
    assert (user.name, user.mechanism, user.iterations) == ("ünïcode user", "SCRAM-SHA-256", 16384)
    assert list_users(log) == [user]
    for name, password, iterations in [("", "pw", 8192), ("a\nb", "pw", 8192), ("x" * 256, "pw", 8192),
                                       ("a", "", 8192), ("a", "p\x00w", 8192), ("a", "\udcff", 8192),
                                       ("a", "pw", 4095), ("a", "pw", 16385), ("a", "pw", True), (7, "pw", 8192)]:
        with pytest.raises(InvalidConfigError):
            add_user(log, name, password, iterations=iterations)  # type: ignore[arg-type]
    with pytest.raises(UnknownUserError):
        remove_user(log, "nobody")
    remove_user(log, "ünïcode user")
    assert list_users(log) == []


# -- SCRAM itself ---------------------------------------------------------------------------------
def test_scram_known_answer_rfc7677() -> None:
    """RFC 7677 section 3's example exchange, byte for byte."""
    cred = scram.credential(b"pencil", 4096, base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    x = scram.ScramExchange("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    assert x.client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO") == "user"
    assert x.server_first(cred, True) == (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                                          b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    final = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
             b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    assert x.client_final(final) == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    assert scram.password_matches(cred, b"pencil") and not scram.password_matches(cred, b"pencil ")
    # the same exchange for a user that does not exist, or with one bit of the proof flipped, fails
    for known, message in [(False, final), (True, final[:-6] + b"AndVQ=".replace(b"A", b"B"))]:
        x = scram.ScramExchange("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
        x.client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
        x.server_first(cred, known)
        with pytest.raises(scram.AuthenticationFailed, match="invalid credentials"):
            x.client_final(message)


@pytest.mark.parametrize("first, final, error", [
    (b"p=tls-unique,,n=user,r=abc", None, "channel binding is not supported"),
    (b"n,,n=us=er,r=abc", None, "bad '=' escape"),
    (b"n,a=other,n=user,r=abc", None, "authorization id"),
    (b"n,,n=user,r=a,b", None, None),  # the ',' ends the nonce: 'b' is an extension, ignored
    (b"n,,n=user,r=abc,m=x", None, "Unsupported SCRAM extension"),
    (b"n,,n=user,r=abc,tokenauth=true", None, "Unsupported SCRAM extension"),
    (b"n,,r=abc,n=user", None, "needs n=NAME,r=NONCE"),
    (b"\xff", None, "not UTF-8"),
    (b"n,,n=user,r=abc", b"c=biws,r=abcSERVER,p=AAAA", "the proof has 3 bytes"),
    (b"n,,n=user,r=abc", b"c=biws,r=abcOTHER,p=" + base64.b64encode(bytes(32)), "not the one the server sent"),
    (b"n,,n=user,r=abc", b"c=eSws,r=abcSERVER,p=" + base64.b64encode(bytes(32)), "does not repeat"),
    (b"n,,n=user,r=abc", b"r=abcSERVER,c=biws,p=" + base64.b64encode(bytes(32)), "needs c=...,r=...,p="),
    (b"n,,n=user,r=abc", b"c=biws,r=abcSERVER,p=!!!!", "not base64"),
])
def test_scram_refuses_malformed_messages(first: bytes, final: bytes | None, error: str | None) -> None:
    x = scram.ScramExchange("SERVER")
    if final is None and error is not None:
        with pytest.raises(scram.AuthenticationFailed, match=error):
            x.client_first(first)
        return
    x.client_first(first)
    x.server_first(scram.credential(b"pw", 4096), True)
    if final is not None:
        with pytest.raises(scram.AuthenticationFailed, match=error):
            x.client_final(final)


# -- fuzz: SASL frames never take the server down or slow a logged-in client ------------------------
def sasl_garbage(rng: Any) -> bytes:
    """One connection's worth of bad or half-good SASL frames."""
    junk = lambda lo, hi: bytes(rng.getrandbits(8) for _ in range(rng.randrange(lo, hi)))  # noqa: E731
    kind = rng.randrange(7)
    if kind == 0:  # a handshake naming anything, any version
        return request(17, rng.randint(-1, 3), junk(0, 40))
    if kind == 1:  # a good handshake, then SaslAuthenticate with random bytes
        return handshake(rng.choice(MECHANISMS)) + authenticate(junk(0, 200), rng.randint(0, 2))
    if kind == 2:  # PLAIN with a wrong password (PBKDF2 on the server)
        return handshake("PLAIN") + authenticate(b"\x00alice\x00" + junk(1, 20))
    if kind == 3:  # SCRAM client-first with mutations, then a random client-final
        first = bytearray(b"n,,n=alice,r=" + base64.b64encode(junk(8, 24)))
        for _ in range(rng.randrange(3)):
            first[rng.randrange(len(first))] = rng.getrandbits(8)
        return handshake("SCRAM-SHA-256") + authenticate(bytes(first)) + authenticate(
            b"c=biws,r=" + junk(0, 30) + b",p=" + base64.b64encode(junk(0, 40)))
    if kind == 4:  # v0 handshake, then a raw token of garbage
        return handshake(rng.choice(MECHANISMS), version=0) + raw_frame(junk(0, 100))
    if kind == 5:  # a truncated or absurdly sized frame
        return struct.pack(">i", rng.choice([-1, 0, 3, 1 << 30, 600 * 1024])) + junk(0, 30)
    return junk(1, 60)


def test_sasl_fuzz_never_takes_the_server_down_nor_slows_a_logged_in_client(sasl_plaintext: Served,
                                                                          log_path: str) -> None:
    s = sasl_plaintext
    conf = ck_conf(s, None, "SCRAM-SHA-256")
    run = fuzz_latencies(conf, "t", lambda rng: (s.host, s.port, sasl_garbage(rng)))
    print("\nSASL fuzz:", run.summary())
    assert run.connections > 50 and len(run.noisy) > 20
    assert run.p(run.noisy, 0.99) < 1.0  # a generous ceiling, not a benchmark
    assert s.proc.poll() is None
    assert ck_auth_error(ck_conf(s, None, "PLAIN")) is None  # logins still work
    with sqlog.open(log_path) as log:  # only the good client's records were written
        assert log.describe_topic("t").partitions[0].high_watermark == run.acked
