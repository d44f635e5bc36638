# Keelson: release directories of compose projects (logic for plugins/modules/keelson_release.py).
# MIT License (see LICENSE)
"""Release directories under ``<root>/<project>``, with a ``current`` pointer.

Layout (docs/stack.md, "Deploy mechanism")::

    <root>/<project>/releases/<release-id>/<files…>, release.json
    <root>/<project>/current -> releases/<release-id>

A release id is ``<UTC yyyymmddTHHMMSSZ>-<first 8 hex of the config hash>``;
the config hash covers every file (name and content) and every image
(reference and id).  The same input twice finds the same release.

Writing is crash-safe: a new release is built in ``releases/.tmp-<id>-<rand>``
(every file written to a temporary name, fsynced and renamed), ``release.json``
is written last, and only then is the directory renamed to its id.  A directory
without ``release.json`` is never listed and is removed by the next
``prepare`` or ``activate``.  ``current`` is swapped by renaming a fresh
symlink over it.

Nothing here talks to Ansible: the module passes a clock, a source of random
tokens and check mode, so pytest drives the same code against a tmp_path.
The code runs on the managed host, so it keeps to the standard library and to
Python 3.8 syntax.
"""

from __future__ import annotations

import datetime
import grp
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil

PROJECT_RE = re.compile(r"^keelson-[a-z0-9-]+$")
RELEASE_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$")
RECORD = "release.json"
TMP_PREFIX = ".tmp-"
DIR_MODE = 0o750
IMAGE_KEYS = ("ref", "id")
RESULTS = ("prepared", "active", "failed", "superseded")
# Keys of release.json that this module owns; ``meta`` may not set them.
RESERVED = frozenset(
    ("id", "project", "config_hash", "images", "files", "created", "activated", "result", "previous", "error")
    + ("failed_at",)
)


class ReleaseError(Exception):
    """A failure with a message an operator can act on."""


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017 (hosts may run Python < 3.11)


def random_token():
    return secrets.token_hex(4)


def _utc(moment):
    if moment.tzinfo is None:
        return moment.replace(tzinfo=datetime.timezone.utc)  # noqa: UP017
    return moment.astimezone(datetime.timezone.utc)  # noqa: UP017


def iso(moment):
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256(data):
    return hashlib.sha256(data).hexdigest()


# -- input checks ----------------------------------------------------------
def check_project(project):
    if not isinstance(project, str) or not PROJECT_RE.match(project):
        raise ReleaseError(
            f"project must match ^keelson-[a-z0-9-]+$ (it is also the directory name), e.g. 'keelson-app-blue'; "
            f"got {project!r}"
        )
    return project


def check_release_id(release):
    if not isinstance(release, str) or not RELEASE_ID_RE.match(release):
        raise ReleaseError(
            f"release must be a release id like '20260509T073525Z-1a2b3c4d' (the release_id that state=prepared "
            f"returned); got {release!r}"
        )
    return release


def check_relname(relname):
    """A plain relative path inside the release directory (sub-directories allowed)."""
    problem = None
    if not isinstance(relname, str) or not relname:
        problem = "it is empty"
    elif "\x00" in relname or "\\" in relname:
        problem = "it contains a NUL byte or a backslash"
    elif relname.startswith("/"):
        problem = "it is absolute"
    elif any(part in ("", ".", "..") for part in relname.split("/")):
        problem = "it has an empty, '.' or '..' component"
    elif relname == RECORD:
        problem = f"{RECORD} is the module's own record"
    if problem:
        raise ReleaseError(
            f"files: {relname!r} is not a usable file name ({problem}); use a relative path such as "
            f"'compose.yaml' or 'conf/haproxy.cfg'"
        )
    return relname


def check_files(files):
    if not isinstance(files, dict) or not files:
        raise ReleaseError("files must be a non-empty dict of relative file name -> content (compose.yaml at least)")
    for relname, content in files.items():
        check_relname(relname)
        if not isinstance(content, str):
            raise ReleaseError(
                f"files: the content of {relname!r} must be text, got {type(content).__name__} "
                f"(render it with the template lookup, or convert it with to_nice_yaml / to_json)"
            )
    dirs = {relname.rsplit("/", 1)[0] for relname in files if "/" in relname}
    parents = set()
    for directory in dirs:
        parts = directory.split("/")
        parents.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    clash = sorted(parents & set(files))
    if clash:
        raise ReleaseError(f"files: {clash[0]!r} is given both as a file and as a directory of other files")
    return dict(files)


def check_images(images):
    out = []
    for index, image in enumerate(images or []):
        if not isinstance(image, dict) or not all(isinstance(image.get(k), str) and image.get(k) for k in IMAGE_KEYS):
            raise ReleaseError(f"images[{index}] must be a dict with non-empty 'ref' and 'id'; got {image!r}")
        out.append({"ref": image["ref"], "id": image["id"]})
    return out


def check_meta(meta):
    if not isinstance(meta, dict):
        raise ReleaseError(f"meta must be a dict (e.g. git_commit, deployed_by); got {type(meta).__name__}")
    reserved = sorted(set(meta) & RESERVED)
    if reserved:
        raise ReleaseError(f"meta may not set {', '.join(reserved)}: the module records those itself")
    return dict(meta)


def check_keep(keep):
    if not isinstance(keep, int) or keep < 2:
        raise ReleaseError(f"keep must be at least 2 (current and the previous release are always kept); got {keep!r}")
    return keep


def parse_mode(value):
    """An octal file mode from 0o640, 416, '0640' or '640'."""
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    elif isinstance(value, str) and re.match(r"^0?[0-7]{3,4}$", value.strip()):
        mode = int(value.strip(), 8)
    else:
        raise ReleaseError(
            f"file_mode must be an octal mode such as '0640' (symbolic modes are not supported); got {value!r}"
        )
    if not 0 <= mode <= 0o7777:
        raise ReleaseError(f"file_mode {value!r} is out of range")
    return mode


def resolve_uid(owner):
    if owner is None or owner == "":
        return None
    if str(owner).isdigit():
        return int(owner)
    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise ReleaseError(
            f"owner {owner!r} does not exist on this host (create the user first, or give a uid)"
        ) from None


def resolve_gid(group):
    if group is None or group == "":
        return None
    if str(group).isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ReleaseError(f"group {group!r} does not exist on this host (create it first, or give a gid)") from None


# -- identity ----------------------------------------------------------------
def config_hash(files, images):
    """sha256 over the sorted (name, content) pairs and the sorted (ref, id) pairs."""
    payload = {
        "files": sorted([name, content] for name, content in files.items()),
        "images": sorted([image["ref"], image["id"]] for image in images),
    }
    return sha256(json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def make_release_id(moment, digest):
    return _utc(moment).strftime("%Y%m%dT%H%M%SZ") + "-" + digest[:8]


def _real_parents(base, relname):
    """True when every directory of ``relname`` below ``base`` is a real directory (no symlink)."""
    parts = relname.split("/")[:-1]
    for i in range(len(parts)):
        path = os.path.join(base, *parts[: i + 1])
        if os.path.islink(path) or not os.path.isdir(path):
            return False
    return True


def _newest_first(records):
    return sorted(records, key=lambda r: (str(r.get("created") or ""), r["id"]), reverse=True)


# -- the releases of one project ---------------------------------------------
class Releases:
    """The release directories of one project.

    Every operation returns the dict the module hands to ``exit_json``.  In
    check mode the same computation runs and nothing is written.
    """

    def __init__(
        self,
        project,
        root="/opt/keelson",
        *,
        file_mode=0o640,
        uid=None,
        gid=None,
        check_mode=False,
        clock=utc_now,
        token=random_token,
    ):
        self.project = check_project(project)
        self.root = root
        self.project_dir = os.path.join(root, project)
        self.releases_dir = os.path.join(self.project_dir, "releases")
        self.current_link = os.path.join(self.project_dir, "current")
        self.file_mode = file_mode
        self.uid = uid
        self.gid = gid
        self.check_mode = check_mode
        self.clock = clock
        self.token = token
        self.warnings = []

    # -- reading ----------------------------------------------------------
    def release_dir(self, release_id):
        return os.path.join(self.releases_dir, release_id)

    def current(self):
        """The id ``current`` points at, or None when there is no ``current`` yet."""
        link = self.current_link
        if not os.path.lexists(link):
            return None
        if not os.path.islink(link):
            raise ReleaseError(
                f"{link} is not a symlink (something other than keelson_release wrote it); "
                f"move it away and run the deploy again"
            )
        target = os.readlink(link)
        absolute = os.path.normpath(os.path.join(self.project_dir, target))
        if os.path.dirname(absolute) != os.path.normpath(self.releases_dir):
            raise ReleaseError(
                f"{link} points at {target}, outside {self.releases_dir}; point it at a release or remove it"
            )
        return os.path.basename(absolute)

    def _scan(self):
        """(complete releases by id, names of incomplete entries that may be removed)."""
        try:
            names = sorted(os.listdir(self.releases_dir))
        except FileNotFoundError:
            return {}, []
        records, incomplete = {}, []
        for name in names:
            path = os.path.join(self.releases_dir, name)
            if name.startswith(TMP_PREFIX):
                incomplete.append(name)
                continue
            if os.path.islink(path) or not os.path.isdir(path):
                continue
            if not RELEASE_ID_RE.match(name):
                self.warnings.append(f"{path} is not a release directory; it was left alone")
                continue
            record_path = os.path.join(path, RECORD)
            if not os.path.lexists(record_path):
                incomplete.append(name)
                continue
            try:
                with open(record_path, encoding="utf-8") as handle:
                    record = json.load(handle)
            except (OSError, ValueError) as exc:
                self.warnings.append(f"{record_path} cannot be read ({exc}); the release is ignored and kept")
                continue
            if not isinstance(record, dict) or record.get("id") != name or not record.get("config_hash"):
                self.warnings.append(f"{record_path} does not describe release {name}; the release is ignored and kept")
                continue
            records[name] = record
        return records, incomplete

    def _available(self, records):
        if not records:
            return "there are no releases yet (run state=prepared first)"
        return "available, newest first: " + ", ".join(r["id"] for r in _newest_first(records.values()))

    def _missing(self, release_id, records, state):
        return ReleaseError(
            f"{self.project}: release {release_id} does not exist in {self.releases_dir}, so it cannot be "
            f"marked {state}; {self._available(records)}"
        )

    # -- writing primitives -------------------------------------------------
    def _chown(self, path, fd=None, follow=True):
        if self.uid is None and self.gid is None:
            return
        uid = -1 if self.uid is None else self.uid
        gid = -1 if self.gid is None else self.gid
        if fd is not None:
            os.fchown(fd, uid, gid)
        elif follow:
            os.chown(path, uid, gid)
        else:
            os.lchown(path, uid, gid)

    def _fsync_dir(self, path):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _mkdir(self, path):
        os.mkdir(path, DIR_MODE)
        os.chmod(path, DIR_MODE)  # not narrowed by the umask
        self._chown(path)

    def _ensure_base(self):
        """Create ``<root>/<project>/releases``; symlinks to other disks are followed, not replaced."""
        if not os.path.isdir(self.root):
            os.makedirs(self.root, 0o755)
        for path in (self.project_dir, self.releases_dir):
            if os.path.lexists(path) and not os.path.isdir(path):
                raise ReleaseError(f"{path} exists and is not a directory; move it away and run the deploy again")
            if not os.path.isdir(path):
                self._mkdir(path)

    def _ensure_parents(self, base, relname):
        """Create the directories of ``relname`` inside a release; a file or symlink in the way is replaced."""
        parts = relname.split("/")[:-1]
        for i in range(len(parts)):
            path = os.path.join(base, *parts[: i + 1])
            if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
                os.unlink(path)
            if not os.path.isdir(path):
                self._mkdir(path)

    def _write(self, path, data, mode=None, keep_owner=False):
        """Write ``data`` atomically: temporary file in the same directory, fsync, rename."""
        directory = os.path.dirname(path)
        if mode is None:
            mode = self.file_mode
        tmp = os.path.join(directory, f"{TMP_PREFIX}{os.path.basename(path)}-{self.token()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fchmod(handle.fileno(), mode)
                if keep_owner and os.path.exists(path):
                    stat = os.stat(path)
                    os.fchown(handle.fileno(), stat.st_uid, stat.st_gid)
                else:
                    self._chown(tmp, fd=handle.fileno())
                os.fsync(handle.fileno())
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            raise
        self._fsync_dir(directory)

    def _write_record(self, record):
        path = os.path.join(self.release_dir(record["id"]), RECORD)
        data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8")
        mode = os.stat(path).st_mode & 0o7777 if os.path.exists(path) else None
        self._write(path, data, mode=mode, keep_owner=mode is not None)

    def _remove(self, path):
        """Remove a file, symlink or directory tree; a tree first leaves the listing by a rename."""
        if os.path.isdir(path) and not os.path.islink(path):
            parent = os.path.dirname(path)
            doomed = os.path.join(parent, f"{TMP_PREFIX}remove-{os.path.basename(path)}-{self.token()}")
            os.rename(path, doomed)
            shutil.rmtree(doomed)
        elif os.path.lexists(path):
            os.unlink(path)

    def _cleanup(self, names):
        for name in names:
            self._remove(os.path.join(self.releases_dir, name))

    # -- drift of an existing release ---------------------------------------
    def _drift(self, release_dir, files):
        """Relative names that must be rewritten or removed for the directory to match ``files``."""
        rewrite, remove = [], []
        for relname in sorted(files):
            path = os.path.join(release_dir, relname)
            want = files[relname].encode("utf-8")
            try:
                stat = os.lstat(path)
            except FileNotFoundError:
                rewrite.append(relname)
                continue
            if not os.path.isfile(path) or os.path.islink(path) or not _real_parents(release_dir, relname):
                rewrite.append(relname)
                continue
            with open(path, "rb") as handle:
                same = handle.read() == want
            owner_ok = (self.uid is None or stat.st_uid == self.uid) and (self.gid is None or stat.st_gid == self.gid)
            if not same or stat.st_mode & 0o7777 != self.file_mode or not owner_ok:
                rewrite.append(relname)
        wanted_dirs = set()
        for relname in files:
            parts = relname.split("/")[:-1]
            wanted_dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        for top, dirnames, filenames in os.walk(release_dir):
            reltop = os.path.relpath(top, release_dir)
            prefix = "" if reltop == "." else reltop + "/"
            for dirname in list(dirnames):
                relname = prefix + dirname
                if os.path.islink(os.path.join(top, dirname)):
                    dirnames.remove(dirname)
                    if relname not in files:
                        remove.append(relname)
                elif relname not in wanted_dirs:
                    dirnames.remove(dirname)
                    if relname not in files:  # a directory where a file belongs is rewritten instead
                        remove.append(relname)
            for filename in filenames:
                relname = prefix + filename
                if relname not in files and relname != RECORD:
                    remove.append(relname)
        return rewrite, sorted(remove)

    def _dir_owner_drift(self, release_dir, files):
        """Directories of a release (and the project's own) whose owner or group is not the one asked for."""
        if self.uid is None and self.gid is None:
            return []
        dirs = {self.project_dir, self.releases_dir, release_dir}
        for relname in files:
            parts = relname.split("/")[:-1]
            dirs.update(os.path.join(release_dir, *parts[: i + 1]) for i in range(len(parts)))
        drift = []
        for path in sorted(dirs):
            try:
                stat = os.lstat(path)
            except FileNotFoundError:
                continue
            if (self.uid is not None and stat.st_uid != self.uid) or (self.gid is not None and stat.st_gid != self.gid):
                drift.append(path)
        return drift

    def _repair(self, release_dir, files, rewrite, remove):
        for relname in remove:
            self._remove(os.path.join(release_dir, relname))
        for relname in rewrite:
            self._ensure_parents(release_dir, relname)
            self._write(os.path.join(release_dir, relname), files[relname].encode("utf-8"))

    # -- the four states ------------------------------------------------------
    def prepare(self, files, images=None, meta=None):
        """Find or create the release for this input.

        A release with the same config hash is reused whatever its result (a
        ``failed`` one is retried in place).  If its files differ from the
        input (edited, removed, added by hand, wrong mode or owner), they are
        made to match again and reported in ``repaired`` with changed=true.
        """
        files = check_files(files)
        images = check_images(images)
        meta = check_meta(meta or {})
        digest = config_hash(files, images)
        records, incomplete = self._scan()
        current = self.current()
        stale = [name for name in incomplete if name != current]
        matches = [r for r in records.values() if r.get("config_hash") == digest]
        if matches:
            chosen = next((r for r in matches if r["id"] == current), None) or _newest_first(matches)[0]
            release_id = chosen["id"]
            release_dir = self.release_dir(release_id)
            rewrite, remove = self._drift(release_dir, files)
            owners = self._dir_owner_drift(release_dir, files)
            if not self.check_mode:
                self._cleanup(stale)
                self._repair(release_dir, files, rewrite, remove)
                for path in owners:
                    self._chown(path)
            return {
                "changed": bool(stale or rewrite or remove or owners),
                "release_id": release_id,
                "release_dir": release_dir,
                "config_hash": digest,
                "new": False,
                "current": current,
                "result": chosen.get("result"),
                "repaired": sorted(rewrite + remove),
                "cleaned": stale,
            }

        now = self.clock()
        release_id = make_release_id(now, digest)
        if release_id in records:
            raise ReleaseError(
                f"{self.project}: release {release_id} already exists with another config hash "
                f"({records[release_id].get('config_hash')}); run the deploy again in a second"
            )
        if release_id == current and release_id in incomplete:
            raise ReleaseError(f"{self.current_link} points at the incomplete release {release_id}; remove it by hand")
        record = {"git_commit": None, "deployed_by": None}
        record.update(meta)
        record.update(
            {
                "id": release_id,
                "project": self.project,
                "config_hash": digest,
                "images": images,
                "files": {name: sha256(content.encode("utf-8")) for name, content in sorted(files.items())},
                "created": iso(now),
                "activated": None,
                "result": "prepared",
                "previous": None,
                "error": None,
            }
        )
        if not self.check_mode:
            self._cleanup(stale)
            self._create(release_id, files, record)
        return {
            "changed": True,
            "release_id": release_id,
            "release_dir": self.release_dir(release_id),
            "config_hash": digest,
            "new": True,
            "current": current,
            "result": "prepared",
            "repaired": [],
            "cleaned": stale,
        }

    def _create(self, release_id, files, record):
        self._ensure_base()
        building = os.path.join(self.releases_dir, f"{TMP_PREFIX}{release_id}-{self.token()}")
        self._mkdir(building)
        for relname in sorted(files):
            self._ensure_parents(building, relname)
            self._write(os.path.join(building, relname), files[relname].encode("utf-8"))
        # release.json last: without it the directory is not a release.
        data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8")
        self._write(os.path.join(building, RECORD), data)
        self._fsync_dir(building)
        os.rename(building, self.release_dir(release_id))
        self._fsync_dir(self.releases_dir)

    def activate(self, release_id, keep=5, meta=None):
        """Point ``current`` at ``release_id``, record it, prune beyond ``keep``.

        ``keep`` counts every release left, the current and the previous one
        included (they are never pruned); the rest are the newest by creation.
        ``meta`` (e.g. the upgrade that activates it) is recorded with the
        activation, so a reused release carries the latest upgrade's keys.
        """
        check_release_id(release_id)
        check_keep(keep)
        meta = check_meta(meta or {})
        records, incomplete = self._scan()
        current = self.current()
        now = iso(self.clock())
        if release_id not in records:
            if not self.check_mode:
                raise self._missing(release_id, records, "active")
            # Check mode on a first run: state=prepared created nothing.
            self.warnings.append(f"release {release_id} does not exist yet; assuming a prepare step created it")
            records[release_id] = {"id": release_id, "created": now, "result": "prepared"}
        target = records[release_id]
        moved = current != release_id
        previous = current if moved else target.get("previous")

        updates = {}
        wanted = dict(target)
        if moved:
            wanted.update(meta, result="active", activated=now, previous=current)
        elif target.get("result") != "active":
            wanted.update(meta, result="active", activated=now)
        if wanted != target:
            updates[release_id] = wanted

        protected = [release_id] + ([previous] if previous in records and previous != release_id else [])
        others = [r["id"] for r in _newest_first(records.values()) if r["id"] not in protected]
        pruned = others[keep - len(protected) :]
        for other_id, record in records.items():
            if other_id != release_id and other_id not in pruned and record.get("result") == "active":
                updates[other_id] = dict(record, result="superseded")
        stale = [name for name in incomplete if name not in (current, release_id)]

        if not self.check_mode:
            if release_id in updates:
                self._write_record(updates.pop(release_id))
            if moved:
                self._swap_current(release_id)
            for record in updates.values():
                self._write_record(record)
            for name in pruned:
                self._remove(self.release_dir(name))
            self._cleanup(stale)
            self._fsync_dir(self.releases_dir)
        return {
            "changed": bool(moved or updates or pruned or stale),
            "release_id": release_id,
            "release_dir": self.release_dir(release_id),
            "current": release_id,
            "previous": previous,
            "pruned": pruned,
            "cleaned": stale,
        }

    def _swap_current(self, release_id):
        for name in os.listdir(self.project_dir):
            if name.startswith("current.tmp-"):
                self._remove(os.path.join(self.project_dir, name))
        tmp = os.path.join(self.project_dir, f"current.tmp-{self.token()}")
        os.symlink(os.path.join("releases", release_id), tmp)
        self._chown(tmp, follow=False)
        os.replace(tmp, self.current_link)
        self._fsync_dir(self.project_dir)

    def fail(self, release_id, error=None, meta=None):
        """Record ``result: failed``, ``error`` and ``meta``; ``current`` is never touched."""
        check_release_id(release_id)
        meta = check_meta(meta or {})
        records, _incomplete = self._scan()
        current = self.current()
        if release_id not in records:
            if not self.check_mode:
                raise self._missing(release_id, records, "failed")
            self.warnings.append(f"release {release_id} does not exist yet; assuming a prepare step created it")
            records[release_id] = {"id": release_id}
        record = records[release_id]
        wanted = dict(record, **meta)
        wanted.update(result="failed", error=error)
        if record.get("result") != "failed" or not record.get("failed_at"):
            wanted["failed_at"] = iso(self.clock())
        if release_id == current:
            self.warnings.append(f"release {release_id} is current; it is marked failed but current was not moved")
        changed = wanted != record
        if changed and not self.check_mode:
            self._write_record(wanted)
        return {
            "changed": changed,
            "release_id": release_id,
            "release_dir": self.release_dir(release_id),
            "current": current,
            "result": "failed",
        }

    def list(self):
        records, _incomplete = self._scan()
        current = self.current()
        releases = [
            {
                "id": r["id"],
                "created": r.get("created"),
                "activated": r.get("activated"),
                "result": r.get("result"),
                "images": r.get("images") or [],
                "config_hash": r.get("config_hash"),
                "previous": r.get("previous"),
                "error": r.get("error"),
                "current": r["id"] == current,
                "meta": {key: value for key, value in r.items() if key not in RESERVED},
            }
            for r in _newest_first(records.values())
        ]
        return {"changed": False, "releases": releases, "current": current}
