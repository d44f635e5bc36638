"""The lab's image definitions: hashing decides when an image is rebuilt."""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from keelson.lab import images


def test_definition_hash_is_stable_for_the_same_definition():
    assert images.host_image("12").definition_hash() == images.host_image("12").definition_hash()


def test_releases_get_different_images():
    assert images.host_image("12").tag != images.host_image("13").tag
    assert images.host_image("12").alias == "keelson-lab/debian:12"


def test_any_definition_change_changes_the_tag():
    base = images.host_image("13")
    variants = [
        dataclasses.replace(base, packages=(*base.packages, "vim-tiny")),
        dataclasses.replace(base, mirror="http://mirror.invalid/debian"),
        dataclasses.replace(base, changes=('CMD ["/sbin/init"]',)),
    ]
    tags = {v.tag for v in variants}
    assert base.tag not in tags
    assert len(tags) == len(variants)


def test_hash_covers_the_customization_files():
    files = {p.relative_to(images.HOSTIMAGE_DIR).as_posix() for p in images._files_under(images.HOSTIMAGE_DIR)}
    assert "customize.sh" in files
    assert "rootfs/etc/systemd/system/ssh.service.d/keelson-lab-hostkeys.conf" in files


def test_unknown_release_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"Debian '11'.*12, 13"):
        images.host_image("11")


def _context(tmp_path: Path, text: str = "FROM x\n") -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(text)
    return ctx


def test_context_hash_follows_content_base_and_args(tmp_path):
    ctx = _context(tmp_path)
    first = images.context_hash(ctx, "sha256:base1")
    assert first == images.context_hash(ctx, "sha256:base1")
    assert first != images.context_hash(ctx, "sha256:base2")
    assert first != images.context_hash(ctx, "sha256:base1", {"VARIANT": "v2"})
    (ctx / "Dockerfile").write_text("FROM y\n")
    assert first != images.context_hash(ctx, "sha256:base1")


def test_context_hash_sees_mode_changes(tmp_path):
    ctx = _context(tmp_path)
    (ctx / "entry.sh").write_text("#!/bin/sh\n")
    before = images.context_hash(ctx, "b")
    (ctx / "entry.sh").chmod(0o755)
    assert images.context_hash(ctx, "b") != before


def _hold_build_lock(ready, release):
    with images.build_lock():
        ready.set()
        release.wait(10)


def test_the_build_lock_is_reentrant_and_excludes_other_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold_build_lock, args=(ready, release))
    other.start()
    assert ready.wait(10)
    threading.Timer(0.5, release.set).start()
    started = time.monotonic()
    with images.build_lock(), images.build_lock():  # nested in one process: no self-deadlock
        waited = time.monotonic() - started
    other.join(10)
    assert waited >= 0.4, "the lock must wait until the other process lets go"
