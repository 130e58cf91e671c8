"""librdkafka's mock Kafka cluster, in this process, through ctypes: a broker side to mirror to
in tests, examples and benchmarks without a Kafka installation.

It is the mock that confluent-kafka's bundled librdkafka carries (``rd_kafka_mock_cluster_new``):
produce, fetch, idempotent and transactional producers, consumer groups and commits. Through the
C API (rather than ``test.mock.num.brokers`` on a client) its brokers can be stopped and started
(an uplink going away and coming back) and topics made with any partition count (the mock has no
CreateTopics handler and auto-creates topics with 4 partitions). Known gaps: it ignores
``isolation.level`` in Fetch, does not abort a killed producer's open transaction and drops
TxnOffsetCommit, so it cannot prove exactly-once delivery.
"""

from __future__ import annotations

import ctypes
import glob
import os
from typing import Any

import confluent_kafka

from ..errors import SqlogError

RD_KAFKA_PRODUCER = 0


def _librdkafka_path() -> str:
    """The librdkafka that confluent_kafka has loaded (so ctypes gets the same instance)."""
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            for line in maps:
                path = line.split(maxsplit=5)[-1].strip()
                if "librdkafka" in os.path.basename(path) and os.path.exists(path):
                    return path
    except OSError:
        pass
    here = os.path.dirname(confluent_kafka.__file__)
    for pattern in ("../confluent_kafka.libs/librdkafka*", ".dylibs/librdkafka*", "../confluent_kafka.libs/*rdkafka*.dll"):
        found = sorted(glob.glob(os.path.join(here, pattern)))
        if found:
            return found[0]
    raise SqlogError("could not find the librdkafka that confluent-kafka bundles; the mock cluster needs it")


def _lib() -> Any:
    lib = ctypes.CDLL(_librdkafka_path())
    vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    lib.rd_kafka_conf_new.restype = vp
    lib.rd_kafka_conf_set.argtypes = [vp, cp, cp, cp, ctypes.c_size_t]
    lib.rd_kafka_new.restype = vp
    lib.rd_kafka_new.argtypes = [i, vp, cp, ctypes.c_size_t]
    lib.rd_kafka_destroy.argtypes = [vp]
    lib.rd_kafka_mock_cluster_new.restype = vp
    lib.rd_kafka_mock_cluster_new.argtypes = [vp, i]
    lib.rd_kafka_mock_cluster_destroy.argtypes = [vp]
    lib.rd_kafka_mock_cluster_bootstraps.restype = cp
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [vp]
    lib.rd_kafka_mock_broker_set_down.argtypes = [vp, ctypes.c_int32]
    lib.rd_kafka_mock_broker_set_up.argtypes = [vp, ctypes.c_int32]
    lib.rd_kafka_mock_topic_create.argtypes = [vp, cp, i, i]
    return lib


class MockCluster:
    """A mock Kafka cluster of ``brokers`` brokers (ids 1..brokers) on loopback ports, living as
    long as this object (or its ``with`` block); clients use ``bootstrap_servers``."""

    def __init__(self, brokers: int = 1) -> None:
        self._lib = _lib()
        err = ctypes.create_string_buffer(512)
        conf = self._lib.rd_kafka_conf_new()
        self._lib.rd_kafka_conf_set(conf, b"log_level", b"0", err, len(err))
        self._rk = self._lib.rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, len(err))
        if not self._rk:
            raise SqlogError(f"librdkafka could not start a handle for the mock cluster: {err.value.decode()}")
        self._cluster = self._lib.rd_kafka_mock_cluster_new(self._rk, brokers)
        if not self._cluster:
            self._lib.rd_kafka_destroy(self._rk)
            raise SqlogError("librdkafka could not start a mock cluster")
        self.brokers = brokers
        self.bootstrap_servers: str = self._lib.rd_kafka_mock_cluster_bootstraps(self._cluster).decode()

    def create_topic(self, name: str, partitions: int, replication_factor: int = 1) -> None:
        """Create a topic with this partition count (clients' CreateTopics is not served by the mock)."""
        code = self._lib.rd_kafka_mock_topic_create(self._cluster, name.encode(), partitions,
                                                    min(replication_factor, self.brokers))
        if code:
            raise SqlogError(f"mock cluster: creating topic {name!r} failed (librdkafka error {code})")

    def broker_down(self, broker_id: int) -> None:
        """Make broker ``broker_id`` (1..brokers) unreachable: connections to it are closed."""
        self._lib.rd_kafka_mock_broker_set_down(self._cluster, broker_id)

    def broker_up(self, broker_id: int) -> None:
        """Bring broker ``broker_id`` back."""
        self._lib.rd_kafka_mock_broker_set_up(self._cluster, broker_id)

    def all_down(self) -> None:
        """The whole cluster unreachable (an uplink down)."""
        for b in range(1, self.brokers + 1):
            self.broker_down(b)

    def all_up(self) -> None:
        for b in range(1, self.brokers + 1):
            self.broker_up(b)

    def close(self) -> None:
        """Stop the cluster; closing twice is harmless."""
        if self._cluster:
            self._lib.rd_kafka_mock_cluster_destroy(self._cluster)
            self._cluster = None
        if self._rk:
            self._lib.rd_kafka_destroy(self._rk)
            self._rk = None

    def __enter__(self) -> MockCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
