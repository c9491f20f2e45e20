"""A Postgres failover seen from a worker: its connections are cut, and the address it reconnects to
answers read-only for a while (a standby not yet promoted, or the old primary come back as one).
Writes then fail with SQLSTATE 25006, not with a lost connection. The worker rides that out as an
outage and stores the finished job once writes are taken again, on new connections (a connection
opened read-only stays so); before, the finished job's samples were thrown away."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.errors import StorageOutage
from sampler.worker.contract import DeviceSpec
from sampler.worker.runtime import JobOutcome, Worker
from storage import JobStatus, JobStore, create_engine
from storage.errors import database_unreachable
from tests.conftest import POSTGRES_URL
from tests.sampler.worker.test_runtime import FAST, claim, enqueue, toy_env  # noqa: F401
from tests.sampler.worker.toy_runner import ToyRunner
from tests.waiting import wait_until


class Failover:
    """A role of its own for the worker, so that 'read-only' and 'connections cut' touch only it."""

    def __init__(self, admin: AsyncEngine, role: str) -> None:
        self.admin = admin
        self.role = role
        self.read_only = False

    async def _run(self, *statements: str) -> None:
        async with self.admin.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
            await connection.commit()

    async def to_read_only(self) -> None:
        """The standby answers: every new session of the role is read-only, and its sessions are cut."""
        self.read_only = True
        await self._run(
            f"ALTER ROLE {self.role} SET default_transaction_read_only = on",
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{self.role}'",
        )

    async def promoted(self) -> None:
        """The standby is promoted: new sessions write again (sessions opened before stay read-only)."""
        await self._run(f"ALTER ROLE {self.role} RESET default_transaction_read_only")
        self.read_only = False


@pytest.fixture
async def failover(postgres_database: str) -> AsyncIterator[tuple[Failover, str]]:
    """A Failover and the URL of the tests' database as its role."""
    role = f"jukebot_failover_{secrets.token_hex(4)}"
    admin = create_engine(POSTGRES_URL)
    failover = Failover(admin, role)
    await failover._run(f"CREATE ROLE {role} LOGIN SUPERUSER")
    url = make_url(POSTGRES_URL).set(username=role, database=postgres_database)
    try:
        yield failover, url.render_as_string(hide_password=False)
    finally:
        await failover._run(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'",
            f"DROP ROLE {role}",
        )
        await admin.dispose()


class FailingOverStore(JobStore):
    """Fails over just before the first `complete` reaches the database."""

    def __init__(self, engine: Any, failover: Failover) -> None:
        super().__init__(engine)
        self.failed_over = False
        complete = self.complete

        async def failing_over_first(*args: Any, **kwargs: Any) -> Any:
            if not self.failed_over:
                self.failed_over = True
                await failover.to_read_only()
            return await complete(*args, **kwargs)

        self.complete = failing_over_first  # type: ignore[method-assign]


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_finished_job_is_stored_once_the_standby_is_promoted(
    db_url: str,  # empties the tests' database
    failover: tuple[Failover, str],
    toy_env: Path,  # noqa: F811
) -> None:
    switch, url = failover
    engine = create_engine(url)
    store = FailingOverStore(engine, switch)
    worker = Worker(store, ToyRunner(DeviceSpec.cpu()), DeviceSpec.cpu(), config=FAST)
    try:
        job_id = await enqueue(store, params={"seconds": 1.0}, max_attempts=1)
        running = asyncio.create_task(worker.run_job(await claim(store, worker)))

        async def noticed() -> bool:
            return running.done() or (switch.read_only and worker.database_away)

        await wait_until(noticed, 60, "the worker to notice the read-only database")
        await switch.promoted()
        assert await asyncio.wait_for(running, 60) is JobOutcome.SUCCEEDED
        job = await store.get_job(job_id)
        assert job.status is JobStatus.SUCCEEDED and job.attempts == 0, (job.status, job.error)
        assert len(await store.samples_for_job(job_id)) == 1
    finally:
        worker.close()
        await engine.dispose()


async def test_a_read_only_database_is_an_outage_for_members_too(failover: tuple[Failover, str]) -> None:
    """What a member is told when a command's write meets the read-only standby."""
    switch, url = failover
    await switch.to_read_only()
    engine = create_engine(url)
    try:
        with pytest.raises(DBAPIError) as refused:
            async with engine.begin() as connection:
                await connection.execute(text("CREATE TEMPORARY SEQUENCE written"))
        assert getattr(refused.value.orig, "sqlstate", None) == "25006", refused.value
        assert database_unreachable(refused.value)
        assert StorageOutage.of(refused.value) is StorageOutage.UNREACHABLE
    finally:
        await engine.dispose()
