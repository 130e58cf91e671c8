"""``sqlog mirror``: a sqlog file and a Kafka cluster, bridged both ways (edge to cloud and back).

``push(log, "broker:9092", ["readings"])`` forwards every record of local topics to the
cluster (local partition p to remote partition p; keys, values, headers, timestamps unchanged),
with its cursor in the file as a consumer group. ``pull(log, "broker:9092", ["commands"],
group="device-7")`` appends the cluster's records locally, with the remote offsets stored in the
same SQLite transaction. Both run in a background thread behind a `MirrorHandle` (``progress()``,
``stop()``, ``join()``), retry with backoff while the uplink is down, and never skip a record
silently. `MockCluster` is librdkafka's in-process mock cluster, to try it without Kafka.
Needs the ``mirror`` extra (``pip install 'sqlog[mirror]'``: confluent-kafka).
"""

from __future__ import annotations

from .common import MirrorError, MirrorHandle, MirrorProgress, PartitionProgress
from .mock import MockCluster
from .pull import pull
from .push import push

__all__ = ["MirrorError", "MirrorHandle", "MirrorProgress", "MockCluster", "PartitionProgress", "pull", "push"]
