"""Secure Boot key sets and profiles for the unit tests (made once per module: RSA is slow)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.build.toolstree import ToolsTree, host_is_new_enough
from builder.keys.keyset import init_keyset
from tests.conftest import REPO

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hostbuild"


def make_keyset(directory: Path, organisation: str = "Test fleet") -> Path:
    init_keyset(directory, organisation, days=30)
    return directory


def secure_profile(directory: Path, keys: Path, *, pcr: bool = True, enabled: bool = True) -> Path:
    """A worker profile next to `keys/` naming its certificates by relative path."""
    (directory / "keys").mkdir(parents=True, exist_ok=True)
    for name in ("PK.crt", "KEK.crt", "db.crt", "pcr-public.pem"):
        (directory / "keys" / name).write_bytes((keys / name).read_bytes())
    pcr_line = "  pcr_public_key: keys/pcr-public.pem\n" if pcr else ""
    path = directory / "secure.yaml"
    path.write_text(
        f"extends: {REPO / 'profiles' / 'worker.yaml'}\n"
        "secure_boot:\n"
        f"  enabled: {'true' if enabled else 'false'}\n"
        "  pk: keys/PK.crt\n  kek: keys/KEK.crt\n  db: keys/db.crt\n" + pcr_line
    )
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keyset(tmp_path_factory.mktemp("keys") / "fleet")


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keyset(tmp_path_factory.mktemp("keys") / "other", "Other fleet")


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
