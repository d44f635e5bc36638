#!/usr/bin/env python3
"""Benchmark: Keelson's database backup and restore beside the raw tools, in one run on one db host.

On the lab's db host (PostgreSQL in container keelson-db-postgres-1):

- a database ``keelson_bench`` of about ``--size-mb`` MiB is generated (rows of
  md5 text, a primary key and a text index);
- ``backup``: ``keelson-backup backup`` into a scratch restic repository,
  **cold** (empty repository) and **warm** (the same data again: deduplicated),
  beside the raw ``pg_dump -Fc | zstd > file``;
- ``restore``: ``keelson-backup restore-dump`` (into a staging database, then
  swapped in) beside the raw ``createdb`` + ``zstd -dc | pg_restore``; both
  restored databases must hold the same rows as the source;
- with ``--drill``: ``playbooks/dr-drill.yml`` (destroys and rebuilds the lab's
  database from offsite), run first, its RTO and RPO reported.

The scratch configuration, repository and dump live in /var/tmp/keelson-bench
and are removed at the end with the bench databases; the ``app`` database and
the real repositories are never used.  Needs the lab up and converged
(``make lab``).  Prints seconds, sizes and ratios; never fails for being slow.
Usage:
    .venv/bin/python bench/backup/run.py [--size-mb 1024] [--drill] [--host lab-db1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from keelson.lab import fleet as lab_fleet  # noqa: E402
from tests.helpers import tool_env  # noqa: E402

BIN = Path(sys.executable).parent
INVENTORY = ROOT / "inventories" / "lab"
CONTAINER = "keelson-db-postgres-1"
DB = "keelson_bench"
RAW_DB = "keelson_bench_raw"
# Names restore-dump gives the old and the staging database: <db>_before_<stamp>, <db>_restore_<stamp>.
SWAPPED = rf"^{DB}_(before|restore)_[0-9]{{14}}$"
WORK = "/var/tmp/keelson-bench"
CONFIG = f"{WORK}/config.json"
RAW_DUMP = f"{WORK}/raw.dump.zst"
SCRIPT = "/usr/local/sbin/keelson-backup"
KEELSON = f"{SCRIPT} --config {CONFIG}"
PSQL = f"docker exec -i {CONTAINER} psql -U postgres -v ON_ERROR_STOP=1 -X -q -A -t"
MIB = 1024 * 1024

GENERATE_SQL = """
CREATE TABLE bench_rows (
    id bigint PRIMARY KEY,
    label text NOT NULL,
    payload text NOT NULL
);
CREATE INDEX bench_rows_label ON bench_rows (label);
DO $$
DECLARE
    n bigint := 0;
BEGIN
    WHILE pg_database_size(current_database()) < {target} LOOP
        INSERT INTO bench_rows
        SELECT g, md5(g::text),
               md5((g * 2)::text) || md5((g * 3)::text) || md5((g * 5)::text) || md5((g * 7)::text)
        FROM generate_series(n + 1, n + 20000) AS g;
        n := n + 20000;
    END LOOP;
END $$;
"""
# Rows, a checksum of their content, and the indexes: what each restored copy must match.
FINGERPRINT_SQL = (
    "SELECT count(*) || ' ' || coalesce(sum(hashtext(label || payload)::bigint), 0)"
    " || ' ' || (SELECT count(*) FROM pg_indexes WHERE tablename = 'bench_rows') FROM bench_rows;"
)
CLEANUP_SQL = f"""
SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE);', datname) FROM pg_database
WHERE datname IN ('{DB}', '{RAW_DB}') OR datname ~ '{SWAPPED}'
\\gexec
"""
LEFT_SQL = f"SELECT datname FROM pg_database WHERE datname IN ('{DB}', '{RAW_DB}') OR datname ~ '{SWAPPED}';"


class BenchError(RuntimeError):
    """A step failed; the message says which."""


def progress(message: str) -> None:
    print(f"bench/backup: {message}", file=sys.stderr, flush=True)


class Host:
    """Shell scripts run as root (sudo) on one lab host, over one shared SSH connection."""

    def __init__(self, fleet: lab_fleet.Fleet, name: str, control_dir: str):
        ssh = lab_fleet.ssh_command(fleet, fleet.host(name), user="keelson")
        shared = ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_dir}/%C", "-o", "ControlPersist=120"]
        self.ssh = [*ssh[:-1], *shared, ssh[-1]]
        self.name = name

    def run(self, script: str, *, stdin: str | None = None, timeout: int = 3600, check: bool = True) -> str:
        argv = [*self.ssh, "sudo bash -c " + shlex.quote("set -euo pipefail\n" + script)]
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"{self.name}: no answer within {timeout} s: {script.strip()[:200]}") from exc
        if check and proc.returncode != 0:
            err = "\n".join(line for line in proc.stderr.splitlines() if "Authorised access only" not in line)
            raise BenchError(f"{self.name}: exit {proc.returncode}: {script.strip()[:200]}\n{err.strip()[-3000:]}")
        return proc.stdout.strip()

    def timed(self, script: str, **kwargs) -> tuple[float, str]:
        start = time.monotonic()
        out = self.run(script, **kwargs)
        return time.monotonic() - start, out

    def psql(self, database: str, sql: str, **kwargs) -> str:
        return self.run(f"{PSQL} -d {database}", stdin=sql, **kwargs)

    def size(self, path: str) -> int:
        return int(self.run(f"du -sb {path} | cut -f1"))

    def close(self) -> None:
        subprocess.run([*self.ssh[:-1], "-O", "exit", self.ssh[-1]], capture_output=True, check=False)  # noqa: S603


def cleanup(host: Host) -> list[str]:
    """Drop every bench database and the scratch directory; return what is still there."""
    problems = []
    try:
        host.psql("postgres", CLEANUP_SQL, timeout=600)
    except BenchError as exc:
        problems.append(f"dropping the bench databases: {exc}")
    try:
        host.run(f"rm -rf {WORK}", timeout=600)
    except BenchError as exc:
        problems.append(f"removing {WORK}: {exc}")
    try:
        left = host.psql("postgres", LEFT_SQL, timeout=60).split()
        left += host.run(f"ls -d {WORK} 2>/dev/null || true", timeout=60).split()
        problems += [f"left behind: {name}" for name in left]
    except BenchError as exc:
        problems.append(f"checking the cleanup: {exc}")
    return problems


def drill() -> dict[str, float]:
    """playbooks/dr-drill.yml on the lab, as tests/helpers.run_playbook runs playbooks; RTO and RPO from its report."""
    env = tool_env()
    env.pop("KEELSON_SUMMARY_FILE", None)
    # A backup first, as the nightly timer would have made: the drill needs an
    # offsite base backup (a freshly converged lab has none yet).
    first = [str(BIN / "ansible-playbook"), "playbooks/backup.yml", "-i", str(INVENTORY)]
    done = subprocess.run(first, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False)  # noqa: S603
    if done.returncode != 0:
        sys.stderr.write((done.stdout + done.stderr)[-4000:])
        raise BenchError("the backup before the DR drill failed")
    argv = [str(BIN / "ansible-playbook"), "playbooks/dr-drill.yml", "-i", str(INVENTORY), "-e", "dr_drill_confirm=yes"]
    start = time.monotonic()
    try:
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600, check=False)  # noqa: S603
    except subprocess.TimeoutExpired as exc:
        raise BenchError("the DR drill did not finish within an hour") from exc
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    found = re.search(r"RTO\s+(\d+)\s+s\b.*?RPO\s+(\d+)\s+s\b", output, re.S)
    if proc.returncode != 0 or not found:
        sys.stderr.write(output[-6000:])
        raise BenchError(f"the DR drill failed (exit {proc.returncode}) or printed no RTO/RPO")
    return {"drill": elapsed, "rto": float(found.group(1)), "rpo": float(found.group(2))}


def keelson_config(host: str, image: str, repo: str) -> str:
    return json.dumps(
        {
            "host": host,
            "repositories": [{"name": "local", "url": repo, "password_file": f"{WORK}/repo.pass"}],
            "postgres": {
                "project": "keelson-db",
                "service": "postgres",
                "user": "postgres",
                "image": image,
                "databases": [DB],
                "owners": {DB: "postgres"},
                "basebackup": False,
            },
            "paths": [],
            "retention": {"daily": 7, "weekly": 4, "monthly": 3},
            "textfile_dir": "",
        },
        indent=2,
    )


def measure(host: Host, size_mb: int) -> dict:
    r: dict = {}
    image = host.run(f"docker inspect --format '{{{{.Config.Image}}}}' {CONTAINER}")
    installed = host.run(f"sha256sum {SCRIPT} | cut -d' ' -f1")
    r["script_differs"] = (
        installed != hashlib.sha256((ROOT / "roles/backup/files/keelson-backup").read_bytes()).hexdigest()
    )
    r["archive_mode"] = host.psql("postgres", "SHOW archive_mode;")
    wal_start = host.psql("postgres", "SELECT pg_current_wal_lsn();")

    host.psql("postgres", f'CREATE DATABASE "{DB}";')
    host.run(f"install -d -m 0700 {WORK} && umask 077 && head -c 48 /dev/urandom | base64 -w0 > {WORK}/repo.pass")
    host.run(f"chmod 0400 {WORK}/repo.pass")

    def configure(repo: str) -> None:
        host.run(f"install -m 0600 /dev/stdin {CONFIG}", stdin=keelson_config(host.name, image, repo))

    # keelson-backup on the still empty database first (seconds, into a throwaway repository; the
    # measured one stays empty): a tool that cannot back up fails here, not after the generation.
    progress("keelson-backup smoke test (empty database)")
    configure(f"{WORK}/smoke")
    try:
        host.run(f"{KEELSON} init && {KEELSON} backup && rm -rf {WORK}/smoke", timeout=600)
    except BenchError as exc:
        hint = ""
        if "unable to save snapshot: open /" in str(exc):
            hint = (
                "\n(restic 0.18.0 cannot back up stdin under a --stdin-filename with a directory,"
                " restic/restic#5324, fixed by #5356; keelson-backup uses postgres/<db>.dump)"
            )
        raise BenchError(f"keelson-backup cannot back up even an empty database: {exc}{hint}") from None
    configure(f"{WORK}/repo")

    progress(f"generating {DB} (~{size_mb} MiB)")
    start = time.monotonic()
    host.psql(DB, GENERATE_SQL.replace("{target}", str(size_mb * MIB)))
    # Hint bits set and the data on disk now, not during the first timed dump.
    host.psql(DB, "VACUUM (FREEZE, ANALYZE) bench_rows;\nCHECKPOINT;")
    r["generate"] = time.monotonic() - start
    r["db_size"] = int(host.psql(DB, "SELECT pg_database_size(current_database());"))
    source = host.psql(DB, FINGERPRINT_SQL)
    r["rows"] = int(source.split()[0])
    if r["rows"] < 1:
        raise BenchError(f"{DB} was generated without rows")

    progress("keelson-backup init, backup (cold, warm)")
    host.run(f"{KEELSON} init")
    r["keelson backup cold"], _ = host.timed(f"{KEELSON} backup")
    r["repo_cold"] = host.size(f"{WORK}/repo")
    r["keelson backup warm"], _ = host.timed(f"{KEELSON} backup")
    r["repo_warm"] = host.size(f"{WORK}/repo")

    progress("raw pg_dump | zstd")
    host.run(
        "command -v zstd >/dev/null || "
        "{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zstd >/dev/null; }",
        timeout=900,
    )
    r["raw pg_dump | zstd"], _ = host.timed(
        f"docker exec {CONTAINER} pg_dump -U postgres -Fc -d {DB} | zstd -q -T0 > {RAW_DUMP}"
    )
    r["raw_dump"] = host.size(RAW_DUMP)

    progress("keelson-backup restore-dump")
    oid = host.psql("postgres", f"SELECT oid FROM pg_database WHERE datname = '{DB}';")
    r["keelson restore-dump"], out = host.timed(f"{KEELSON} restore-dump --database {DB}")
    kept = json.loads(out.splitlines()[-1])["previous_kept_as"]
    # A restore that did nothing would leave the source in place: the database must be a new one.
    new_oid = host.psql("postgres", f"SELECT oid FROM pg_database WHERE datname = '{DB}';")
    kept_oid = host.psql("postgres", f"SELECT oid FROM pg_database WHERE datname = '{kept}';")
    if not new_oid or new_oid == oid or kept_oid != oid:
        raise BenchError(f"restore-dump did not swap in a new {DB} (oid {oid} -> {new_oid}, {kept}: {kept_oid})")
    restored = host.psql(DB, FINGERPRINT_SQL)
    if restored != source:
        raise BenchError(f"keelson's restore of {DB} differs: rows/checksum/indexes {restored} != {source}")

    progress("raw createdb + pg_restore")
    r["raw createdb + pg_restore"], _ = host.timed(
        f"docker exec {CONTAINER} createdb -U postgres {RAW_DB}\n"
        f"zstd -dc {RAW_DUMP} | docker exec -i {CONTAINER} pg_restore -U postgres -d {RAW_DB} --no-owner --no-acl"
    )
    raw = host.psql(RAW_DB, FINGERPRINT_SQL)
    if raw != source:
        raise BenchError(f"the raw restore into {RAW_DB} differs: rows/checksum/indexes {raw} != {source}")
    r["wal"] = int(float(host.psql("postgres", f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{wal_start}');")))
    return r


def report(host: str, r: dict, drilled: dict | None) -> None:
    def mib(n: int) -> str:
        return f"{n / MIB:8.1f} MiB"

    print(f"{DB} on {host}: {mib(r['db_size']).strip()} (pg_database_size), {r['rows']} rows")
    print(f"  {'step':<28} {'seconds':>8}  size")
    print(f"  {'generate (not compared)':<28} {r['generate']:8.1f}")
    print(f"  {'keelson backup cold':<28} {r['keelson backup cold']:8.1f}  repository {mib(r['repo_cold'])}")
    grown = mib(r["repo_warm"] - r["repo_cold"]).strip()
    print(f"  {'keelson backup warm':<28} {r['keelson backup warm']:8.1f}  repository {mib(r['repo_warm'])} (+{grown})")
    print(f"  {'raw pg_dump | zstd':<28} {r['raw pg_dump | zstd']:8.1f}  dump       {mib(r['raw_dump'])}")
    print(f"  {'keelson restore-dump':<28} {r['keelson restore-dump']:8.1f}")
    print(f"  {'raw createdb + pg_restore':<28} {r['raw createdb + pg_restore']:8.1f}")
    dump, restore = r["raw pg_dump | zstd"], r["raw createdb + pg_restore"]
    print(
        f"  keelson/raw: backup cold {r['keelson backup cold'] / dump:.2f}"
        f"   backup warm {r['keelson backup warm'] / dump:.2f}"
        f"   restore {r['keelson restore-dump'] / restore:.2f}"
        f"   size (cold repository/dump) {r['repo_cold'] / r['raw_dump']:.2f}"
    )
    print(f"  both restores verified: {r['rows']} rows, same content checksum and indexes as the source")
    print(f"  WAL written by the run: {mib(r['wal']).strip()} (archive_mode {r['archive_mode']})")
    if r["script_differs"]:
        print(f"  note: {SCRIPT} on {host} differs from roles/backup/files/keelson-backup")
    if drilled:
        print(f"  dr-drill: RTO {drilled['rto']:.0f} s, RPO {drilled['rpo']:.0f} s (playbook {drilled['drill']:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the generated database in MiB")
    parser.add_argument("--drill", action="store_true", help="also run playbooks/dr-drill.yml (destroys the lab db)")
    parser.add_argument("--host", default="lab-db1", help="lab db host")
    args = parser.parse_args()
    if args.size_mb < 16:
        parser.error("--size-mb must be at least 16 (an empty database is ~8 MiB)")
    fleet = lab_fleet.load_fleet(INVENTORY)
    drilled = None
    with tempfile.TemporaryDirectory(prefix="kb-ssh-") as control:
        host = Host(fleet, args.host, control)
        try:
            if host.run(f"test -x {SCRIPT} && echo ok || true", timeout=60) != "ok":
                raise SystemExit(f"{args.host} has no {SCRIPT}: converge the lab first (make lab)")
            if args.drill:
                # First, so the bench's WAL (kept in the archive) is not replayed by the drill.
                progress("dr-drill.yml")
                drilled = drill()
            leftovers = cleanup(host)  # a killed earlier run
            if leftovers:
                raise SystemExit("cannot clean up an earlier run:\n" + "\n".join(leftovers))
            try:
                results = measure(host, args.size_mb)
            finally:
                progress("cleaning up")
                problems = cleanup(host)
                for problem in problems:
                    print(f"bench/backup: CLEANUP: {problem}", file=sys.stderr)
        except BenchError as exc:
            raise SystemExit(f"benchmark step failed: {exc}") from None
        finally:
            host.close()
    report(args.host, results, drilled)
    if problems:
        raise SystemExit("the benchmark ran but its cleanup did not finish (see above)")


if __name__ == "__main__":
    main()
