"""keelson-backup (roles/backup/files/keelson-backup) against a real restic, without PostgreSQL or Docker.

Repositories are local directories under tmp_path; configurations leave out "postgres", so only restic runs.
Covered: the retention policy over 120 simulated days (checked against an independent implementation of
restic's documented policy and a hand-written list), stale incomplete snapshots, the last good snapshot,
configuration refused before any restic call, a half-written dump, a wrong password, an unreachable second
repository, idempotent `init` with shared chunker parameters, and the node-exporter textfile format.

Speed: `restic init` calibrates scrypt to about half a second, paid again by every later restic run.  The
repositories here are created once per session and their key is re-wrapped with cheap scrypt parameters
(`cheapen_key`, needs the `cryptography` package; without it the tests are just slower), then copied per test.
Every locking restic run still sleeps 200 ms before checking for other locks, and restic 0.14 stalls for ~40 s
when concurrent runs race on each other's lock files, so restic runs here one at a time per repository.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import ROOT

try:  # only to make the test repositories fast to open (cheapen_key)
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.poly1305 import Poly1305

    HAVE_CRYPTOGRAPHY = True
except ImportError:
    HAVE_CRYPTOGRAPHY = False

SCRIPT = ROOT / "roles" / "backup" / "files" / "keelson-backup"
pytestmark = pytest.mark.skipif(
    shutil.which("restic") is None, reason="restic is not installed (keelson-backup drives it; apt install restic)"
)

PASSWORD = "keelson test password"
UTC = dt.UTC


# --------------------------------------------------------------------------- helpers


def restic_env(cache: Path) -> dict[str, str]:
    """The environment of every restic run: our cache, UTC (restic parses --time and buckets days in local time),
    nothing inherited that could point restic elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env.update(RESTIC_CACHE_DIR=str(cache), TZ="UTC")
    return env


@contextlib.contextmanager
def restic_environment(cache: Path) -> Iterator[None]:
    """restic_env() as this process's environment (for the script's subprocesses and the imported module)."""
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("RESTIC_")]:
            mp.delenv(key)
        mp.setenv("RESTIC_CACHE_DIR", str(cache))
        mp.setenv("TZ", "UTC")
        yield


@pytest.fixture(autouse=True)
def _restic_env(tmp_path):
    with restic_environment(tmp_path / "restic-cache"):
        yield


def cheapen_key(repo: Path, password: str) -> None:
    """Re-wrap the repository's master key with scrypt N=2^10, r=8, p=1 (restic reads N, r and p from the key
    file).  Data, master key and the password check stay real; only opening the repository gets cheap.

    Format (restic internal/repository/key.go, internal/crypto): the key file is JSON with salt and data;
    scrypt(password, salt) gives 64 bytes = AES-256 key || Poly1305-AES key (k || r); data = iv || AES-CTR(json
    master key) || Poly1305(r, AES_k(iv)) over the ciphertext; the file is named by the SHA-256 of its bytes."""
    if not HAVE_CRYPTOGRAPHY:
        return

    def user_key(salt: bytes, n: int, r: int, p: int) -> tuple[bytes, bytes, bytes]:
        out = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=64, maxmem=512 * 1024 * 1024)
        return out[:32], out[32:48], out[48:]

    def ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
        c = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
        return c.update(data) + c.finalize()

    def mac(k: bytes, r: bytes, iv: bytes, msg: bytes) -> bytes:
        c = Cipher(algorithms.AES(k), modes.ECB()).encryptor()
        return Poly1305.generate_tag(r + c.update(iv) + c.finalize(), msg)

    [key_file] = list((repo / "keys").iterdir())
    key = json.loads(key_file.read_text())
    data = base64.b64decode(key["data"])
    enc, k, r = user_key(base64.b64decode(key["salt"]), key["N"], key["r"], key["p"])
    iv, ciphertext, tag = data[:16], data[16:-16], data[-16:]
    assert mac(k, r, iv, ciphertext) == tag, "cheapen_key: the password does not open the key"
    master = ctr(enc, iv, ciphertext)
    salt, iv = os.urandom(64), os.urandom(16)
    enc, k, r = user_key(salt, 1024, 8, 1)
    ciphertext = ctr(enc, iv, master)
    key.update(N=1024, r=8, p=1, salt=base64.b64encode(salt).decode())
    key["data"] = base64.b64encode(iv + ciphertext + mac(k, r, iv, ciphertext)).decode()
    raw = json.dumps(key).encode()
    (repo / "keys" / hashlib.sha256(raw).hexdigest()).write_bytes(raw)
    key_file.unlink()


@dataclass
class Repo:
    name: str
    path: Path
    password_file: Path

    def config(self, **extra: Any) -> dict:
        return {"name": self.name, "url": str(self.path), "password_file": str(self.password_file), **extra}

    def restic(self, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
        argv = ["restic", "--repo", str(self.path), "--password-file", str(self.password_file), *args]
        proc = subprocess.run(argv, env=env, capture_output=True, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode()}")
        return proc

    def snapshots(self, env: dict | None = None) -> list[dict]:
        return json.loads(self.restic("--no-lock", "snapshots", "--json", env=env).stdout or b"[]")

    def snapshot_ids(self) -> list[str]:
        return sorted(s["id"] for s in self.snapshots())

    def files(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.path)): p.read_bytes() for p in sorted(self.path.rglob("*")) if p.is_file()}


def new_repo(template: Repo, dest: Path, name: str = "local") -> Repo:
    """A copy of the session's empty repository (same password)."""
    shutil.copytree(template.path, dest / f"repo-{name}")
    password_file = dest / f"password-{name}"
    shutil.copy(template.password_file, password_file)
    return Repo(name, dest / f"repo-{name}", password_file)


def backdated_backup(repo: Repo, when: dt.datetime, source: Path, *tags: str, env: dict | None = None) -> list[str]:
    """The argv of one `restic backup` dated `when` (UTC) as host db1."""
    argv = ["restic", "--repo", str(repo.path), "--password-file", str(repo.password_file), "backup", "--quiet"]
    argv += ["--time", when.strftime("%Y-%m-%d %H:%M:%S"), "--host", "db1"]
    for tag in tags:
        argv += ["--tag", tag]
    return [*argv, str(source)]


def run_each(commands: list[list[str]], env: dict | None = None) -> None:
    """One restic run per command, one after the other."""
    for argv in commands:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}"


def run_script(config: dict, *args: str, tmp: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    path = tmp / "config.json"
    path.write_text(json.dumps(config))
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--config", str(path), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd or tmp,
        timeout=300,
    )


def base_config(tmp: Path, *repos: dict, **extra: Any) -> dict:
    (tmp / "textfile").mkdir(exist_ok=True)
    config = {
        "host": "db1",
        "repositories": list(repos),
        "retention": {"daily": 7, "weekly": 4, "monthly": 3},
        "textfile_dir": str(tmp / "textfile"),
    }
    config.update(extra)
    return config


def utc(snap: dict) -> dt.datetime:
    """A snapshot's time in UTC, to the second (restic writes RFC 3339 with nanoseconds)."""
    stamp = re.sub(r"\.\d+", "", snap["time"]).replace("Z", "+00:00")
    return dt.datetime.fromisoformat(stamp).astimezone(UTC)


# --------------------------------------------------------------------------- metrics


SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>[^{}]*)\} (?P<value>\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"\\\n]*)"')


def parse_textfile(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text format as node-exporter's textfile collector reads it: per family one HELP, one TYPE
    gauge, then its samples; every sample labelled; no family twice; the file ends with a newline."""
    assert text.endswith("\n"), "the file must end with a newline"
    samples: list[tuple[str, dict[str, str], float]] = []
    families: list[str] = []
    typed = False
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, help_text = line[len("# HELP ") :].split(" ", 1)
            assert name not in families, f"family {name} appears twice"
            assert help_text.strip(), f"{name} has an empty HELP"
            families.append(name)
            typed = False
        elif line.startswith("# TYPE "):
            assert line == f"# TYPE {families[-1]} gauge", f"TYPE does not follow its HELP: {line!r}"
            typed = True
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            assert families and m["name"] == families[-1] and typed, f"sample outside its family: {line!r}"
            labels = dict(LABEL.findall(m["labels"]))
            assert ",".join(f'{k}="{v}"' for k, v in labels.items()) == m["labels"], f"bad labels: {line!r}"
            samples.append((m["name"], labels, float(m["value"])))
    return samples


def metric_values(path: Path) -> dict[tuple[str, str], float]:
    """{(metric without prefix, repository): value} of one task's textfile."""
    return {
        (name.removeprefix("keelson_backup_"), labels["repository"]): value
        for name, labels, value in parse_textfile(path.read_text())
    }


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def kb() -> ModuleType:
    """The script, imported as a module (its file has no .py suffix)."""
    loader = importlib.machinery.SourceFileLoader("keelson_backup", str(SCRIPT))
    spec = importlib.util.spec_from_loader("keelson_backup", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def template(tmp_path_factory) -> Repo:
    """An empty repository with a cheap key; tests copy it (`new_repo`)."""
    base = tmp_path_factory.mktemp("template")
    repo = Repo("local", base / "repo", base / "password")
    repo.password_file.write_text(PASSWORD + "\n")
    repo.restic("init", env=restic_env(base / "cache"))
    cheapen_key(repo.path, PASSWORD)
    return repo


@pytest.fixture
def repo(template, tmp_path) -> Repo:
    return new_repo(template, tmp_path)


@pytest.fixture
def source(tmp_path) -> Path:
    """A tiny directory to back up."""
    src = tmp_path / "source"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "app.conf").write_text("answer = 42\n")
    (src / "secret").write_text("s3cr3t\n")
    return src


# --------------------------------------------------------------------------- retention over 120 days

END = dt.date(2026, 1, 17)  # a Saturday; the weeks cross the ISO year (2025-12-29..31 are in 2026-W01)
DAYS = 120  # 2025-09-20 .. 2026-01-17
MISSING = {dt.date(2025, 10, 12), dt.date(2025, 11, 30), dt.date(2026, 1, 3), dt.date(2026, 1, 4)}
TWICE = {dt.date(2025, 10, 5), dt.date(2025, 12, 31), dt.date(2026, 1, 11), dt.date(2026, 1, 15)}


def schedule() -> list[dt.datetime]:
    """One snapshot a day at 02:30, two (06:15 and 18:45) on TWICE days, none on MISSING days."""
    times = []
    for offset in range(DAYS):
        day = END - dt.timedelta(days=offset)
        if day in MISSING:
            continue
        hours = [(6, 15), (18, 45)] if day in TWICE else [(2, 30)]
        times += [dt.datetime(day.year, day.month, day.day, h, m, tzinfo=UTC) for h, m in hours]
    return sorted(times)


def expected_kept(times: list[dt.datetime], daily: int, weekly: int, monthly: int) -> set[dt.datetime]:
    """restic's keep policy as documented (forget, "Removing snapshots according to a policy"): for each rule,
    walk the snapshots newest first and keep one whenever its period differs from that of the last snapshot the
    rule kept, until the rule has kept N; a snapshot is kept if any rule keeps it.  keelson-backup always adds
    --keep-last 1 (period: the snapshot itself).  restic >= 0.16 also keeps the oldest snapshot when a rule runs
    out of snapshots before N; the data here fills every rule, so 0.14 and 0.18 agree."""
    rules = [
        (1, lambda t: t),
        (daily, lambda t: t.date()),
        (weekly, lambda t: t.isocalendar()[:2]),  # ISO year and week
        (monthly, lambda t: (t.year, t.month)),
    ]
    kept: set[dt.datetime] = set()
    for count, period in rules:
        last = None
        left = count
        for t in sorted(times, reverse=True):
            if left == 0:
                break
            if period(t) != last:
                kept.add(t)
                last = period(t)
                left -= 1
    return kept


def at(stamp: str) -> dt.datetime:
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


# Worked out by hand from MISSING/TWICE and the calendar (not from expected_kept).
HAND_KEPT = {
    (7, 4, 3): [
        "2026-01-17 02:30",  # last, daily, weekly 2026-W03, monthly 2026-01
        "2026-01-16 02:30",  # daily
        "2026-01-15 18:45",  # daily (the evening one of two)
        "2026-01-14 02:30",  # daily
        "2026-01-13 02:30",  # daily
        "2026-01-12 02:30",  # daily
        "2026-01-11 18:45",  # daily, weekly 2026-W02 (Sunday evening)
        "2026-01-02 02:30",  # weekly 2026-W01 (Jan 3 and 4 missing)
        "2025-12-31 18:45",  # monthly 2025-12 (Dec 31 is in 2026-W01 already)
        "2025-12-28 02:30",  # weekly 2025-W52
        "2025-11-29 02:30",  # monthly 2025-11 (Nov 30 missing)
    ],
    (3, 0, 2): [
        "2026-01-17 02:30",  # last, daily, monthly
        "2026-01-16 02:30",  # daily
        "2026-01-15 18:45",  # daily
        "2025-12-31 18:45",  # monthly
    ],
    (0, 6, 5): [
        "2026-01-17 02:30",  # last, weekly 2026-W03, monthly 2026-01
        "2026-01-11 18:45",  # weekly 2026-W02
        "2026-01-02 02:30",  # weekly 2026-W01
        "2025-12-31 18:45",  # monthly 2025-12
        "2025-12-28 02:30",  # weekly 2025-W52
        "2025-12-21 02:30",  # weekly 2025-W51
        "2025-12-14 02:30",  # weekly 2025-W50
        "2025-11-29 02:30",  # monthly 2025-11
        "2025-10-31 02:30",  # monthly 2025-10
        "2025-09-30 02:30",  # monthly 2025-09
    ],
}


@dataclass
class History:
    repo: Repo
    times: list[dt.datetime]
    stale_incomplete: str  # snapshot id, older than the grace
    fresh_incomplete: str  # snapshot id, younger than the grace


@pytest.fixture(scope="session")
def history(template, tmp_path_factory) -> History:
    """120 days of complete file snapshots of one host and path, plus two incomplete ones (no `complete` tag)
    dated 3 days and 1 hour before now."""
    base = tmp_path_factory.mktemp("history")
    env = restic_env(base / "cache")
    src = base / "srv"
    src.mkdir()
    (src / "data").write_text("x\n")
    times = schedule()
    # Eight copies of the empty repository take every eighth snapshot each, in parallel; their files are
    # content-addressed and share the master key and chunker, so merging the directories gives one valid
    # repository (`restic check` says so).
    parts = [new_repo(template, base, f"part{i}") for i in range(8)]

    def fill(i: int) -> None:
        commands = [backdated_backup(parts[i], t, src, "keelson", "complete", "kind:files") for t in times[i::8]]
        run_each(commands, restic_env(base / f"cache{i}"))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(fill, range(8)))
    repo = parts[0]
    for part in parts[1:]:
        for sub in ("data", "index", "snapshots"):
            shutil.copytree(part.path / sub, repo.path / sub, dirs_exist_ok=True)
    repo.restic("check", env=env)
    now = dt.datetime.now(UTC).replace(microsecond=0)
    run_each([backdated_backup(repo, now - dt.timedelta(hours=h), src, "keelson", "kind:files") for h in (72, 1)], env)
    snaps = repo.snapshots(env)
    assert len(snaps) == len(times) + 2
    incomplete = sorted((s for s in snaps if "complete" not in s["tags"]), key=utc)
    return History(repo, times, stale_incomplete=incomplete[0]["id"], fresh_incomplete=incomplete[1]["id"])


def test_schedule_is_what_the_hand_lists_assume():
    times = schedule()
    assert len(times) == DAYS - len(MISSING) + len(TWICE)
    assert (times[0], times[-1]) == (at("2025-09-20 02:30"), at("2026-01-17 02:30"))
    assert at("2025-12-31 18:45").isocalendar()[:2] == (2026, 1)
    assert at("2025-12-28 02:30").isocalendar()[:2] == (2025, 52)


@pytest.mark.parametrize("policy", list(HAND_KEPT), ids=lambda p: "daily{}-weekly{}-monthly{}".format(*p))
def test_prune_keeps_exactly_the_policy(history, tmp_path, policy):
    daily, weekly, monthly = policy
    assert expected_kept(history.times, *policy) == {at(s) for s in HAND_KEPT[policy]}
    repo = new_repo(history.repo, tmp_path)
    config = base_config(
        tmp_path,
        repo.config(),
        retention={"daily": daily, "weekly": weekly, "monthly": monthly},
        incomplete_grace_hours=24,
    )

    first = run_script(config, "prune", tmp=tmp_path)
    assert first.returncode == 0, first.stderr
    after = repo.snapshots()
    complete = sorted(utc(s) for s in after if "complete" in s["tags"])
    assert complete == sorted(at(s) for s in HAND_KEPT[policy])
    # The stale incomplete snapshot is gone, the fresh one (a backup maybe still running) stays.
    assert [s["id"] for s in after if "complete" not in s["tags"]] == [history.fresh_incomplete]
    assert history.stale_incomplete not in {s["id"] for s in after}
    assert "forgot 1 incomplete snapshot(s)" in first.stderr
    metrics = metric_values(tmp_path / "textfile" / "keelson_backup_prune.prom")
    assert metrics[("last_run_success", "local")] == 1
    assert metrics[("snapshots", "local")] == len(HAND_KEPT[policy])

    second = run_script(config, "prune", tmp=tmp_path)
    assert second.returncode == 0, second.stderr
    assert sorted(s["id"] for s in repo.snapshots()) == sorted(s["id"] for s in after)
    assert "incomplete" not in second.stderr


@pytest.mark.parametrize("retention", [{"daily": 7, "weekly": 4, "monthly": 3}, {"daily": 1}])
def test_prune_never_removes_the_last_good_snapshot(repo, source, tmp_path, retention):
    now = dt.datetime.now(UTC).replace(microsecond=0)
    run_each([backdated_backup(repo, now - dt.timedelta(days=200), source, "keelson", "complete", "kind:files")])
    # A newer run that failed half-way (no `complete`, past the grace) must not count as a good one.
    run_each([backdated_backup(repo, now - dt.timedelta(days=2), source, "keelson", "kind:files")])
    [good] = [s["id"] for s in repo.snapshots() if "complete" in s["tags"]]
    config = base_config(tmp_path, repo.config(), retention=retention)

    for _ in range(2):
        proc = run_script(config, "prune", tmp=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert repo.snapshot_ids() == [good]


# --------------------------------------------------------------------------- bad configuration


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ({"retention": {"daily": 0, "weekly": 0, "monthly": 0}}, "the retention policy keeps nothing"),
        ({"drop": "password_file"}, "repository local: 'password_file' is missing"),
        ({"drop": "url"}, "repository local: 'url' is missing"),
    ],
    ids=["retention-zero", "no-password-file", "no-url"],
)
@pytest.mark.parametrize("command", ["prune", "backup"])
def test_bad_configuration_fails_before_touching_the_repository(repo, source, tmp_path, command, breakage, message):
    run_each([backdated_backup(repo, dt.datetime(2026, 1, 1, 3, 0, tzinfo=UTC), source, "keelson", "complete")])
    run_each([backdated_backup(repo, dt.datetime(2026, 1, 2, 3, 0, tzinfo=UTC), source, "keelson", "complete")])
    before_ids, before_files = repo.snapshot_ids(), repo.files()
    entry = repo.config()
    entry.pop(breakage.get("drop", ""), None)
    config = base_config(tmp_path, entry, paths=[str(source)])
    config.update({k: v for k, v in breakage.items() if k != "drop"})

    proc = run_script(config, command, tmp=tmp_path)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert proc.stdout == ""
    assert repo.snapshot_ids() == before_ids
    assert repo.files() == before_files
    assert not list((tmp_path / "textfile").iterdir()), "no metrics for a run that never started"


# --------------------------------------------------------------------------- dumps streamed into restic


def test_half_written_dump_is_forgotten(kb, repo, capsys):
    producer = ["sh", "-c", "head -c 3000000 /dev/urandom; kill -9 $$"]
    with pytest.raises(kb.BackupError) as failure:
        kb.stream_into_restic(repo.config(), producer, "postgres-app.dump", ["keelson", "kind:pgdump"], "db1")
    assert "the dump failed" in str(failure.value)
    assert "dump exit -9" in str(failure.value)
    assert "forgot the incomplete snapshot" in capsys.readouterr().err  # restic did write one
    assert repo.snapshots() == []


def test_finished_dump_is_tagged_complete_and_restorable(kb, repo, tmp_path):
    produced = tmp_path / "app.dump"
    produced.write_bytes(os.urandom(100_000))
    tags = ["keelson", "kind:pgdump", "db:app"]
    summary = kb.stream_into_restic(repo.config(), ["cat", str(produced)], "postgres-app.dump", tags, "db1")
    assert summary["total_bytes_processed"] == 100_000
    [snap] = repo.snapshots()
    assert set(snap["tags"]) == {*tags, "complete"}
    assert snap["paths"] == ["/postgres-app.dump"]
    assert snap["hostname"] == "db1"
    assert repo.restic("--no-lock", "dump", snap["id"], "/postgres-app.dump").stdout == produced.read_bytes()


def test_restic_failing_under_a_dump_is_reported(kb, repo, tmp_path):
    repo.password_file.write_text("not the password\n")
    producer = ["head", "-c", "1000000", "/dev/urandom"]  # more than a pipe holds: it dies of SIGPIPE
    with pytest.raises(kb.BackupError) as failure:
        kb.stream_into_restic(repo.config(), producer, "postgres-app.dump", ["keelson"], "db1")
    assert "restic failed" in str(failure.value)  # not "the dump": it only died of SIGPIPE
    assert "wrong password" in str(failure.value)
    repo.password_file.write_text(PASSWORD + "\n")
    assert repo.snapshots() == []


# --------------------------------------------------------------------------- backup runs


def test_wrong_password_fails_and_keeps_the_last_success(repo, source, tmp_path):
    config = base_config(tmp_path, repo.config(), paths=[str(source)])
    prom = tmp_path / "textfile" / "keelson_backup_backup.prom"

    good = run_script(config, "backup", tmp=tmp_path)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["bytes"] > 0
    snapshots = repo.snapshot_ids()
    assert len(snapshots) == 1
    before = metric_values(prom)
    assert before[("last_run_success", "local")] == 1

    repo.password_file.write_text("not the password\n")
    time.sleep(0.01)
    bad = run_script(config, "backup", tmp=tmp_path)
    assert bad.returncode != 0
    assert "wrong password" in bad.stderr
    after = metric_values(prom)
    assert after[("last_run_success", "local")] == 0
    assert after[("last_success_timestamp_seconds", "local")] == before[("last_success_timestamp_seconds", "local")]
    assert after[("last_run_timestamp_seconds", "local")] > before[("last_run_timestamp_seconds", "local")]
    assert 'keelson_backup_last_run_success{task="backup",repository="local"} 0' in prom.read_text()

    repo.password_file.write_text(PASSWORD + "\n")
    assert repo.snapshot_ids() == snapshots


def test_unreachable_second_repository_fails_the_run_but_not_the_primary(repo, source, tmp_path):
    password = tmp_path / "offsite-password"
    password.write_text(PASSWORD + "\n")
    # sftp.command=false: restic starts `false` instead of ssh, so nothing connects anywhere.
    offsite = {
        "name": "offsite",
        "url": "sftp:nobody@127.0.0.1:/nonexistent",
        "password_file": str(password),
        "options": ["-o", "sftp.command=false"],
    }
    config = base_config(tmp_path, repo.config(), offsite, paths=[str(source)])

    proc = run_script(config, "backup", tmp=tmp_path)
    assert proc.returncode == 1
    assert "copy to offsite failed" in proc.stderr
    assert "FAILED: the backup is in local but not in offsite" in proc.stderr
    [snap] = repo.snapshots()
    assert {"keelson", "complete", "kind:files"} <= set(snap["tags"])
    metrics = metric_values(tmp_path / "textfile" / "keelson_backup_backup.prom")
    assert metrics[("last_run_success", "local")] == 1
    assert metrics[("last_run_success", "offsite")] == 0
    assert metrics[("last_success_timestamp_seconds", "offsite")] == 0  # never succeeded
    assert metrics[("snapshots", "local")] == 1


# --------------------------------------------------------------------------- init, copy, metrics


@dataclass
class Pair:
    local: Repo
    offsite: Repo
    first: subprocess.CompletedProcess
    second: subprocess.CompletedProcess
    base: Path


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Pair:
    """Two repositories created by the script's `init` (run twice); keys cheapened afterwards."""
    base = tmp_path_factory.mktemp("pair")
    local = Repo("local", base / "local", base / "local-password")
    offsite = Repo("offsite", base / "offsite", base / "offsite-password")
    local.password_file.write_text(PASSWORD + "\n")
    offsite.password_file.write_text("another " + PASSWORD + "\n")
    config = base_config(base, local.config(), offsite.config())
    with restic_environment(base / "cache"):
        first = run_script(config, "init", tmp=base)
        second = run_script(config, "init", tmp=base)
    for repo in (local, offsite):
        if repo.path.is_dir():
            cheapen_key(repo.path, repo.password_file.read_text().strip())
    return Pair(local, offsite, first, second, base)


def test_init_is_idempotent_and_shares_the_chunker(pair):
    assert pair.first.returncode == 0, pair.first.stderr
    assert json.loads(pair.first.stdout) == {"initialized": ["local", "offsite"]}
    assert pair.second.returncode == 0, pair.second.stderr
    assert json.loads(pair.second.stdout) == {"initialized": []}
    local = json.loads(pair.local.restic("cat", "config").stdout)
    offsite = json.loads(pair.offsite.restic("cat", "config").stdout)
    assert local["chunker_polynomial"] == offsite["chunker_polynomial"]
    assert local["id"] != offsite["id"]


@pytest.fixture(scope="module")
def backed_up(pair, tmp_path_factory) -> Pair:
    """`backup` (files into local, copied to offsite), then `prune`."""
    src = tmp_path_factory.mktemp("pair-source")
    (src / "file").write_text("content\n")
    config = base_config(pair.base, pair.local.config(), pair.offsite.config(), paths=[str(src)])
    with restic_environment(pair.base / "cache"):
        for command in ("backup", "prune"):
            proc = run_script(config, command, tmp=pair.base)
            assert proc.returncode == 0, f"{command}: {proc.stderr}"
    return pair


def test_backup_is_copied_with_the_same_tree(backed_up):
    [local] = backed_up.local.snapshots()
    [offsite] = backed_up.offsite.snapshots()
    assert offsite["tree"] == local["tree"]  # same chunker, same blobs: the copy deduplicates
    assert set(offsite["tags"]) == set(local["tags"])


@pytest.mark.parametrize("task", ["backup", "prune"])
def test_metrics_textfile_format(backed_up, task):
    path = backed_up.base / "textfile" / f"keelson_backup_{task}.prom"
    assert path.stat().st_mode & 0o777 == 0o644  # node-exporter runs as another user
    samples = parse_textfile(path.read_text())
    names = {name for name, _, _ in samples}
    expected = {"last_run_success", "last_run_timestamp_seconds", "last_success_timestamp_seconds"}
    expected |= {"last_duration_seconds", "snapshots"} | ({"last_size_bytes"} if task == "backup" else set())
    assert names == {f"keelson_backup_{n}" for n in expected}
    now = time.time()
    for name, labels, value in samples:
        assert labels.keys() == {"task", "repository"}
        assert labels["task"] == task
        if name == "keelson_backup_snapshots":
            assert value == 1
        assert labels["repository"] in {"local", "offsite"}
        if name == "keelson_backup_last_run_success":
            assert value == 1
        if name.endswith("timestamp_seconds"):
            assert now - 600 < value <= now
    for name in names:
        assert {labels["repository"] for n, labels, _ in samples if n == name} == {"local", "offsite"}
    assert not [line for line in path.read_text().splitlines() if line == ""]


def test_no_series_in_two_textfiles(backed_up):
    seen: dict[tuple[str, tuple], str] = {}
    for path in sorted((backed_up.base / "textfile").glob("*.prom")):
        for name, labels, _ in parse_textfile(path.read_text()):
            key = (name, tuple(sorted(labels.items())))
            assert key not in seen, f"{name}{labels} in {seen.get(key)} and {path.name}"
            seen[key] = path.name


def test_without_textfile_dir_no_metrics_are_written(repo, tmp_path):
    config = base_config(tmp_path, repo.config())
    del config["textfile_dir"]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = run_script(config, "prune", tmp=tmp_path, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize(
    ("stamp", "micro"),
    [
        ("2026-01-17T02:30:00Z", 0),
        ("2026-01-17T02:30:00.1Z", 100000),
        ("2026-01-17T02:30:00.12345+01:00", 123450),
        ("2026-01-17T02:30:00.123456789Z", 123456),
    ],
)
def test_snapshot_time_accepts_restic_fractions(kb, stamp, micro):
    # restic writes RFC 3339 with 0-9 fraction digits (trailing zeros dropped).
    assert kb.snapshot_time({"time": stamp}).microsecond == micro
