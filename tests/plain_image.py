"""The boot benchmark's baseline: a plain DIB `debian-minimal` image, booted the way hostbuild's is.

DIB's own disk outputs need device-mapper on the build host (kpartx), so the benchmark lets DIB
build its tar and assembles the disk as DIB's `vm` + `bootloader` elements would lay it out, with
the same firmware and boot loader as hostbuild's images: a GPT with an ESP (systemd-boot, DIB's
kernel and initramfs-tools initrd as a boot loader entry) and one read-write ext4 root, DIB's
default kernel command line, its network wait masked. A report unit prints, after
multi-user.target, the boot's timestamps on the console, then reboots until the asked number of
boots is reached and powers off.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from builder.build.apt import Mirrors
from builder.build.dib import dib_command
from builder.build.toolstree import ToolsTree
from builder.disk.gpt import ESP_TYPE, ROOT_TYPE, Layout, Partition, assemble_disk
from builder.disk.slot import MOUNT_POINTS, extract_tree
from builder.run import base_environment, run, stream

MiB = 1024 * 1024
GiB = 1024 * MiB
ESP_BYTES = 256 * MiB
# DIB's bootloader element: DIB_BOOTLOADER_DEFAULT_CMDLINE and its serial console settings
DIB_CMDLINE = "console=tty0 console=ttyS0,115200 no_timer_check nofb nomodeset gfxpayload=text"
NETWORK_WAITS = ("systemd-networkd-wait-online.service", "ifupdown-wait-online.service")
REPORT = "BENCH-REPORT"

REPORT_SCRIPT = """#!/bin/sh
# Boot benchmark: print this boot's timestamps (CLOCK_MONOTONIC, microseconds) on the console.
n=$(($(cat /var/lib/bench-boots 2>/dev/null || echo 0) + 1))
echo "$n" > /var/lib/bench-boots
sync
echo "{report} boot=$n uptime=$(cut -d' ' -f1 /proc/uptime)" \\
  "initrd=$(systemctl show -P InitRDTimestampMonotonic)" \\
  "userspace=$(systemctl show -P UserspaceTimestampMonotonic)" \\
  "multi_user=$(systemctl show -P ActiveEnterTimestampMonotonic multi-user.target)"
if [ "$n" -lt {boots} ]; then systemctl reboot --no-block; else systemctl poweroff --no-block; fi
"""

REPORT_UNIT = """[Unit]
Description=Boot benchmark report
After=multi-user.target

[Service]
Type=oneshot
StandardOutput=journal+console
ExecStart=/usr/local/sbin/bench-report

[Install]
WantedBy=multi-user.target
"""


def build_plain_tar(work: Path, mirrors: Mirrors, release: str) -> Path:
    """`disk-image-create debian-minimal -t tar` from the same mirror hostbuild uses."""
    env = base_environment()
    env.update(PATH=f"{dib_command().parent}:{env['PATH']}", DIB_RELEASE=release,
               DIB_DISTRIBUTION_MIRROR=mirrors.main, TMPDIR=os.fspath(work))  # fmt: skip
    if mirrors.security:
        env["DIB_DEBIAN_SECURITY_MIRROR"] = mirrors.security
    out = work / "debian-minimal"
    stream([dib_command(), "-a", "amd64", "-t", "tar", "--image-cache", work / "dib-cache",
            "-o", out, "debian-minimal"], env=env)  # fmt: skip
    return out.with_name("debian-minimal.tar")


def assemble_plain_disk(tar: Path, sd_boot: Path, work: Path, boots: int) -> Path:
    """The DIB tree as a bootable GPT disk: ESP with systemd-boot + a Type #1 entry, ext4 root."""
    tree = work / "plain-tree"
    extract_tree(tar, tree)
    for name, mode in MOUNT_POINTS.items():  # DIB's tar leaves out the API file system dirs
        (tree / name).mkdir(exist_ok=True)
        (tree / name).chmod(mode)
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise RuntimeError(f"expected one kernel in the DIB tree, found {kernels}")
    kver = kernels[0].name.removeprefix("vmlinuz-")
    initrd = tree / "boot" / f"initrd.img-{kver}"
    script = tree / "usr/local/sbin/bench-report"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(REPORT_SCRIPT.format(report=REPORT, boots=boots))
    script.chmod(0o755)
    (tree / "etc/systemd/system/bench-report.service").write_text(REPORT_UNIT)
    wants = tree / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "bench-report.service").symlink_to("/etc/systemd/system/bench-report.service")

    root_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, "hostbuild-benchmark-plain-root"))
    root = work / "plain-root.ext4"
    used = sum(f.stat().st_size for f in tree.rglob("*") if f.is_file() and not f.is_symlink())
    root_bytes = (used * 2 // GiB + 1) * GiB
    # DIB's root label (its fstab mounts LABEL=cloudimg-rootfs read-write)
    run(["mkfs.ext4", "-q", "-L", "cloudimg-rootfs", "-d", tree, root, f"{root_bytes // 1024}k"])

    esp = work / "plain-esp.img"
    env = base_environment()
    env["MTOOLS_SKIP_CHECK"] = "1"
    run(["mkfs.vfat", "-F", "32", "-n", "ESP", "-C", esp, str(ESP_BYTES // 1024)])
    for directory in ("EFI", "EFI/BOOT", "loader", "loader/entries"):
        run(["mmd", "-i", esp, f"::/{directory}"], env=env)
    masks = " ".join(f"systemd.mask={unit}" for unit in NETWORK_WAITS)
    entry = work / "plain.conf"
    entry.write_text(
        f"title plain DIB debian-minimal\nlinux /vmlinuz\ninitrd /initrd.img\n"
        f"options root=PARTUUID={root_uuid} ro {DIB_CMDLINE} {masks}\n"
    )
    loader = work / "loader.conf"
    loader.write_text("timeout 0\neditor no\n")
    for source, target in ((sd_boot, "EFI/BOOT/BOOTX64.EFI"), (kernels[0], "vmlinuz"),
                           (initrd, "initrd.img"), (loader, "loader/loader.conf"),
                           (entry, "loader/entries/plain.conf")):  # fmt: skip
        run(["mcopy", "-i", esp, "-o", source, f"::/{target}"], env=env)

    layout = Layout(1, str(uuid.uuid5(uuid.NAMESPACE_URL, "hostbuild-benchmark-plain")),
                    ESP_BYTES + root_bytes + 2 * MiB, (
        Partition(1, "esp", "esp", ESP_TYPE, str(uuid.uuid4()), MiB, ESP_BYTES),
        Partition(2, "root", "root", ROOT_TYPE, root_uuid, MiB + ESP_BYTES, root_bytes),
    ))  # fmt: skip
    return assemble_disk(
        ToolsTree(Path("/")), layout, {"esp": esp, "root": root}, work / "plain.raw"
    )
