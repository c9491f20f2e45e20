"""Alembic environment and revisions for the storage schema."""
