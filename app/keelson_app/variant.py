"""The build variant (v1, v2, broken): chosen at image build time, read from ``variant.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

VARIANT_FILE = Path(__file__).with_name("variant.json")


@dataclass(frozen=True)
class Variant:
    name: str
    version: str
    ready: bool = True  # False: /readyz always answers 503 (the "broken" release)
    item_note: bool = False  # True from v2 on: items carry an optional note (migration 0002)


def load_variant(path: Path = VARIANT_FILE) -> Variant:
    """Read the variant the image was built with; fail with a hint when there is none."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RuntimeError(f"{path} is missing: build the image with --build-arg APP_VARIANT=v1|v2|broken") from None
    return Variant(
        name=str(data["name"]),
        version=str(data["version"]),
        ready=bool(data.get("ready", True)),
        item_note=bool(data.get("item_note", False)),
    )
