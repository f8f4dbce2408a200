"""The Unified Kernel Image of one version: kernel + initrd + a command line bound to one slot."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from builder.disk.slot import Tools

STUB = "usr/lib/systemd/boot/efi/linuxx64.efi.stub"


@dataclass(frozen=True)
class SlotRef:
    """What a UKI's command line names: the slot's partitions and the root hash."""

    data_partuuid: str
    hash_partuuid: str
    roothash: str


def kernel_cmdline(slot: SlotRef, profile_args: tuple[str, ...]) -> str:
    """Root through dm-verity on exactly this slot; failures reboot so boot counting falls back."""
    args = [
        "root=/dev/mapper/root", "rootfstype=erofs", "ro",
        f"roothash={slot.roothash}",
        f"systemd.verity_root_data=/dev/disk/by-partuuid/{slot.data_partuuid}",
        f"systemd.verity_root_hash=/dev/disk/by-partuuid/{slot.hash_partuuid}",
        "systemd.verity_root_options=panic-on-corruption",
        # a device of the initrd missing for a minute fails it: it reboots (no emergency shell)
        "systemd.firstboot=no", "rd.systemd.default_device_timeout_sec=60",
    ]  # fmt: skip
    return " ".join([*args, *profile_args])


def compress_initrd(tools: Tools, initrd: Path, level: int = 19) -> Path:
    """zstd the initrd dracut left uncompressed (the image carries no compressor to do it).

    zstd decompresses about three times faster than gzip, which counts under emulation, and the
    tools tree's zstd makes the result independent of the build host.
    """
    out = initrd.with_name(f"{initrd.name}.zst")
    argv = ["zstd", "-q", "-f", f"-{level}", "-T0", os.fspath(initrd), "-o", os.fspath(out)]
    tools.run(argv, binds=[initrd.parent])
    initrd.unlink()
    return out


def build_uki(
    tools: Tools, tree: Path, kernel: Path, initrd: Path, kver: str, cmdline: str, output: Path
) -> Path:
    """ukify from the tools tree; the stub and os-release come from the image's own tree."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tools.run([
        "ukify", "build", f"--linux={kernel}", f"--initrd={initrd}", f"--uname={kver}",
        f"--stub={tree / STUB}", f"--os-release=@{tree / 'usr/lib/os-release'}",
        f"--cmdline={cmdline}", f"--output={output}",
    ], binds=[kernel.parent, tree, output.parent])  # fmt: skip
    if not output.exists():
        raise FileNotFoundError(os.fspath(output))
    return output
