"""The initrd's shell scripts, run by bash against a fake sysfs tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.run import Completed, base_environment, run
from tests.conftest import REPO

REPART = REPO / "builder" / "build" / "templates" / "initrd" / "repart-root-disk"
MIB = 2048  # 512-byte sectors


def fake_sysfs(root: Path, disk_sectors: int, parts: list[tuple[str, int, int]]) -> Path:
    """/sys with a disk vda of `parts` (label, start, size) and dm-0 "root" on its second one."""
    sys = root / "sys"
    disk = sys / "devices" / "virtio0" / "block" / "vda"
    disk.mkdir(parents=True)
    (disk / "size").write_text(f"{disk_sectors}\n")
    (sys / "class" / "block").mkdir(parents=True)
    for number, (label, start, size) in enumerate(parts, 1):
        part = disk / f"vda{number}"
        part.mkdir()
        (part / "start").write_text(f"{start}\n")
        (part / "size").write_text(f"{size}\n")
        (part / "uevent").write_text(f"MAJOR=254\nDEVNAME=vda{number}\nPARTNAME={label}\n")
        (sys / "class" / "block" / f"vda{number}").symlink_to(part)
    dm = sys / "block" / "dm-0"
    (dm / "dm").mkdir(parents=True)
    (dm / "dm" / "name").write_text("root\n")
    (dm / "slaves").mkdir()
    (dm / "slaves" / "vda2").symlink_to(disk / "vda2")
    return sys


def run_script(script: Path, tmp_path: Path, stubs: dict[str, str], **env: str) -> Completed:
    """Run `script` with bash, `stubs` (name: sh body) first on PATH and `env` added."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    path = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return run(["bash", os.fspath(script)], env=base_environment() | env | path, check=False)


def repart(tmp_path: Path, sys: Path) -> tuple[int, str]:
    """Run the script with a stand-in systemd-repart that prints its arguments."""
    stubs = {"systemd-repart": 'echo "repart $*"'}
    result = run_script(REPART, tmp_path, stubs, HOSTBUILD_SYSFS=os.fspath(sys))
    return result.returncode, result.stdout + result.stderr


LAYOUT = [
    ("esp", 2048, 256 * MIB),
    ("root-a", 526336, 1024 * MIB),
    ("root-a-verity", 2623488, 16 * MIB),
]


def test_var_filling_the_disk_is_left_alone(tmp_path: Path) -> None:
    end = 2656256 + 1000 * MIB
    sys = fake_sysfs(tmp_path, end + 40, [*LAYOUT, ("var", 2656256, 1000 * MIB)])
    assert repart(tmp_path, sys) == (0, "hostbuild: /var fills /dev/vda: nothing to repartition\n")


@pytest.mark.parametrize(
    "parts", [LAYOUT, [*LAYOUT, ("var", 2656256, 500 * MIB)]], ids=["first-boot", "disk-grew"]
)
def test_missing_or_growable_var_runs_repart(
    tmp_path: Path, parts: list[tuple[str, int, int]]
) -> None:
    sys = fake_sysfs(tmp_path, 2656256 + 1000 * MIB, parts)
    code, out = repart(tmp_path, sys)
    assert (code, out) == (0, "repart --dry-run=no --definitions=/usr/lib/repart.d /dev/vda\n")


def test_no_verity_root_is_an_error(tmp_path: Path) -> None:
    sys = fake_sysfs(tmp_path, 4 * 1024 * MIB, LAYOUT)
    (sys / "block" / "dm-0" / "dm" / "name").write_text("other\n")
    assert repart(tmp_path, sys) == (1, "hostbuild: no disk found under /dev/mapper/root\n")


READAHEAD = REPO / "builder" / "build" / "templates" / "initrd" / "readahead"


def test_readahead_loads_the_profiles_modules_and_reads_what_exists(tmp_path: Path) -> None:
    sysroot = tmp_path / "sysroot"
    conf = sysroot / "usr/lib/modules-load.d/hostbuild.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("# Rendered by hostbuild from profile worker.\noverlay\n\nbr_netfilter\n")
    (sysroot / "usr/bin").mkdir(parents=True)
    (sysroot / "usr/bin/python3.13").write_bytes(b"\x7fELF")  # no containerd, no systemd libraries
    stubs = {"modprobe": 'echo "modprobe $*" >&2', "cat": 'echo "cat $*" >&2; exec /bin/cat "$@"'}
    result = run_script(READAHEAD, tmp_path, stubs, HOSTBUILD_SYSROOT=os.fspath(sysroot))
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        "modprobe -a -q -- overlay br_netfilter",
        f"cat -- {sysroot}/usr/bin/python3.13",
    ]
