"""Filters that check the compose stack's input before anything is deployed.

- ``keelson_image_ref_errors``: image references that do not parse.
- ``keelson_port_clashes``: host ports claimed twice on one host.
- ``keelson_image_pairs``: ``[{ref, id}]`` records for the release.
"""

from __future__ import annotations

import re
from typing import Any

DOCUMENTATION = """
name: keelson_stack
short_description: Input checks for the compose stack (image references, port clashes)
description:
  - C(keelson_image_ref_errors) returns one message per image reference that does not parse.
  - C(keelson_port_clashes) returns one message per host port claimed by more than one service.
"""

# The grammar of docker/distribution's reference package, spelled out:
#   [domain[:port]/]path[:tag][@algo:hex]
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"sha256:[0-9a-f]{64}"
_REFERENCE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)


def parse_image_ref(ref: str) -> dict[str, str | None] | None:
    """Split an image reference into domain, path, tag and digest; None if it does not parse.

    A first component without a dot, a colon or ``localhost`` is a path, not a
    registry (``keelson-lab/app`` is a repository on the default registry).
    """
    if not isinstance(ref, str) or len(ref) > 255:
        return None
    match = _REFERENCE.match(ref)
    if not match:
        return None
    parts = match.groupdict()
    domain = parts["domain"]
    if domain and not ("." in domain or ":" in domain or domain == "localhost" or domain.startswith("[")):
        parts["path"] = f"{domain}/{parts['path']}"
        parts["domain"] = None
    if parts["domain"] is None and parts["path"] != parts["path"].lower():
        return None
    return parts


def keelson_image_ref_errors(refs: Any, variable: str = "image") -> list[str]:
    """One message per reference in ``refs`` (a string, list or dict) that does not parse."""
    if isinstance(refs, dict):
        items = [(f"{variable}.{key}", value) for key, value in refs.items()]
    elif isinstance(refs, (list, tuple)):
        items = [(f"{variable}[{index}]", value) for index, value in enumerate(refs)]
    else:
        items = [(variable, refs)]
    errors = []
    for name, ref in items:
        if not isinstance(ref, str) or not ref:
            errors.append(f"{name}: an image reference is required, got {ref!r}")
        elif parse_image_ref(ref) is None:
            errors.append(
                f"{name}: {ref!r} is not an image reference (expected [registry/]name[:tag][@sha256:<64 hex>])"
            )
    return errors


def keelson_port_clashes(claims: Any) -> list[str]:
    """One message per host port claimed twice.

    ``claims`` is a list of ``{"owner" (or "name"): str, "port": int}`` (what one host
    publishes); the message names both owners so the variable to change is clear.
    """
    seen: dict[int, str] = {}
    errors = []
    for claim in claims or []:
        try:
            port = int(claim["port"])
        except (KeyError, TypeError, ValueError):
            errors.append(f"{claim!r}: a port claim needs an integer 'port'")
            continue
        owner = str(claim.get("owner") or claim.get("name") or "?")
        if not 1 <= port <= 65535:
            errors.append(f"{owner}: port {port} is out of range 1-65535")
        elif port in seen:
            errors.append(f"port {port} is claimed by both {seen[port]} and {owner}")
        else:
            seen[port] = owner
    return errors


def keelson_image_pairs(refs: list[str], ids: list[str] | None = None) -> list[dict[str, str]]:
    """Pair image references with their ids: ``[{"ref", "id"}]``; without ids the reference is the id."""
    refs = list(refs or [])
    ids = list(ids) if ids is not None else refs
    if len(ids) != len(refs):
        raise ValueError(f"{len(refs)} image references but {len(ids)} ids")
    return [{"ref": ref, "id": image_id} for ref, image_id in zip(refs, ids, strict=True)]


def keelson_images_to_load(pairs: list[dict[str, str]], found: list[list[dict[str, Any]]]) -> list[dict[str, str]]:
    """The ``{ref, id}`` pairs a host lacks: absent there, or present with another image id.

    ``found`` is, per pair, the ``images`` list docker_image_info returned on the host.
    """
    if len(found) != len(pairs):
        raise ValueError(f"{len(pairs)} images expected but {len(found)} lookups")
    return [pair for pair, images in zip(pairs, found, strict=True) if not images or images[0].get("Id") != pair["id"]]


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Any]:
        return {
            "keelson_image_ref_errors": keelson_image_ref_errors,
            "keelson_port_clashes": keelson_port_clashes,
            "keelson_image_pairs": keelson_image_pairs,
            "keelson_images_to_load": keelson_images_to_load,
        }
