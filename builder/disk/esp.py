"""The EFI System Partition as a FAT32 image file, built with mtools (nothing is mounted).

Reproducible: mkfs.vfat runs with `--invariant` (no random or clock values beyond the volume id
it is given), mtools stamps files and directories with SOURCE_DATE_EPOCH, and both run from the
tools tree, so neither the clock nor the build host's dosfstools and mtools change the bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

from builder.disk.slot import Tools
from builder.run import base_environment

SD_BOOT = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
LOADER_CONF = "timeout 0\neditor no\nauto-entries no\nauto-firmware no\n"
TRIES = 3


def uki_filename(image_id: str, version: str, tries: int | None = TRIES) -> str:
    """`worker_1.2.3-4+3.efi`: systemd-boot counts down the `+3` on each try."""
    return f"{image_id}_{version}" + (f"+{tries}" if tries is not None else "") + ".efi"


def build_esp(
    tools: Tools, out: Path, size: int, volume_id: str, boot: Path, uki: Path, uki_name: str,
    layout: str, epoch: int,
) -> Path:  # fmt: skip
    """A FAT32 image of `size` bytes holding systemd-boot (`boot`, the image tree's SD_BOOT or
    its signed copy) as the removable-media path and as itself, the loader config and one UKI."""
    env = base_environment()
    env.update(MTOOLS_SKIP_CHECK="1", SOURCE_DATE_EPOCH=str(epoch))
    out.unlink(missing_ok=True)
    binds = [out.parent]
    tools.run([
        "mkfs.vfat", "--invariant", "-F", "32", "-n", "ESP", "-i", volume_id, "-C", out,
        str(size // 1024),
    ], binds=binds, env=env)  # fmt: skip
    image = os.fspath(out)
    for directory in ("EFI", "EFI/BOOT", "EFI/systemd", "EFI/Linux", "loader", "loader/entries"):
        tools.run(["mmd", "-i", image, f"::/{directory}"], binds=binds, env=env)
    config = out.parent / "loader.conf"
    config.write_text(LOADER_CONF)
    marker = out.parent / "hostbuild-layout"
    marker.write_text(layout)
    copies = [
        (boot, "EFI/BOOT/BOOTX64.EFI"),
        (boot, "EFI/systemd/systemd-bootx64.efi"),
        (config, "loader/loader.conf"),
        (marker, "loader/hostbuild-layout"),
        (uki, f"EFI/Linux/{uki_name}"),
    ]
    for source, target in copies:
        readonly = [source.parent] if source.parent != out.parent else []
        tools.run(["mcopy", "-i", image, "-o", source, f"::/{target}"], binds=binds,
                  readonly=readonly, env=env)  # fmt: skip
    return out
