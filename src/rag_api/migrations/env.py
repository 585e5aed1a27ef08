"""Alembic's entry point for the records database: run on the connection `RecordStore.migrate` hands in."""

from __future__ import annotations

from alembic import context

from rag_api.records import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - the project always migrates through RecordStore.migrate
    raise RuntimeError("run migrations through rag_api.records.RecordStore.migrate, which passes a connection")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
