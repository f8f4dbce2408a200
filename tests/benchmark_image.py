"""Image benchmark: `python -m tests.benchmark_image OUTPUT_DIR [--boots N] [--compressors]`.

Prints, measured in one run on this machine:
- the sizes of a built image (raw allocated, qcow2, root erofs, UKI, update payload);
- boot times under QEMU (TCG, the harness of `hostbuild boot`) of that image and of a plain DIB
  `debian-minimal` image assembled and booted the same way (tests/plain_image.py): wall time from
  QEMU start to multi-user.target, to containerd ready and to boot-complete.target, split into
  firmware + loader / kernel / initrd / userspace. Boot 1 is the first boot of a fresh disk
  (hostbuild's creates /var); later boots reboot the same VM. Wall times are read from serial
  console lines timestamped as they appear; the split comes from systemd's monotonic timestamps
  (kernel start = 0), so firmware + loader = wall time - systemd's time of the same moment;
- with --compressors: the root slot built with lz4hc, lz4, zstd and lzma (mkfs time, size, and a
  full-read decompression time as the proxy for read cost at boot).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.build.apt import resolve_mirrors
from builder.build.toolstree import ToolsTree, ensure_tools_tree
from builder.disk.slot import COMPRESSORS, PCLUSTER
from builder.profile.model import Debian
from builder.run import base_environment, run
from builder.vm.qemu import Vm, VmConfig, boot_vm
from tests.plain_image import REPORT, assemble_plain_disk, build_plain_tar
from tests.vm.conftest import cache_dir
from tests.vm.image import make_ssh_key, ssh_config

AGENT = "hostbuild-node: "
HEALTH = "hostbuild-health: (healthy|UNHEALTHY)"
# What every real node has: a NodeConfig (here naming the node only: no cluster, so kubelet
# stays unconfigured and the health gate checks containerd).
NODECONFIG = b"""apiVersion: hostbuild.dev/v1alpha1
kind: NodeConfig
spec:
  node:
    name: bench-worker
"""
RESTART = "reboot: Restarting system"
BOOT_TIMEOUT = 600.0


class SerialClock:
    """Timestamps each serial console line (seconds since QEMU start) as it appears."""

    def __init__(self, vm: Vm, start: float) -> None:
        self.lines: list[tuple[float, str]] = []
        self._vm, self._start, self._stop = vm, start, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        seen = b""
        while not self._stop.is_set():
            now = time.monotonic() - self._start
            try:
                data = self._vm.serial_log.read_bytes()
            except FileNotFoundError:
                data = b""
            if len(data) > len(seen):
                complete = data[: data.rfind(b"\n") + 1]
                for line in complete[len(seen) :].splitlines():
                    self.lines.append((now, line.decode(errors="replace")))
                seen = complete
            time.sleep(0.05)

    def wait(
        self, pattern: str, after: float = 0.0, timeout: float = BOOT_TIMEOUT
    ) -> tuple[float, str]:
        regex = re.compile(pattern)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for at, line in list(self.lines):
                if at > after and regex.search(line):
                    return at, line
            if self._vm.exit_code() is not None:
                break
            time.sleep(0.1)
        raise TimeoutError(f"{pattern!r} not on the serial console {self._vm.serial_log}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Boot:
    """One boot: wall seconds from QEMU start (or the reboot) and systemd's monotonic seconds."""

    firmware: float  # QEMU start or reboot -> kernel start: firmware, systemd-boot, UKI load
    initrd_start: float
    userspace_start: float
    marks: dict[str, float]  # unit -> monotonic seconds it became active


def _seconds(usec: str) -> float:
    return int(usec) / 1e6


def worker_boots(raw: Path, tools: ToolsTree, work: Path, boots: int, **options: Any) -> list[Boot]:
    """`boots` boots of `raw` (a fresh disk, then reboots); `options`: more VmConfig fields."""
    key = make_ssh_key(work)
    credentials = {"ssh.authorized_keys.root": key.public.encode(),
                   "hostbuild.nodeconfig": NODECONFIG}  # fmt: skip
    config = VmConfig(image=raw, credentials=credentials, serial_log=work / "worker-serial.log",
                      **options)  # fmt: skip
    units = ["hostbuild-node.service", "multi-user.target", "containerd.service",
             "boot-complete.target"]  # fmt: skip
    query = "systemctl is-system-running --wait >/dev/null; " + "; ".join(
        [f"systemctl show -P {p}" for p in ("InitRDTimestampMonotonic",
                                            "UserspaceTimestampMonotonic")]
        + [f"systemctl show -P ActiveEnterTimestampMonotonic {u}" for u in units]
    )  # fmt: skip
    results = []
    start = time.monotonic()
    with boot_vm(config, tools, work / "worker-vm") as vm:
        clock = SerialClock(vm, start)
        try:
            since = 0.0
            for n in range(boots):
                # the node agent's console line, at every boot (the health gate runs only on
                # boots that count tries: a blessed entry has no boot-complete.target)
                agent, _ = clock.wait(AGENT, after=since)
                if n == 0:  # the first boot counts tries: SSH polls start after the verdict
                    clock.wait(HEALTH, after=agent)
                vm.wait_for_ssh(BOOT_TIMEOUT)
                ssh = ssh_config(work / "ssh_config", vm.ssh_port, key)
                out = run(["ssh", "-F", ssh, "vm", query]).stdout.split()
                marks = {u: _seconds(v) for u, v in zip(units, out[2:], strict=True) if int(v)}
                firmware = agent - since - marks["hostbuild-node.service"]
                results.append(Boot(firmware, _seconds(out[0]), _seconds(out[1]), marks))
                if n + 1 < boots:
                    run(["ssh", "-F", ssh, "vm", "systemctl reboot"], check=False)
                    since, _ = clock.wait(RESTART, after=agent)
        finally:
            clock.stop()
    return results


def plain_boots(raw: Path, tools: ToolsTree, work: Path) -> list[Boot]:
    config = VmConfig(image=raw, serial_log=work / "plain-serial.log")
    results = []
    start = time.monotonic()
    with boot_vm(config, tools, work / "plain-vm") as vm:
        clock = SerialClock(vm, start)
        try:
            since = 0.0
            while True:
                try:
                    at, line = clock.wait(rf"{REPORT} boot=", after=since)
                except TimeoutError:
                    break
                fields = dict(f.split("=", 1) for f in line.split(REPORT, 1)[1].split())
                firmware = at - since - float(fields["uptime"])
                marks = {"multi-user.target": _seconds(fields["multi_user"])}
                results.append(Boot(firmware, _seconds(fields["initrd"]),
                                    _seconds(fields["userspace"]), marks))  # fmt: skip
                try:
                    since, _ = clock.wait(RESTART, after=at, timeout=120)
                except TimeoutError:
                    break  # powered off after the last boot
        finally:
            clock.stop()
    return results


def print_boots(name: str, boots: list[Boot]) -> None:
    for n, b in enumerate(boots, 1):
        cells = []
        for unit in ("multi-user.target", "containerd.service", "boot-complete.target"):
            at = b.marks.get(unit)
            cells.append(f"{b.firmware + at:6.1f}" if at is not None else f"{'-':>6}")
        user = b.marks["multi-user.target"] - b.userspace_start
        # an initrd without systemd (initramfs-tools) leaves no timestamp: kernel + initrd as one
        split = (f"{b.initrd_start:6.1f} {b.userspace_start - b.initrd_start:6.1f}"
                 if b.initrd_start else f"{'k+i':>6} {b.userspace_start:6.1f}")  # fmt: skip
        print(
            f"{name:<26} {n:>4} {cells[0]} {cells[1]} {cells[2]} {b.firmware:6.1f} "
            f"{split} {user:6.1f}"
        )


def image_sizes(output: Path, manifest: dict[str, Any]) -> None:
    name = manifest["name"]
    raw = output / f"{name}.raw"
    payload = sum(f.stat().st_size for f in (output / f"{name}.update").iterdir())
    uki = manifest["payload"]["files"]["uki"]["size"]
    rows = [
        ("raw (allocated)", raw.stat().st_blocks * 512),
        ("raw (apparent)", raw.stat().st_size),
        ("qcow2", (output / f"{name}.qcow2").stat().st_size),
        ("root erofs", manifest["slot"]["erofs_bytes"]),
        ("root verity", manifest["slot"]["verity_bytes"]),
        ("UKI", uki),
        ("update payload", payload),
    ]
    print(f"{'output':<18} {'MiB':>8}")
    for label, size in rows:
        print(f"{label:<18} {size / 2**20:>8.1f}")


def compressors(raw: Path, manifest: dict[str, Any], tools: ToolsTree, work: Path) -> None:
    part = next(p for p in manifest["layout"]["partitions"] if p["role"] == "root-a")
    erofs = work / "root.erofs"
    with raw.open("rb") as src, erofs.open("wb") as dst:
        src.seek(part["start"])
        dst.write(src.read(manifest["slot"]["erofs_bytes"]))
    tree = work / "tree"
    tools.run(["fsck.erofs", f"--extract={tree}", erofs], binds=[work])
    print(f"{'compressor':<10} {'mkfs s':>7} {'MiB':>7} {'read s':>7}")
    for name, option in COMPRESSORS.items():
        image = work / f"{name}.erofs"
        start = time.monotonic()
        tools.run(["mkfs.erofs", f"-z{option}", f"-C{PCLUSTER}", image, tree], binds=[work])
        mkfs = time.monotonic() - start
        out = work / f"read-{name}"
        start = time.monotonic()
        tools.run(["fsck.erofs", f"--extract={out}", image], binds=[work])
        read = time.monotonic() - start
        shutil.rmtree(out)
        print(f"{name:<10} {mkfs:>7.1f} {image.stat().st_size / 2**20:>7.1f} {read:>7.1f}")
        image.unlink()
    shutil.rmtree(tree)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output", type=Path, help="a `hostbuild image` output directory")
    parser.add_argument("--boots", type=int, default=2, help="boots per image (default 2)")
    parser.add_argument("--compressors", action="store_true", help="also compare compressors")
    parser.add_argument("--plain-tar", type=Path, help="reuse a DIB debian-minimal tar")
    args = parser.parse_args()
    manifest = json.loads((args.output / "manifest.json").read_text())
    raw = args.output / f"{manifest['name']}.raw"
    mirrors = resolve_mirrors(Debian(release=manifest["debian"]["release"]))
    tools = ensure_tools_tree(cache_dir(), resolve_mirrors(Debian(release="trixie")).main)
    work = Path(tempfile.mkdtemp(prefix="hostbuild-bench-image-"))
    try:
        image_sizes(args.output, manifest)
        tar = args.plain_tar or build_plain_tar(work, mirrors, manifest["debian"]["release"])
        env = base_environment()
        env["MTOOLS_SKIP_CHECK"] = "1"
        esp = next(p for p in manifest["layout"]["partitions"] if p["role"] == "esp")
        esp_image = work / "worker-esp.img"
        run(["dd", f"if={raw}", f"of={esp_image}", "bs=1M", f"skip={esp['start'] // 2**20}",
             f"count={esp['size'] // 2**20}", "status=none"])  # fmt: skip
        sd_boot = work / "systemd-bootx64.efi"
        run(["mcopy", "-i", esp_image, "::/EFI/BOOT/BOOTX64.EFI", sd_boot], env=env)
        plain = assemble_plain_disk(tar, sd_boot, work, args.boots)
        print(
            "\nboot (QEMU TCG; seconds)   boot  multi-user containerd boot-complete | "
            "firmware+loader kernel initrd userspace-to-multi-user"
        )
        print(
            f"{'image':<26} {'#':>4} {'mu':>6} {'ctrd':>6} {'bc':>6} {'fw':>6} {'kern':>6} "
            f"{'initrd':>6} {'user':>6}"
        )
        worker = worker_boots(raw, tools, work, args.boots)
        print_boots(manifest["name"], worker)
        baseline = plain_boots(plain, tools, work)
        print_boots("plain DIB debian-minimal", baseline)
        for n, (w, p) in enumerate(zip(worker, baseline, strict=False), 1):
            theirs = p.firmware + p.marks["multi-user.target"]
            ours_mu = w.firmware + w.marks["multi-user.target"]
            line = f"boot {n}: the plain image's multi-user.target {theirs:.1f} s; ours "
            if (complete := w.marks.get("boot-complete.target")) is not None:
                ours = w.firmware + complete
                line += (f"boot-complete.target {ours:.1f} s (target < 25 s) = "
                         f"{ours / theirs:.2f} x, ")  # fmt: skip
            print(
                f"{line}multi-user.target {ours_mu:.1f} s = {ours_mu / theirs:.2f} x (target < 0.6)"
            )
        if args.compressors:
            print()
            compressors(raw, manifest, tools, work)
    except BaseException:
        print(f"failed; serial logs and work files kept in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
