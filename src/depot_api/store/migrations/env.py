"""Alembic environment: always run on a connection that depot-api hands over."""

from __future__ import annotations

from alembic import context

from depot_api.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
