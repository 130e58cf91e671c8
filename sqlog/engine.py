"""The engine beneath the clients: one log file's connections, write lock, commit signal,
metadata epoch, client registry and fork handling.

`sqlog.Log` is the public front over one engine; the writer, producers, consumers and share
consumers receive the engine, never the Log, so every import points down (log -> clients ->
writer -> engine). What sits above registers with `at_fork` / `at_close` instead of being
called by name.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import apsw

from . import topics
from .config import MAX_INT32, MAX_INT64, check_int, check_path
from .errors import InvalidConfigError, LogClosedError, SqlogError, translated
from .retention import Upkeep, WalBudget, WalWatch
from .storage import CommitSignal, connect, data_version, snapshot, transaction, wait_for_commit

SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}
"""``durability`` -> SQLite's ``synchronous``."""


class Client(Protocol):
    """What the engine closes with the log: a consumer or share consumer."""

    def close(self) -> None: ...


class Engine:
    """An open log file: the writer connection ``conn`` (every append, commit and admin change
    goes through it, serialized by ``mutex``, so batches reach the tables in the order they were
    sealed), the upkeep thread, and what clients share."""

    def __init__(
        self,
        path: object,
        *,
        durability: str = "normal",
        busy_timeout_ms: int = 10_000,
        retention_check_interval_ms: int | None = 60_000,
        wal_checkpoint_interval_ms: int | None = 1_000,
        wal_limit_bytes: int = 64 * 1024 * 1024,
        journal_size_limit: int = 32 * 1024 * 1024,
        max_db_bytes: int | None = None,
    ) -> None:
        if not isinstance(durability, str) or durability not in SYNCHRONOUS:
            raise InvalidConfigError(f"durability must be 'normal' or 'full', not {durability!r}")
        check_int("busy_timeout_ms", busy_timeout_ms, 0, MAX_INT32)
        check_int("wal_limit_bytes", wal_limit_bytes, 1, MAX_INT64)
        check_int("journal_size_limit", journal_size_limit, 0, MAX_INT64)
        if max_db_bytes is not None:
            check_int("max_db_bytes", max_db_bytes, 64 * 1024, MAX_INT64)
        for name, interval in (("retention_check_interval_ms", retention_check_interval_ms),
                               ("wal_checkpoint_interval_ms", wal_checkpoint_interval_ms)):
            if interval is not None:
                check_int(name, interval, 1, MAX_INT32)
        self.path = check_path(path)
        self.durability = durability
        self.synchronous = SYNCHRONOUS[durability]
        self.busy_timeout_ms = busy_timeout_ms
        self._journal_size_limit = journal_size_limit
        self._max_db_bytes = max_db_bytes
        self._wal_budget: WalBudget | None = None  # with max_db_bytes: the WAL's share of the cap
        self._wal_watch: WalWatch | None = None  # without: the commits' own hold on wal_limit_bytes
        self._upkeep_options = (retention_check_interval_ms, wal_checkpoint_interval_ms, wal_limit_bytes)
        self.closed = False
        self.meta_epoch = 0
        """Bumped by every local topic change, so clients drop cached metadata."""
        self.signal = CommitSignal()
        self._clients: weakref.WeakSet[Any] = weakref.WeakSet()
        self._fork_hooks: list[Callable[[], None]] = []
        self._close_hooks: list[Callable[[], None]] = []
        self._watch_cond = threading.Condition()
        self._watches = 0
        self._watch_thread: threading.Thread | None = None
        self._open_connection()
        self.upkeep = self._start_upkeep()
        _ENGINES.add(self)

    # -- connections -----------------------------------------------------------------------
    def _connect(self) -> apsw.Connection:
        """A writing connection (the writer's or the upkeep's), with the WAL's budget if capped."""
        conn = connect(self.path, busy_timeout_ms=self.busy_timeout_ms, synchronous=self.synchronous)
        try:
            journal_size_limit = self._journal_size_limit
            if self._max_db_bytes is not None:
                if self._wal_budget is None:
                    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                    self._wal_budget = WalBudget(self.path, self._max_db_bytes, self._upkeep_options[2],
                                                 page_size, self.busy_timeout_ms)
                journal_size_limit = min(journal_size_limit, self._wal_budget.trigger_bytes)
                self._wal_budget.attach(conn)
            else:
                if self._wal_watch is None:
                    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                    self._wal_watch = WalWatch(self.path, self._upkeep_options[2], page_size, self.busy_timeout_ms)
                self._wal_watch.attach(conn)
            conn.execute(f"PRAGMA journal_size_limit={journal_size_limit}")
        except BaseException:
            conn.close()
            raise
        return conn

    def reader(self) -> apsw.Connection:
        """A new read-only connection for one client's reads (WAL readers never block the
        writer); the client closes it."""
        return connect(self.path, busy_timeout_ms=self.busy_timeout_ms, synchronous=self.synchronous,
                       query_only=True)

    def _open_connection(self) -> None:
        self.pid = os.getpid()
        self.conn = self._connect()
        self.mutex = threading.Lock()

    def _start_upkeep(self) -> Upkeep:
        sweep_ms, checkpoint_ms, wal_limit = self._upkeep_options
        if self._wal_budget is not None:  # the periodic checkpoint escalates where the commits' does
            wal_limit = min(wal_limit, self._wal_budget.trigger_bytes)
        return Upkeep(self.path, self._connect, sweep_ms, checkpoint_ms, wal_limit, self.busy_timeout_ms)

    def check_open(self) -> None:
        if self.closed:
            raise LogClosedError(f"{self.path}: the log is closed; open it again with sqlog.open()")

    @contextmanager
    def write(self) -> Iterator[apsw.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``) on the writer connection, with sqlog's errors."""
        self.check_open()
        with self.mutex, translated(self.path), transaction(self.conn) as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[apsw.Connection]:
        """The writer connection for an admin read: one snapshot, so retention running meanwhile
        cannot make two of its statements disagree (bounds against records, lag against ends)."""
        self.check_open()
        with self.mutex, translated(self.path), snapshot(self.conn) as conn:
            yield conn

    # -- what clients share ----------------------------------------------------------------
    def topic_meta(self, name: str) -> topics.TopicMeta:
        with self.read() as conn:
            return topics.require(conn, name)

    def dedupe_window(self, topic_id: int) -> int | None:
        with self.read() as conn:
            return topics.dedupe_window(conn, topic_id)

    def topics_changed(self) -> None:
        """A topic was created, altered or deleted here: clients drop their cached metadata."""
        self.meta_epoch += 1

    def track(self, client: Client) -> None:
        """Close ``client`` with the log (held weakly)."""
        self._clients.add(client)

    def untrack(self, client: Client) -> None:
        self._clients.discard(client)

    # -- other processes' commits ----------------------------------------------------------
    def watch(self) -> Callable[[], None]:
        """Turn other processes' commits into `signal` notifications while a watch is held.

        One shared thread per engine waits as a blocked ``poll()`` does (`storage.wait_for_commit`:
        the file watch where the platform has one, else a ``PRAGMA data_version`` look every
        `storage.WAKE_CHECK_S`) while at least one watch is held, and idles otherwise. For waiters without a thread of
        their own (sqlog.aio listens to `signal`); a blocked ``poll()`` checks for itself. Returns
        the function that releases this watch (idempotent).
        """
        self.check_open()
        with self._watch_cond:
            self._watches += 1
            if self._watch_thread is None:
                self._watch_thread = threading.Thread(target=self._watch_loop, name="sqlog-watch", daemon=True)
                self._watch_thread.start()
            self._watch_cond.notify_all()
        released = False

        def release() -> None:
            nonlocal released
            with self._watch_cond:
                if not released:
                    released = True
                    self._watches -= 1

        return release

    def _watch_loop(self) -> None:
        conn: apsw.Connection | None = None
        version: int | None = None
        try:
            while True:
                with self._watch_cond:
                    while self._watches <= 0 and not self.closed:
                        self._watch_cond.wait()
                    if self.closed:
                        return
                try:
                    if conn is None:
                        conn = self.reader()
                        version = data_version(conn)
                        self.signal.notify()  # commits before this first look: waiters look again
                    # Not woken by this process's commits (they notify themselves): a look at
                    # each would notify again, waking every waiter a second time per commit.
                    wait_for_commit(self.signal, conn, self.path, None, version,  # type: ignore[arg-type]
                                    time.monotonic() + 1.0, lambda: self.closed or self._watches <= 0)
                    now = data_version(conn)
                    if now != version:
                        version = now
                        self.signal.notify()
                except (apsw.Error, SqlogError):
                    time.sleep(0.1)  # e.g. the file is busy being recovered: look again soon
        finally:
            if conn is not None:
                conn.close()

    # -- fork and close --------------------------------------------------------------------
    def at_fork(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` in a forked child once the engine has its own connections (e.g. the writer
        drops the parent's unwritten batches)."""
        self._fork_hooks.append(hook)

    def at_close(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` first when the log closes (e.g. the writer writes what is waiting)."""
        self._close_hooks.append(hook)

    def after_fork(self) -> None:
        """In a forked child the parent's connections must not be used (nor closed): open new ones.

        Records the parent had not yet written stay the parent's: the child's producers start empty.
        """
        _ABANDONED.append(self.conn)
        _ABANDONED.append(self.upkeep.abandon())
        self.signal = CommitSignal()
        self._clients = weakref.WeakSet()
        self._watch_cond = threading.Condition()  # the parent's watcher thread is not in the child
        self._watches = 0
        self._watch_thread = None
        if not self.closed:
            self._open_connection()
            for hook in self._fork_hooks:
                hook()
            self.upkeep = self._start_upkeep()

    def close(self) -> None:
        """Write what producers have waiting, close the clients and connections; idempotent."""
        if self.closed:
            return
        try:
            for hook in self._close_hooks:
                hook()
        finally:
            for client in list(self._clients):
                try:
                    client.close()
                except Exception:
                    # Its final auto-commit failed (e.g. topic deleted), or a user's rebalance
                    # listener raised in on_revoked: the client is closed all the same, and so is the log.
                    pass
            self.closed = True
            self.meta_epoch += 1  # producers' metadata caches stop serving sends, which then see the log closed
            with self._watch_cond:
                self._watch_cond.notify_all()  # the watcher thread ends
            self.signal.close()  # stops the file watch; blocked polls wake and see the log closed
            self.upkeep.close()
            with self.mutex:
                self.conn.close()


_ABANDONED: list[apsw.Connection | None] = []  # a parent's connections, kept alive so a child never closes them


_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()
"""Every engine alive in this process: closed at exit and reopened in a forked child by one
hook each, registered once (hooks cannot be unregistered, so one per engine would pile up)."""


def _for_each_engine(fn: Callable[[Engine], None]) -> None:
    """``fn`` for every engine, all of them even if one raises (the first error is raised after)."""
    errors = []
    for engine in list(_ENGINES):
        try:
            fn(engine)
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


def _close_all_at_exit() -> None:
    _for_each_engine(lambda e: e.close() if not e.closed and e.pid == os.getpid() else None)


def _reopen_all_in_child() -> None:
    _for_each_engine(lambda e: e.after_fork())


atexit.register(_close_all_at_exit)
os.register_at_fork(after_in_child=_reopen_all_in_child)
