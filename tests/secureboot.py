"""Secure Boot key sets and secure-boot profiles for tests: unit tests, and build and VM tests
that sign an image (make a key set, write a profile extending e.g. the stand-in worker)."""

from __future__ import annotations

import os
from pathlib import Path

from builder.build.toolstree import ToolsTree, host_is_new_enough
from builder.keys.keyset import init_keyset
from builder.keys.secureboot import SigningKeys
from tests.conftest import REPO

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hostbuild"
WORKER = REPO / "profiles" / "worker.yaml"


def make_keyset(directory: Path, organisation: str = "Test fleet") -> Path:
    init_keyset(directory, organisation, days=30)
    return directory


def signing_keys(keys: Path, pcr: bool = True) -> SigningKeys:
    """The private keys of a key set, as hostbuild image's --db-key and --pcr-key give them."""
    return SigningKeys(str(keys / "db.key"), str(keys / "pcr-private.pem") if pcr else None)


def secure_profile(
    directory: Path, keys: Path, *, pcr: bool = True, enabled: bool = True,
    extends: Path = WORKER, name: str = "secure",
) -> Path:  # fmt: skip
    """`directory/NAME.yaml` extending `extends`, naming copies of the key set's public files
    in `directory/keys/` by relative path."""
    (directory / "keys").mkdir(parents=True, exist_ok=True)
    for file in ("PK.crt", "KEK.crt", "db.crt", "pcr-public.pem"):
        (directory / "keys" / file).write_bytes((keys / file).read_bytes())
    pcr_line = "  pcr_public_key: keys/pcr-public.pem\n" if pcr else ""
    path = directory / f"{name}.yaml"
    path.write_text(
        f"extends: {extends}\n"
        "secure_boot:\n"
        f"  enabled: {'true' if enabled else 'false'}\n"
        "  pk: keys/PK.crt\n  kek: keys/KEK.crt\n  db: keys/db.crt\n" + pcr_line
    )
    return path


def find_tools_tree() -> ToolsTree | None:
    """The host on Debian 13+ with every tool, else a complete trixie tools tree already in the
    cache (never built by a unit test)."""
    if host_is_new_enough() and not ToolsTree(Path("/")).missing():
        return ToolsTree(Path("/"))
    for root in sorted((CACHE / "tools").glob("trixie-*"), reverse=True):
        tree = ToolsTree(root)
        if root.is_dir() and not tree.missing():
            return tree
    return None
