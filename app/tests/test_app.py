"""The app's own tests, run inside its image (python3 -m unittest discover -s /opt/keelson-app/tests).

PostgreSQL is replaced by SQLite and Redis by a dict: these tests cover the app's logic, the migrations
shipped in the image and the HTTP contract; the real services are exercised by the lab's end-to-end tests.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import threading
import time
import unittest
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from keelson_app import db, logs, migrate
from keelson_app.api import create_app
from keelson_app.health import ReadinessProbe
from keelson_app.settings import ConfigError, Settings
from keelson_app.variant import Variant, load_variant
from sqlalchemy.pool import StaticPool

try:
    from fastapi.testclient import TestClient
except ImportError:  # starlette's TestClient needs httpx (python3-httpx), which the runtime image leaves out
    TestClient = None  # type: ignore[assignment,misc]

IMAGE_VARIANT = load_variant()
logging.getLogger("keelson_app").addHandler(logging.NullHandler())  # the app's warnings are expected here
EXPECTED_HEAD = {"v1": "0001", "v2": "0002", "broken": "0001"}


class FakeRedis:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise redis.ConnectionError("redis is down")

    def get(self, name: str) -> str | None:
        self._check()
        return self.data.get(name)

    def set(self, name: str, value: str, ex: int | None = None) -> bool:
        self._check()
        self.data[name] = value
        return True

    def ping(self) -> bool:
        self._check()
        return True

    def close(self) -> None:
        pass


def sqlite_engine() -> sa.Engine:
    return sa.create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})


class SettingsTest(unittest.TestCase):
    def test_passwords_come_from_files_without_trailing_newline(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "db").write_text("s3cret\n")
            env = {"APP_DB_PASSWORD_FILE": f"{tmp}/db", "APP_REDIS_PASSWORD_FILE": f"{tmp}/absent", "APP_PORT": "8001"}
            settings = Settings.from_env(env)
        self.assertEqual(settings.db_password, "s3cret")
        self.assertIsNone(settings.redis_password)
        self.assertEqual(settings.port, 8001)
        self.assertNotIn("s3cret", repr(settings))

    def test_a_bad_port_names_the_variable(self) -> None:
        with self.assertRaisesRegex(ConfigError, "APP_DB_PORT"):
            Settings.from_env({"APP_DB_PORT": "postgres", "APP_DB_PASSWORD_FILE": "/nonexistent"})

    def test_engine_url_hides_the_password(self) -> None:
        engine = db.make_engine(Settings(db_password="s3cret"))
        self.addCleanup(engine.dispose)
        self.assertNotIn("s3cret", repr(engine.url))
        self.assertEqual(engine.url.password, "s3cret")


class LogsTest(unittest.TestCase):
    def test_each_record_is_one_json_object_with_the_extra_fields(self) -> None:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logs.JsonFormatter())
        logger = logging.getLogger("keelson_app.test")
        logger.addHandler(handler)
        try:
            logger.warning("request", extra={"method": "GET", "status": 200, "duration_ms": 1.5})
            try:
                raise ValueError("boom\nsecond line")
            except ValueError:
                logger.exception("failed")
        finally:
            logger.removeHandler(handler)
        lines = stream.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first, second = (json.loads(line) for line in lines)
        self.assertEqual(
            {k: first[k] for k in ("level", "msg", "method", "status", "duration_ms")},
            {"level": "warning", "msg": "request", "method": "GET", "status": 200, "duration_ms": 1.5},
        )
        self.assertTrue(first["ts"].endswith("Z"))
        self.assertIn("ValueError: boom", second["exc"])


class ReadinessProbeTest(unittest.TestCase):
    def test_a_hung_check_times_out_and_is_not_started_twice(self) -> None:
        release = threading.Event()
        calls: list[str] = []

        def hang() -> None:
            calls.append("pg")
            release.wait(10)

        def fail() -> None:
            raise redis.ConnectionError("down")

        probe = ReadinessProbe({"postgres": hang, "redis": fail}, timeout=0.3)
        self.addCleanup(probe.close)
        self.addCleanup(release.set)
        start = time.monotonic()
        first, second = probe.run(), probe.run()
        self.assertLess(time.monotonic() - start, 2)
        self.assertEqual(first, {"postgres": "error: timeout", "redis": "error: ConnectionError"})
        self.assertEqual(second, first)
        self.assertEqual(calls, ["pg"])
        release.set()
        time.sleep(0.1)
        self.assertEqual(probe.run()["postgres"], "ok")


class MigrationsTest(unittest.TestCase):
    def engine(self) -> sa.Engine:
        engine = sqlite_engine()
        self.addCleanup(engine.dispose)
        return engine

    def test_the_image_carries_its_variants_migrations(self) -> None:
        self.assertEqual(migrate.script_head(), EXPECTED_HEAD[IMAGE_VARIANT.name])

    def test_upgrade_applies_each_revision_once(self) -> None:
        engine = self.engine()
        first = migrate.upgrade(engine)
        self.assertIsNone(first.before)
        self.assertEqual(first.after, migrate.script_head())
        self.assertEqual(first.applied[0], "0001")
        self.assertEqual(first.applied[-1], migrate.script_head())
        again = migrate.upgrade(engine)
        self.assertEqual((again.before, again.after, again.applied), (first.after, first.after, []))
        self.assertEqual(db.schema_revision(engine), first.after)

    def test_a_database_ahead_of_the_image_is_left_alone(self) -> None:
        engine = self.engine()
        migrate.upgrade(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
        result = migrate.upgrade(engine)
        self.assertTrue(result.ahead)
        self.assertEqual((result.after, result.applied), ("9999", []))


@unittest.skipIf(TestClient is None, "python3-httpx is not installed (use the test image)")
class ApiTest(unittest.TestCase):
    def client(self, variant: Variant, *, migrated: bool = True) -> tuple[Any, FakeRedis]:
        engine = sqlite_engine()
        if migrated and variant.item_note and migrate.script_head() != "0002":
            db.items_table(with_note=True).metadata.create_all(engine)  # this image lacks 0002; same table
        elif migrated:
            migrate.upgrade(engine)
        fake = FakeRedis()
        client = TestClient(create_app(Settings(release="r1", slot="blue"), variant, engine, fake))
        self.addCleanup(client.__exit__, None, None, None)
        client.__enter__()
        return client, fake

    def test_health_ready_and_version(self) -> None:
        client, fake = self.client(Variant("v1", "1.0.0"))
        self.assertEqual(client.get("/healthz").json(), {"status": "ok"})
        ready = client.get("/readyz")
        self.assertEqual((ready.status_code, ready.json()["checks"]), (200, {"postgres": "ok", "redis": "ok"}))
        fake.down = True
        not_ready = client.get("/readyz")
        self.assertEqual(not_ready.status_code, 503)
        self.assertEqual(not_ready.json()["checks"]["redis"], "error: ConnectionError")
        self.assertEqual(
            client.get("/version").json(),
            {"version": "1.0.0", "release": "r1", "slot": "blue", "schema": migrate.script_head()},
        )

    def test_version_schema_is_null_before_migrating(self) -> None:
        client, _ = self.client(Variant("v1", "1.0.0"), migrated=False)
        self.assertIsNone(client.get("/version").json()["schema"])

    def test_broken_is_never_ready(self) -> None:
        client, _ = self.client(Variant("broken", "3.0.0-broken", ready=False))
        self.assertEqual(client.get("/healthz").status_code, 200)
        self.assertEqual(client.get("/readyz").status_code, 503)

    def test_items_are_read_through_the_cache(self) -> None:
        client, fake = self.client(Variant("v1", "1.0.0"))
        created = client.post("/api/items", json={"name": "widget"})
        self.assertEqual(created.status_code, 201)
        item = created.json()
        self.assertEqual(set(item), {"id", "name", "created"})
        first = client.get(f"/api/items/{item['id']}")
        second = client.get(f"/api/items/{item['id']}")
        self.assertEqual((first.headers["X-Cache"], second.headers["X-Cache"]), ("MISS", "HIT"))
        self.assertEqual(first.json(), item)
        self.assertEqual(second.json(), item)
        fake.down = True
        degraded = client.get(f"/api/items/{item['id']}")
        self.assertEqual((degraded.status_code, degraded.headers["X-Cache"]), (200, "MISS"))

    def test_missing_and_invalid_items(self) -> None:
        client, _ = self.client(Variant("v1", "1.0.0"))
        self.assertEqual(client.get("/api/items/424242").status_code, 404)
        self.assertEqual(client.get("/api/items/0").status_code, 422)
        self.assertEqual(client.post("/api/items", json={"name": ""}).status_code, 422)
        self.assertEqual(client.post("/api/items", json={}).status_code, 422)

    def test_v2_items_carry_a_note_and_v1_ignores_it(self) -> None:
        client, _ = self.client(Variant("v2", "2.0.0", item_note=True))
        item = client.post("/api/items", json={"name": "gear", "note": "spare"}).json()
        self.assertEqual(item["note"], "spare")
        self.assertEqual(client.get(f"/api/items/{item['id']}").json()["note"], "spare")

    def test_metrics_count_by_route_template_and_cache_result(self) -> None:
        client, _ = self.client(Variant("v1", "1.0.0"))
        item = client.post("/api/items", json={"name": "a"}).json()
        client.get(f"/api/items/{item['id']}")
        client.get(f"/api/items/{item['id']}")
        client.get("/no/such/path")
        text = client.get("/metrics").text
        self.assertIn('keelson_http_requests_total{method="GET",path="/api/items/{item_id}",status="200"} 2.0', text)
        self.assertIn('keelson_http_requests_total{method="GET",path="<unmatched>",status="404"} 1.0', text)
        self.assertIn("keelson_cache_hits_total 1.0", text)
        self.assertIn("keelson_cache_misses_total 1.0", text)
        self.assertIn("keelson_http_request_duration_seconds_bucket", text)
        self.assertIn('keelson_app_info{release="r1",slot="blue",variant="v1",version="1.0.0"} 1.0', text)


if __name__ == "__main__":
    unittest.main()
