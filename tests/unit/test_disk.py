"""Layout v2: sizes, order, types, derived GUIDs; assembly into a sparse raw file with sgdisk."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from builder.build.toolstree import ToolsTree
from builder.disk.gpt import (
    ESP_TYPE,
    ROOT_TYPE,
    VERITY_TYPE,
    GiB,
    MiB,
    assemble_disk,
    plan_layout,
    roothash_uuids,
    slot_size,
)
from builder.disk.slot import DPKG_DB, prepare_tree
from builder.disk.uki import kernel_cmdline
from builder.run import run

HOST = ToolsTree(Path("/"))
H = "5a" * 16 + "a5" * 16  # a root hash


def test_layout_v1_order_types_and_labels() -> None:
    layout = plan_layout("worker-1.2.3-4", "1.2.3-4", "worker", 300 * MiB, H)
    assert [p.role for p in layout.partitions] == [
        "esp", "root-a", "root-a-verity", "root-b", "root-b-verity",
    ]  # fmt: skip
    assert [p.type_guid for p in layout.partitions] == [
        ESP_TYPE, ROOT_TYPE, VERITY_TYPE, ROOT_TYPE, VERITY_TYPE,
    ]  # fmt: skip
    assert [p.label for p in layout.partitions] == [
        "esp", "worker_1.2.3-4", "worker_1.2.3-4_verity", "_empty", "_empty",
    ]  # fmt: skip
    starts = [p.start for p in layout.partitions]
    assert starts[0] == MiB and all(s % MiB == 0 for s in starts)
    for before, after in zip(layout.partitions, layout.partitions[1:], strict=False):
        assert before.start + before.size == after.start
    end = layout.partitions[-1].start + layout.partitions[-1].size
    assert layout.disk_size >= end + 512 * MiB  # room for /var at first boot


def test_slots_have_twice_the_root_and_a_floor() -> None:
    assert slot_size(100 * MiB) == 1 * GiB
    assert slot_size(700 * MiB) >= 1400 * MiB
    assert slot_size(700 * MiB) % (64 * MiB) == 0


def test_guids_are_derived_not_random() -> None:
    a = plan_layout("worker-1.2.3-4", "1.2.3-4", "worker", 300 * MiB, H)
    b = plan_layout("worker-1.2.3-4", "1.2.3-4", "worker", 300 * MiB, H)
    c = plan_layout("worker-1.2.3-5", "1.2.3-5", "worker", 300 * MiB, H)
    assert a == b
    assert a.disk_guid != c.disk_guid
    assert len({p.partuuid for p in a.partitions}) == 5


@pytest.mark.skipif(shutil.which("sgdisk") is None, reason="sgdisk is not installed")
def test_assemble_writes_gpt_and_contents(tmp_path: Path) -> None:
    layout = plan_layout("t-1.0.0-1", "1.0.0-1", "t", 10 * MiB, H)
    esp = tmp_path / "esp.img"
    esp.write_bytes(b"E" * MiB)
    erofs = tmp_path / "root.erofs"
    erofs.write_bytes(b"R" * (2 * MiB))
    raw = assemble_disk(HOST, layout, {"esp": esp, "root-a": erofs}, tmp_path / "disk.raw")
    assert raw.stat().st_size == layout.disk_size
    assert raw.stat().st_blocks * 512 < 16 * MiB  # sparse: only what was written
    printed = run(["sgdisk", "-p", raw]).stdout
    assert "t_1.0.0-1" in printed and "_empty" in printed
    with raw.open("rb") as f:
        f.seek(layout.by_role("root-a").start)
        assert f.read(4) == b"RRRR"
        f.seek(layout.by_role("esp").start)
        assert f.read(4) == b"EEEE"


def test_oversized_content_is_refused(tmp_path: Path) -> None:
    layout = plan_layout("t-1.0.0-1", "1.0.0-1", "t", 10 * MiB, H)
    big = tmp_path / "big"
    with big.open("wb") as f:
        f.truncate(layout.by_role("esp").size + 1)
    with pytest.raises(ValueError, match="exceeds esp"):
        assemble_disk(HOST, layout, {"esp": big}, tmp_path / "disk.raw")


def test_kernel_cmdline_names_the_root_hash_and_no_disk() -> None:
    cmdline = kernel_cmdline("ab" * 32, ("console=ttyS0",))
    args = cmdline.split()
    assert args[:3] == ["root=/dev/mapper/root", "rootfstype=erofs", "ro"]
    assert f"roothash={'ab' * 32}" in args
    assert not [a for a in args if "partuuid" in a or a.startswith("systemd.verity_root_d")]
    assert not [a for a in args if a.startswith("systemd.verity_root_hash")]
    assert "systemd.verity_root_options=panic-on-corruption" in args
    assert args[-1] == "console=ttyS0"


def test_slot_a_partition_uuids_are_the_root_hash_halves() -> None:
    roothash = "0123456789abcdef" * 4
    layout = plan_layout("worker-1.2.3-4", "1.2.3-4", "worker", 300 * MiB, roothash)
    assert layout.version == 2
    assert layout.by_role("root-a").partuuid == "01234567-89ab-cdef-0123-456789abcdef"
    assert layout.by_role("root-a-verity").partuuid == "01234567-89ab-cdef-0123-456789abcdef"
    other = "f" * 32 + "0" * 32
    assert roothash_uuids(other) == (
        "ffffffff-ffff-ffff-ffff-ffffffffffff", "00000000-0000-0000-0000-000000000000",
    )  # fmt: skip
    with pytest.raises(ValueError, match="not a sha256 root hash"):
        roothash_uuids("ab" * 31)


def test_prepare_tree_drops_what_names_the_build(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for name in ("var/lib/dpkg/status", "var/log/dpkg.log", "var/cache/ldconfig/aux-cache",
                 "etc/dib-manifests/dib_environment", "etc/hostname", "etc/os-release",
                 "dev/kvm", "dev/cpu/0/cpuid", "usr/bin/true"):  # fmt: skip
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(name)
    prepare_tree(tree)
    assert (tree / DPKG_DB / "status").read_text() == "var/lib/dpkg/status"
    assert list((tree / "var").iterdir()) == [] and list((tree / "dev").iterdir()) == []
    assert not (tree / "etc/dib-manifests").exists() and not (tree / "etc/hostname").exists()
    assert (tree / "etc/os-release").exists() and (tree / "usr/bin/true").exists()
    assert {p.name for p in tree.iterdir()} >= {"proc", "sys", "dev", "run", "tmp", "var"}
