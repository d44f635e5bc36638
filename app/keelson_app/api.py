"""The FastAPI application: health, version, metrics and the items API."""

# No ``from __future__ import annotations`` here: FastAPI reads the (per-variant) body types at definition time.

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from keelson_app import db
from keelson_app.cache import ItemCache, RedisLike
from keelson_app.health import ReadinessProbe
from keelson_app.metrics import Metrics, RequestMetricsMiddleware
from keelson_app.models import ItemIn, ItemInWithNote, ItemOut, ItemOutWithNote
from keelson_app.settings import Settings
from keelson_app.variant import Variant

log = logging.getLogger(__name__)
MAX_ID = 2**63 - 1


@dataclass
class Services:
    settings: Settings
    variant: Variant
    engine: Engine
    redis: RedisLike
    metrics: Metrics
    store: db.ItemStore
    cache: ItemCache
    readiness: ReadinessProbe


def create_app(settings: Settings, variant: Variant, engine: Engine, redis_client: RedisLike) -> FastAPI:
    metrics = Metrics()
    labels = {"version": variant.version, "variant": variant.name}
    metrics.info.info(labels | {"release": settings.release or "", "slot": settings.slot or ""})
    services = Services(
        settings=settings,
        variant=variant,
        engine=engine,
        redis=redis_client,
        metrics=metrics,
        store=db.ItemStore(engine, with_note=variant.item_note),
        cache=ItemCache(redis_client, metrics, shape="v2" if variant.item_note else "v1"),
        readiness=ReadinessProbe({"postgres": lambda: db.ping(engine), "redis": redis_client.ping}),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        log.info("ready to serve", extra={"version": variant.version, "variant": variant.name})
        yield
        log.info("shutting down: closing PostgreSQL and Redis connections")
        services.readiness.close()
        engine.dispose()
        redis_client.close()

    app = FastAPI(title="keelson-app", version=variant.version, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.services = services
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    app.add_exception_handler(SQLAlchemyError, _database_unavailable)
    _add_operational_routes(app, services)
    _add_item_routes(app, services)
    return app


async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    log.error("database error", extra={"error": type(exc).__name__})
    return JSONResponse({"detail": "database unavailable"}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


def _add_operational_routes(app: FastAPI, s: Services) -> None:
    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(response: Response) -> dict[str, Any]:
        if not s.variant.ready:
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
            return {"status": "not ready", "reason": f"variant {s.variant.name} never becomes ready"}
        checks = s.readiness.run()
        ready = all(v == "ok" for v in checks.values())
        if not ready:
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {"status": "ready" if ready else "not ready", "checks": checks}

    @app.get("/version")
    def version() -> dict[str, str | None]:
        return {
            "version": s.variant.version,
            "release": s.settings.release,
            "slot": s.settings.slot,
            "schema": db.schema_revision(s.engine),
        }

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(s.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _add_item_routes(app: FastAPI, s: Services) -> None:
    body_type = ItemInWithNote if s.variant.item_note else ItemIn
    out_type = ItemOutWithNote if s.variant.item_note else ItemOut

    @app.post("/api/items", status_code=status.HTTP_201_CREATED, response_model=out_type)
    def create_item(body: body_type) -> dict[str, Any]:  # type: ignore[valid-type]
        return s.store.create(body.model_dump())

    @app.get("/api/items/{item_id}", response_model=out_type, responses={404: {"description": "No such item"}})
    def get_item(item_id: Annotated[int, Path(gt=0, le=MAX_ID)], response: Response) -> Any:
        item = s.cache.get(item_id)
        if item is not None:
            response.headers["X-Cache"] = "HIT"
            return item
        item = s.store.get(item_id)
        if item is None:
            return JSONResponse({"detail": "item not found"}, status_code=404, headers={"X-Cache": "MISS"})
        s.cache.put(item)
        response.headers["X-Cache"] = "MISS"
        return item
