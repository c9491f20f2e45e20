"""Database fixtures shared by every test package.

`db_url` is parametrized over a temp-file SQLite database and a Postgres database,
both at the current schema built by the migrations and holding no rows;
`empty_db_url` gives a brand-new, empty database of each kind. Postgres comes from
JUKEBOT_TEST_POSTGRES_URL; when it cannot be reached the Postgres half is skipped,
except under CI=true where that is a failure.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest
import torch

# Triton's kernels (sampler/jukebox/kernels.py) run on the CPU only under its interpreter, which triton
# chooses when it decorates its own functions, so it is set before anything imports triton (dynamo does).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from sqlalchemy import delete, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from sampler.worker.logs import HANDLER_NAME
from storage.engine import create_engine
from storage.migrate import upgrade_to_head
from storage.models import Base, JobRow
from storage.store import JobStore

POSTGRES_URL = os.environ.get(
    "JUKEBOT_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
TEST_DATABASE_PREFIX = "jukebot_t_"
T = TypeVar("T")


class FakeClock:
    """A clock the test moves by hand: leases expire when the test says so, not after sleeps."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No jukebot settings in the environment, an empty working directory and private XDG dirs."""
    for name in list(os.environ):
        if name.startswith("JUKEBOT_") or name in {"DISCORD_TOKEN", "DATABASE_URL"}:
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return tmp_path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _maintenance_engine() -> AsyncEngine:
    return create_async_engine(
        POSTGRES_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"timeout": 5}
    )


def _postgres_url(database: str) -> str:
    return make_url(POSTGRES_URL).set(database=database).render_as_string(hide_password=False)


async def _create_postgres_database(name: str, template: str | None = None) -> None:
    engine = _maintenance_engine()
    try:
        async with engine.connect() as connection:
            suffix = f' TEMPLATE "{template}"' if template else ""
            await connection.exec_driver_sql(f'CREATE DATABASE "{name}"{suffix}')
    finally:
        await engine.dispose()


async def _drop_postgres_database(name: str) -> None:
    engine = _maintenance_engine()
    try:
        async with engine.connect() as connection:
            await connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await engine.dispose()


def _require_postgres(error: Exception) -> NoReturn:
    reason = f"Postgres at {make_url(POSTGRES_URL).render_as_string()} is unreachable ({error!r})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; under CI a missing Postgres is a failure (set JUKEBOT_TEST_POSTGRES_URL)")
    pytest.skip(f"{reason}; set JUKEBOT_TEST_POSTGRES_URL to run the Postgres tests")


def _in_thread(function: Callable[[], T]) -> T:
    """Run blocking setup (which may start its own event loop) even while a test's loop runs."""
    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(function).result()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """One Postgres database per session, migrated to head; `db_url` empties it before each test.

    CREATE/DROP DATABASE cost up to a second each on a loaded 2-core machine (8 MiB of
    WAL per copy), which would make the suite several times slower; emptying the
    tables takes milliseconds. Tests that need a database of their own (migrations,
    schema changes) use `empty_db_url`, which is a brand-new database.
    """
    name = f"{TEST_DATABASE_PREFIX}{uuid.uuid4().hex[:16]}"
    try:
        _in_thread(lambda: asyncio.run(_create_postgres_database(name)))
    except (OSError, SQLAlchemyError) as error:
        _require_postgres(error)
    try:
        _in_thread(lambda: upgrade_to_head(_postgres_url(name)))
        yield name
    finally:
        _in_thread(lambda: asyncio.run(_drop_postgres_database(name)))


async def _empty_postgres_database(url: str) -> None:
    """Delete every row and restart every id sequence: the state a fresh migration leaves."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            # jobs.parent_sample_id and samples.job_id point at each other: break the cycle first.
            await connection.execute(update(JobRow).values(parent_sample_id=None))
            for table in reversed(Base.metadata.sorted_tables):
                await connection.execute(delete(table))
            sequences = await connection.exec_driver_sql(
                "SELECT schemaname, sequencename FROM pg_sequences WHERE schemaname = current_schema()"
            )
            for row in sequences.all():
                await connection.exec_driver_sql(
                    f"""SELECT setval('"{row.schemaname}"."{row.sequencename}"', 1, false)"""
                )
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per session; each test gets a copy of it."""
    path = tmp_path_factory.mktemp("sqlite-template") / "jukebot.sqlite3"
    # upgrade_to_head disposes its engine, which folds the WAL back into the file.
    _in_thread(lambda: upgrade_to_head(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A migrated SQLite file of this test's own (a copy of the template), as a URL."""
    path = tmp_path / "jukebot.sqlite3"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
async def sqlite_store(sqlite_url: str) -> AsyncIterator[JobStore]:
    """A store on this test's own SQLite file (`sqlite_url`), with the real clock."""
    engine = create_engine(sqlite_url)
    yield JobStore(engine)
    await engine.dispose()


DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=DATABASES)
async def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL to a new, empty database; every test using it runs once per database kind."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.sqlite3'}"
        return
    request.getfixturevalue("postgres_database")  # skips (or fails under CI) without Postgres
    name = f"{TEST_DATABASE_PREFIX}{uuid.uuid4().hex[:16]}"
    await _create_postgres_database(name)
    try:
        yield _postgres_url(name)
    finally:
        await _drop_postgres_database(name)


@pytest.fixture(params=DATABASES)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database at the current schema, built by the migrations (not create_all).

    Migrating takes a while, so it happens once per session: SQLite tests get a copy of
    a migrated file; Postgres tests share one migrated database, emptied before each
    test (see `postgres_database`). Do not change the schema through `db_url`.
    """
    if request.param == "sqlite":
        path = tmp_path / "jukebot.sqlite3"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    url = _postgres_url(request.getfixturevalue("postgres_database"))
    await _empty_postgres_database(url)
    yield url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def store(engine: AsyncEngine, clock: FakeClock) -> JobStore:
    return JobStore(engine, clock=clock)


@pytest.fixture(autouse=True)
def _entry_point_logging_undone() -> Iterator[None]:
    """A test that runs an entry point in-process (`main([...])`) sets up the root logger for the
    process: its handler writes to that test's captured stderr, closed afterwards, and its level stays.
    Both are undone after each test, so no later test depends on which ran before it."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
