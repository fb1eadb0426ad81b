"""Alembic environment of the registry: always given a live connection by halo_registry.core.migrate."""

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable through the alembic CLI
    raise SystemExit("run the registry migrations through halo_registry.core.migrate (they need a connection)")

context.configure(connection=connection, target_metadata=None, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
