"""Postgres adds an interval of days in the session's time zone: in one with daylight saving, 60
days across a change are 1,441 hours, so prune's and the leases' cut-offs (`statement_timestamp() +
interval`) moved by an hour with the server's or database's `timezone` setting. Every session the
store opens is in UTC, whatever the database says."""

from __future__ import annotations

import uuid

import pytest

from storage.engine import create_engine
from tests.conftest import (
    TEST_DATABASE_PREFIX,
    _create_postgres_database,
    _drop_postgres_database,
    _postgres_url,
)


async def test_sessions_add_days_in_utc_whatever_the_databases_time_zone(
    request: pytest.FixtureRequest,
) -> None:
    request.getfixturevalue("postgres_database")  # skips (or fails under CI) without Postgres
    name = f"{TEST_DATABASE_PREFIX}{uuid.uuid4().hex[:16]}"
    await _create_postgres_database(name)
    try:
        setup = create_engine(_postgres_url(name))
        async with setup.begin() as connection:
            await connection.exec_driver_sql(f"ALTER DATABASE \"{name}\" SET timezone = 'Europe/Berlin'")
        await setup.dispose()
        engine = create_engine(_postgres_url(name))
        try:
            async with engine.connect() as connection:
                zone = (await connection.exec_driver_sql("SELECT current_setting('TimeZone')")).scalar()
                hours = (
                    await connection.exec_driver_sql(
                        "SELECT extract(epoch FROM (timestamptz '2026-03-01 00:00+00' + interval '60 days')"
                        " - timestamptz '2026-03-01 00:00+00') / 3600"
                    )
                ).scalar()
        finally:
            await engine.dispose()
        assert (zone, float(hours)) == ("UTC", 1440.0)
    finally:
        await _drop_postgres_database(name)
