"""The lab's stand-ins for the upstream service images.

Production pulls ``postgres:16``, ``redis:7``, ``haproxy:lts``… from a
registry; the lab has none, so it builds images with the same interface (see
docs/stack.md, "Images: interface the roles rely on") from Debian 13 packages,
``FROM`` the lab's Debian host image.  Each image has a build context in
``keelson/lab/services/<name>/`` and is tagged twice: with the hash of its
definition (so an unchanged image is never rebuilt) and with a stable alias
(``keelson-lab/postgres:16``) that the roles' lab variables name.

PostgreSQL 16 is not packaged by Debian 13, so its server binaries come from a
pinned PyPI wheel that bundles them.  The wheel is downloaded on the controller
(pip inside containers cannot reach the registry), cached under
``.cache/wheels/`` and unpacked into a staged copy of the build context; the
binaries are never part of the source tree.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import docker
import docker.errors

from keelson.lab import images

SERVICES_DIR = Path(__file__).parent / "services"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
WHEEL_CACHE = PROJECT_ROOT / ".cache" / "wheels"
HASH_TAG = re.compile(r"[0-9a-f]{16}")  # the content-hash tags images.build_service_image gives


@dataclass(frozen=True)
class WheelPayload:
    """Files taken from a pinned PyPI wheel and put into the build context."""

    requirement: str  # what pip downloads, pinned: "pgserver==0.1.4"
    filename: str  # the wheel pip is expected to fetch for `platform` and `python`
    sha256: str  # of that wheel; a mismatch is refused
    # (prefix inside the wheel, directory inside the build context); order matters
    # only when two prefixes put a file in the same place.
    members: tuple[tuple[str, str], ...]
    exclude: tuple[str, ...] = ()  # fnmatch patterns on the file name
    platform: str = "manylinux2014_x86_64"
    python: str = "3.11"

    def cached_path(self, cache: Path = WHEEL_CACHE) -> Path:
        return cache / self.filename


@dataclass(frozen=True)
class ServiceImage:
    """One stand-in image: ``keelson-lab/<name>:<alias>``."""

    name: str
    alias: str
    buildargs: tuple[tuple[str, str], ...] = ()
    wheel: WheelPayload | None = None
    context_name: str = ""  # directory under SERVICES_DIR; defaults to `name`
    context_root: Path | None = None  # a build context elsewhere in the project (the app)
    upstream: str = field(default="", compare=False)  # the production image it stands in for

    @property
    def key(self) -> str:
        return f"{self.name}:{self.alias}"

    @property
    def context(self) -> Path:
        if self.context_root is not None:
            return self.context_root
        return SERVICES_DIR / (self.context_name or self.name)

    @property
    def alias_tag(self) -> str:
        return f"{images.SERVICE_REPO}/{self.name}:{self.alias}"

    def buildargs_dict(self) -> dict[str, str]:
        return dict(self.buildargs)


# PostgreSQL 16.2 server and client binaries (built --without-readline
# --without-icu --without-openssl; they need only glibc and zlib).
PGSERVER_WHEEL = WheelPayload(
    requirement="pgserver==0.1.4",
    filename="pgserver-0.1.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    sha256="d595789b47624a3d963aa9aa6359da9be31beb7e61f1a45541953242068b8813",
    members=(
        ("pgserver/pginstall/bin/", "pginstall/bin/"),
        ("pgserver/pginstall/lib/", "pginstall/lib/"),
        ("pgserver/pginstall/share/", "pginstall/share/"),
        # auditwheel's renamed copies of libpq, libecpg, libpgtypes
        ("pgserver.libs/", "pginstall/lib/"),
    ),
    exclude=("*.a",),
)

SERVICE_IMAGES: tuple[ServiceImage, ...] = (
    ServiceImage("postgres", "16", buildargs=(("PG_MAJOR", "16"),), wheel=PGSERVER_WHEEL, upstream="postgres:16"),
    ServiceImage("redis", "7", upstream="redis:7"),
    ServiceImage("haproxy", "lts", upstream="haproxy:lts"),
    ServiceImage("prometheus", "lab", upstream="prom/prometheus"),
    ServiceImage("alertmanager", "lab", upstream="prom/alertmanager"),
    ServiceImage("pebble", "lab", upstream="ghcr.io/letsencrypt/pebble"),
    ServiceImage("blackbox", "lab", upstream="prom/blackbox-exporter"),
    ServiceImage("postgres-exporter", "lab", upstream="quay.io/prometheuscommunity/postgres-exporter"),
    ServiceImage("redis-exporter", "lab", upstream="oliver006/redis_exporter"),
    # The reference app (app/): v1, v2 (an expand-only migration) and a release that never gets ready.
    *(
        ServiceImage("app", variant, buildargs=(("APP_VARIANT", variant),), context_root=PROJECT_ROOT / "app")
        for variant in ("v1", "v2", "broken")
    ),
)


def service_image(name: str) -> ServiceImage:
    """Look an image up by ``name`` or ``name:alias``."""
    for image in SERVICE_IMAGES:
        if name in (image.name, image.key):
            return image
    known = ", ".join(image.key for image in SERVICE_IMAGES)
    raise ValueError(f"no lab service image {name!r} (known: {known})")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pip_download(wheel: WheelPayload, dest: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--platform",
            wheel.platform,
            "--python-version",
            wheel.python,
            "--dest",
            str(dest),
            wheel.requirement,
        ],
        check=True,
    )


def ensure_wheel(
    wheel: WheelPayload,
    *,
    cache: Path = WHEEL_CACHE,
    download: Callable[[WheelPayload, Path], None] = _pip_download,
    log: Callable[[str], None] = print,
) -> Path:
    """Return the cached wheel, downloading it first if needed; check its hash."""
    path = wheel.cached_path(cache)
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        log(f"downloading {wheel.requirement} into {cache}")
        download(wheel, cache)
        if not path.is_file():
            raise RuntimeError(f"pip did not fetch {wheel.filename} for {wheel.requirement}; update the pin")
    actual = _sha256(path)
    if actual != wheel.sha256:
        raise RuntimeError(
            f"{path} has sha256 {actual}, expected {wheel.sha256}: delete it to download again, "
            "or update the pin in keelson/lab/services.py if the new wheel is trusted"
        )
    return path


def unpack_wheel(wheel: WheelPayload, path: Path, context: Path) -> list[Path]:
    """Copy the wheel's ``members`` into ``context``, keeping their modes."""
    written: list[Path] = []
    root = context.resolve()
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.is_dir() or any(fnmatch.fnmatch(PurePosixPath(info.filename).name, p) for p in wheel.exclude):
                continue
            for prefix, dest in wheel.members:
                if not info.filename.startswith(prefix):
                    continue
                target = (root / dest / info.filename[len(prefix) :]).resolve()
                if not target.is_relative_to(root):
                    raise RuntimeError(f"{path.name}: {info.filename} would land outside the build context")
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                target.chmod((info.external_attr >> 16) & 0o777 or 0o644)
                written.append(target)
                break
    if not written:
        raise RuntimeError(f"{path.name} holds none of {[prefix for prefix, _ in wheel.members]}")
    return written


def build_service(
    client: docker.DockerClient,
    image: ServiceImage | str,
    *,
    release: str = "13",
    log: Callable[[str], None] = print,
) -> str:
    """Build (or reuse) one service image; returns its content-hash tag.

    The image is also tagged with its alias, ``keelson-lab/<name>:<alias>``.
    """
    with images.build_lock():
        return _build_service(client, service_image(image) if isinstance(image, str) else image, release, log)


def _build_service(client: docker.DockerClient, image: ServiceImage, release: str, log: Callable[[str], None]) -> str:
    if not (image.context / "Dockerfile").is_file():
        raise FileNotFoundError(f"{image.context}/Dockerfile is missing")
    with tempfile.TemporaryDirectory(prefix=f"keelson-{image.name}-ctx-") as tmp:
        context = image.context
        if image.wheel is not None:
            # The wheel's files join a copy of the context: never the source tree.
            context = Path(tmp) / image.name
            shutil.copytree(image.context, context)
            unpack_wheel(image.wheel, ensure_wheel(image.wheel, log=log), context)
        tag = images.build_service_image(
            client,
            image.name,
            context,
            release=release,
            buildargs=image.buildargs_dict(),
            alias=image.alias,
            log=log,
        )
    prune_stale(client, image, tag, log)
    return tag


def stale_tags(tags: list[str], image: ServiceImage, keep: str) -> list[str]:
    """Older content-hash tags of ``image`` among ``tags`` (one image's tags).

    An image that still carries an alias is current (for this or another
    variant of the same name, like app:v1 and app:v2) and is kept whole.
    """
    repo = f"{images.SERVICE_REPO}/{image.name}"
    if any(t.rpartition(":")[0] == repo and not HASH_TAG.fullmatch(t.rpartition(":")[2]) for t in tags):
        return []
    return [t for t in tags if t != keep and t.rpartition(":")[0] == repo and HASH_TAG.fullmatch(t.rpartition(":")[2])]


def prune_stale(client: docker.DockerClient, image: ServiceImage, keep: str, log: Callable[[str], None]) -> None:
    """Remove older builds of ``image`` that no container uses any more."""
    for old in client.images.list(name=f"{images.SERVICE_REPO}/{image.name}"):
        for old_tag in stale_tags(old.tags, image, keep):
            try:
                client.images.remove(old_tag)
                log(f"removed stale service image {old_tag}")
            except docker.errors.APIError:
                pass  # still used by a container


def build_all(
    client: docker.DockerClient,
    log: Callable[[str], None] = print,
    *,
    release: str = "13",
    only: tuple[str, ...] = (),
) -> dict[str, str]:
    """Build every service image that is missing, one at a time.

    Returns ``{"postgres:16": "keelson-lab/postgres:<hash>", ...}``.  Images
    whose definition did not change are reused, so a second call builds nothing.
    """
    wanted = [service_image(name) for name in only] if only else list(SERVICE_IMAGES)
    with images.build_lock():
        return {image.key: build_service(client, image, release=release, log=log) for image in wanted}
