"""`hostbuild doctor`: can this machine build images, and how to install what it lacks."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from builder.build.dib import dib_command
from builder.errors import CommandError
from builder.run import run

MIN_FREE_GIB = 10

# command -> Debian package that provides it
COMMANDS = {
    "mmdebstrap": "mmdebstrap",
    "sudo": "sudo",
    "qemu-img": "qemu-utils",
    "mkfs.erofs": "erofs-utils",
    "mkfs.ext4": "e2fsprogs",
    "veritysetup": "cryptsetup-bin",
    "sgdisk": "gdisk",
    "mcopy": "mtools",
    "mkfs.vfat": "dosfstools",
    "losetup": "mount",
    "bwrap": "bubblewrap",
    "zstd": "zstd",
}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    package: str | None = None


def check_host(cache: Path) -> list[Check]:
    """Every check, in the order `doctor` prints them."""
    checks = [Check("root", os.geteuid() == 0, "diskimage-builder needs root (chroot, mounts)")]
    for command, package in COMMANDS.items():
        path = shutil.which(command, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        checks.append(Check(command, path is not None, path or "not found", package))
    dib = dib_command()
    checks.append(Check("disk-image-create", dib.exists(), os.fspath(dib)))
    checks.append(_loop_devices())
    checks.append(_free_disk(cache))
    return checks


def _loop_devices() -> Check:
    if not Path("/dev/loop-control").exists():
        return Check("loop devices", False, "/dev/loop-control is missing (modprobe loop)")
    try:
        device = run(["losetup", "--find"]).stdout.strip()
    except (CommandError, FileNotFoundError) as e:
        return Check("loop devices", False, f"losetup --find failed: {e}")
    return Check("loop devices", True, f"next free: {device}")


def _free_disk(cache: Path) -> Check:
    probe = cache
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free / 2**30
    return Check(
        "free disk",
        free >= MIN_FREE_GIB,
        f"{free:.0f} GiB free under {probe} (need {MIN_FREE_GIB})",
    )


def install_hint(checks: list[Check]) -> str | None:
    packages = sorted({c.package for c in checks if not c.ok and c.package})
    return f"apt-get install -y {' '.join(packages)}" if packages else None
