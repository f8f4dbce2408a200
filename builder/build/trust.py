"""The update repository's root of trust that an image carries: a TUF root.json, checked first.

The node's TUF client starts from this file and follows the repository's signed root rotations
from it; an image without one has no updater to trust anything.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from builder.errors import HostbuildError

ROOT_PATH = "/usr/lib/hostbuild/update/root.json"
ROLES = ("root", "targets", "snapshot", "timestamp")
MAX_BYTES = 512 * 1024  # the node's TUF client refuses bigger root metadata


def load_update_root(path: Path) -> bytes:
    """The bytes of a TUF root metadata file, or a clear error saying what is wrong with it."""
    hint = "pass the root.json of your update repository (hostbuild repo init DIR makes one)"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise HostbuildError(f"{path}: cannot read the update root: {e.strerror}", hint) from e
    if len(data) > MAX_BYTES:
        raise HostbuildError(f"{path}: {len(data)} bytes, over {MAX_BYTES} for root metadata", hint)
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HostbuildError(f"{path}: not TUF root metadata: not JSON ({e})", hint) from e
    problem = _problem(doc)
    if problem:
        raise HostbuildError(f"{path}: not TUF root metadata: {problem}", hint)
    return data


def _problem(doc: Any) -> str | None:
    if not isinstance(doc, dict) or not isinstance(doc.get("signed"), dict):
        return "expected a mapping with 'signed' and 'signatures'"
    signed = doc["signed"]
    if signed.get("_type") != "root":
        return f"signed._type is {signed.get('_type')!r}, expected 'root'"
    if not isinstance(doc.get("signatures"), list) or not doc["signatures"]:
        return "no signatures"
    roles = signed.get("roles")
    if not isinstance(roles, dict) or sorted(roles) != sorted(ROLES):
        return f"signed.roles must name exactly {', '.join(ROLES)}"
    keys = signed.get("keys")
    if not isinstance(keys, dict) or not keys:
        return "signed.keys is empty"
    for name, role in roles.items():
        keyids = role.get("keyids") if isinstance(role, dict) else None
        if not isinstance(keyids, list) or not keyids or not set(keyids) <= set(keys):
            return f"signed.roles.{name}: keyids must be keys listed in signed.keys"
        threshold = role.get("threshold")
        if not isinstance(threshold, int) or not 1 <= threshold <= len(keyids):
            return f"signed.roles.{name}.threshold must be between 1 and its number of keys"
    if not isinstance(signed.get("version"), int) or signed["version"] < 1:
        return "signed.version must be a positive integer"
    return None


def root_digest(data: bytes | None) -> str | None:
    """What the build inputs record of the root of trust (None: the image trusts nothing)."""
    return hashlib.sha256(data).hexdigest() if data is not None else None
