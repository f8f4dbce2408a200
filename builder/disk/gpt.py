"""GPT disk layout v2 and its assembly from partition images: sgdisk and dd on a sparse file.

No partition is ever mounted and no device-mapper is needed on the build host.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from builder.disk.slot import Tools, derived_uuid
from builder.run import run

# 2: a slot's partition UUIDs are its root hash's halves (DPS), so any UKI finds its slot by
# `roothash=` alone; 1 named slot A by PARTUUIDs derived from the image name (no updates).
LAYOUT_VERSION = 2
MiB = 1 << 20
GiB = 1 << 30
ALIGN = MiB
ESP_SIZE = 256 * MiB
MIN_SLOT = 1 * GiB
MIN_VAR = 512 * MiB

# Discoverable Partitions Specification type GUIDs (x86-64)
ESP_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
ROOT_TYPE = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
VERITY_TYPE = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"
VAR_TYPE = "4d21b016-b534-45c2-a9fb-5c16e091fd2d"
EMPTY_LABEL = "_empty"


@dataclass(frozen=True)
class Partition:
    number: int
    role: str  # esp, root-a, root-a-verity, root-b, root-b-verity
    label: str
    type_guid: str
    partuuid: str
    start: int  # bytes
    size: int  # bytes


@dataclass(frozen=True)
class Layout:
    version: int
    disk_guid: str
    disk_size: int
    partitions: tuple[Partition, ...]

    def by_role(self, role: str) -> Partition:
        return next(p for p in self.partitions if p.role == role)

    def describe(self) -> dict[str, object]:
        return {**asdict(self), "partitions": [asdict(p) for p in self.partitions]}


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def slot_size(root_bytes: int) -> int:
    """At least twice the current root: partition sizes are frozen for a node's life."""
    return _round_up(max(2 * root_bytes, MIN_SLOT), 64 * MiB)


def verity_size(slot: int) -> int:
    """Room for the hash tree of a full slot (about 1/127 of it at 4 KiB blocks, sha256)."""
    return _round_up(max(slot // 64, 16 * MiB), MiB)


def roothash_uuids(roothash: str) -> tuple[str, str]:
    """The (root, verity) partition UUIDs of a slot holding this root hash.

    Discoverable Partitions Specification: the root partition's UUID is the first 128 bits of
    the dm-verity root hash, its verity partition's the last 128 bits; systemd's
    veritysetup-generator finds both from `roothash=` alone.
    """
    if len(roothash) != 64 or any(c not in "0123456789abcdef" for c in roothash):
        raise ValueError(f"not a sha256 root hash: {roothash!r}")
    return str(uuid.UUID(hex=roothash[:32])), str(uuid.UUID(hex=roothash[32:]))


def plan_layout(name: str, version: str, image_id: str, root_bytes: int, roothash: str) -> Layout:
    """Layout v2: ESP, root-a, root-a-verity, root-b, root-b-verity; /var is made at first boot.

    Slot A's partition UUIDs come from its root hash; slot B's are placeholders until an update
    writes it (and sets them from the new root hash).
    """
    slot, verity = slot_size(root_bytes), verity_size(slot_size(root_bytes))
    label = f"{image_id}_{version}"
    roles = [
        ("esp", "esp", ESP_TYPE, ESP_SIZE),
        ("root-a", label, ROOT_TYPE, slot),
        ("root-a-verity", f"{label}_verity", VERITY_TYPE, verity),
        ("root-b", EMPTY_LABEL, ROOT_TYPE, slot),
        ("root-b-verity", EMPTY_LABEL, VERITY_TYPE, verity),
    ]
    fixed = dict(zip(("root-a", "root-a-verity"), roothash_uuids(roothash), strict=True))
    partitions, start = [], ALIGN
    for number, (role, part_label, type_guid, size) in enumerate(roles, start=1):
        partuuid = fixed.get(role) or str(derived_uuid(name, version, "partition", role))
        partitions.append(Partition(number, role, part_label, type_guid, partuuid, start, size))
        start += size
    disk_size = _round_up(start + MIN_VAR + ALIGN, GiB)
    return Layout(
        LAYOUT_VERSION, str(derived_uuid(name, version, "disk")), disk_size, tuple(partitions)
    )


def assemble_disk(tools: Tools, layout: Layout, contents: dict[str, Path], raw: Path) -> Path:
    """Write the GPT (sgdisk, from the tools tree) and `dd` each role's image into a sparse raw."""
    raw.unlink(missing_ok=True)
    with raw.open("wb") as f:
        f.truncate(layout.disk_size)
    sector = 512
    argv: list[str | os.PathLike[str]] = ["sgdisk", "--clear", f"--disk-guid={layout.disk_guid}"]
    for p in layout.partitions:
        first, last = p.start // sector, (p.start + p.size) // sector - 1
        argv += [
            f"--new={p.number}:{first}:{last}", f"--typecode={p.number}:{p.type_guid}",
            f"--change-name={p.number}:{p.label}", f"--partition-guid={p.number}:{p.partuuid}",
        ]  # fmt: skip
    tools.run([*argv, raw], binds=[raw.parent])
    for role, image in contents.items():
        p = layout.by_role(role)
        if image.stat().st_size > p.size:
            raise ValueError(f"{image} ({image.stat().st_size} bytes) exceeds {role} ({p.size})")
        run([
            "dd", f"if={image}", f"of={raw}", "bs=1M", f"seek={p.start // MiB}",
            "conv=notrunc,sparse", "status=none",
        ])  # fmt: skip
    return raw


def convert_qcow2(tools: Tools, raw: Path, qcow2: Path) -> Path:
    """Compressed qcow2 with the tools tree's qemu-img (its clusters are written in order)."""
    argv: list[str | os.PathLike[str]] = [
        "qemu-img",
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw,
        qcow2,
    ]
    tools.run(argv, binds=[qcow2.parent, raw.parent])
    return qcow2
