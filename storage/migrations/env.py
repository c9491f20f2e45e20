"""Alembic environment: runs on the connection `storage.migrate` hands over.

Run through `storage.migrate` (or `jukebot db upgrade`); there is no alembic.ini.
"""

from __future__ import annotations

from alembic import context

from storage.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run migrations through storage.migrate (e.g. `jukebot db upgrade`), not the alembic CLI"
    )

# render_as_batch: SQLite can only change a table by rebuilding it; batch mode does that.
context.configure(
    connection=connection, target_metadata=Base.metadata, render_as_batch=True, compare_type=True
)
with context.begin_transaction():
    context.run_migrations()
