"""The A/B root slots of the disk the node booted from: which runs, and writing the other.

The running slot is the one whose partitions back `/` (dm-verity's slaves in sysfs); a write
to any partition backing `/` or held open by another device is refused. A slot is written by
streaming its zstd payload into the partition (`zstd -d` into the device opened write-only),
checked against the signed size and sha256 on the way, then `veritysetup verify` against the
signed root hash; its UUIDs and label are set (sfdisk) only after that.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import stat
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import command, failpoints
from .channel import Payload
from .command import CommandFailed
from .updatestate import UpdateError

# Discoverable Partitions Specification type GUIDs of root and root verity partitions
ROOT_TYPES = {
    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",  # x86-64
    "b921b045-1df0-41c3-af44-4c6f280d3fae",  # arm64
}
VERITY_TYPES = {
    "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5",  # x86-64
    "df3300ce-d69f-4c92-978c-9bfb0f38d820",  # arm64
}
EMPTY_LABEL = "_empty"
MAX_LABEL = 36  # UTF-16 code units in a GPT partition name
CHUNK = 1 << 20
# A payload's match window is 32 MiB at most (builder/disk/payload.py): zstd refuses a frame
# that needs more, so decompressing never takes more memory, whatever the payload's size
ZSTD = ("zstd", "-d", "-c", "-q", "--no-progress", "--long=25")
VERIFY_TIMEOUT = 3600.0  # veritysetup reads the whole slot at idle I/O priority


@dataclass(frozen=True)
class System:
    """Where the updater sees the node's devices; tests point these at fakes."""

    sysfs: Path = Path("/sys")
    dev: Path = Path("/dev")
    root: Path = Path("/")  # its st_dev is the device-mapper device `/` is mounted from
    run: Callable[[Sequence[str], float], str] = command.run
    stream: Callable[[Sequence[str], float], AbstractContextManager[IO[bytes]]] = field(
        default=command.stream
    )


@dataclass(frozen=True)
class Partition:
    node: Path  # /dev/vda4
    number: int
    type: str
    uuid: str
    label: str
    size: int  # bytes

    @property
    def name(self) -> str:  # the kernel's name, as in sysfs
        return self.node.name


@dataclass(frozen=True)
class Slot:
    name: str  # a, b: in the order of the partition table
    root: Partition
    verity: Partition

    def version(self, image_id: str) -> str | None:
        """The version the slot's label names (None: `_empty` or another image's)."""
        prefix = f"{image_id}_"
        label = self.root.label
        return label[len(prefix) :] if label.startswith(prefix) else None

    def describe(self) -> str:
        return f"slot {self.name} ({self.root.node}, {self.verity.node}): {self.root.label}"


@dataclass(frozen=True)
class Disk:
    node: Path
    slots: tuple[Slot, ...]
    running: Slot

    @property
    def inactive(self) -> Slot:
        return next(s for s in self.slots if s != self.running)


def roothash_uuids(roothash: str) -> tuple[str, str]:
    """(root, verity) partition UUIDs of a root hash: its halves (DPS, as builder.disk.gpt)."""
    return str(uuid.UUID(hex=roothash[:32])), str(uuid.UUID(hex=roothash[32:]))


def backing_partitions(system: System) -> set[str]:
    """Kernel names of the partitions under `/` (the dm-verity device's slaves, recursively)."""
    st = os.stat(system.root)
    top = system.sysfs / "dev" / "block" / f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    if not (top / "slaves").is_dir():
        raise UpdateError("system", f"/ is not on a device-mapper device ({top} has no slaves)")
    found: set[str] = set()
    pending = [top]
    while pending:
        device = pending.pop()
        slaves = sorted((device / "slaves").iterdir()) if (device / "slaves").is_dir() else []
        if not slaves:
            found.add(device.resolve().name)
        pending += slaves
    return found


def discover(system: System) -> Disk:
    """The disk `/` was booted from, its two slots, and which of them runs."""
    backing = backing_partitions(system)
    disks = {(system.sysfs / "class" / "block" / name).resolve().parent.name for name in backing}
    if len(disks) != 1:
        raise UpdateError("system", f"/ is backed by partitions of {sorted(disks)}, not one disk")
    disk = system.dev / disks.pop()
    parts = read_table(system, disk)
    roots = [p for p in parts if p.type in ROOT_TYPES]
    verities = [p for p in parts if p.type in VERITY_TYPES]
    if len(roots) != 2 or len(verities) != 2:
        raise UpdateError(
            "system", f"{disk}: {len(roots)} root and {len(verities)} root verity partitions, "
            "layout 2 has two of each",
        )  # fmt: skip
    slots = tuple(Slot(n, r, v) for n, r, v in zip("ab", roots, verities, strict=True))
    running = [s for s in slots if {s.root.name, s.verity.name} <= backing]
    if len(running) != 1:
        raise UpdateError("system", f"{disk}: no slot holds both partitions under / ({backing})")
    return Disk(disk, slots, running[0])


def read_table(system: System, disk: Path) -> list[Partition]:
    try:
        data = json.loads(system.run(["sfdisk", "--json", os.fspath(disk)], 60.0))
        table = data["partitiontable"]
        sector = int(table.get("sectorsize", 512))
        return [_partition(p, sector) for p in table["partitions"]]
    except CommandFailed as e:
        raise UpdateError("system", f"reading the partition table: {e}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise UpdateError("system", f"{disk}: unexpected sfdisk --json output ({e!r})") from None


def _partition(p: dict[str, Any], sector: int) -> Partition:
    node = Path(p["node"])
    m = re.search(r"([0-9]+)$", node.name)
    if m is None:
        raise ValueError(f"no partition number in {node}")
    return Partition(
        node, int(m.group(1)), str(p["type"]).lower(), str(p.get("uuid", "")).lower(),
        str(p.get("name", "")), int(p["size"]) * sector,
    )  # fmt: skip


def check_target(system: System, part: Partition, payload: Payload, label: str) -> None:
    """Refuse to write `part`: backing `/`, held by another device, too small, a bad label."""
    backing = backing_partitions(system)
    if part.name in backing or _is_backing_device(system, part, backing):
        raise UpdateError("system", f"refusing to write {part.node}: it backs / (the running slot)")
    holders = system.sysfs / "class" / "block" / part.name / "holders"
    if holders.is_dir() and any(holders.iterdir()):
        held = ", ".join(sorted(h.name for h in holders.iterdir()))
        raise UpdateError("system", f"refusing to write {part.node}: held open by {held}")
    if payload.size > part.size:
        raise UpdateError(
            "too-large", f"{payload.target} is {payload.size} bytes, {part.node} only {part.size}"
        )
    if len(label.encode("utf-16-le")) // 2 > MAX_LABEL:
        raise UpdateError("system", f"partition label {label!r} is longer than {MAX_LABEL}")


def _is_backing_device(system: System, part: Partition, backing: set[str]) -> bool:
    """Whether `part`'s device node is one of `backing` under another name (a link)."""
    try:
        mode = os.stat(part.node)
    except OSError:
        return False
    if not stat.S_ISBLK(mode.st_mode):
        return False
    number = f"{os.major(mode.st_rdev)}:{os.minor(mode.st_rdev)}"
    for name in backing:
        with contextlib.suppress(OSError):
            if (system.sysfs / "class" / "block" / name / "dev").read_text().strip() == number:
                return True
    return False


def set_identity(system: System, disk: Disk, part: Partition, label: str,
                 partuuid: str | None = None) -> None:  # fmt: skip
    """Set `part`'s GPT label (and UUID); refused for partitions backing `/`."""
    if part.name in backing_partitions(system):
        raise UpdateError("system", f"refusing to relabel {part.node}: it backs /")
    argv = [["sfdisk", "--part-label", os.fspath(disk.node), str(part.number), label]]
    if partuuid is not None:
        argv.insert(0, ["sfdisk", "--part-uuid", os.fspath(disk.node), str(part.number), partuuid])
    for a in argv:
        try:
            system.run(a, 60.0)
        except CommandFailed as e:
            raise UpdateError("write", f"setting {part.node}'s identity: {e}") from None


def clear_slot(system: System, disk: Disk, slot: Slot) -> None:
    """Label both partitions of `slot` `_empty`: they no longer name a version."""
    for part in (slot.root, slot.verity):
        if part.label != EMPTY_LABEL:
            set_identity(system, disk, part, EMPTY_LABEL)


def write_partition(system: System, part: Partition, source: Path, payload: Payload,
                    failpoint: str | None = None) -> None:  # fmt: skip
    """Stream the zstd file `source` into `part`; its size and sha256 must be the signed ones.

    `failpoint` is reached once half of it is written (see failpoints).
    """
    digest = hashlib.sha256()
    written = 0
    try:
        fd = os.open(part.node, os.O_WRONLY | os.O_CLOEXEC)  # a device: no O_CREAT, no O_TRUNC
    except OSError as e:
        raise UpdateError("write", f"opening {part.node}: {e}") from None
    try:
        with system.stream([*ZSTD, os.fspath(source)], 60.0) as out:
            for chunk in _chunks(out):
                written += len(chunk)
                if written > payload.size:
                    raise UpdateError(
                        "verify", f"{payload.target} decompresses to more than {payload.size} bytes"
                    )
                digest.update(chunk)
                _write_all(fd, chunk)
                if failpoint is not None:
                    failpoints.reached(failpoint, written >= payload.size // 2,
                                       functools.partial(os.fsync, fd))  # fmt: skip
        os.fsync(fd)
    except CommandFailed as e:
        raise UpdateError("write", f"decompressing {source.name}: {e}") from None
    except OSError as e:
        raise UpdateError("write", f"writing {part.node}: {e}") from None
    finally:
        os.close(fd)
    if written != payload.size or digest.hexdigest() != payload.sha256:
        raise UpdateError(
            "verify", f"{payload.target} decompressed to {written} bytes with sha256 "
            f"{digest.hexdigest()}, the channel manifest signs {payload.size} and {payload.sha256}",
        )  # fmt: skip


def _chunks(out: IO[bytes]) -> Iterator[bytes]:
    while chunk := out.read(CHUNK):
        yield chunk


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def verify_slot(system: System, slot: Slot, roothash: str) -> None:
    """`veritysetup verify`: every block of the slot against the signed root hash."""
    argv = ["veritysetup", "verify", os.fspath(slot.root.node), os.fspath(slot.verity.node),
            roothash]  # fmt: skip
    try:
        system.run(argv, VERIFY_TIMEOUT)
    except CommandFailed as e:
        raise UpdateError(
            "verify", f"slot {slot.name} does not verify against {roothash}: {e}"
        ) from None
