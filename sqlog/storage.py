"""The SQLite layer: connections and pragmas, the numbered schema, write transactions and read
snapshots, the commit signal blocked polls wait on, and the liveness clock recorded in the file."""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator

import apsw

from . import clock
from .errors import NotASqlogLogError, SchemaTooNewError, translated
from .filewatch import FileWatch

APPLICATION_ID = 0x73716C67  # "sqlg"

PARTITION_TABLE = re.compile(r"p(\d+)_(\d+)")
"""The name of a partition table (as `partition_table` makes it)."""


def _add_crc_columns(conn: apsw.Connection) -> None:
    """Migration 4: records already stored keep a NULL checksum (reported as unverified)."""
    for (name,) in conn.execute(
        "SELECT name FROM sqlite_schema s WHERE type = 'table'"
        " AND NOT EXISTS (SELECT 1 FROM pragma_table_info(s.name) WHERE name = 'crc')"
    ).fetchall():
        if PARTITION_TABLE.fullmatch(name):
            conn.execute(f"ALTER TABLE {name} ADD COLUMN crc INTEGER")


_COMPACTION_COLUMNS = (
    ("topics", "cleanup_policy", "TEXT NOT NULL DEFAULT 'delete'"
     " CHECK (cleanup_policy IN ('delete', 'compact', 'compact,delete'))"),
    ("topics", "delete_retention_ms", "INTEGER NOT NULL DEFAULT 86400000"),
    ("topics", "min_compaction_lag_ms", "INTEGER NOT NULL DEFAULT 0"),
    ("topics", "max_compaction_lag_ms", "INTEGER"),  # NULL: none (Kafka's Long.MAX_VALUE)
    ("topics", "min_cleanable_dirty_ratio", "REAL NOT NULL DEFAULT 0.5"),
    ("partitions", "compacted_offset", "INTEGER NOT NULL DEFAULT 0"),
    ("partitions", "cleaned_offset", "INTEGER NOT NULL DEFAULT 0"),
    ("partitions", "compacted_records", "INTEGER NOT NULL DEFAULT 0"),
)


def _add_compaction_columns(conn: apsw.Connection) -> None:
    """Migration 6: the compaction columns (each added only where missing)."""
    for table, column, ddl in _COMPACTION_COLUMNS:
        if not conn.execute("SELECT 1 FROM pragma_table_info(?) WHERE name = ?", (table, column)).fetchone():
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")


_EXACTLY_ONCE = """
    -- One row per transactional_id: init_transactions() bumps the epoch; a producer holding an
    -- older epoch is fenced (its commit_transaction() writes nothing).
    CREATE TABLE IF NOT EXISTS transactional_producers(
        transactional_id TEXT PRIMARY KEY,
        epoch            INTEGER NOT NULL,
        updated_ms       INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- The message ids stored within a topic's dedupe window, with where their record went.
    CREATE TABLE IF NOT EXISTS message_ids(
        topic_id     INTEGER NOT NULL,
        message_id   TEXT NOT NULL,
        partition    INTEGER NOT NULL,
        offset       INTEGER NOT NULL,
        timestamp_ms INTEGER NOT NULL,  -- the record's timestamp
        stored_ms    INTEGER NOT NULL,  -- wall clock at the append: the window counts from here
        PRIMARY KEY(topic_id, message_id)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS message_ids_by_age ON message_ids(topic_id, stored_ms);
    CREATE TRIGGER IF NOT EXISTS message_ids_forget_topic AFTER DELETE ON topics BEGIN
        DELETE FROM message_ids WHERE topic_id = old.topic_id;
    END;
"""


def _add_exactly_once(conn: apsw.Connection) -> None:
    """Migration 7 (idempotent): the tables above, and topics.dedupe_window_ms (NULL = no dedupe)."""
    conn.execute(_EXACTLY_ONCE)
    if conn.execute("SELECT 1 FROM pragma_table_info('topics') WHERE name = 'dedupe_window_ms'").fetchone() is None:
        conn.execute("ALTER TABLE topics ADD COLUMN dedupe_window_ms INTEGER")


def _add_column(conn: apsw.Connection, table: str, column_ddl: str) -> None:
    """``ALTER TABLE table ADD COLUMN column_ddl`` unless the column is there (migrations run again
    on a file whose user_version was set back stay harmless)."""
    name = column_ddl.split()[0]
    if not conn.execute("SELECT 1 FROM pragma_table_info(?) WHERE name = ?", (table, name)).fetchone():
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column_ddl}")


def migrate_latest_tables(conn: apsw.Connection) -> None:
    """Migration 13: compacted topics trade their per-partition key indexes (``(key, offset)``,
    ``k<topic>_<partition>``) for one latest-record table each (`latest_ddl`)."""
    _add_column(conn, "topics", "live_keys INTEGER NOT NULL DEFAULT 0")
    _add_column(conn, "topics", "shared_keys INTEGER NOT NULL DEFAULT 0")
    for topic_id, partitions in conn.execute(
        "SELECT t.topic_id, (SELECT count(*) FROM partitions p WHERE p.topic_id = t.topic_id) FROM topics t"
        " WHERE t.cleanup_policy != 'delete'"
    ).fetchall():
        for p in range(partitions):
            conn.execute(f"DROP INDEX IF EXISTS k{int(topic_id)}_{int(p)}")
        add_latest(conn, topic_id, range(partitions))


def add_index_tail(conn: apsw.Connection) -> None:
    """Migration 15 (the sparse batch index): the partition row's tail columns. Public for tests
    whose stand-in for an older sqlog runs today's append, which reads them."""
    if conn.execute("SELECT 1 FROM pragma_table_info('partitions') WHERE name = 'tail_offset'").fetchone():
        return  # run again on a file whose user_version was set back: its tails stand
    _add_column(conn, "partitions", "tail_offset INTEGER NOT NULL DEFAULT 0")
    _add_column(conn, "partitions", "tail_max_timestamp INTEGER NOT NULL DEFAULT -1")
    _add_column(conn, "partitions", "tail_bytes INTEGER NOT NULL DEFAULT 0")
    conn.execute("UPDATE partitions SET tail_offset = next_offset")  # every record so far is in batches


# The schema as numbered DDL: MIGRATIONS[i] takes user_version i to i + 1.
# Every partition is its own table, p<topic_id>_<partition>, named by numbers only
# (see partition_table); its INTEGER PRIMARY KEY is the offset.
# An entry is DDL, or a function for a change that depends on what the file holds.
MIGRATIONS: tuple[str | Callable[[apsw.Connection], None], ...] = (
    """
    -- Log-wide settings every process agrees on (e.g. the default retention_ms / retention_bytes).
    CREATE TABLE settings(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
    -- retention_*: NULL follows the log-wide default, -1 keeps forever.
    CREATE TABLE topics(
        topic_id        INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a stale cache cannot hit a new topic
        name            TEXT NOT NULL UNIQUE,
        retention_ms    INTEGER,
        retention_bytes INTEGER,
        created_ms      INTEGER NOT NULL
    );
    -- next_offset is the high watermark; it and log_start_offset survive an empty partition.
    CREATE TABLE partitions(
        topic_id         INTEGER NOT NULL,
        partition        INTEGER NOT NULL,
        next_offset      INTEGER NOT NULL DEFAULT 0,
        log_start_offset INTEGER NOT NULL DEFAULT 0,
        bytes            INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY(topic_id, partition)
    ) WITHOUT ROWID;
    -- One row per appended batch, like Kafka's segment time index: serves time and size
    -- retention and offsets_for_times without an index on every record.
    CREATE TABLE batches(
        topic_id      INTEGER NOT NULL,
        partition     INTEGER NOT NULL,
        base_offset   INTEGER NOT NULL,
        last_offset   INTEGER NOT NULL,
        max_timestamp INTEGER NOT NULL,
        bytes         INTEGER NOT NULL,
        PRIMARY KEY(topic_id, partition, base_offset)
    ) WITHOUT ROWID;
    CREATE TABLE committed_offsets(
        group_id   TEXT NOT NULL,
        topic_id   INTEGER NOT NULL,
        partition  INTEGER NOT NULL,
        offset     INTEGER NOT NULL,
        metadata   TEXT NOT NULL DEFAULT '',
        commit_ms  INTEGER NOT NULL,
        PRIMARY KEY(group_id, topic_id, partition)
    ) WITHOUT ROWID;
    """,
    # 2: consumer groups without a broker (see groups.py for the protocol). Since schema 5,
    # joined_ms and heartbeat_ms are clock.monotonic_ms() readings, not the wall clock.
    """
    -- generation changes with every change of membership, target assignment or ownership,
    -- so a member's poll() learns that something moved from one cheap SELECT.
    CREATE TABLE consumer_groups(
        group_id    TEXT PRIMARY KEY,
        generation  INTEGER NOT NULL DEFAULT 0,
        strategy    TEXT NOT NULL,
        created_ms  INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- One row per live member; a member whose heartbeat_ms is older than its own
    -- session_timeout_ms is expired (deleted) by whoever notices first.
    CREATE TABLE group_members(
        group_id           TEXT NOT NULL,
        member_id          TEXT NOT NULL,
        client_id          TEXT NOT NULL,
        host               TEXT NOT NULL,
        pid                INTEGER NOT NULL,
        pid_namespace      TEXT NOT NULL,  -- boot id + pid namespace; '' = unknown: pids compare only within one
        pid_start_time     INTEGER,        -- /proc/<pid>/stat starttime, tells a reused pid apart
        subscription       TEXT NOT NULL,  -- sorted topic names joined by ',' (not a topic-name character)
        strategy           TEXT NOT NULL,
        session_timeout_ms INTEGER NOT NULL,
        joined_ms          INTEGER NOT NULL,
        heartbeat_ms       INTEGER NOT NULL,
        PRIMARY KEY(group_id, member_id)
    ) WITHOUT ROWID;
    -- The target assignment, recomputed in the transaction that changes the membership.
    CREATE TABLE group_targets(
        group_id   TEXT NOT NULL,
        topic_id   INTEGER NOT NULL,
        partition  INTEGER NOT NULL,
        member_id  TEXT NOT NULL,
        PRIMARY KEY(group_id, topic_id, partition)
    ) WITHOUT ROWID;
    -- Who owns a partition now: a claim inserts a row only where none exists, so the
    -- primary key is what keeps a partition from being owned twice.
    CREATE TABLE partition_owners(
        group_id    TEXT NOT NULL,
        topic_id    INTEGER NOT NULL,
        partition   INTEGER NOT NULL,
        member_id   TEXT NOT NULL,
        generation  INTEGER NOT NULL,  -- the group generation the claim created
        claimed_ms  INTEGER NOT NULL,
        PRIMARY KEY(group_id, topic_id, partition)
    ) WITHOUT ROWID;
    CREATE INDEX partition_owners_by_member ON partition_owners(group_id, member_id);
    """,
    # 3: queue mode: share groups (Kafka's KIP-932); see share.py for the protocol. Only this
    # migration's own tables and triggers, plus the topics.retention_policy column. Since
    # schema 5, lock_until_ms is a clock.monotonic_ms() reading, not ms since the epoch.
    """
    -- A share group's id as the tables below store it (an int, not the user's text).
    CREATE TABLE share_groups(
        share_group_id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a deleted group leaves no heirs
        group_id       TEXT NOT NULL UNIQUE,
        created_ms     INTEGER NOT NULL
    );
    -- Per share group and partition: every offset below start_offset (Kafka's share-partition
    -- start offset) is done: accepted, archived or removed by retention. [start_offset,
    -- end_offset) is the in-flight window, one share_records row per offset; end_offset is
    -- the next offset never delivered yet.
    CREATE TABLE share_partitions(
        share_group_id INTEGER NOT NULL,
        topic_id       INTEGER NOT NULL,
        partition      INTEGER NOT NULL,
        start_offset   INTEGER NOT NULL,
        end_offset     INTEGER NOT NULL,
        PRIMARY KEY(share_group_id, topic_id, partition)
    ) WITHOUT ROWID;
    CREATE INDEX share_partitions_by_partition ON share_partitions(topic_id, partition);
    -- The in-flight window. state is Kafka's RecordState: 0 available, 1 acquired,
    -- 2 acknowledged, 4 archived. Rows below start_offset are deleted as it advances.
    CREATE TABLE share_records(
        share_group_id INTEGER NOT NULL,
        topic_id       INTEGER NOT NULL,
        partition      INTEGER NOT NULL,
        offset         INTEGER NOT NULL,
        state          INTEGER NOT NULL,
        delivery_count INTEGER NOT NULL,
        member_id      TEXT,     -- the consumer holding it while acquired
        lock_until_ms  INTEGER,  -- its lock deadline (ms since the epoch) while acquired
        PRIMARY KEY(share_group_id, topic_id, partition, offset)
    ) WITHOUT ROWID;
    -- The records not done yet (available or acquired): what acquisition, lock expiry and
    -- advancing the start offset look at, without reading the finished ones.
    CREATE INDEX share_records_open ON share_records(share_group_id, topic_id, partition, offset)
        WHERE state < 2;
    -- Retention reaches share groups as in Kafka: what it removed is gone for them too.
    CREATE TRIGGER share_follow_log_start AFTER UPDATE OF log_start_offset ON partitions
    WHEN new.log_start_offset > old.log_start_offset BEGIN
        DELETE FROM share_records
        WHERE share_group_id IN (SELECT share_group_id FROM share_partitions
                                 WHERE topic_id = new.topic_id AND partition = new.partition)
          AND topic_id = new.topic_id AND partition = new.partition AND offset < new.log_start_offset;
        UPDATE share_partitions SET start_offset = new.log_start_offset,
                                    end_offset = max(end_offset, new.log_start_offset)
        WHERE topic_id = new.topic_id AND partition = new.partition AND start_offset < new.log_start_offset;
    END;
    -- A deleted topic takes its share-group state with it.
    CREATE TRIGGER share_forget_topic AFTER DELETE ON topics BEGIN
        DELETE FROM share_records WHERE topic_id = old.topic_id;
        DELETE FROM share_partitions WHERE topic_id = old.topic_id;
    END;
    -- 'interest': retention removes only what every group reading the topic is done with.
    ALTER TABLE topics ADD COLUMN retention_policy TEXT NOT NULL DEFAULT 'limits'
        CHECK (retention_policy IN ('limits', 'interest'));
    """,
    # 4: record checksums (see checksum.py): a crc column in every partition table.
    _add_crc_columns,
    # 5: liveness times on a clock that never steps. group_members.joined_ms / heartbeat_ms and
    # share_records.lock_until_ms are clock.monotonic_ms() readings (ms since boot), no longer the
    # wall clock; settings 'liveness_clock' names the clock and boot they belong to (clock.CLOCK_ID).
    # The older files' wall-clock times are marked as from another clock: the first process that
    # opens the file expires them (adopt_clock). Older sqlog versions refuse this schema.
    """
    INSERT OR REPLACE INTO settings(key, value) VALUES ('liveness_clock', 'wall');
    """,
    # 6: log compaction (see compaction.py). Topics get Kafka's cleanup.policy and its settings;
    # partitions record what compaction removed, so a compaction hole is told from damage:
    # every offset missing in [log_start_offset, compacted_offset) may be a hole compaction made
    # (above it, a missing record is damage), and compacted_records counts those holes, so the
    # check still finds a record lost below compacted_offset. cleaned_offset is Kafka's cleaner
    # checkpoint: records above it are the dirty part, not yet compacted.
    _add_compaction_columns,
    # 7: exactly-once (see transactions.py): producer epochs per transactional_id, and the
    # dedupe window of send(message_id=...).
    _add_exactly_once,
    # 8: records a group's consumers skipped when auto_offset_reset moved them past records
    # (a committed offset or position below the log start), per partition, shown by describe_group.
    lambda conn: _add_column(conn, "committed_offsets", "skipped INTEGER NOT NULL DEFAULT 0"),
    # 9: share-group members' processes (liveness.py's facts), so a consumer whose process on this
    # machine is gone has its record locks released at once instead of at their deadline.
    """
    CREATE TABLE IF NOT EXISTS share_members(
        member_id      TEXT PRIMARY KEY,
        share_group_id INTEGER NOT NULL,
        pid            INTEGER NOT NULL,
        pid_namespace  TEXT NOT NULL,   -- liveness.PID_NAMESPACE: '' where pids cannot be judged
        pid_start_time INTEGER          -- liveness.start_time(pid)
    ) WITHOUT ROWID;
    """,
    # 10: a running count per share group and partition of the records archived (rejected or past
    # delivery_count_limit: each copied to the dead-letter topic when one is set), for describe.
    lambda conn: _add_column(conn, "share_partitions", "dead_lettered INTEGER NOT NULL DEFAULT 0"),
    # 11: the users `sqlog serve` authenticates (SASL; see server/users.py), as SCRAM credentials
    # (RFC 5802): a random salt, the PBKDF2 iteration count and the two keys derived from the
    # password. The password itself is never stored; SASL/PLAIN is checked against the same keys.
    """
    CREATE TABLE IF NOT EXISTS scram_credentials(
        name       TEXT NOT NULL,
        mechanism  TEXT NOT NULL,     -- 'SCRAM-SHA-256'
        salt       BLOB NOT NULL,
        iterations INTEGER NOT NULL,
        stored_key BLOB NOT NULL,     -- H(HMAC(SaltedPassword, "Client Key"))
        server_key BLOB NOT NULL,     -- HMAC(SaltedPassword, "Server Key")
        PRIMARY KEY(name, mechanism)
    ) WITHOUT ROWID;
    """,
    # 12: the Kafka protocol's state (sqlog serve, see server/coordinator.py and server/idempotence.py),
    # in the file so that every process serving it agrees: classic consumer groups (JoinGroup /
    # SyncGroup membership, generation, assignments) and idempotent producers' sequences.
    """
    -- A Kafka-protocol consumer group; its state is the classic group protocol's. Times are
    -- clock.monotonic_ms() readings (as group_members'); a group id is either this or a native
    -- group with live members, never both at once.
    CREATE TABLE IF NOT EXISTS protocol_groups(
        group_id       TEXT PRIMARY KEY,
        state          TEXT NOT NULL,  -- Empty, PreparingRebalance, CompletingRebalance, Stable
        generation     INTEGER NOT NULL,
        protocol_type  TEXT NOT NULL,
        protocol       TEXT,           -- the assignor chosen for the generation (NULL when Empty)
        leader         TEXT,           -- the member that assigns (NULL when Empty)
        delay_until_ms INTEGER NOT NULL,  -- a new group's rebalance waits for more members until then
        deadline_ms    INTEGER NOT NULL   -- the rebalance completes then without members that did not rejoin
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS protocol_members(
        group_id             TEXT NOT NULL,
        member_id            TEXT NOT NULL,
        client_id            TEXT NOT NULL,
        client_host          TEXT NOT NULL,
        pid                  INTEGER NOT NULL,  -- the serving process (liveness.py's facts about it)
        pid_namespace        TEXT NOT NULL,
        pid_start_time       INTEGER,
        session_timeout_ms   INTEGER NOT NULL,
        rebalance_timeout_ms INTEGER NOT NULL,
        protocols            BLOB NOT NULL,  -- its [(assignor, metadata)] as JoinGroup sent them
        join_id              INTEGER,        -- set while its JoinGroup waits for the generation
        generation           INTEGER NOT NULL,  -- the generation it belongs to (-1: none yet)
        assignment           BLOB NOT NULL DEFAULT x'',
        subscription         TEXT NOT NULL DEFAULT '',  -- for describe_group (consumer protocol): topics joined by ','
        assigned             TEXT NOT NULL DEFAULT '',  -- and its assignment: 'topic:partition' joined by ','
        joined_ms            INTEGER NOT NULL,
        heartbeat_ms         INTEGER NOT NULL,
        PRIMARY KEY(group_id, member_id)
    ) WITHOUT ROWID;
    -- Idempotent producers (InitProducerId; ids from settings 'next_producer_id'): per producer and
    -- partition, its epoch and its last batches' sequences, checked and updated in the append's
    -- own transaction, so a retried batch is never stored twice, whichever process it reaches.
    CREATE TABLE IF NOT EXISTS producer_state(
        producer_id INTEGER NOT NULL,
        topic_id    INTEGER NOT NULL,
        partition   INTEGER NOT NULL,
        epoch       INTEGER NOT NULL,
        batches     BLOB NOT NULL,     -- up to 5 (first sequence, last sequence, base offset), oldest first
        updated_ms  INTEGER NOT NULL,  -- wall clock: state idle for producer.id.expiration.ms is forgotten
        PRIMARY KEY(producer_id, topic_id, partition)
    ) WITHOUT ROWID;
    CREATE TRIGGER IF NOT EXISTS producer_state_forget_topic AFTER DELETE ON topics BEGIN
        DELETE FROM producer_state WHERE topic_id = old.topic_id;
    END;
    """,
    # 13: compacted topics keep each key's latest offset per partition in a table of their own
    # (latest_ddl) instead of a (key, offset) index on every record, and count their live keys.
    migrate_latest_tables,
    # 14: message ids lose their age index (an insert per id on the send path): the sweep forgets
    # expired ids by walking the topic's ids in key order instead (transactions.purge_all).
    "DROP INDEX IF EXISTS message_ids_by_age;",
    # 15: a sparse batch index, as Kafka's index.interval.bytes: the records from tail_offset to
    # the high watermark are not in batches yet; the partition row (written by every append
    # anyway) carries their max timestamp and bytes until they reach partitions.INDEX_INTERVAL_BYTES
    # and become one batches row. A durable one-record commit then writes the pages raw SQLite
    # writes (partition table, partitions row), not a third for the index.
    add_index_tail,
)
SCHEMA_VERSION = len(MIGRATIONS)
CLOCK_SCHEMA = 5  # the first schema whose liveness times are clock.monotonic_ms() readings
LIVENESS_CLOCK = "liveness_clock"  # the settings key naming the clock of the stored liveness times
EXPIRED_MS = -(2**62)  # a liveness time before every deadline: the member or lock has expired

# A record's size as retention and the byte counts see it (the producer's len(key + value + headers)).
RECORD_BYTES = "coalesce(length(key), 0) + coalesce(length(value), 0) + coalesce(length(headers), 0)"


def effective(column: str) -> str:
    """SQL for a topic's (``t``) retention in force: its own, else the log default; NULL = forever,
    as for a topic whose cleanup_policy is "compact" alone (Kafka applies no retention to those)."""
    assert column in ("retention_ms", "retention_bytes")
    return (f"CASE WHEN t.cleanup_policy = 'compact' THEN NULL"
            f" ELSE nullif(coalesce(t.{column}, (SELECT value FROM settings WHERE key = '{column}')), -1) END")


def partition_table(topic_id: int, partition: int) -> str:
    """The table of one partition; built from integers only, never from user text."""
    return f"p{int(topic_id)}_{int(partition)}"


def latest_table(topic_id: int) -> str:
    """The latest-record table of a compacted topic (`latest_ddl`); integers only."""
    return f"l{int(topic_id)}"


def latest_ddl(topic_id: int) -> str:
    """A compacted topic's latest-record table: one row per (key, partition) holding the offset of
    the key's latest record in that partition and whether it is live (not a tombstone).

    It serves the table view (``table[key]``: one probe of its primary key, then one of the
    partition's) and compaction (a record is superseded when it is not its key's latest). Each
    append updates one row in place (a partition's insert trigger, `latest_trigger_ddl`), so the
    index the append path maintains is as large as the live key set, not as the log: appends to
    keys already known rewrite pages that are already hot. Its own triggers keep the topic's
    ``live_keys`` (live rows) and ``shared_keys`` (keys with rows in more than one partition)
    counts, so ``len(table)`` reads a number."""
    t, lt = int(topic_id), latest_table(topic_id)
    return f"""
    CREATE TABLE IF NOT EXISTS {lt}(
        key       BLOB NOT NULL,
        partition INTEGER NOT NULL,
        offset    INTEGER NOT NULL,
        live      INTEGER NOT NULL,
        PRIMARY KEY(key, partition)
    ) WITHOUT ROWID;
    CREATE TRIGGER IF NOT EXISTS {lt}_new AFTER INSERT ON {lt} BEGIN
        UPDATE topics SET live_keys = live_keys + new.live,
            shared_keys = shared_keys + ((SELECT count(*) FROM {lt} WHERE key = new.key) = 2)
        WHERE topic_id = {t};
    END;
    CREATE TRIGGER IF NOT EXISTS {lt}_live AFTER UPDATE OF live ON {lt} WHEN old.live != new.live BEGIN
        UPDATE topics SET live_keys = live_keys + new.live - old.live WHERE topic_id = {t};
    END;
    CREATE TRIGGER IF NOT EXISTS {lt}_gone AFTER DELETE ON {lt} BEGIN
        UPDATE topics SET live_keys = live_keys - old.live,
            shared_keys = shared_keys - ((SELECT count(*) FROM {lt} WHERE key = old.key) = 1)
        WHERE topic_id = {t};
    END;
    """


def latest_trigger_ddl(topic_id: int, partition: int) -> str:
    """A compacted partition's triggers: every keyed append becomes its key's latest record (in
    place when it is as live as the one before, which is what appends mostly are; by an UPDATE of
    ``live`` only when that changes, so the counting trigger runs only then); a
    tombstone removed (by compaction, once older than delete_retention_ms) takes its key's row
    along. Retention, which may remove any latest record, keeps the table itself
    (`retention.cut_partition`)."""
    p, table, lt = int(partition), partition_table(topic_id, partition), latest_table(topic_id)
    return f"""
    CREATE TRIGGER IF NOT EXISTS {table}_latest AFTER INSERT ON {table} WHEN new.key IS NOT NULL BEGIN
        INSERT INTO {lt}(key, partition, offset, live) VALUES (new.key, {p}, new.offset, new.value IS NOT NULL)
        ON CONFLICT(key, partition) DO UPDATE SET offset = excluded.offset
        WHERE excluded.offset > offset AND live = excluded.live;
        UPDATE {lt} SET offset = new.offset, live = new.value IS NOT NULL
        WHERE key = new.key AND partition = {p} AND live != (new.value IS NOT NULL) AND offset < new.offset;
    END;
    CREATE TRIGGER IF NOT EXISTS {table}_tombstone AFTER DELETE ON {table}
    WHEN old.value IS NULL AND old.key IS NOT NULL BEGIN
        DELETE FROM {lt} WHERE key = old.key AND partition = {p} AND offset = old.offset;
    END;
    """


def latest_fill(topic_id: int, partition: int) -> str:
    """Fill the latest-record table from a partition's records (a topic turned compacted, or an
    older file); the table's triggers count as it goes."""
    p, table = int(partition), partition_table(topic_id, partition)
    return (f"INSERT OR IGNORE INTO {latest_table(topic_id)}(key, partition, offset, live)"
            f" SELECT key, {p}, offset, value IS NOT NULL FROM {table} WHERE offset IN"
            f" (SELECT max(offset) FROM {table} WHERE key IS NOT NULL GROUP BY key)")


def drop_latest(conn: apsw.Connection, topic_id: int, partitions: int) -> None:
    """Drop a topic's latest-record table and its partitions' triggers, and zero its counts."""
    for p in range(partitions):
        table = partition_table(topic_id, p)
        for trigger in ("latest", "tombstone"):
            conn.execute(f"DROP TRIGGER IF EXISTS {table}_{trigger}")
    conn.execute(f"DROP TABLE IF EXISTS {latest_table(topic_id)}")
    conn.execute("UPDATE topics SET live_keys = 0, shared_keys = 0 WHERE topic_id = ?", (topic_id,))


def add_latest(conn: apsw.Connection, topic_id: int, partitions: range) -> None:
    """Create (if missing) a compacted topic's latest-record table and the triggers of
    ``partitions``, filled from the records they hold."""
    conn.execute(latest_ddl(topic_id))
    for p in partitions:
        conn.execute(latest_trigger_ddl(topic_id, p))
        conn.execute(latest_fill(topic_id, p))


def partition_ddl(topic_id: int, partition: int) -> str:
    return (
        f"CREATE TABLE {partition_table(topic_id, partition)}("
        "offset INTEGER PRIMARY KEY, ts INTEGER NOT NULL, key BLOB, value BLOB, headers BLOB, crc INTEGER)"
    )


def connect(path: str, *, busy_timeout_ms: int, synchronous: str, query_only: bool = False) -> apsw.Connection:
    """Open a connection to an existing or new log with sqlog's pragmas, creating the schema if needed.

    Raises NotASqlogLogError / SchemaTooNewError for a file that is not ours or is newer.
    """
    _check_header(path)
    with translated(path):
        # A statement per partition table: a larger cache keeps them all prepared.
        conn = apsw.Connection(path, statementcachesize=512)
        try:
            # Busy handler first: even journal_mode=WAL can meet a lock held by another process.
            conn.set_busy_handler(busy_handler(busy_timeout_ms))
            _check_file(conn, path)
            if _user_version(conn) < SCHEMA_VERSION:
                _migrate(conn, path)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            if query_only:
                conn.execute("PRAGMA query_only=1")
            elif SCHEMA_VERSION >= CLOCK_SCHEMA:
                adopt_clock(conn)
        except BaseException:
            conn.close()
            raise
    return conn


def busy_handler(timeout_ms: int) -> Callable[[int], bool]:
    """Wait for another connection's lock up to ``timeout_ms``, retrying every fraction of a
    millisecond (SQLite's own handler backs off to 100 ms sleeps, so under steady contention a
    waiter can miss the lock for hundreds of milliseconds while others take it in turn)."""
    timeout_s = timeout_ms / 1000
    began = [0.0]

    def handler(attempt: int) -> bool:
        now = time.monotonic()
        if attempt == 0:
            began[0] = now
        elif now - began[0] >= timeout_s:
            return False
        time.sleep(min(0.0001 * (attempt + 1), 0.002))
        return True

    return handler


_SQLITE_MAGIC = b"SQLite format 3\0"


def _check_header(path: str) -> None:
    """Refuse a non-empty file that is not SQLite before SQLite sees it: SQLite would take a
    file shorter than its header for an empty database and overwrite it."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except IsADirectoryError:
        raise NotASqlogLogError(f"{path}: is a directory, not a sqlog log") from None
    except OSError:
        return  # unreadable: SQLite's own open reports it
    if head and head != _SQLITE_MAGIC:
        raise NotASqlogLogError(f"{path}: not a sqlog log (not an SQLite database); open another path")


def _user_version(conn: apsw.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _check_file(conn: apsw.Connection, path: str) -> None:
    # One statement, one snapshot: another process may be creating the log right now.
    app_id, version, has_tables = conn.execute(
        "SELECT (SELECT application_id FROM pragma_application_id),"
        " (SELECT user_version FROM pragma_user_version), (SELECT count(*) FROM sqlite_schema)"
    ).fetchone()
    if app_id == APPLICATION_ID:
        if version > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"{path}: written by a newer sqlog (schema {version}, this one knows "
                f"{SCHEMA_VERSION}); upgrade sqlog to open it"
            )
        return
    if app_id != 0 or version != 0 or has_tables:
        raise NotASqlogLogError(
            f"{path}: an SQLite database but not a sqlog log (application_id {app_id}); "
            "open another path"
        )


def _migrate(conn: apsw.Connection, path: str) -> None:
    if not conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]:
        # Only takes effect before the first table exists: lets retention give pages back.
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
    with transaction(conn):
        _check_file(conn, path)  # another process may have created or upgraded it meanwhile
        version = _user_version(conn)
        for ddl in MIGRATIONS[version:]:
            if callable(ddl):
                ddl(conn)
            else:
                conn.execute(ddl)
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _clock_is_ours(conn: apsw.Connection) -> bool:
    """Whether the file says its liveness times are readings of our clock in this boot."""
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (LIVENESS_CLOCK,)).fetchone()
    return row is not None and row[0] == clock.CLOCK_ID


def _times_ahead(conn: apsw.Connection, now: int) -> bool:
    """Whether stored liveness times lie ahead of ``now``, which only a clock that restarted (a
    reboot, where no boot id tells boots apart) leaves behind: a heartbeat is stamped before its
    transaction commits, a lock ends at most MAX_INT32 ms after it was taken. Exact only when
    ``now`` is read under the write lock."""
    return bool(conn.execute(
        "SELECT EXISTS(SELECT 1 FROM group_members WHERE heartbeat_ms > ?1)"
        " OR EXISTS(SELECT 1 FROM protocol_members WHERE heartbeat_ms > ?1)"
        " OR EXISTS(SELECT 1 FROM share_records WHERE state < 2 AND state = 1 AND lock_until_ms > ?1 + 2147483647)",
        (now,),
    ).fetchone()[0])


def adopt_clock(conn: apsw.Connection) -> None:
    """Make the file's liveness times this boot's: if they belong to another clock or boot, every
    member and record lock they describe has expired (the processes that wrote them are gone),
    so mark them so and record `clock.CLOCK_ID`. A cheap read when nothing changed; run by every
    writable connection, so every write transaction can trust the stored times. A read-only file
    keeps its times (`clock_now` then reads them as expired)."""
    if _clock_is_ours(conn) and not _times_ahead(conn, clock.monotonic_ms()):
        return
    try:
        with transaction(conn):
            if not _clock_is_ours(conn) or _times_ahead(conn, clock.monotonic_ms()):  # final: under the lock
                conn.execute("UPDATE group_members SET joined_ms = ?1, heartbeat_ms = ?1", (EXPIRED_MS,))
                conn.execute("UPDATE protocol_members SET joined_ms = ?1, heartbeat_ms = ?1", (EXPIRED_MS,))
                conn.execute("UPDATE protocol_groups SET delay_until_ms = ?1, deadline_ms = ?1", (EXPIRED_MS,))
                conn.execute("UPDATE share_records SET lock_until_ms = ? WHERE state = 1", (EXPIRED_MS,))
                conn.execute("INSERT OR REPLACE INTO settings(key, value) VALUES (?, ?)",
                             (LIVENESS_CLOCK, clock.CLOCK_ID))
    except apsw.ReadOnlyError:
        pass


def clock_now(conn: apsw.Connection) -> int:
    """`clock.monotonic_ms()` to judge stored liveness times against; if the file says they belong
    to another clock or boot (a read-only file, never adopted), a time past every deadline, so
    they read as expired."""
    return clock.monotonic_ms() if _clock_is_ours(conn) else -EXPIRED_MS


# Checks run before every write transaction on a connection (e.g. the WAL's share of
# max_db_bytes): weak keys, so a closed and dropped connection leaves no entry behind.
_WRITE_GUARDS: weakref.WeakKeyDictionary[apsw.Connection, Callable[[apsw.Connection], None]] = (
    weakref.WeakKeyDictionary()
)


def guard_writes(conn: apsw.Connection, guard: Callable[[apsw.Connection], None]) -> None:
    """Have `transaction` call ``guard(conn)`` before each ``BEGIN IMMEDIATE`` on ``conn``;
    the guard refuses the write by raising (a `SqlogError`)."""
    _WRITE_GUARDS[conn] = guard


@contextlib.contextmanager
def transaction(conn: apsw.Connection) -> Iterator[apsw.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: take the write lock up front so the busy handler applies."""
    if _WRITE_GUARDS:  # a length check: logs without guards pay no lookup
        guard = _WRITE_GUARDS.get(conn)
        if guard is not None:
            guard(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def snapshot(conn: apsw.Connection) -> Iterator[apsw.Connection]:
    """A read transaction: every statement inside sees the file as of its first read.

    Takes no lock (WAL readers never block the writer); keep it short, since a checkpoint
    cannot pass it. Ending it can only fail on a damaged file, after everything was read: then
    the body's own result (or error) stands.
    """
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        try:
            conn.execute("COMMIT")
        except apsw.Error:
            if conn.in_transaction:
                with contextlib.suppress(apsw.Error):
                    conn.execute("ROLLBACK")


def data_version(conn: apsw.Connection) -> int:
    """Changes whenever another connection commits to the file (cheap: no disk read)."""
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


WAKE_CHECK_S = 0.003
"""Without a file watch: how often a blocked poll looks for other processes' commits (~2% of a core)."""
WATCHED_CHECK_S = 1.0
"""With a file watch: the safety net's pace (a look at data_version however quiet the file)."""
ECHO_S = 0.005
"""How long after this process's own record write a WAL write event is taken for its echo."""
SETTLE_S = (0.0, 0.0005, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)
"""After a WAL write event, when to look at data_version again (from the event): the frames are
written before the WAL index that makes them visible."""


class CommitSignal:
    """This process's commits of records, counted: a blocked poll waits for the count to move.

    Other processes' commits are seen through ``PRAGMA data_version`` (`wait_for_commit`), which
    a `filewatch.FileWatch` on the WAL (where the platform has one) prompts: ``fs_seq`` counts its
    events."""

    def __init__(self) -> None:
        lock = threading.Lock()
        self._cond = threading.Condition(lock)
        # Waiters for file events alone (seq None: the engine's watcher of other processes) wait
        # here, which `notify` leaves alone: woken by every local commit, such a waiter would take
        # the GIL back from the committing thread just as that thread reads for sqlog.aio's
        # waiting tasks, costing that read about as much again.
        self._fs_cond = threading.Condition(lock)
        self.seq = 0
        self._listeners: tuple[Callable[[], None], ...] = ()
        self.fs_seq = 0
        self._local_until = 0.0  # monotonic: WAL write events before then are taken for a local write's echo
        self._watch: FileWatch | None = None
        self._watch_tried = False
        self._closed = False

    def writing(self) -> None:
        """This process starts writing records (its `notify` follows): until then, and for
        `ECHO_S` after, WAL write events are taken for this very write's echo (`_fs_notify`)."""
        self._local_until = math.inf

    def notify(self) -> None:
        """A commit that may have brought readers something new: wake every blocked poll, then
        call every listener (after ``seq`` moved, so a listener's reader sees the new count)."""
        with self._cond:
            self.seq += 1
            self._local_until = time.monotonic() + ECHO_S
            self._cond.notify_all()
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # a listener must never fail the commit that called it
                pass

    def listen(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after every `notify`, in the notifying thread; returns the function
        that removes it. For front doors that wait without a thread (sqlog.aio wakes its event loop
        with ``call_soon_threadsafe``): a listener must be quick and must not block."""
        with self._cond:
            self._listeners = (*self._listeners, listener)

        def remove() -> None:
            with self._cond:
                self._listeners = tuple(x for x in self._listeners if x is not listener)

        return remove

    def _fs_notify(self) -> None:
        # Called by the file watch's thread on a WAL write. During and just after a local write
        # it is most likely that write's echo, which `notify` already told every waiter about;
        # waking them for it would have them look at the file again and again (SETTLE_S) while
        # the writer still works, contending for the GIL: in-process latency doubled. So the
        # event waits out the window (another local write extends it; its readers read then,
        # seeing any other process's commit as well) and then wakes the waiters once.
        while (left := self._local_until - time.monotonic()) > 0 and not self._closed:
            time.sleep(min(left, ECHO_S))
        with self._cond:
            self.fs_seq += 1
            self._cond.notify_all()
            self._fs_cond.notify_all()

    def watch(self, path: str) -> bool:
        """Start (once) the file watch on ``path``'s WAL; whether one runs."""
        if not self._watch_tried:
            with self._cond:
                if not self._watch_tried and not self._closed:
                    self._watch_tried = True
                    self._watch = FileWatch.start(path, self._fs_notify)
        return self._watch is not None

    def wait(self, seq: int | None, timeout: float, fs_seq: int | None = None) -> None:
        """Until the count moves past ``seq`` (None: not looked at) or the file events past
        ``fs_seq``, or the signal closes, or ``timeout`` seconds pass."""
        with self._cond:
            (self._cond if seq is not None else self._fs_cond).wait_for(
                lambda: (seq is not None and self.seq != seq) or self._closed
                or (fs_seq is not None and self.fs_seq != fs_seq), timeout)

    def close(self) -> None:
        """Stop the file watch and wake every waiter (the log is closing); idempotent."""
        with self._cond:
            self._closed = True
            watch, self._watch = self._watch, None
            self.seq += 1
            self._cond.notify_all()
            self._fs_cond.notify_all()
        if watch is not None:
            watch.close()


def wait_for_commit(signal: CommitSignal, conn: apsw.Connection, path: str, seq: int | None, version: int,
                    deadline: float, stop: Callable[[], bool] | None = None,
                    next_stop: Callable[[], float | None] | None = None) -> None:
    """Block until a commit may have brought something new, without busy-spinning a core.

    Returns when this process commits (``signal.seq`` moves past ``seq``: at once; never with
    ``seq`` None, the engine's watcher of other processes, which local commits must not wake), another
    process commits (``conn``'s data_version leaves ``version``), ``stop()`` turns true (it may
    also raise, e.g. closed), or the monotonic ``deadline`` passes. The wait of both clients'
    blocked poll (`reading.read_blocking`).

    Other processes' commits: with a file watch (`filewatch`, Linux), data_version is looked at
    after each write to the WAL (at `SETTLE_S` after it) and every `WATCHED_CHECK_S`, so an idle
    wait costs next to nothing; without one, every `WAKE_CHECK_S`. ``stop()`` is asked at each
    look and by ``next_stop()`` (a monotonic time, or None) when that comes sooner.
    """
    watched = signal.watch(path)
    pace = WATCHED_CHECK_S if watched else WAKE_CHECK_S
    fs_seq = signal.fs_seq if watched else None
    settle: list[float] = []  # monotonic times to look again after a WAL write event
    while (now := time.monotonic()) < deadline:
        wake = min(deadline, now + pace)
        if settle:
            wake = min(wake, settle[0])
        if next_stop is not None and (at := next_stop()) is not None:
            wake = min(wake, max(at, now))
        signal.wait(seq, max(wake - now, 0.0), fs_seq)
        if stop is not None and stop():
            return
        if seq is not None and signal.seq != seq:
            return
        now = time.monotonic()
        if fs_seq is not None and signal.fs_seq != fs_seq:
            fs_seq = signal.fs_seq
            settle = [now + d for d in SETTLE_S]
        while settle and settle[0] <= now:
            settle.pop(0)
        with translated(path):
            if data_version(conn) != version:
                return


def file_sizes(path: str) -> dict[str, int]:
    """Bytes on disk of the database, its WAL and its shared-memory index."""
    out = {}
    for suffix, name in (("", "db_bytes"), ("-wal", "wal_bytes"), ("-shm", "shm_bytes")):
        try:
            out[name] = os.stat(path + suffix).st_size
        except FileNotFoundError:
            out[name] = 0
    return out
