"""Build the lab's images without any registry.

Host images are Debian root filesystems made by ``debootstrap`` and turned
into images with ``docker import``.  Service images are built ``FROM`` a host
image with ``apt-get``.  Every image is tagged with a hash of everything that
defines it, so an unchanged definition is never rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import docker
import docker.errors

HOSTIMAGE_DIR = Path(__file__).parent / "hostimage"
IMAGE_REPO = "keelson-lab/debian"
SERVICE_REPO = "keelson-lab"
LABEL_HASH = "io.keelson.image-hash"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# What a minimal Debian server looks like before Keelson touches it.
# python3-apt is there because Debian's "standard" install has it (through
# apt-listchanges) and Ansible's apt module needs it for check mode.
HOST_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-apt",
    "sudo",
    "iproute2",
    "openssh-server",
    "ca-certificates",
)


@dataclass(frozen=True)
class HostImage:
    """The definition of one host image; its hash names the image."""

    release: str  # Debian major version, e.g. "12"
    suite: str  # debootstrap suite, e.g. "bookworm"
    mirror: str = DEFAULT_MIRROR
    packages: tuple[str, ...] = HOST_PACKAGES
    # Dockerfile instructions applied by `docker import`.
    changes: tuple[str, ...] = ('CMD ["/lib/systemd/systemd"]', "ENV container=docker")

    def definition_hash(self) -> str:
        digest = hashlib.sha256()
        digest.update(json.dumps(asdict(self), sort_keys=True).encode())
        for path in sorted(_files_under(HOSTIMAGE_DIR)):
            digest.update(str(path.relative_to(HOSTIMAGE_DIR)).encode())
            digest.update(path.read_bytes())
        return digest.hexdigest()[:16]

    @property
    def tag(self) -> str:
        return f"{IMAGE_REPO}:{self.release}-{self.definition_hash()}"

    @property
    def alias(self) -> str:
        """A stable name (used by Molecule) that points at the newest build."""
        return f"{IMAGE_REPO}:{self.release}"


HOST_IMAGES: dict[str, HostImage] = {
    "12": HostImage(release="12", suite="bookworm"),
    "13": HostImage(release="13", suite="trixie"),
}


def host_image(release: str) -> HostImage:
    try:
        return HOST_IMAGES[str(release)]
    except KeyError:
        known = ", ".join(sorted(HOST_IMAGES))
        raise ValueError(f"no lab host image for Debian {release!r} (known: {known})") from None


def _files_under(root: Path) -> Iterable[Path]:
    return (p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def _customize_rootfs(rootfs: Path, image: HostImage) -> None:
    subprocess.run(
        ["sh", str(HOSTIMAGE_DIR / "customize.sh"), str(rootfs), image.suite, image.mirror.rstrip("/")],
        check=True,
    )


_lock_depth = 0


@contextlib.contextmanager
def build_lock():
    """One image build at a time on this machine (test workers run side by side).

    Re-entrant within a process: a service build builds its base image."""
    global _lock_depth  # noqa: PLW0603 (per-process re-entrancy counter)
    if _lock_depth:
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
        return
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "keelson"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "image-build.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _lock_depth = 1
        try:
            yield
        finally:
            _lock_depth = 0


def build_host_image(
    client: docker.DockerClient,
    image: HostImage,
    *,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> str:
    """Build (or reuse) the host image; returns its content-hash tag."""
    with build_lock():
        return _build_host_image(client, image, force=force, log=log)


def _build_host_image(
    client: docker.DockerClient,
    image: HostImage,
    *,
    force: bool,
    log: Callable[[str], None],
) -> str:
    tag = image.tag
    if not force and image_exists(client, tag):
        log(f"host image {tag} is cached")
        client.images.get(tag).tag(image.alias)
        return tag
    for tool in ("debootstrap", "chroot", "tar"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed: run scripts/prereqs.sh as root first")
    log(f"building host image {tag} (debootstrap {image.suite}, a few minutes)")
    with tempfile.TemporaryDirectory(prefix="keelson-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(image.packages),
                image.suite,
                str(rootfs),
                image.mirror,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        _customize_rootfs(rootfs, image)
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
        repo, _, tagname = tag.partition(":")
        changes = [*image.changes, f"LABEL {LABEL_HASH}={image.definition_hash()}"]
        client.api.import_image(src=str(tarball), repository=repo, tag=tagname, changes=changes)
    client.images.get(tag).tag(image.alias)
    log(f"host image {tag} built")
    _prune_stale(client, image, tag, log)
    return tag


def _prune_stale(client: docker.DockerClient, image: HostImage, keep: str, log: Callable[[str], None]) -> None:
    """Remove older builds of the same release that no container uses any more."""
    prefix = f"{IMAGE_REPO}:{image.release}-"
    for old in client.images.list(name=IMAGE_REPO):
        stale = [t for t in old.tags if t.startswith(prefix) and t != keep]
        for old_tag in stale:
            try:
                client.images.remove(old_tag)
                log(f"removed stale host image {old_tag}")
            except docker.errors.APIError:
                pass  # still used by a container; `keelson lab down` frees it


def context_hash(context: Path, base_id: str, buildargs: dict[str, str] | None = None) -> str:
    """Hash a build context, the base image it starts from and its build args."""
    digest = hashlib.sha256(base_id.encode())
    digest.update(json.dumps(buildargs or {}, sort_keys=True).encode())
    for path in sorted(_files_under(context)):
        rel = path.relative_to(context)
        digest.update(str(rel).encode())
        digest.update(oct(os.stat(path).st_mode & 0o777).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_service_image(
    client: docker.DockerClient,
    name: str,
    context: Path,
    *,
    release: str = "13",
    buildargs: dict[str, str] | None = None,
    alias: str = "latest",
    log: Callable[[str], None] = print,
) -> str:
    """Build a service image (app, postgres, haproxy…) on top of a host image.

    The Dockerfile in ``context`` starts with ``ARG BASE`` / ``FROM ${BASE}``;
    the base is the lab's Debian image, so no registry is needed.  Returns the
    content-hash tag, which is also tagged ``<name>:<alias>`` (``latest`` unless
    told otherwise, e.g. ``keelson-lab/postgres:16``).
    """
    base = build_host_image(client, host_image(release), log=log)
    args = {"BASE": base, **(buildargs or {})}
    digest = context_hash(context, client.images.get(base).id, args)
    tag = f"{SERVICE_REPO}/{name}:{digest}"
    if image_exists(client, tag):
        log(f"service image {tag} is cached")
    else:
        log(f"building service image {tag}")
        client.images.build(
            path=str(context),
            tag=tag,
            buildargs=args,
            labels={LABEL_HASH: digest},
            pull=False,
            rm=True,
            forcerm=True,
        )
    client.images.get(tag).tag(f"{SERVICE_REPO}/{name}", alias)
    return tag
