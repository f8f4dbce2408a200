"""The Unified Kernel Image of one version: kernel + initrd + a command line bound to one root."""

from __future__ import annotations

import os
from pathlib import Path

from builder.disk.sign import sign_pe, ukify_pcr_options
from builder.disk.slot import Tools
from builder.keys.secureboot import Signer

STUB = "usr/lib/systemd/boot/efi/linuxx64.efi.stub"


def kernel_cmdline(roothash: str, profile_args: tuple[str, ...]) -> str:
    """Root through dm-verity on the slot holding this root hash, on whatever disk; failures
    reboot so boot counting falls back.

    Nothing disk-specific: the initrd's veritysetup-generator finds the slot's root and verity
    partitions by the UUIDs the root hash gives them (layout v2), so an update's UKI boots the
    slot it was written to.
    """
    args = [
        "root=/dev/mapper/root", "rootfstype=erofs", "ro",
        f"roothash={roothash}",
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
    tools: Tools, tree: Path, kernel: Path, initrd: Path, kver: str, cmdline: str, output: Path,
    signer: Signer | None = None,
) -> Path:  # fmt: skip
    """ukify from the tools tree; the stub and os-release come from the image's own tree.

    With a signer, ukify embeds signed PCR 11 predictions (systemd-measure) and the PCR public
    key, and the UKI is then signed with db (sbsign): the signature does not change the sections
    the predictions are computed over.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    readonly = signer.readonly() if signer else []
    tools.run([
        "ukify", "build", f"--linux={kernel}", f"--initrd={initrd}", f"--uname={kver}",
        f"--stub={tree / STUB}", f"--os-release=@{tree / 'usr/lib/os-release'}",
        f"--cmdline={cmdline}", *ukify_pcr_options(signer), f"--output={output}",
    ], binds=[kernel.parent, initrd.parent, tree, output.parent], readonly=readonly)  # fmt: skip
    if not output.exists():
        raise FileNotFoundError(os.fspath(output))
    if signer is not None:
        sign_pe(tools, signer, output, output)
    return output
