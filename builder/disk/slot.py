"""A root slot's content: the tree as a read-only erofs image plus its dm-verity hash tree.

Deterministic: timestamps from SOURCE_DATE_EPOCH, the filesystem UUID, verity UUID and salt
derived from the image name and version, never random.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from builder.errors import HostbuildError
from builder.run import Completed, run

logger = logging.getLogger(__name__)

NAMESPACE = uuid.UUID("6f1c5c57-2d9a-4a7e-9a0b-6b6f73746275")  # hostbuild's uuid5 namespace
BLOCK = 4096
PCLUSTER = 65536  # bigger physical clusters: about 10% smaller than 4 KiB ones, same read path
COMPRESSORS = {"lz4hc": "lz4hc,12", "lz4": "lz4", "zstd": "zstd,15", "lzma": "lzma,6"}


class Tools(Protocol):
    """Runs a build tool (from the trixie tools tree or the host) with host paths bound."""

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        binds: Sequence[Path] = (),
        readonly: Sequence[Path] = (),
        env: Mapping[str, str] | None = None,
    ) -> Completed: ...


def derived_uuid(*parts: str) -> uuid.UUID:
    """A stable UUID for one role of one image version (partitions, filesystems, verity)."""
    return uuid.uuid5(NAMESPACE, "/".join(parts))


@dataclass(frozen=True)
class SlotImage:
    erofs: Path
    verity: Path
    roothash: str
    erofs_uuid: str
    verity_uuid: str


def extract_tree(rootfs_tar: Path, tree: Path) -> None:
    """Unpack the root tree with owners, modes and xattrs (file capabilities) intact."""
    tree.mkdir(parents=True)
    run(
        ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", rootfs_tar, "-C", tree]
    )


MOUNT_POINTS = {
    "proc": 0o555,
    "sys": 0o555,
    "dev": 0o755,
    "run": 0o755,
    "tmp": 0o1777,
    "var": 0o755,
}
DPKG_DB = "usr/lib/hostbuild/dpkg"
# What the build leaves in /etc that names the build, not the image: diskimage-builder's record
# of its arguments and environment (cache and work directories, its process id) and DIB's `vm`
# hostname (the NodeConfig names the node; without /etc/hostname systemd uses the transient one).
BUILD_LEFTOVERS = ("etc/dib-manifests", "etc/hostname")
# Emptied: the host's device nodes (DIB's chroot had /dev; devtmpfs is mounted over it at boot)
# and /var, which the data partition hides at boot. What a build leaves there (ldconfig's
# aux-cache, logs, apt and debconf state) would only make two builds differ.
EMPTIED = ("dev", "var")


def prepare_tree(tree: Path) -> None:
    """What a read-only root needs that a build tree lacks, without what names the build.

    The mount points systemd moves into the new root at switch-root (DIB's tar leaves out /proc
    and /sys, and nothing can create them on erofs), and a copy of the package database below
    /usr: /var is the data partition, so the image's own /var is hidden at run time (tmpfiles
    links /var/lib/dpkg back to the copy of the running version) and left empty here.
    """
    shutil.copytree(tree / "var/lib/dpkg", tree / DPKG_DB, symlinks=True)
    for leftover in BUILD_LEFTOVERS:
        _remove(tree / leftover)
    for directory in EMPTIED:
        if (tree / directory).is_dir():
            for entry in (tree / directory).iterdir():
                _remove(entry)
    for name, mode in MOUNT_POINTS.items():
        (tree / name).mkdir(exist_ok=True)
        (tree / name).chmod(mode)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def take_boot_files(tree: Path, dest: Path) -> tuple[Path, Path, str]:
    """Move the kernel and initrd out of the tree's /boot (they live in the UKI, not the root)."""
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise HostbuildError(
            f"expected one kernel in the root tree's /boot, found {[k.name for k in kernels]}",
            hint="the hostbuild-boot element installs exactly one kernel flavour",
        )
    kver = kernels[0].name.removeprefix("vmlinuz-")
    initrd = tree / "boot" / f"initrd.img-{kver}"
    if not initrd.exists():
        raise HostbuildError(f"no initrd for kernel {kver} in the root tree's /boot")
    dest.mkdir(parents=True, exist_ok=True)
    config = tree / "boot" / f"config-{kver}"
    if config.exists():  # where kernel-install keeps it: node checks read the kernel's options
        shutil.move(config, tree / "usr/lib/modules" / kver / "config")
    shutil.move(kernels[0], dest / "vmlinuz")
    shutil.move(initrd, dest / "initrd.img")
    for leftover in (tree / "boot").iterdir():
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
    return dest / "vmlinuz", dest / "initrd.img", kver


def make_slot(
    tree: Path, out: Path, tools: Tools, *, name: str, version: str, epoch: int,
    compressor: str = "lz4hc",
) -> SlotImage:  # fmt: skip
    """mkfs.erofs the tree, then veritysetup format the image into a hash tree file."""
    out.mkdir(parents=True, exist_ok=True)
    erofs, verity, roothash_file = out / "root.erofs", out / "root.verity", out / "roothash"
    fs_uuid = str(derived_uuid(name, version, "erofs"))
    tools.run([
        "mkfs.erofs", f"-z{COMPRESSORS[compressor]}", f"-C{PCLUSTER}", f"-T{epoch}", f"-U{fs_uuid}",
        os.fspath(erofs), os.fspath(tree),
    ], binds=[out, tree])  # fmt: skip
    verity_uuid = str(derived_uuid(name, version, "verity"))
    salt = hashlib.sha256(f"{name}/{version}/verity-salt".encode()).hexdigest()
    tools.run([
        "veritysetup", "format", f"--data-block-size={BLOCK}", f"--hash-block-size={BLOCK}",
        f"--salt={salt}", f"--uuid={verity_uuid}", f"--root-hash-file={roothash_file}",
        os.fspath(erofs), os.fspath(verity),
    ], binds=[out])  # fmt: skip
    roothash = roothash_file.read_text().strip()
    roothash_file.unlink()
    return SlotImage(erofs, verity, roothash, fs_uuid, verity_uuid)
