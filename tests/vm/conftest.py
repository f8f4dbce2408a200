"""VM tests: boot under QEMU from the tools tree (built once, cached across runs)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from builder.build.apt import host_mirrors
from builder.build.toolstree import ToolsTree, ensure_tools_tree, host_is_new_enough
from tests.conftest import skip_marked
from tests.secureboot import make_keyset
from tests.vm.image import BuiltImage, SshKey, build_standin_image, make_ssh_key
from tests.vm.updaterepo import UpdateRepo, make_repo


def cache_dir() -> Path:
    """The hostbuild cache, shared with the CLI so repeated runs reuse the tools tree."""
    return Path(os.environ.get("HOSTBUILD_CACHE") or Path.home() / ".cache" / "hostbuild")


def debian_mirror() -> str | None:
    mirrors = host_mirrors()
    return os.environ.get("HOSTBUILD_DEBIAN_MIRROR") or (mirrors.main if mirrors else None)


def _probe() -> str | None:
    if host_is_new_enough():
        missing = ToolsTree(Path("/")).missing()
        return f"host lacks packages: {', '.join(missing)}" if missing else None
    if os.geteuid() != 0:
        return "vm tests need root (mmdebstrap and bwrap build and enter the tools tree)"
    for command, package in (("mmdebstrap", "mmdebstrap"), ("bwrap", "bubblewrap")):
        if shutil.which(command) is None:
            return f"no {command} to build the tools tree (apt-get install -y {package})"
    if debian_mirror() is None:
        return "no Debian mirror in the host's apt sources (set HOSTBUILD_DEBIAN_MIRROR)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip_marked(items, "vm", _probe())


@pytest.fixture(scope="session")
def tools_tree() -> ToolsTree:
    """QEMU, OVMF and the image tools: the host's on trixie, else the cached trixie tree."""
    mirror = debian_mirror()
    assert mirror is not None, "the collection probe skips vm tests without a mirror"
    return ensure_tools_tree(cache_dir(), mirror)


@pytest.fixture(scope="session")
def update_repo(tmp_path_factory: pytest.TempPathFactory) -> UpdateRepo:
    """The update repository the session's image trusts (its keys are made for this run)."""
    return make_repo(tmp_path_factory.mktemp("update-repo"))


@pytest.fixture(scope="session")
def fleet_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's Secure Boot key set (PK, KEK, db and the PCR key pair; keys init)."""
    return make_keyset(tmp_path_factory.mktemp("fleet-keys") / "keys", "hostbuild VM tests")


@pytest.fixture(scope="session")
def image(
    tmp_path_factory: pytest.TempPathFactory, update_repo: UpdateRepo, fleet_keys: Path
) -> BuiltImage:
    """The stand-in worker image, built once per test run (or HOSTBUILD_TEST_IMAGE_DIR), which
    trusts the session's update repository, signed with the session's keys: a signed image
    boots as any other with Secure Boot off; tests/vm/test_secure_boot.py turns it on."""
    work = tmp_path_factory.mktemp("image")
    return build_standin_image(cache_dir(), work, update_repo.root, fleet_keys)


@pytest.fixture(scope="session")
def key(tmp_path_factory: pytest.TempPathFactory) -> SshKey:
    return make_ssh_key(tmp_path_factory.mktemp("key"))
