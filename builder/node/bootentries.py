"""This image's UKIs on the ESP (`EFI/Linux/IMAGEID_VERSION[+LEFT[-DONE]].efi`).

A new UKI goes in last, boot-counted (`+3`), written under a name systemd-boot ignores and
renamed into place once complete and synced; removing the UKIs of other versions before a
slot is written leaves nothing that could boot a half-written slot.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
from pathlib import Path
from typing import IO

from . import failpoints
from .channel import Payload
from .command import CommandFailed
from .slots import CHUNK, ZSTD, System
from .updatestate import BootEntry, UpdateError, fsync_dir

TRIES = 3
LINUX = "EFI/Linux"
ENTRY = re.compile(r"^(?P<version>[0-9]+\.[0-9]+\.[0-9]+-[0-9]+)(?:\+(?P<left>[0-9]+)"
                   r"(?:-(?P<done>[0-9]+))?)?\.efi$")  # fmt: skip
TMP_SUFFIX = ".tmp"  # not .efi: systemd-boot never lists a UKI being written


def esp_path(system: System) -> Path:
    """The ESP's mount point (gpt-auto mounts it at /boot; bootctl finds it)."""
    try:
        return Path(system.run(["bootctl", "--print-esp-path"], 30.0).strip())
    except CommandFailed as e:
        raise UpdateError("system", f"finding the ESP: {e}") from None


def boot_entries(esp: Path, image_id: str) -> dict[str, BootEntry]:
    """This image's UKIs by version (a version with two files: the one counting tries wins)."""
    found: dict[str, BootEntry] = {}
    try:
        names = sorted(p.name for p in (esp / LINUX).iterdir())
    except OSError:
        return found
    prefix = f"{image_id}_"
    for name in names:
        m = ENTRY.match(name.removeprefix(prefix)) if name.startswith(prefix) else None
        if m is None:
            continue
        left, done = m.group("left"), m.group("done")
        entry = BootEntry(
            m.group("version"), name, int(left) if left is not None else None,
            int(done) if done is not None else None,
        )  # fmt: skip
        if entry.version not in found or entry.tries_left is not None:
            found[entry.version] = entry
    return found


def remove_entries(esp: Path, image_id: str, keep: str) -> list[str]:
    """Remove every UKI of this image but `keep`'s (and UKIs left half-written); their names."""
    linux = esp / LINUX
    prefix = f"{image_id}_"
    removed = []
    try:
        names = sorted(p.name for p in linux.iterdir())
    except OSError as e:
        raise UpdateError("system", f"listing {linux}: {e}") from None
    for name in names:
        if name.startswith("." + prefix) and name.endswith(TMP_SUFFIX):
            (linux / name).unlink(missing_ok=True)
            continue
        m = ENTRY.match(name.removeprefix(prefix)) if name.startswith(prefix) else None
        if m is not None and m.group("version") != keep:
            try:
                (linux / name).unlink()
            except OSError as e:
                raise UpdateError("system", f"removing {linux / name}: {e}") from None
            removed.append(name)
    fsync_dir(linux)
    return removed


def check_space(esp: Path, image_id: str, keep: str, payload: Payload) -> None:
    """The ESP has room for the new UKI once the other versions' UKIs are gone."""
    linux = esp / LINUX
    try:
        st = os.statvfs(linux)
    except OSError as e:
        raise UpdateError("system", f"{linux}: {e}") from None
    freed = sum(
        (linux / e.name).stat().st_size
        for v, e in boot_entries(esp, image_id).items()
        if v != keep and (linux / e.name).exists()
    )
    free = st.f_bavail * st.f_frsize + freed
    if payload.size > free:
        raise UpdateError(
            "too-large", f"{payload.target} is {payload.size} bytes, the ESP has {free} free"
        )


def _sync(f: IO[bytes]) -> None:
    f.flush()
    os.fsync(f.fileno())


def read_uki(system: System, source: Path, payload: Payload) -> bytes:
    """`source` decompressed into memory, checked against its signed size and sha256."""
    chunks: list[bytes] = []
    written = 0
    try:
        with system.stream([*ZSTD, os.fspath(source)], 60.0) as out:
            while chunk := out.read(CHUNK):
                written += len(chunk)
                if written > payload.size:
                    raise UpdateError(
                        "verify", f"{payload.target} decompresses to more than {payload.size} bytes"
                    )
                chunks.append(chunk)
    except CommandFailed as e:
        raise UpdateError("write", f"decompressing {source.name}: {e}") from None
    data = b"".join(chunks)
    if written != payload.size or hashlib.sha256(data).hexdigest() != payload.sha256:
        raise UpdateError(
            "verify", f"{payload.target} decompressed to {written} bytes that are not the "
            f"manifest's {payload.size} with sha256 {payload.sha256}",
        )  # fmt: skip
    return data


def install_uki(system: System, esp: Path, image_id: str, version: str, source: Path,
                payload: Payload) -> str:  # fmt: skip
    """Decompress `source` to `EFI/Linux/IMAGEID_VERSION+3.efi` (checked, synced, renamed)."""
    name = f"{image_id}_{version}+{TRIES}.efi"
    linux = esp / LINUX
    tmp = linux / f".{name}{TMP_SUFFIX}"
    digest = hashlib.sha256()
    written = 0
    try:
        with tmp.open("wb") as f, system.stream([*ZSTD, os.fspath(source)], 60.0) as out:
            while chunk := out.read(CHUNK):
                written += len(chunk)
                if written > payload.size:
                    raise UpdateError(
                        "verify", f"{payload.target} decompresses to more than {payload.size} bytes"
                    )
                digest.update(chunk)
                f.write(chunk)
                failpoints.reached("uki-copy", written >= payload.size // 2,
                                   functools.partial(_sync, f))  # fmt: skip
            f.flush()
            os.fsync(f.fileno())
        if written != payload.size or digest.hexdigest() != payload.sha256:
            raise UpdateError(
                "verify", f"{payload.target} decompressed to {written} bytes with sha256 "
                f"{digest.hexdigest()}, the manifest signs {payload.size} and {payload.sha256}",
            )  # fmt: skip
        os.replace(tmp, linux / name)
        fsync_dir(linux)
    except CommandFailed as e:
        raise UpdateError("write", f"decompressing {source.name}: {e}") from None
    except OSError as e:
        raise UpdateError("write", f"writing {linux / name}: {e}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return name
