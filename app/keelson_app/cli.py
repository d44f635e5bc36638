"""The ``keelson-app`` command: serve, migrate, healthcheck, info.

Heavy imports (FastAPI, SQLAlchemy, Alembic) happen inside the subcommands so that ``healthcheck``,
run by Docker every few seconds, starts fast.
"""

# ruff: noqa: PLC0415 - deferred imports in the subcommands are the point of this module's layout

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import urllib.error
import urllib.request

from keelson_app import logs
from keelson_app.settings import ConfigError, Settings, app_port

GRACEFUL_SHUTDOWN_S = 8  # below Docker's default 10 s stop timeout: in-flight requests finish, then exit
HEALTHCHECK_TIMEOUT_S = 2.8

log = logging.getLogger("keelson_app")


def serve() -> int:
    import uvicorn

    from keelson_app.api import create_app
    from keelson_app.cache import make_redis
    from keelson_app.db import make_engine
    from keelson_app.variant import load_variant

    logs.configure()
    settings = Settings.from_env()
    variant = load_variant()
    log.info(
        "starting",
        extra={
            "version": variant.version,
            "variant": variant.name,
            "release": settings.release,
            "slot": settings.slot,
            "port": settings.port,
            "db": f"{settings.db_user}@{settings.db_host}:{settings.db_port}/{settings.db_name}",
            "redis": f"{settings.redis_host}:{settings.redis_port}",
        },
    )
    app = create_app(settings, variant, make_engine(settings), make_redis(settings))
    uvicorn.run(
        app,
        host="0.0.0.0",  # inside a container; the host's firewall decides who reaches the port
        port=settings.port,
        log_config=logs.log_config(),
        access_log=False,  # RequestMetricsMiddleware writes the JSON access log
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    return 0


def migrate() -> int:
    from keelson_app.db import make_engine
    from keelson_app.migrate import upgrade

    logs.configure()
    engine = make_engine(Settings.from_env())
    try:
        result = upgrade(engine)
    finally:
        engine.dispose()
    if result.applied:
        msg = "migrations done"
    elif result.ahead:
        msg = "schema is ahead of this image; left as it is"
    else:
        msg = "schema already up to date"
    log.info(msg, extra={"from": result.before, "to": result.after, "head": result.head, "applied": result.applied})
    return 0


def healthcheck() -> int:
    """Exit 0 when this container's /readyz answers 200 (Docker HEALTHCHECK; no curl in the image)."""
    url = f"http://127.0.0.1:{app_port(os.environ)}/readyz"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an HTTP proxy
    try:
        with opener.open(url, timeout=HEALTHCHECK_TIMEOUT_S) as response:
            code = response.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    print(f"{url}: {code}")
    return 0 if code == 200 else 1


def info() -> int:
    """Print the variant and the migrations this image carries (no database needed)."""
    from keelson_app.migrate import script_head
    from keelson_app.variant import load_variant

    variant = load_variant()
    print(json.dumps({"variant": variant.name, "version": variant.version, "schema_head": script_head()}))
    return 0


COMMANDS = {"serve": serve, "migrate": migrate, "healthcheck": healthcheck, "info": info}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keelson-app", description="Keelson's reference application")
    parser.add_argument(
        "command",
        choices=COMMANDS,
        help="serve: HTTP on APP_PORT; migrate: alembic upgrade head; "
        "healthcheck: exit 0 if /readyz is 200; info: variant and schema head",
    )
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command]()
    except Exception as exc:
        if isinstance(exc, ConfigError | OSError):
            log.error("cannot start: %s", exc)
            print(f"keelson-app {args.command}: {exc}", file=sys.stderr)
            return 2
        log.exception("%s failed", args.command)
        return 1
