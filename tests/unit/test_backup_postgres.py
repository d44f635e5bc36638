"""keelson-backup's PostgreSQL path against a real server: a dump streamed into
restic, then the restore test (a scratch server from the same image, the
tables checked against the dump's table of contents, the canary checksum),
and a restore of one database swapped in with the old one kept.

Uses the lab's PostgreSQL image (built here when missing, as ``keelson lab images``
builds it) and restic on the controller (scripts/prereqs.sh installs it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests import lab_images
from tests.helpers import ROOT

SCRIPT = ROOT / "roles" / "backup" / "files" / "keelson-backup"
IMAGE = "keelson-lab/postgres:16"


pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (scripts/prereqs.sh)")


def psql(container: str, sql: str, db: str = "app") -> str:
    proc = subprocess.run(
        ["docker", "exec", "-i", container, "psql", "-U", "postgres", "-d", db, "-XAt", "-v", "ON_ERROR_STOP=1"],
        input=sql,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def server():
    assert lab_images.service_image("postgres:16") == IMAGE
    name = f"keelson-unit-pg-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["docker", "run", "-d", "--rm", "--name", name, "--network", "none", "-e", "POSTGRES_PASSWORD=unit", IMAGE],
        check=True,
        capture_output=True,
    )
    try:
        deadline = time.monotonic() + 120
        while subprocess.run(
            ["docker", "exec", name, "pg_isready", "-U", "postgres", "-h", "127.0.0.1"],
            capture_output=True,
            check=False,
        ).returncode:
            assert time.monotonic() < deadline, "PostgreSQL did not start"
            time.sleep(1)
        psql(name, "CREATE ROLE app LOGIN; CREATE DATABASE app OWNER app;", db="postgres")
        psql(
            name,
            'CREATE TABLE items (id serial PRIMARY KEY, name text); CREATE TABLE "Odd Name" (x int);'
            "INSERT INTO items (name) SELECT 'item-' || g FROM generate_series(1, 500) g;"
            'INSERT INTO "Odd Name" VALUES (1), (2);',
        )
        yield name
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


@pytest.fixture
def config(tmp_path, server) -> Path:
    (tmp_path / "pass").write_text("unit-test-password\n")
    (tmp_path / "textfile").mkdir()
    cfg = {
        "host": "unit",
        "repositories": [{"name": "local", "url": str(tmp_path / "repo"), "password_file": str(tmp_path / "pass")}],
        "postgres": {
            "container": server,
            "user": "postgres",
            "image": IMAGE,
            "databases": ["app"],
            "owners": {"app": "app"},
            "basebackup": False,
        },
        "paths": [],
        "retention": {"daily": 7, "weekly": 4, "monthly": 3},
        "textfile_dir": str(tmp_path / "textfile"),
        "restore_test": {"memory": "256m", "timeout": 120},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def run(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RESTIC_CACHE_DIR": str(config.parent / "cache")}
    return subprocess.run(
        ["python3", str(SCRIPT), "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


def test_dump_then_restore_test_then_restore_dump(config, server):
    assert run(config, "init").returncode == 0
    backup = run(config, "backup")
    assert backup.returncode == 0, backup.stderr
    assert "dumped database app" in backup.stderr

    test = run(config, "restore-test")
    assert test.returncode == 0, test.stderr
    report = json.loads(test.stdout)["databases"]["app"]
    assert report["tables"] == 3  # items, "Odd Name" and the canary table
    assert report["rows"]["public.items"] == 500
    assert report["rows"]["public.Odd Name"] == 2
    metrics = (config.parent / "textfile" / "keelson_backup_restore_test.prom").read_text()
    assert 'keelson_backup_last_run_success{task="restore_test",repository="local"} 1' in metrics
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=io.keelson.restore-test=1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert left.stdout.strip() == "", "the scratch server must be removed"

    # Lose rows, then restore the dump: the rows are back, the damaged database kept aside.
    psql(server, "DELETE FROM items WHERE id > 100;")
    restored = run(config, "restore-dump", "--database", "app")
    assert restored.returncode == 0, restored.stderr
    kept = json.loads(restored.stdout)["previous_kept_as"]
    assert psql(server, "SELECT count(*) FROM items;") == "500"
    assert psql(server, "SELECT count(*) FROM items;", db=kept) == "100"
    assert psql(server, "SELECT tableowner FROM pg_tables WHERE tablename = 'items';") == "app"


def test_restore_test_fails_when_the_canary_does_not_match(config, server):
    assert run(config, "init").returncode == 0
    assert run(config, "backup").returncode == 0
    # Re-tag the newest dump with a wrong canary checksum: the test must notice.
    snaps = json.loads(run(config, "snapshots").stdout)
    dump = [s for s in snaps if "kind:pgdump" in s["tags"]][-1]
    canary = next(t for t in dump["tags"] if t.startswith("canary:"))
    env = {**os.environ, "RESTIC_CACHE_DIR": str(config.parent / "cache")}
    cfg = json.loads(config.read_text())
    repo = cfg["repositories"][0]
    subprocess.run(
        [
            "restic",
            "-r",
            repo["url"],
            "--password-file",
            repo["password_file"],
            "tag",
            "--remove",
            canary,
            "--add",
            "canary:0000",
            dump["id"],
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    test = run(config, "restore-test")
    assert test.returncode == 1
    assert "canary checksum" in test.stderr
    metrics = (config.parent / "textfile" / "keelson_backup_restore_test.prom").read_text()
    assert 'keelson_backup_last_run_success{task="restore_test",repository="local"} 0' in metrics


def test_restore_pitr_unpacks_the_newest_base_backup_and_sets_the_target(config, server, tmp_path):
    cfg = json.loads(config.read_text())
    cfg["postgres"]["basebackup"] = True
    cfg["postgres"]["data_dir"] = str(tmp_path / "pgdata")
    cfg["wal_dir"] = str(tmp_path / "wal")
    config.write_text(json.dumps(cfg))
    (tmp_path / "pgdata").mkdir()
    (tmp_path / "wal").mkdir()
    assert run(config, "init").returncode == 0
    backup = run(config, "backup")
    assert backup.returncode == 0, backup.stderr
    assert "base backup taken" in backup.stderr

    early = run(config, "restore-pitr", "--check", "--target", "2020-01-01T00:00:00Z")
    assert early.returncode == 1 and "no base backup" in early.stderr
    target = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
    time.sleep(2)
    restored = run(config, "restore-pitr", "--target", target)
    assert restored.returncode == 0, restored.stderr
    data = tmp_path / "pgdata"
    assert (data / "PG_VERSION").read_text().strip() == "16"
    assert (data / "recovery.signal").exists()
    auto = (data / "postgresql.auto.conf").read_text()
    assert "restore_command = 'cp /wal-archive/%f %p'" in auto
    assert "recovery_target_time = '" in auto
    # Not over existing data.
    again = run(config, "restore-pitr", "--target", target)
    assert again.returncode == 1 and "is not empty" in again.stderr
