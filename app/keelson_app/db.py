"""PostgreSQL access: the engine, the items table and the few queries the app makes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import SQLAlchemyError

from keelson_app.settings import Settings

CONNECT_TIMEOUT_S = 2  # libpq's minimum; keeps /readyz and /version short when PostgreSQL is away
STATEMENT_TIMEOUT_MS = 5000


def make_engine(settings: Settings) -> Engine:
    url = URL.create(
        "postgresql+psycopg",
        username=settings.db_user,
        password=settings.db_password,
        host=settings.db_host,
        port=settings.db_port,
        database=settings.db_name,
    )
    return sa.create_engine(
        url,
        pool_size=5,
        max_overflow=5,
        pool_timeout=3,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": "keelson-app",
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        },
    )


def items_table(with_note: bool) -> sa.Table:
    """The columns this release knows.  v1 code never names ``note``, so it works on the v2 schema too."""
    metadata = sa.MetaData()
    columns: list[sa.Column[Any]] = [
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    ]
    if with_note:
        columns.append(sa.Column("note", sa.Text(), nullable=True))
    return sa.Table("items", metadata, *columns)


def item_dict(row: sa.Row[Any]) -> dict[str, Any]:
    item = dict(row._mapping)
    created = item["created"]
    if isinstance(created, datetime):
        item["created"] = created.isoformat()
    return item


class ItemStore:
    def __init__(self, engine: Engine, with_note: bool) -> None:
        self.engine = engine
        self.table = items_table(with_note)

    def create(self, values: dict[str, Any]) -> dict[str, Any]:
        with self.engine.begin() as conn:
            row = conn.execute(sa.insert(self.table).values(**values).returning(*self.table.c)).one()
        return item_dict(row)

    def get(self, item_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(*self.table.c).where(self.table.c.id == item_id)).one_or_none()
        return None if row is None else item_dict(row)


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at; None when unmigrated or unreachable."""
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one_or_none()
    except SQLAlchemyError:
        return None
