"""The lab's stand-in service images: their table, contexts and build plumbing (no Docker needed)."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import zipfile
from pathlib import Path

import pytest

from keelson.lab import images, services
from tests.helpers import ROOT

ENTRYPOINT_COPY = re.compile(r"^COPY\s+(\S+)\s+(\S+)", re.MULTILINE)


def _instructions(dockerfile: Path) -> list[str]:
    """Dockerfile instructions without comments and blank lines."""
    lines = (line.strip() for line in dockerfile.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


STAND_INS = [image for image in services.SERVICE_IMAGES if image.context_root is None]


def test_the_table_has_the_images_the_roles_name():
    keys = [image.key for image in services.SERVICE_IMAGES]
    assert keys == [
        "postgres:16",
        "redis:7",
        "haproxy:lts",
        "prometheus:lab",
        "alertmanager:lab",
        "pebble:lab",
        "blackbox:lab",
        "postgres-exporter:lab",
        "redis-exporter:lab",
        "app:v1",
        "app:v2",
        "app:broken",
    ]
    assert len(set(keys)) == len(keys)
    assert all(image.context == ROOT / "app" for image in services.SERVICE_IMAGES if image.name == "app")
    assert services.service_image("postgres:16").alias_tag == "keelson-lab/postgres:16"


@pytest.mark.parametrize("image", STAND_INS, ids=lambda image: image.key)
def test_every_context_starts_from_the_lab_host_image(image: services.ServiceImage):
    dockerfile = image.context / "Dockerfile"
    assert dockerfile.is_file()
    assert _instructions(dockerfile)[:2] == ["ARG BASE", "FROM ${BASE}"]


@pytest.mark.parametrize("image", STAND_INS, ids=lambda image: image.key)
def test_every_image_replaces_the_systemd_command(image: services.ServiceImage):
    found = {line.split()[0] for line in _instructions(image.context / "Dockerfile")}
    assert "ENTRYPOINT" in found or "CMD" in found


@pytest.mark.parametrize("image", STAND_INS, ids=lambda image: image.key)
def test_copied_files_exist_and_scripts_are_executable(image: services.ServiceImage):
    generated = {dest for _, dest in image.wheel.members} if image.wheel else set()
    for source, _ in ENTRYPOINT_COPY.findall((image.context / "Dockerfile").read_text()):
        if any(dest.startswith(source) for dest in generated):
            continue  # unpacked from the wheel at build time
        path = image.context / source
        assert path.is_file(), f"{image.key}: COPY {source} but {path} is missing"
        if path.suffix == ".sh":
            assert os.stat(path).st_mode & stat.S_IXUSR, f"{path} must be executable (its mode is in the hash)"


@pytest.mark.parametrize("image", STAND_INS, ids=lambda image: image.key)
def test_build_args_are_declared_in_the_dockerfile(image: services.ServiceImage):
    declared = {
        line.split()[1].split("=")[0] for line in _instructions(image.context / "Dockerfile") if line.startswith("ARG ")
    }
    assert set(image.buildargs_dict()) <= declared


def test_postgres_pins_major_16_and_a_hashed_wheel():
    image = services.service_image("postgres")
    assert image.buildargs_dict() == {"PG_MAJOR": "16"}
    assert image.wheel is not None
    assert re.fullmatch(r"[0-9a-f]{64}", image.wheel.sha256)
    assert "==" in image.wheel.requirement
    assert image.wheel.filename.startswith(image.wheel.requirement.replace("==", "-") + "-")


def test_unknown_image_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"'mysql'.*postgres:16.*pebble:lab"):
        services.service_image("mysql")


@pytest.mark.parametrize("image", STAND_INS, ids=lambda image: image.key)
def test_context_hash_is_stable_and_depends_on_the_base(image: services.ServiceImage):
    args = {"BASE": "keelson-lab/debian:13-x", **image.buildargs_dict()}
    first = images.context_hash(image.context, "sha256:base", args)
    assert first == images.context_hash(image.context, "sha256:base", args)
    assert first != images.context_hash(image.context, "sha256:other", args)


def test_contexts_hash_differently():
    hashes = {images.context_hash(image.context, "sha256:base") for image in STAND_INS}
    assert len(hashes) == len(STAND_INS)


# --- the wheel payload -------------------------------------------------------------------------------------------


def _wheel(tmp_path: Path, files: dict[str, tuple[bytes, int]]) -> Path:
    path = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, (data, mode) in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFREG | mode) << 16
            archive.writestr(info, data)
    return path


PAYLOAD = services.WheelPayload(
    requirement="demo==1.0",
    filename="demo-1.0-py3-none-any.whl",
    sha256="0" * 64,
    members=(("demo/install/bin/", "tree/bin/"), ("demo.libs/", "tree/lib/")),
    exclude=("*.a",),
)


def test_unpack_keeps_modes_maps_prefixes_and_skips_the_rest(tmp_path):
    wheel = _wheel(
        tmp_path,
        {
            "demo/install/bin/postgres": (b"\x7fELF", 0o755),
            "demo/install/bin/libstatic.a": (b"ar", 0o644),
            "demo.libs/libpq-abc.so.5": (b"lib", 0o755),
            "demo/__init__.py": (b"", 0o644),
        },
    )
    context = tmp_path / "ctx"
    context.mkdir()
    written = services.unpack_wheel(PAYLOAD, wheel, context)
    rel = sorted(p.relative_to(context.resolve()).as_posix() for p in written)
    assert rel == ["tree/bin/postgres", "tree/lib/libpq-abc.so.5"]
    assert stat.S_IMODE(os.stat(context / "tree/bin/postgres").st_mode) == 0o755
    assert (context / "tree/bin/postgres").read_bytes() == b"\x7fELF"


def test_unpack_is_deterministic_so_the_image_hash_is(tmp_path):
    wheel = _wheel(tmp_path, {"demo/install/bin/psql": (b"x", 0o755), "demo.libs/libz.so": (b"z", 0o644)})
    hashes = []
    for name in ("a", "b"):
        context = tmp_path / name
        context.mkdir()
        (context / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\n")
        services.unpack_wheel(PAYLOAD, wheel, context)
        hashes.append(images.context_hash(context, "sha256:base"))
    assert hashes[0] == hashes[1]


def test_unpack_refuses_paths_outside_the_context(tmp_path):
    wheel = _wheel(tmp_path, {"demo/install/bin/../../../../escape": (b"x", 0o644)})
    context = tmp_path / "ctx"
    context.mkdir()
    with pytest.raises(RuntimeError, match="outside the build context"):
        services.unpack_wheel(PAYLOAD, wheel, context)


def test_unpack_refuses_a_wheel_without_the_expected_tree(tmp_path):
    wheel = _wheel(tmp_path, {"other/file": (b"x", 0o644)})
    with pytest.raises(RuntimeError, match="holds none of"):
        services.unpack_wheel(PAYLOAD, wheel, tmp_path)


def test_a_cached_wheel_with_the_pinned_hash_is_used_without_download(tmp_path):
    data = b"wheel bytes"
    payload = services.WheelPayload(
        requirement="demo==1.0",
        filename="demo-1.0-py3-none-any.whl",
        sha256=hashlib.sha256(data).hexdigest(),
        members=(),
    )
    (tmp_path / payload.filename).write_bytes(data)

    def no_download(wheel: services.WheelPayload, dest: Path) -> None:
        raise AssertionError("must not download a cached wheel")

    assert services.ensure_wheel(payload, cache=tmp_path, download=no_download, log=lambda _: None).is_file()


def test_a_downloaded_wheel_with_another_hash_is_refused(tmp_path):
    def fake_download(wheel: services.WheelPayload, dest: Path) -> None:
        (dest / wheel.filename).write_bytes(b"tampered")

    with pytest.raises(RuntimeError, match="expected 0000"):
        services.ensure_wheel(PAYLOAD, cache=tmp_path / "cache", download=fake_download, log=lambda _: None)


def test_a_download_that_fetches_another_file_says_so(tmp_path):
    def fetches_other(wheel: services.WheelPayload, dest: Path) -> None:
        (dest / "demo-1.1-py3-none-any.whl").write_bytes(b"x")

    with pytest.raises(RuntimeError, match="did not fetch demo-1.0"):
        services.ensure_wheel(PAYLOAD, cache=tmp_path, download=fetches_other, log=lambda _: None)


# --- build plumbing ----------------------------------------------------------------------------------------------


def test_build_all_builds_each_image_once_in_table_order_with_its_alias(monkeypatch):
    calls: list[tuple[str, str, str]] = []

    def fake_build(client, name, context, *, release, buildargs, alias, log):
        calls.append((name, alias, release))
        return f"keelson-lab/{name}:{'0' * 16}"

    monkeypatch.setattr(images, "build_service_image", fake_build)
    monkeypatch.setattr(services, "prune_stale", lambda *args: None)
    monkeypatch.setattr(services, "ensure_wheel", lambda *a, **k: pytest.fail("unexpected wheel"))
    result = services.build_all(object(), log=lambda _: None, only=("redis", "pebble:lab"))
    assert result == {"redis:7": "keelson-lab/redis:" + "0" * 16, "pebble:lab": "keelson-lab/pebble:" + "0" * 16}
    assert calls == [("redis", "7", "13"), ("pebble", "lab", "13")]


def test_only_older_hash_tags_of_the_same_image_are_stale():
    image = services.service_image("redis")
    keep = "keelson-lab/redis:" + "a" * 16
    old = "keelson-lab/redis:" + "b" * 16
    # Tags are per image: an old build that lost its alias is stale, the current one is not.
    assert services.stale_tags([old, "keelson-lab/redis-x:" + "c" * 16], image, keep) == [old]
    assert services.stale_tags([keep, "keelson-lab/redis:7"], image, keep) == []


def test_another_variants_current_build_is_not_stale():
    image = services.service_image("app:v1")
    other = ["keelson-lab/app:" + "d" * 16, "keelson-lab/app:v2"]
    assert services.stale_tags(other, image, "keelson-lab/app:" + "e" * 16) == []
