"""Configuration from environment variables only (docs/stack.md); passwords come from files."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A setting is present but unusable; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    db_host: str = "localhost"
    db_port: int = 5432
    db_name: str = "keelson"
    db_user: str = "keelson"
    db_password: str | None = field(default=None, repr=False)
    redis_host: str = "localhost"
    redis_port: int = 6379
    redis_password: str | None = field(default=None, repr=False)
    port: int = 8000
    release: str | None = None
    slot: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            db_host=env.get("APP_DB_HOST", cls.db_host),
            db_port=_port(env, "APP_DB_PORT", cls.db_port),
            db_name=env.get("APP_DB_NAME", cls.db_name),
            db_user=env.get("APP_DB_USER", cls.db_user),
            db_password=read_secret(env.get("APP_DB_PASSWORD_FILE", "/run/secrets/db_password")),
            redis_host=env.get("APP_REDIS_HOST", cls.redis_host),
            redis_port=_port(env, "APP_REDIS_PORT", cls.redis_port),
            redis_password=read_secret(env.get("APP_REDIS_PASSWORD_FILE", "/run/secrets/redis_password")),
            port=app_port(env),
            release=env.get("APP_RELEASE") or None,
            slot=env.get("APP_SLOT") or None,
        )


def app_port(env: Mapping[str, str]) -> int:
    return _port(env, "APP_PORT", Settings.port)


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise ConfigError(f"{name}={value} is outside 1-65535")
    return value


def read_secret(path: str) -> str | None:
    """The password in ``path`` without its trailing newline; None (with a warning) when the file is absent."""
    try:
        value = Path(path).read_text().rstrip("\r\n")
    except FileNotFoundError:
        log.warning("no password file, connecting without a password", extra={"file": path})
        return None
    return value or None
