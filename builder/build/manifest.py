"""The build record: inputs, resolved versions and output digests, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from builder.errors import HostbuildError

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
    """The manifest of a build's output directory; HostbuildError if there is none."""
    path = directory / MANIFEST
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise HostbuildError(
            f"no {MANIFEST} in {os.fspath(directory)!r}",
            hint="give the output directory of 'hostbuild image' (it holds manifest.json and "
            "NAME.raw)",
        ) from None
    except (OSError, ValueError) as e:
        raise HostbuildError(f"{path}: not a manifest of 'hostbuild image': {e}") from None
    if not (isinstance(data, dict) and isinstance(data.get("name"), str)):
        raise HostbuildError(f"{path}: not a manifest of 'hostbuild image': it has no name")
    return data
