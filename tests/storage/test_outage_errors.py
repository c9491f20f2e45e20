"""Which failures are an outage the worker and the bot ride out (`database_unreachable`: try the same
call again later) and which are refusals, on the real databases."""

from __future__ import annotations

import asyncio
import errno
import secrets
import shutil
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError

from bot.errors import StorageOutage
from storage import create_engine
from storage.errors import database_unreachable
from tests.conftest import POSTGRES_URL
from tests.sqlite_lock import WriteLock


async def test_a_postgres_with_no_connection_left_for_us_is_an_outage(postgres_database: str) -> None:
    """A server up but with every connection its limit allows taken (53300): workers and bots ride it
    out as a server that is down (before, the worker threw away what it was storing)."""
    role = f"jukebot_full_{secrets.token_hex(4)}"
    admin = create_engine(POSTGRES_URL)
    async with admin.connect() as connection:
        await connection.execute(text(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0"))
        await connection.commit()
    limited = create_engine(make_url(POSTGRES_URL).set(username=role).render_as_string(hide_password=False))
    try:
        with pytest.raises(DBAPIError) as refused:
            async with limited.connect() as connection:
                await connection.execute(text("SELECT 1"))
        assert getattr(refused.value.orig, "sqlstate", None) == "53300", refused.value
        assert database_unreachable(refused.value)
        assert StorageOutage.of(refused.value) is StorageOutage.UNREACHABLE  # what a member is told
        with pytest.raises(DBAPIError) as bad:  # a refused statement is no outage
            async with admin.connect() as connection:
                await connection.execute(text("SELECT * FROM no_such_table"))
        assert not database_unreachable(bad.value)
    finally:
        await limited.dispose()
        async with admin.connect() as connection:
            await connection.execute(text(f"DROP ROLE {role}"))
            await connection.commit()
        await admin.dispose()


async def test_a_sqlite_file_locked_past_its_timeout_is_an_outage(
    sqlite_template: Path, tmp_path: Path
) -> None:
    path = tmp_path / "jukebot.sqlite3"
    shutil.copyfile(sqlite_template, path)
    engine = create_engine(f"sqlite+aiosqlite:///{path}?timeout=0.05")
    lock = WriteLock(path)
    lock.take()
    try:
        with pytest.raises(DBAPIError) as locked:
            async with engine.begin() as connection:
                await connection.execute(text("DELETE FROM jobs"))
        assert isinstance(locked.value.orig, sqlite3.OperationalError) and database_unreachable(locked.value)
    finally:
        lock.release()
    with pytest.raises(DBAPIError) as bad:
        async with engine.begin() as connection:
            await connection.execute(text("SELECT * FROM no_such_table"))
    assert not database_unreachable(bad.value)
    await engine.dispose()


async def test_a_postgres_down_behind_a_name_with_two_addresses_is_an_outage_for_members(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A usual /etc/hosts gives `localhost` both ::1 and 127.0.0.1: with the server down, asyncio
    raises one plain OSError ("Multiple exceptions: …"), no ConnectionRefusedError. Workers rode it out,
    but a member was told "something went wrong" instead of "cannot reach the database"."""
    loop = asyncio.get_running_loop()
    resolve = loop.getaddrinfo

    async def both_loopbacks(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "localhost":
            return await resolve(host, port, *args, **kwargs)
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("::1", port, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port)),
        ]

    monkeypatch.setattr(loop, "getaddrinfo", both_loopbacks)
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    engine = create_engine(make_url(POSTGRES_URL).set(host="localhost", port=port).render_as_string(False))
    try:
        with pytest.raises(OSError, match="Multiple exceptions") as down:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    finally:
        await engine.dispose()
    assert database_unreachable(down.value)
    assert StorageOutage.of(down.value) is StorageOutage.UNREACHABLE
    assert StorageOutage.of(OSError("Multiple exceptions: not from the database")) is None


def test_the_bot_calls_an_outage_only_what_the_worker_rides_out() -> None:
    """One classifier (`outage_of`): the bot's view of an error is the store's, narrowed to errors the
    database layers raised where the error could come from anything."""
    sqlite_io = sqlite3.OperationalError("disk I/O error")
    sqlite_io.sqlite_errorcode = 10 | (3 << 8)  # an extended code, as Python reports them
    sqlite_io.sqlite_errorname = "SQLITE_IOERR_WRITE"
    errors: list[BaseException] = [
        sqlite_io,
        OSError(errno.ENOSPC, "No space left on device"),
        ConnectionResetError(104, "reset"),
        TimeoutError(),
        OSError(errno.EACCES, "Permission denied"),
        RuntimeError("a bug"),
    ]
    for error in errors:
        bot_view = StorageOutage.of(error)
        assert bot_view is None or database_unreachable(error), error
    assert StorageOutage.of(sqlite_io) is StorageOutage.UNREACHABLE  # was missed: extended codes
    assert StorageOutage.of(TimeoutError()) is None and database_unreachable(TimeoutError())


async def test_a_statement_over_a_configured_limit_is_no_outage(db_url: str) -> None:
    """53400 (a statement past temp_file_limit): the same statement fails so every time, so workers
    must not retry it for ever nor members be told to come back later (review)."""
    if not db_url.startswith("postgresql"):
        pytest.skip("a Postgres limit")
    engine = create_engine(db_url)
    try:
        with pytest.raises(DBAPIError) as over:
            async with engine.connect() as connection:
                await connection.execute(text("SET temp_file_limit = '64kB'"))
                await connection.execute(text("SET work_mem = '64kB'"))
                await connection.execute(
                    text("SELECT g FROM generate_series(1, 200000) g ORDER BY md5(g::text)")
                )
    finally:
        await engine.dispose()
    assert getattr(over.value.orig, "sqlstate", None) == "53400", over.value
    assert not database_unreachable(over.value) and StorageOutage.of(over.value) is None
