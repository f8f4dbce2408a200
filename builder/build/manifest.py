"""The build record: inputs, resolved versions and output digests, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    """Write `manifest.json` in `directory` through a temporary file and a rename."""
    path = directory / MANIFEST
    tmp = directory / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"schema": SCHEMA_VERSION, **manifest}, indent=2) + "\n")
    tmp.replace(path)
    return path


def read_manifest(directory: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((directory / MANIFEST).read_text())
    return data
