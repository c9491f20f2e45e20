"""Which failures are an outage the worker and the bot ride out (`database_unreachable`: try the same
call again later) and which are refusals, on the real databases."""

from __future__ import annotations

import secrets
import shutil
import sqlite3
from pathlib import Path

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
