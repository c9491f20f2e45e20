"""The schema check the bot and every worker run every minute (`schema_revisions_not_ours`): what it
says, and that it leaves the engine's statement cache as it found it. Built on alembic's
`get_current_heads`, each call compiled a new statement (a new table object each time): after a few
hours, hundreds of useless cache entries per process, pushing the useful ones out."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.engine import create_engine
from storage.store import JobStore


def cached_statements(engine: AsyncEngine) -> int:
    cache = engine.sync_engine._compiled_cache
    return 0 if cache is None else len(cache)


async def test_the_schema_check_caches_one_statement(store: JobStore, engine: AsyncEngine) -> None:
    assert await store.schema_revisions_not_ours() == []
    before = cached_statements(engine)
    for _ in range(20):
        assert await store.schema_revisions_not_ours() == []
    assert cached_statements(engine) == before


async def test_the_schema_check_names_revisions_it_does_not_know(empty_db_url: str) -> None:
    engine = create_engine(empty_db_url)
    try:
        store = JobStore(engine)
        assert await store.schema_revisions_not_ours() == []  # no alembic table: nothing to refuse
        async with engine.begin() as connection:  # as a newer jukebot leaves it
            await connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
            await connection.execute(text("INSERT INTO alembic_version VALUES ('f00dfeed0012')"))
        assert await store.schema_revisions_not_ours() == ["f00dfeed0012"]
    finally:
        await engine.dispose()
