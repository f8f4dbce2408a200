"""A fake node for the updater: partitions as regular files, a sysfs tree, recorded commands.

`FakeNode` lays out layout 2 (ESP, two slots, var) with slot a running 0.1.0-2 and slot b
holding 0.1.0-1. Its command runner answers sfdisk (keeping the partition table), bootctl,
veritysetup (a fake root hash: the sha256 of the slot's two images) and kubelet; its stream
"decompresses" by reading the file as it is (test payloads are stored uncompressed).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from builder.node import slots
from builder.node.command import CommandFailed

if TYPE_CHECKING:
    from builder.node.updater import Node

IMAGE = "worker-standin"
MiB = 1 << 20
ROOT_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
VERITY_TYPE = "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5"
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
VAR_TYPE = "4D21B016-B534-45C2-A9FB-5C16E091FD2D"


@dataclass(frozen=True)
class Image:
    """A version's three files (uncompressed: the fake stream copies them) and its root hash."""

    version: str
    root: bytes
    verity: bytes
    uki: bytes

    @property
    def roothash(self) -> str:
        return hashlib.sha256(self.root + self.verity).hexdigest()

    def files(self) -> dict[str, bytes]:
        return {"root": self.root, "verity": self.verity, "uki": self.uki}

    def entry(self, **kw: Any) -> dict[str, Any]:
        """Its channel manifest entry."""
        files = {}
        for role, data in self.files().items():
            digest = hashlib.sha256(data).hexdigest()
            files[role] = {"target": f"{IMAGE}/{self.version}/{role}.zst", "size": len(data),
                           "sha256": digest, "compressed_size": len(data),
                           "compressed_sha256": digest}  # fmt: skip
        return {"version": self.version, "roothash": self.roothash, "layout": 2,
                "kubelet_minor": "1.35", "upgrade_from": None, "files": files, **kw}  # fmt: skip


def make_image(version: str, root_size: int = 3 * MiB + 123) -> Image:
    seed = version.encode()
    root = (hashlib.sha256(seed).digest() * (root_size // 32 + 1))[:root_size]
    verity = hashlib.sha256(seed + b"v").digest() * 1000
    return Image(version, root, verity, b"MZ" + hashlib.sha256(seed + b"u").digest() * 500)


class FakeNode:
    def __init__(self, tmp: Path, slot_size: int = 8 * MiB) -> None:
        self.tmp = tmp
        self.root = tmp / "root"
        self.dev = tmp / "dev"
        self.sys = tmp / "sys"
        self.esp = tmp / "esp"
        self.calls: list[list[str]] = []
        self.hooks: dict[str, Callable[[list[str]], None]] = {}
        self.images: dict[str, Image] = {}
        self.rebooted = 0
        for d in (self.root / "etc", self.root / "proc/sys/kernel/random", self.dev,
                  self.esp / "EFI/Linux", self.root / "run/hostbuild"):  # fmt: skip
            d.mkdir(parents=True, exist_ok=True)
        self.os_release("0.1.0-2")
        self.boot("boot-1")
        old = make_image("0.1.0-1")
        self.images[old.roothash] = old
        a, b = (
            slots.roothash_uuids(make_image("0.1.0-2").roothash),
            slots.roothash_uuids(old.roothash),
        )
        layout = [
            ("esp", ESP_TYPE, 4 * MiB, "11111111-1111-1111-1111-111111111111"),
            (f"{IMAGE}_0.1.0-2", ROOT_TYPE, slot_size, a[0]),
            (f"{IMAGE}_0.1.0-2_verity", VERITY_TYPE, MiB, a[1]),
            (f"{IMAGE}_0.1.0-1", ROOT_TYPE, slot_size, b[0]),
            (f"{IMAGE}_0.1.0-1_verity", VERITY_TYPE, MiB, b[1]),
            ("var", VAR_TYPE, 16 * MiB, "22222222-2222-2222-2222-222222222222"),
        ]
        self.table: list[dict[str, Any]] = []
        start = 2048
        for number, (label, ptype, size, partuuid) in enumerate(layout, start=1):
            node = self.dev / f"vda{number}"
            with node.open("wb") as f:
                f.truncate(size)
            self.table.append({"node": os.fspath(node), "start": start, "size": size // 512,
                               "type": ptype, "uuid": partuuid.upper(), "name": label})  # fmt: skip
            start += size // 512
            part = self.sys / "devices/pci0/block/vda" / node.name
            (part / "holders").mkdir(parents=True)
            (part / "dev").write_text(f"254:{number}\n")
            (part / "partition").write_text(f"{number}\n")
            link = self.sys / "class/block" / node.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(part)
        (self.dev / "vda4").write_bytes(old.root)  # slot b holds 0.1.0-1
        with (self.dev / "vda4").open("r+b") as f:
            f.truncate(slot_size)
        (self.dev / "vda5").write_bytes(old.verity.ljust(MiB, b"\0"))
        self.dm = self.sys / "devices/virtual/block/dm-0"
        self.running_slot("a")
        st = os.stat(self.root)
        top = self.sys / "dev/block" / f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        top.parent.mkdir(parents=True)
        top.symlink_to(self.dm)
        (self.esp / f"EFI/Linux/{IMAGE}_0.1.0-2.efi").write_bytes(b"running")
        (self.esp / f"EFI/Linux/{IMAGE}_0.1.0-1.efi").write_bytes(b"previous")
        (self.esp / "EFI/Linux/other_1.0.0-1.efi").write_bytes(b"not this image's")
        self.system = slots.System(sysfs=self.sys, dev=self.dev, root=self.root, run=self.run,
                                   stream=self.stream)  # fmt: skip

    @property
    def node(self) -> Node:
        """The node as the updater sees it (a new object each time: it holds no state)."""
        from builder.node.updater import Node

        return Node(root=self.root, system=self.system, reboot=self.reboot, timeout=2.0)

    # the node's situation
    def os_release(self, version: str) -> None:
        (self.root / "etc/os-release").write_text(
            f'NAME="hostbuild"\nIMAGE_ID={IMAGE}\nIMAGE_VERSION={version}\n'
        )

    def boot(self, boot_id: str) -> None:
        (self.root / "proc/sys/kernel/random/boot_id").write_text(boot_id + "\n")

    def running_slot(self, name: str) -> None:
        slaves = self.dm / "slaves"
        if slaves.exists():
            for link in slaves.iterdir():
                link.unlink()
        slaves.mkdir(parents=True, exist_ok=True)
        for number in (2, 3) if name == "a" else (4, 5):
            (slaves / f"vda{number}").symlink_to(self.sys / f"devices/pci0/block/vda/vda{number}")

    def updates(self, url: str, **extra: Any) -> None:
        data = {"repository": url, "channel": "stable", **extra}
        (self.root / "run/hostbuild/updates.json").write_text(json.dumps(data))

    def partition(self, number: int) -> dict[str, Any]:
        return self.table[number - 1]

    def ukis(self) -> list[str]:
        return sorted(p.name for p in (self.esp / "EFI/Linux").iterdir())

    def reboot(self) -> None:
        self.rebooted += 1

    # the commands
    def run(self, argv: Sequence[str], timeout: float = 30.0) -> str:
        argv = list(argv)
        self.calls.append(argv)
        hook = self.hooks.get(Path(argv[0]).name)
        if hook is not None:
            hook(argv)
        if argv[:2] == ["sfdisk", "--json"]:
            table = {"label": "gpt", "device": argv[2], "unit": "sectors", "sectorsize": 512,
                     "partitions": self.table}  # fmt: skip
            return json.dumps({"partitiontable": table})
        if argv[0] == "sfdisk" and argv[1] in ("--part-label", "--part-uuid"):
            key = "name" if argv[1] == "--part-label" else "uuid"
            self.partition(int(argv[3]))[key] = argv[4]
            return ""
        if argv[:2] == ["veritysetup", "verify"]:
            image = self.images.get(argv[4])
            data, hashes = Path(argv[2]).read_bytes(), Path(argv[3]).read_bytes()
            if image is None or data[: len(image.root)] + hashes[: len(image.verity)] != (
                image.root + image.verity
            ):
                raise CommandFailed(f"{' '.join(argv)} exited 1: Verification failed.")
            return ""
        if argv == ["bootctl", "--print-esp-path"]:
            return f"{self.esp}\n"
        if argv[1:] == ["--version"]:
            return "Kubernetes v1.35.2\n"
        raise CommandFailed(f"{argv}: not faked")

    @contextmanager
    def stream(self, argv: Sequence[str], timeout: float = 60.0) -> Iterator[IO[bytes]]:
        argv = list(argv)
        self.calls.append(argv)
        assert argv[: len(slots.ZSTD)] == list(slots.ZSTD), argv
        hook = self.hooks.get("zstd")
        if hook is not None:
            hook(argv)
        with Path(argv[-1]).open("rb") as f:
            yield f

    def commands(self) -> list[str]:
        """The calls so far, shortened: program and first argument, or what sfdisk set."""
        out = []
        for argv in self.calls:
            if argv[0] == "sfdisk" and argv[1] != "--json":
                out.append(f"sfdisk {argv[1]} {Path(argv[2]).name} {argv[3]} {argv[4]}")
            elif argv[0] == "zstd":
                out.append(f"zstd {Path(argv[-1]).name}")
            else:
                out.append(" ".join(Path(a).name if a.startswith("/") else a for a in argv[:2]))
        return out
