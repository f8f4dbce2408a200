"""Slots and boot entries against fake block devices (regular files) and a fake sysfs tree."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from builder.node import bootentries, command, slots
from builder.node.channel import Payload
from builder.node.updatestate import UpdateError
from tests.unit.updatefakes import IMAGE, ROOT_TYPE, VERITY_TYPE, FakeNode, MiB, make_image

ROOT, VERITY = ROOT_TYPE, VERITY_TYPE


@pytest.fixture
def fake(tmp_path: Path) -> FakeNode:
    return FakeNode(tmp_path)


def payload(data: bytes, name: str = "root") -> Payload:
    digest = hashlib.sha256(data).hexdigest()
    return Payload(f"{IMAGE}/0.1.0-3/{name}.zst", len(data), digest, len(data), digest)


def source(fake: FakeNode, data: bytes, name: str = "root.zst") -> Path:
    path = fake.tmp / name
    path.write_bytes(data)
    return path


def test_the_running_slot_is_the_one_under_root(fake: FakeNode) -> None:
    disk = slots.discover(fake.system)
    assert disk.node == fake.dev / "vda"
    assert [s.name for s in disk.slots] == ["a", "b"]
    assert disk.running.root.node == fake.dev / "vda2"
    assert disk.running.verity.node == fake.dev / "vda3"
    assert disk.inactive.root.node == fake.dev / "vda4"
    assert disk.inactive.version(IMAGE) == "0.1.0-1"
    assert disk.inactive.root.size == 8 * MiB
    fake.running_slot("b")
    assert slots.discover(fake.system).running.name == "b"
    assert slots.backing_partitions(fake.system) == {"vda4", "vda5"}


def test_a_root_not_on_device_mapper_is_an_error(fake: FakeNode) -> None:
    shutil.rmtree(fake.dm / "slaves")
    with pytest.raises(UpdateError, match="/ is not on a device-mapper device"):
        slots.discover(fake.system)


def test_a_disk_without_two_slots_is_an_error(fake: FakeNode) -> None:
    fake.table[3]["type"] = fake.table[5]["type"]
    with pytest.raises(UpdateError, match="1 root and 2 root verity partitions"):
        slots.discover(fake.system)


def test_writing_a_partition_backing_root_is_refused(fake: FakeNode) -> None:
    disk = slots.discover(fake.system)
    data = b"x" * 4096
    for part in (disk.running.root, disk.running.verity):
        with pytest.raises(UpdateError, match=f"refusing to write {part.node}: it backs /"):
            slots.check_target(fake.system, part, payload(data), "label")
        with pytest.raises(UpdateError, match="refusing to relabel"):
            slots.set_identity(fake.system, disk, part, "_empty")
    assert fake.calls == [["sfdisk", "--json", os.fspath(fake.dev / "vda")]]


def test_a_partition_held_by_another_device_is_refused(fake: FakeNode) -> None:
    part = slots.discover(fake.system).inactive.root
    (fake.sys / "devices/pci0/block/vda/vda4/holders/dm-7").mkdir()
    with pytest.raises(UpdateError, match="held open by dm-7"):
        slots.check_target(fake.system, part, payload(b"x"), "label")


def test_a_payload_larger_than_the_slot_is_refused_before_writing(fake: FakeNode) -> None:
    part = slots.discover(fake.system).inactive.root
    big = Payload("t", 8 * MiB + 1, "0" * 64, 10, "0" * 64)
    with pytest.raises(UpdateError, match=r"t is 8388609 bytes, .*vda4 only 8388608") as e:
        slots.check_target(fake.system, part, big, "label")
    assert e.value.kind == "too-large"


def test_a_label_longer_than_gpt_allows_is_refused(fake: FakeNode) -> None:
    part = slots.discover(fake.system).inactive.verity
    with pytest.raises(UpdateError, match="longer than 36"):
        slots.check_target(fake.system, part, payload(b"x"), "x" * 37)


def test_write_streams_the_payload_and_checks_size_and_digest(fake: FakeNode) -> None:
    part = slots.discover(fake.system).inactive.root
    data = make_image("0.1.0-3").root
    slots.write_partition(fake.system, part, source(fake, data), payload(data))
    written = part.node.read_bytes()
    assert written[: len(data)] == data and len(written) == 8 * MiB  # a device: not truncated
    wrong = payload(data[:-1] + b"!")
    with pytest.raises(UpdateError, match="the channel manifest signs") as e:
        slots.write_partition(fake.system, part, source(fake, data), wrong)
    assert e.value.kind == "verify"
    short = Payload("t", len(data) - 1, "0" * 64, 1, "0" * 64)
    with pytest.raises(UpdateError, match="decompresses to more than"):
        slots.write_partition(fake.system, part, source(fake, data), short)


def test_verify_runs_veritysetup_against_the_signed_root_hash(fake: FakeNode) -> None:
    slot = slots.discover(fake.system).inactive
    old = make_image("0.1.0-1")
    slots.verify_slot(fake.system, slot, old.roothash)
    assert fake.calls[-1] == ["veritysetup", "verify", os.fspath(slot.root.node),
                              os.fspath(slot.verity.node), old.roothash]  # fmt: skip
    with pytest.raises(UpdateError, match="does not verify against") as e:
        slots.verify_slot(fake.system, slot, make_image("0.1.0-3").roothash)
    assert e.value.kind == "verify"


def test_identity_is_set_with_sfdisk(fake: FakeNode) -> None:
    disk = slots.discover(fake.system)
    roothash = make_image("0.1.0-3").roothash
    root_uuid, verity_uuid = slots.roothash_uuids(roothash)
    assert root_uuid.replace("-", "") == roothash[:32]
    assert verity_uuid.replace("-", "") == roothash[32:]
    slots.clear_slot(fake.system, disk, disk.inactive)
    slots.set_identity(fake.system, disk, disk.inactive.root, f"{IMAGE}_0.1.0-3", root_uuid)
    assert fake.commands()[1:] == [
        "sfdisk --part-label vda 4 _empty",
        "sfdisk --part-label vda 5 _empty",
        f"sfdisk --part-uuid vda 4 {root_uuid}",
        f"sfdisk --part-label vda 4 {IMAGE}_0.1.0-3",
    ]
    again = slots.discover(fake.system).inactive
    assert (again.root.label, again.root.uuid) == (f"{IMAGE}_0.1.0-3", root_uuid)
    assert again.verity.label == "_empty"


def test_boot_entries_of_this_image(fake: FakeNode) -> None:
    linux = fake.esp / "EFI/Linux"
    (linux / f"{IMAGE}_0.1.0-3+2-1.efi").write_bytes(b"u")
    (linux / f"{IMAGE}_0.1.0-4+0-3.efi").write_bytes(b"u")
    (linux / f"{IMAGE}_0.1.0-5+3.efi").write_bytes(b"u")
    (linux / f".{IMAGE}_0.1.0-6+3.efi.tmp").write_bytes(b"u")
    found = bootentries.boot_entries(fake.esp, IMAGE)
    assert sorted(found) == ["0.1.0-1", "0.1.0-2", "0.1.0-3", "0.1.0-4", "0.1.0-5"]
    assert (found["0.1.0-3"].tries_left, found["0.1.0-3"].tries_done) == (2, 1)
    assert found["0.1.0-4"].bad and not found["0.1.0-5"].bad
    assert found["0.1.0-2"].tries_left is None
    removed = bootentries.remove_entries(fake.esp, IMAGE, keep="0.1.0-2")
    assert removed == [f"{IMAGE}_0.1.0-1.efi", f"{IMAGE}_0.1.0-3+2-1.efi",
                       f"{IMAGE}_0.1.0-4+0-3.efi", f"{IMAGE}_0.1.0-5+3.efi"]  # fmt: skip
    assert fake.ukis() == ["other_1.0.0-1.efi", f"{IMAGE}_0.1.0-2.efi"]


def test_a_uki_is_installed_boot_counted_through_a_temporary_name(fake: FakeNode) -> None:
    uki = make_image("0.1.0-3").uki
    seen: list[list[str]] = []
    fake.hooks["zstd"] = lambda argv: seen.append(fake.ukis())
    name = bootentries.install_uki(fake.system, fake.esp, IMAGE, "0.1.0-3",
                                   source(fake, uki, "uki.zst"), payload(uki, "uki"))  # fmt: skip
    assert name == f"{IMAGE}_0.1.0-3+3.efi"
    assert seen == [[f".{IMAGE}_0.1.0-3+3.efi.tmp", "other_1.0.0-1.efi", f"{IMAGE}_0.1.0-1.efi",
                     f"{IMAGE}_0.1.0-2.efi"]]  # fmt: skip
    assert (fake.esp / "EFI/Linux" / name).read_bytes() == uki
    for wrong in (payload(b"other", "uki"), payload(uki[:-1] + b"!", "uki")):
        with pytest.raises(UpdateError, match="decompresses to more than|the manifest signs"):
            bootentries.install_uki(fake.system, fake.esp, IMAGE, "0.1.0-4",
                                    source(fake, uki, "uki.zst"), wrong)  # fmt: skip
    assert f"{IMAGE}_0.1.0-4+3.efi" not in fake.ukis() and not any(
        n.endswith(".tmp") for n in fake.ukis()
    )


def test_the_esp_must_have_room_for_the_uki(fake: FakeNode, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:  # fmt: skip
    class Full:
        f_bavail, f_frsize = 0, 4096

    monkeypatch.setattr(os, "statvfs", lambda path: Full())
    size = len(b"previous")  # what removing 0.1.0-1's UKI frees
    bootentries.check_space(fake.esp, IMAGE, "0.1.0-2", Payload("u", size, "0" * 64, 1, "0" * 64))
    with pytest.raises(UpdateError, match="the ESP has 8 free") as e:
        bootentries.check_space(fake.esp, IMAGE, "0.1.0-2",
                                Payload("u", size + 1, "0" * 64, 1, "0" * 64))  # fmt: skip
    assert e.value.kind == "too-large"


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed")
def test_the_real_zstd_decompresses_a_payload_as_the_build_makes_it(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    (tmp_path / "root.erofs").write_bytes(data)
    command.run(["zstd", "-q", "-10", "--long=25", "-T0", os.fspath(tmp_path / "root.erofs"),
                 "-o", os.fspath(tmp_path / "root.erofs.zst")])  # fmt: skip
    device = tmp_path / "vda4"
    with device.open("wb") as f:
        f.truncate(4 * MiB)
    part = slots.Partition(device, 4, "t", "u", "_empty", 4 * MiB)
    slots.write_partition(slots.System(), part, tmp_path / "root.erofs.zst", payload(data))
    assert device.read_bytes()[: len(data)] == data
    (tmp_path / "broken.zst").write_bytes(b"not zstd")
    with pytest.raises(UpdateError, match="decompressing broken.zst: zstd .* exited 1") as e:
        slots.write_partition(slots.System(), part, tmp_path / "broken.zst", payload(data))
    assert e.value.kind == "write"


@pytest.mark.skipif(shutil.which("sfdisk") is None, reason="sfdisk is not installed")
def test_the_real_sfdisk_reads_and_relabels_a_gpt(fake: FakeNode) -> None:
    disk = fake.tmp / "disk.img"
    with disk.open("wb") as f:
        f.truncate(64 * MiB)
    table = "label: gpt\n" + "".join(
        f"size={size}M, type={ptype}, name={name}\n"
        for size, ptype, name in [
            (8, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "esp"),
            (16, ROOT, f"{IMAGE}_0.1.0-2"), (4, VERITY, f"{IMAGE}_0.1.0-2_verity"),
            (16, ROOT, "_empty"), (4, VERITY, "_empty"),
        ]
    )  # fmt: skip
    command.run(["sh", "-c", f"printf '%s' '{table}' | sfdisk -q {disk}"])
    system = slots.System(sysfs=fake.sys, dev=fake.dev, root=fake.root, run=command.run)
    parts = slots.read_table(system, disk)
    assert [(p.number, p.label, p.size) for p in parts] == [
        (1, "esp", 8 * MiB), (2, f"{IMAGE}_0.1.0-2", 16 * MiB),
        (3, f"{IMAGE}_0.1.0-2_verity", 4 * MiB), (4, "_empty", 16 * MiB), (5, "_empty", 4 * MiB),
    ]  # fmt: skip
    assert parts[3].type == ROOT.lower() and parts[3].node == Path(f"{disk}4")
    running, other = slots.Slot("a", parts[1], parts[2]), slots.Slot("b", parts[3], parts[4])
    roothash = make_image("0.1.0-3").roothash
    root_uuid, _ = slots.roothash_uuids(roothash)
    target = slots.Disk(disk, (running, other), running)
    slots.set_identity(system, target, other.root, f"{IMAGE}_0.1.0-3", root_uuid)
    again = slots.read_table(system, disk)[3]
    assert (again.label, again.uuid) == (f"{IMAGE}_0.1.0-3", root_uuid)


@pytest.mark.skipif(shutil.which("veritysetup") is None, reason="veritysetup is not installed")
def test_the_real_veritysetup_verifies_a_slot_larger_than_its_image(tmp_path: Path) -> None:
    root, hashes = tmp_path / "vda4", tmp_path / "vda5"
    root.write_bytes(os.urandom(4 * MiB))
    out = command.run(["veritysetup", "format", os.fspath(root), os.fspath(hashes),
                       "--data-blocks=1024"])  # fmt: skip
    roothash = out.split("Root hash:")[1].split()[0]
    with root.open("r+b") as f:
        f.truncate(8 * MiB)  # the slot is larger than the image written into it
    with hashes.open("r+b") as f:
        f.truncate(MiB)
    slot = slots.Slot("b", slots.Partition(root, 4, ROOT, "", "x", 8 * MiB),
                      slots.Partition(hashes, 5, VERITY, "", "x", MiB))  # fmt: skip
    slots.verify_slot(slots.System(), slot, roothash)
    with root.open("r+b") as f:
        f.seek(MiB)
        f.write(b"tampered")
    with pytest.raises(UpdateError, match="does not verify against") as e:
        slots.verify_slot(slots.System(), slot, roothash)
    assert e.value.kind == "verify"
