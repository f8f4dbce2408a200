"""Atomic in-place updates on a booted node: v1 -> v2 (slot B) -> v3 (slot A).

A version that fails its health gate, rolled back by the node itself, is the fleet rollout's v3
(tests/vm/test_fleet_rollout.py): the same updater, there behind the reboot lock too.

One disk goes through every boot (QEMU restarts keep it), as a node's disk would. The versions
after v1 are test versions derived from the session's image (tests/vm/versions.py), put into the
session's update repository with `hostbuild repo add` and served on 127.0.0.1, which the guest
reaches at http://10.0.2.100/ (its only way out of its restricted network).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.build.toolstree import ToolsTree
from tests.vm.image import BuiltImage, SshKey
from tests.vm.updatenode import (
    entries,
    node_on,
    reboot,
    running,
    update_json,
)
from tests.vm.updaterepo import UpdateRepo
from tests.vm.versions import MARKER, derive_version

pytestmark = pytest.mark.vm
V2, V3 = "0.1.1-1", "0.1.2-1"


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("update-disk") / "node.qcow2"


@pytest.mark.destructive
def test_updates_alternate_slots_and_keep_the_data_partition(
    image: BuiltImage, key: SshKey, tools_tree: ToolsTree, update_repo: UpdateRepo,
    disk: Path, tmp_path: Path,
) -> None:  # fmt: skip
    v1 = image.manifest["version"]
    profile = image.manifest["profile"]
    derived = tmp_path / "versions"
    v2 = derive_version(image, tools_tree, derived / "v2", V2, upgrade_from=v1)
    update_repo.add(v2.output)
    with node_on(image, tools_tree, tmp_path / "boot1", disk, key, update_repo.served) as node:
        assert running(node)[0] == v1
        machine_id = node.sh("cat /etc/machine-id").strip()
        node.sh("echo kept > /var/lib/hostbuild/update-test && sync")
        node.wait_for("systemctl is-active systemd-bless-boot.service")
        check = update_json(node, "check")
        assert check["chosen"] == V2, check
        applied = update_json(node, "apply")
        assert (applied["result"], applied["version"]) == ("staged", V2), applied
        assert f"{profile}_{V2}+3.efi" in entries(node)
        slot_a = running(node)[1]
        reboot(node)
        version, slot = running(node)
        assert version == V2 and slot != slot_a  # v2 runs from the other slot
        assert node.sh(f"cat {MARKER}").strip() == V2
        assert node.sh("cat /var/lib/hostbuild/update-test").strip() == "kept"
        assert node.sh("cat /etc/machine-id").strip() == machine_id
        assert f"roothash={v2.manifest['roothash']}" in node.sh("cat /proc/cmdline")
        node.wait_for("systemctl is-active systemd-bless-boot.service")
        assert f"{profile}_{V2}.efi" in entries(node)  # blessed: no counter left

        v3 = derive_version(image, tools_tree, derived / "v3", V3, upgrade_from=V2)
        update_repo.add(v3.output)
        assert update_json(node, "apply")["version"] == V3
        reboot(node)
        version, slot = running(node)
        assert version == V3 and slot == slot_a  # back in slot A
        node.wait_for("systemctl is-active systemd-bless-boot.service")
        installed = entries(node)
        assert not [e for e in installed if e.startswith(f"{profile}_{v1}")]  # v1 is gone
        assert f"{profile}_{V2}.efi" in installed and f"{profile}_{V3}.efi" in installed
