"""`create_engine(url)`: one async engine configured for how we use each database."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import await_only

# How long a SQLite writer waits for another writer before giving up.
SQLITE_BUSY_TIMEOUT_MS = 60_000
# Execution option for a connection whose transactions only read: on SQLite they begin with a
# deferred BEGIN and read the last committed snapshot (WAL) instead of queueing for the write lock.
READ_ONLY = "jukebot_read_only"
# Postgres: how long connecting, and then each statement, may take before the call fails with
# TimeoutError and its connection is discarded. A network path that goes silent (a NAT or firewall
# forgetting the connection, a failover leaving the old address dead) sends no reset: without these
# a call on it would wait forever. Generous, as a backstop for every caller (statements of ours that
# wait on a lock wait for short transactions); workers bound their calls more tightly (to the lease).
POSTGRES_CONNECT_TIMEOUT_SECONDS = 10.0
POSTGRES_STATEMENT_TIMEOUT_SECONDS = 60.0
# Postgres, the server's side of the same: a client that vanished mid-transaction (power lost, a NAT
# that forgot the flow: no FIN or RST ever arrives) would keep its locks, the claim lock among them,
# until the server's TCP keepalive gives up (2 h 11 min by default), and every claim would wait.
# Our transactions never idle between statements, so the server ends one that does after this, and
# probes an idle connection's peer after POSTGRES_KEEPALIVE_SECONDS of quiet (three probes, that apart).
POSTGRES_IDLE_IN_TRANSACTION_SECONDS = 60.0
POSTGRES_KEEPALIVE_SECONDS = 20
# Postgres refuses a write with read_only_sql_transaction when the address a client reconnected to
# after a failover is a standby not yet promoted (or the old primary come back as one). A session
# opened there stays read-only after the promotion, so the connection is discarded like a lost one:
# the call is an outage (`storage.errors.database_unreachable`), tried again on a new connection.
_PG_READ_ONLY_TRANSACTION = "25006"


def create_engine(
    url: str,
    *,
    sqlite_foreign_keys: bool = True,
    bounded_statements: bool = True,
    **kwargs: Any,
) -> AsyncEngine:
    """An async engine for a `postgresql+asyncpg://` or `sqlite+aiosqlite:///` URL.

    SQLite gets WAL (readers and the writer never wait for each other), a busy timeout
    (concurrent writers wait instead of failing), enforced foreign keys, and `BEGIN IMMEDIATE`
    for every transaction not marked `READ_ONLY`, so that a read-then-write transaction takes
    the write lock up front instead of failing to upgrade a stale read snapshot (the busy timeout is
    the URL's `?timeout=SECONDS`, else SQLITE_BUSY_TIMEOUT_MS). Transactions
    on a connection with the `READ_ONLY` execution option begin deferred and never wait.
    `sqlite_foreign_keys=False` is for migrations, which rebuild tables that others reference;
    `bounded_statements=False` too (on Postgres one waits for another's migration, however long).

    Postgres gets a pre-ping on checkout and time limits on connecting and on each statement
    (asyncpg's `timeout` and `command_timeout`, overridable through `connect_args`): a call on a
    connection that went silent raises TimeoutError, and the connection is discarded, not reused;
    and server-side limits for a client that vanished (`_bound_postgres_sessions`). A connection to a
    server that takes no writes (a standby, after a failover) is discarded like a lost one.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        if parsed.get_driver_name() == "asyncpg":
            connect_args = kwargs["connect_args"] = dict(kwargs.get("connect_args", {}))
            connect_args.setdefault("timeout", POSTGRES_CONNECT_TIMEOUT_SECONDS)
            # Intervals of days are added in the session's time zone: in one with daylight saving, 60
            # days across a change are 1,441 hours, and prune's and the leases' cut-offs moved an hour.
            server_settings = connect_args["server_settings"] = dict(connect_args.get("server_settings", {}))
            server_settings.setdefault("timezone", "UTC")
            if bounded_statements:
                connect_args.setdefault("command_timeout", POSTGRES_STATEMENT_TIMEOUT_SECONDS)
        engine = create_async_engine(url, **kwargs)
        if parsed.get_backend_name() == "postgresql":
            event.listen(engine.sync_engine, "handle_error", _read_only_server_is_a_lost_connection)
            if bounded_statements:
                event.listen(engine.sync_engine, "connect", _bound_postgres_sessions)
        return engine

    database: Path | None = None
    if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
        database = Path(parsed.database).expanduser()
        _make_private_folders(database.parent)
    connect_args = dict(kwargs.pop("connect_args", {}))
    # The URL's `?timeout=SECONDS` (the driver's, SQLite's busy timeout) or ours; connect_args beat both.
    busy_timeout_ms = round(float(connect_args.get("timeout", sqlite_timeout_seconds(url))) * 1000)
    connect_args["timeout"] = busy_timeout_ms / 1000
    engine = create_async_engine(url, connect_args=connect_args, **kwargs)

    if database is not None:
        private = database

        @event.listens_for(engine.sync_engine, "do_connect")
        def _create_private(*_args: Any) -> None:
            _create_private_file(private)  # then the driver connects (None: its own connect)

    @event.listens_for(engine.sync_engine, "connect")
    def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below); the driver's own transaction handling would
        # begin lazily and run SELECTs outside any transaction.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        cursor.execute(f"PRAGMA foreign_keys = {'ON' if sqlite_foreign_keys else 'OFF'}")
        _use_wal(cursor, busy_timeout_ms)
        cursor.execute("PRAGMA synchronous = NORMAL")  # durable across app crashes in WAL mode
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


# The database holds users' clips, audio and lyrics: what jukebot creates for it is for its own user
# only, whatever the umask would let others read. SQLite gives the -wal and -shm the main file's mode.
PRIVATE_FOLDER_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def _make_private_folders(folder: Path) -> None:
    """Create `folder` and whichever folders above it are missing, each PRIVATE_FOLDER_MODE (less the
    umask); one that is there keeps its mode (an operator may have chosen it)."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        try:
            os.mkdir(new, PRIVATE_FOLDER_MODE)
        except FileExistsError:  # made meanwhile (another process starting): its mode is its maker's
            if not new.is_dir():
                raise


def _create_private_file(database: Path) -> None:
    """Create the SQLite file, empty (SQLite's new database), PRIVATE_FILE_MODE (less the umask), before
    SQLite opens it, which would create it readable by all under the usual umask. One that is there is
    left as it is, mode included. An error is left to SQLite's open, which says it in its own words."""
    try:
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    except OSError:  # there already (FileExistsError), or SQLite cannot create it either
        pass


def _read_only_server_is_a_lost_connection(context: ExceptionContext) -> None:
    if getattr(context.original_exception, "sqlstate", None) == _PG_READ_ONLY_TRANSACTION:
        context.is_disconnect = True


def _bound_postgres_sessions(dbapi_connection: Any, _record: Any) -> None:
    """Server-side limits for a session whose client vanished (see POSTGRES_IDLE_IN_TRANSACTION_SECONDS).

    Set by a statement, not as startup parameters, which a pooler such as PgBouncer refuses."""
    idle_ms = round(POSTGRES_IDLE_IN_TRANSACTION_SECONDS * 1000)
    settings = {
        "idle_in_transaction_session_timeout": idle_ms,
        "tcp_keepalives_idle": POSTGRES_KEEPALIVE_SECONDS,
        "tcp_keepalives_interval": POSTGRES_KEEPALIVE_SECONDS,
        "tcp_keepalives_count": 3,
    }
    calls = ", ".join(f"set_config('{name}', '{value}', false)" for name, value in settings.items())
    # On the driver's own connection, outside any transaction: a transaction's rollback would undo it.
    dbapi_connection.run_async(lambda connection: connection.execute(f"SELECT {calls}"))


def sqlite_timeout_seconds(url: str) -> float:
    """How long a writer on the SQLite database at `url` waits for another's lock: its `?timeout=`
    (seconds), else SQLITE_BUSY_TIMEOUT_MS."""
    timeout = make_url(url).query.get("timeout")
    if isinstance(timeout, str):
        return float(timeout)
    return SQLITE_BUSY_TIMEOUT_MS / 1000


def _use_wal(cursor: Any, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> None:
    """Put the database in WAL mode (a no-op once it is). A new file switches once, under a write
    lock: when two processes open it together (bot and worker both migrating at start), SQLite
    answers the one that finds the other's switch under way "database is locked" at once, without
    its busy timeout (waiting could deadlock), so this tries again until the switch is done, for
    as long as a busy writer would wait."""
    deadline = time.monotonic() + busy_timeout_ms / 1000
    pause = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except Exception as exc:  # the driver's OperationalError, whichever adapter raised it
            if "database is locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        await_only(asyncio.sleep(pause))  # connections are made in the engine's greenlet: the loop runs on
        pause = min(2 * pause, 0.2)
