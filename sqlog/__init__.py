"""sqlog: Kafka's event-log model (topics, partitions, offsets, consumer groups) on one SQLite file."""

from .consumer import Consumer, ConsumerRebalanceListener
from .errors import (
    CommitFailedError,
    DatabaseLockedError,
    DiskFullError,
    IllegalStateError,
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidTopicError,
    LogClosedError,
    NotASqlogLogError,
    OffsetOutOfRange,
    ReadOnlyError,
    RecordTooLarge,
    SchemaTooNewError,
    SerializationError,
    SqlogError,
    SqlogTimeoutError,
    StorageError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from .log import Log, open
from .partitioner import murmur2, partition_for_key
from .producer import Producer
from .serde import JSON, STRING, Serde
from .types import (
    CheckReport,
    OffsetAndMetadata,
    OffsetAndTimestamp,
    PartitionDescription,
    PartitionSweep,
    Record,
    RecordMetadata,
    SweepResult,
    TopicDescription,
    TopicPartition,
)
from .writer import RecordFuture

__version__ = "0.1.0"

__all__ = [
    "JSON",
    "STRING",
    "CheckReport",
    "CommitFailedError",
    "Consumer",
    "ConsumerRebalanceListener",
    "DatabaseLockedError",
    "DiskFullError",
    "IllegalStateError",
    "InvalidConfigError",
    "InvalidPartitionsError",
    "InvalidTopicError",
    "Log",
    "LogClosedError",
    "NotASqlogLogError",
    "OffsetAndMetadata",
    "OffsetAndTimestamp",
    "OffsetOutOfRange",
    "PartitionDescription",
    "PartitionSweep",
    "Producer",
    "ReadOnlyError",
    "Record",
    "RecordFuture",
    "RecordMetadata",
    "RecordTooLarge",
    "SchemaTooNewError",
    "Serde",
    "SerializationError",
    "SqlogError",
    "SqlogTimeoutError",
    "StorageError",
    "SweepResult",
    "TopicAlreadyExistsError",
    "TopicDescription",
    "TopicPartition",
    "UnknownTopicOrPartitionError",
    "murmur2",
    "open",
    "partition_for_key",
]
