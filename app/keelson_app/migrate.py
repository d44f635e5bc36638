"""``keelson-app migrate``: Alembic ``upgrade head``, run programmatically, reporting what it applied."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
LOCK_KEY = 0x6B65656C736F6E  # "keelson": one migrate job at a time per database (pg_advisory_lock)


@dataclass
class MigrationResult:
    before: str | None
    after: str | None
    head: str | None
    applied: list[str] = field(default_factory=list)
    ahead: bool = False  # the database is at a revision this image does not know (a newer release's expand step)


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def script_head() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade(engine: Engine) -> MigrationResult:
    """Bring the database to this image's head.  Idempotent; a database ahead of the image is left alone."""
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    with engine.connect() as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
        conn.commit()  # end the autobegun transaction: Alembic must own its transactions (autocommit_block)
        try:
            return _upgrade_locked(conn, script, head)
        finally:
            if postgres:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
                conn.commit()


def _upgrade_locked(conn: Connection, script: ScriptDirectory, head: str | None) -> MigrationResult:
    before = _current(conn)
    if before is not None and not _known(script, before):
        log.warning(
            "database schema is ahead of this image: nothing to do",
            extra={"schema": before, "image_head": head},
        )
        return MigrationResult(before=before, after=before, head=head, ahead=True)
    applied: list[str] = []

    def on_apply(*, step: Any, **_kw: Any) -> None:
        applied.append(step.up_revision_id)
        log.info("applied migration", extra={"revision": step.up_revision_id, "doc": step.up_revision.doc})

    cfg = alembic_config(conn)
    cfg.attributes["on_version_apply"] = on_apply
    command.upgrade(cfg, "head")
    return MigrationResult(before=before, after=_current(conn), head=head, applied=applied)


def _current(conn: Connection) -> str | None:
    revision = None
    if sa.inspect(conn).has_table("alembic_version"):
        revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one_or_none()
    conn.commit()
    return revision


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False
