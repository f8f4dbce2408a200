"""From the root tree to the A/B disk image: slot A, its UKI, the ESP, raw, qcow2, payload."""

from __future__ import annotations

import email.utils
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.build.artifacts import sha256_file
from builder.disk.esp import SD_BOOT, build_esp, uki_filename
from builder.disk.gpt import ESP_SIZE, assemble_disk, convert_qcow2, plan_layout
from builder.disk.measure import predict_pcr11
from builder.disk.payload import build_payload
from builder.disk.sign import sign_pe
from builder.disk.slot import (
    Tools,
    derived_uuid,
    extract_tree,
    make_slot,
    prepare_tree,
    take_boot_files,
)
from builder.disk.uki import build_uki, compress_initrd, kernel_cmdline
from builder.keys.secureboot import Signer
from builder.log import step
from builder.profile.model import Profile


@dataclass(frozen=True)
class Assembly:
    """What the assembler made, for the manifest."""

    record: dict[str, Any]
    outputs: dict[str, Path]


def source_date_epoch(archive_state: str) -> int:
    """SOURCE_DATE_EPOCH if set, else the Debian archive's Release date: same inputs, same time."""
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    first = archive_state.split(";")[0].split("=", 1)[-1]
    try:
        return int(email.utils.parsedate_to_datetime(first).timestamp())
    except (TypeError, ValueError):
        return 0


def assemble_image(
    profile: Profile, name: str, version: str, rootfs_tar: Path, work: Path, staging: Path,
    tools: Tools, epoch: int, signer: Signer | None = None,
) -> Assembly:  # fmt: skip
    """Build every disk output of one version into `staging` (work files go to `work`).

    With a signer, systemd-boot and the UKI are signed with db before they go into the ESP, and
    the payload carries that same signed UKI file.
    The record's secure_boot.pcr11 is PCR 11 (sha256) predicted after each boot phase for the
    UKI as shipped, signed or not: what a node with a TPM reads once systemd-pcrphase has
    measured that phase.
    """
    tree = work / "tree"
    with step("Unpack root tree"):
        extract_tree(rootfs_tar, tree)
        prepare_tree(tree)
        kernel, initrd, kver = take_boot_files(tree, work / "boot")
    with step("Root slot: erofs (lz4hc) + dm-verity"):
        slot = make_slot(tree, work / "slot", tools, name=name, version=version, epoch=epoch)
    layout = plan_layout(name, version, profile.name, slot.erofs.stat().st_size, slot.roothash)
    cmdline = kernel_cmdline(slot.roothash, profile.kernel.cmdline)
    signed = " signed with db" if signer else ""
    with step(f"UKI (zstd initrd, ukify{signed}) and ESP (mtools)"):
        initrd = compress_initrd(tools, initrd)
        uki_path = work / "uki" / f"{name}.efi"
        uki = build_uki(tools, tree, kernel, initrd, kver, cmdline, uki_path, signer)
        pcr11 = predict_pcr11(tools, uki, work / "pcr11")
        boot = tree / SD_BOOT
        if signer is not None:
            boot = sign_pe(tools, signer, boot, work / "boot-efi" / boot.name)
        volume_id = derived_uuid(name, version, "esp").hex[:8]
        uki_name = uki_filename(profile.name, version)
        marker = f"layout {layout.version}\n"
        esp = build_esp(
            tools, work / "esp.img", ESP_SIZE, volume_id, boot, uki, uki_name, marker, epoch
        )
    with step(f"Disk: GPT layout v{layout.version}, raw and qcow2"):
        raw = assemble_disk(
            tools, layout, {"esp": esp, "root-a": slot.erofs, "root-a-verity": slot.verity},
            staging / f"{name}.raw",
        )  # fmt: skip
        qcow2 = convert_qcow2(tools, raw, staging / f"{name}.qcow2")
    with step("Update payload"):
        payload_dir = staging / f"{name}.update"
        files = {"root": slot.erofs, "verity": slot.verity, "uki": uki}
        payload = build_payload(tools, payload_dir, version, slot.roothash, layout.version, files)
    shutil.rmtree(tree)
    record = {
        "layout": layout.describe(),
        "roothash": slot.roothash,
        "kernel": {"release": kver, "cmdline": cmdline},
        "uki": {"file": uki_filename(profile.name, version), "sha256": sha256_file(uki)},
        "slot": {
            "erofs_bytes": slot.erofs.stat().st_size, "verity_bytes": slot.verity.stat().st_size,
            "erofs_uuid": slot.erofs_uuid, "verity_uuid": slot.verity_uuid,
        },
        "payload": payload,
        "secure_boot": {**(signer.record() if signer else {"signed": False}), "pcr11": pcr11},
        "source_date_epoch": epoch,
    }  # fmt: skip
    return Assembly(record, {"raw": raw, "qcow2": qcow2, "payload": payload_dir / "payload.json"})


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
