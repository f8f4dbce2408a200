"""A channel's manifest (a signed TUF target) and which of its versions this node takes.

Pure functions: the manifest is parsed and checked here, the choice is made here, and every
newer version that is not taken says why.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .waves import Wave, format_time, not_started, parse_waves

MANIFEST_FORMAT = 1
CHANNEL_TARGET = "channels/{channel}.json"  # the manifest's TUF target path (the build side's too)
NODE_LAYOUT = 2  # the disk layout this node's updater writes (README: "Disk layout v2")
ROLES = ("root", "verity", "uki")
VERSION = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(?:-(0|[1-9][0-9]*))?$")
MINOR = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ChannelError(Exception):
    """The channel manifest is not one this node can read."""


def parse_version(text: str, build: bool = True) -> tuple[int, int, int, int]:
    """`X.Y.Z-N` as numbers (X, Y, Z, N); `build=False` also takes `X.Y.Z` (N = 0)."""
    m = VERSION.match(text)
    if m is None or (build and m.group(4) is None):
        shape = "X.Y.Z-N" if build else "X.Y.Z or X.Y.Z-N"
        raise ValueError(f"{text!r} is not a version {shape}")
    x, y, z, n = m.groups()
    return int(x), int(y), int(z), int(n or 0)


@dataclass(frozen=True)
class Payload:
    """One file of a version: its TUF target, and its size and digest before and after zstd."""

    target: str
    size: int
    sha256: str
    compressed_size: int
    compressed_sha256: str


@dataclass(frozen=True)
class Entry:
    version: str
    roothash: str
    layout: int
    kubelet_minor: str | None
    upgrade_from: str | None
    files: Mapping[str, Payload]
    waves: tuple[Wave, ...] = ()  # none: every node may take it at once

    @property
    def key(self) -> tuple[int, int, int, int]:
        return parse_version(self.version)


@dataclass(frozen=True)
class Manifest:
    channel: str
    image_id: str
    entries: tuple[Entry, ...]
    invalid: tuple[tuple[str, str], ...] = ()  # (version or index, why) of unreadable entries

    def entry(self, version: str) -> Entry | None:
        return next((e for e in self.entries if e.version == version), None)


@dataclass(frozen=True)
class Running:
    """What this node runs: /etc/os-release's IMAGE_ID and IMAGE_VERSION, kubelet's minor."""

    image_id: str
    version: str
    kubelet_minor: str | None = None
    layout: int = NODE_LAYOUT


@dataclass(frozen=True)
class Decision:
    chosen: Entry | None
    skipped: tuple[tuple[str, str], ...]  # (version, why) of each newer version not taken
    # versions held back only by their wave, and when that wave starts
    eligible: Mapping[str, datetime.datetime] | None = None
    seed: int | None = None

    def describe(self) -> dict[str, Any]:
        eligible = self.eligible or {}
        skipped = [
            {"version": v, "reason": r}
            | ({"eligible_at": format_time(eligible[v])} if v in eligible else {})
            for v, r in self.skipped
        ]
        return {"chosen": self.chosen.version if self.chosen else None, "skipped": skipped,
                "seed": self.seed}  # fmt: skip


def parse_manifest(data: Any, channel: str) -> Manifest:
    """The manifest of `channel`; ChannelError if its frame is wrong.

    A version entry that is malformed is kept out and listed in `invalid` (with why), so one
    bad entry does not hide the others.
    """
    if not isinstance(data, dict):
        raise ChannelError(f"the manifest is not a JSON object, got {type(data).__name__}")
    if data.get("format") != MANIFEST_FORMAT:
        raise ChannelError(f"format {data.get('format')!r} is not supported (this node reads 1)")
    if data.get("channel") != channel:
        raise ChannelError(f"the manifest is for channel {data.get('channel')!r}, not {channel!r}")
    image_id = data.get("image_id")
    if not isinstance(image_id, str) or not image_id:
        raise ChannelError(f"image_id must be a non-empty string, got {image_id!r}")
    versions = data.get("versions")
    if not isinstance(versions, list):
        raise ChannelError(f"versions must be a list, got {type(versions).__name__}")
    entries: list[Entry] = []
    invalid: list[tuple[str, str]] = []
    for index, item in enumerate(versions):
        name = item.get("version") if isinstance(item, dict) else None
        label = name if isinstance(name, str) else f"versions[{index}]"
        try:
            entry = _entry(item)
        except ValueError as e:
            invalid.append((label, str(e)))
            continue
        if any(e.version == entry.version for e in entries):
            invalid.append((label, "listed twice"))
            continue
        entries.append(entry)
    return Manifest(channel, image_id, tuple(entries), tuple(invalid))


def _entry(item: Any) -> Entry:
    if not isinstance(item, dict):
        raise ValueError("not a JSON object")
    version = item.get("version")
    if not isinstance(version, str):
        raise ValueError(f"version must be a string X.Y.Z-N, got {version!r}")
    parse_version(version)
    roothash = item.get("roothash")
    if not isinstance(roothash, str) or not SHA256.match(roothash):
        raise ValueError(f"roothash must be 64 lowercase hex digits, got {roothash!r}")
    layout = item.get("layout")
    if not isinstance(layout, int) or isinstance(layout, bool):
        raise ValueError(f"layout must be an integer, got {layout!r}")
    minor = item.get("kubelet_minor")
    if minor is not None and (not isinstance(minor, str) or not MINOR.match(minor)):
        raise ValueError(f"kubelet_minor must be like '1.35' or null, got {minor!r}")
    upgrade_from = item.get("upgrade_from")
    if upgrade_from is not None:
        if not isinstance(upgrade_from, str):
            raise ValueError(f"upgrade_from must be a version or null, got {upgrade_from!r}")
        parse_version(upgrade_from, build=False)
    files = item.get("files")
    if not isinstance(files, dict) or sorted(files) != sorted(ROLES):
        got = sorted(files) if isinstance(files, dict) else files
        raise ValueError(f"files must name exactly {', '.join(ROLES)}, got {got!r}")
    return Entry(
        version, roothash, layout, minor, upgrade_from,
        {role: _payload(role, files[role]) for role in ROLES}, parse_waves(item.get("waves")),
    )  # fmt: skip


def _payload(role: str, item: Any) -> Payload:
    if not isinstance(item, dict):
        raise ValueError(f"files.{role} is not a JSON object")
    target = item.get("target")
    if not isinstance(target, str) or not target or target.startswith("/") or ".." in target:
        raise ValueError(f"files.{role}.target must be a relative target path, got {target!r}")
    values: dict[str, Any] = {}
    for key in ("size", "compressed_size"):
        value = item.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"files.{role}.{key} must be a positive integer, got {value!r}")
        values[key] = value
    for key in ("sha256", "compressed_sha256"):
        value = item.get(key)
        if not isinstance(value, str) or not SHA256.match(value):
            raise ValueError(f"files.{role}.{key} must be 64 lowercase hex digits, got {value!r}")
        values[key] = value
    return Payload(target, **values)


def choose(
    manifest: Manifest, running: Running, failed: Collection[str],
    *, seed: int, now: datetime.datetime,
) -> Decision:  # fmt: skip
    """The newest version of the manifest this node takes, and why each newer one is not.

    Taken: strictly newer than the running version, allowed by its `upgrade_from` (the
    running version is at least that), not failed on this node, of this node's layout and
    image, kubelet moving at most one minor, and the wave of this node's `seed` started by
    `now` (if the version has waves). Versions not newer are not reported.
    """
    current = parse_version(running.version)
    newer = sorted(
        (e for e in manifest.entries if e.key > current), key=lambda e: e.key, reverse=True
    )
    unreadable: list[tuple[tuple[int, int, int, int] | None, str, str]] = []
    for label, why in manifest.invalid:
        if manifest.entry(label) is not None:
            continue  # a second entry of a version that has a readable one
        try:
            key: tuple[int, int, int, int] | None = parse_version(label)
        except ValueError:
            key = None  # no readable version: it may be newer
        if key is None or key > current:
            unreadable.append((key, label, f"unreadable entry: {why}"))
    skipped: list[tuple[str, str]] = []
    eligible: dict[str, datetime.datetime] = {}
    for entry in newer:
        reasons = refusals(entry, manifest.image_id, running, failed, seed=seed, now=now)
        if not reasons:
            skipped += [(v, why) for k, v, why in unreadable if k is None or k > entry.key]
            return Decision(entry, tuple(skipped), eligible, seed)
        skipped.append((entry.version, "; ".join(reasons)))
        wave = not_started(entry.waves, seed, now)
        if wave is not None and reasons == [wave[0]]:
            eligible[entry.version] = wave[1]
    return Decision(None, (*skipped, *((v, why) for _, v, why in unreadable)), eligible, seed)


def refusals(
    entry: Entry, image_id: str, running: Running, failed: Collection[str],
    *, seed: int, now: datetime.datetime,
) -> list[str]:  # fmt: skip
    """Why this node does not take `entry` (empty: it does)."""
    reasons = []
    if (wave := not_started(entry.waves, seed, now)) is not None:
        reasons.append(wave[0])
    if entry.upgrade_from is not None and parse_version(running.version) < parse_version(
        entry.upgrade_from, build=False
    ):
        reasons.append(
            f"it updates only from {entry.upgrade_from} or later (this node runs {running.version})"
        )
    if entry.version in failed:
        reasons.append("it failed on this node before (see 'hostbuild-node update status')")
    if entry.layout != running.layout:
        reasons.append(
            f"it is for disk layout {entry.layout}, this node has layout {running.layout}"
        )
    if image_id != running.image_id:
        reasons.append(f"it is an image of {image_id!r}, this node runs {running.image_id!r}")
    if skew := kubelet_skew(running.kubelet_minor, entry.kubelet_minor):
        reasons.append(skew)
    return reasons


def kubelet_skew(running: str | None, new: str | None) -> str | None:
    """Why kubelet cannot move from minor `running` to `new` in one update (None: it can).

    kubelet moves at most one minor per update; an image without kubelet (None) constrains
    nothing.
    """
    if running is None or new is None:
        return None
    (major, minor), (new_major, new_minor) = _minor(running), _minor(new)
    if major != new_major or abs(new_minor - minor) > 1:
        return f"kubelet would move from {running} to {new}, more than one minor"
    return None


def _minor(text: str) -> tuple[int, int]:
    m = MINOR.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a kubelet minor like '1.35'")
    return int(m.group(1)), int(m.group(2))
