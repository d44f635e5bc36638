"""Alembic environment: the connection always comes from ``keelson_app.migrate`` (no alembic.ini)."""

from alembic import context

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `keelson-app migrate`, which supplies the database connection")
if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported")

context.configure(
    connection=connection,
    target_metadata=None,
    transaction_per_migration=True,
    on_version_apply=config.attributes.get("on_version_apply"),
)
with context.begin_transaction():
    context.run_migrations()
