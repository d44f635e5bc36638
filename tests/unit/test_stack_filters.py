"""Input checks of the compose stack (plugins/filter/keelson_stack.py)."""

from __future__ import annotations

import sys

import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "plugins" / "filter"))
import keelson_stack as ks  # noqa: E402

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    "ref",
    [
        "postgres:16",
        "redis",
        "prom/prometheus:v2.53.0",
        "keelson-lab/app:v1",
        f"postgres:16@{DIGEST}",
        f"postgres@{DIGEST}",
        "registry.example.com:5000/team/app:1.2.3",
        "localhost/app:dev",
        "ghcr.io/keelson/app:2026.11.29-1",
    ],
)
def test_valid_image_references_parse(ref):
    assert ks.parse_image_ref(ref) is not None
    assert ks.keelson_image_ref_errors([ref]) == []


@pytest.mark.parametrize(
    "ref",
    ["", "Postgres:16", "postgres:", "postgres:16@sha256:abc", "post gres", "app:-bad", "/app", "a//b", ":16"],
)
def test_invalid_image_references_are_named(ref):
    errors = ks.keelson_image_ref_errors({"postgres_image": ref}, "images")
    assert len(errors) == 1
    assert errors[0].startswith("images.postgres_image:")


def test_reference_parts_are_split():
    parts = ks.parse_image_ref(f"registry.example.com:5000/team/app:1.2@{DIGEST}")
    assert parts == {"domain": "registry.example.com:5000", "path": "team/app", "tag": "1.2", "digest": DIGEST}
    assert ks.parse_image_ref("keelson-lab/app:v1")["domain"] is None


def test_missing_reference_is_reported():
    assert ks.keelson_image_ref_errors(None, "app_image") == ["app_image: an image reference is required, got None"]


def test_port_clash_names_both_owners():
    errors = ks.keelson_port_clashes(
        [{"owner": "app_slots[0]", "port": 8001}, {"owner": "monitoring_port", "port": 8001}, {"owner": "x", "port": 9}]
    )
    assert errors == ["port 8001 is claimed by both app_slots[0] and monitoring_port"]


def test_port_out_of_range_and_garbage():
    errors = ks.keelson_port_clashes([{"owner": "a", "port": 70000}, {"owner": "b", "port": "http"}])
    assert errors[0] == "a: port 70000 is out of range 1-65535"
    assert "integer 'port'" in errors[1]


def test_image_pairs_default_to_the_reference():
    assert ks.keelson_image_pairs(["a:1"]) == [{"ref": "a:1", "id": "a:1"}]
    assert ks.keelson_image_pairs(["a:1", "b"], ["sha256:1", "sha256:2"])[1] == {"ref": "b", "id": "sha256:2"}
    with pytest.raises(ValueError):
        ks.keelson_image_pairs(["a"], [])


def test_images_to_load_are_the_absent_and_the_different():
    pairs = [{"ref": "a", "id": "sha256:1"}, {"ref": "b", "id": "sha256:2"}, {"ref": "c", "id": "sha256:3"}]
    found = [[{"Id": "sha256:1"}], [], [{"Id": "sha256:old"}]]
    assert [p["ref"] for p in ks.keelson_images_to_load(pairs, found)] == ["b", "c"]
