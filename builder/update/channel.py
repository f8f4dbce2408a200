"""The channel manifest (`channels/NAME.json`, a TUF target) and the rules a new version passes.

A channel lists the builds of one image that nodes following it may install, oldest first:

    {"format": 1, "channel": "stable", "image_id": "worker",
     "versions": [{"version": "0.1.0-2", "roothash": "<64 hex>", "layout": 2,
                   "kubelet_minor": "1.35", "upgrade_from": "0.1.0",
                   "files": {"root": {"target": "worker/0.1.0-2/root.erofs.zst",
                                      "size": ..., "sha256": ...,
                                      "compressed_size": ..., "compressed_sha256": ...},
                             "verity": {...}, "uki": {...}},
                   "added": "2025-01-01T00:00:00+00:00",
                   "waves": [{"seed_below": 20, "start": "2025-01-01T01:00:00Z"}, ...,
                             {"seed_below": 2048, "start": "2025-01-07T00:00:00Z"}]}]}

`size`/`sha256` describe the file after decompression (what lands in the slot or the ESP),
`compressed_*` the target as downloaded (TUF checks those too). `waves` is optional (absent:
every node may take the version at once; rules in builder/node/waves.py); nodes that predate
it ignore it, so the format stays 1.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import HostbuildError
from builder.node.waves import Wave, parse_waves
from builder.profile.skew import load_matrix
from builder.profile.versions import OsVersion, parse_os_version, release_tuple

logger = logging.getLogger(__name__)

FORMAT = 1
# The disk layouts the nodes' updater can write a payload into. Layout 2: slot partitions whose
# UUIDs are the halves of the root hash (Discoverable Partitions Specification), so the UKI
# names its root by root hash alone and any slot can take any version. Layout 1 UKIs name slot
# A's partitions: installed into slot B they would boot slot A. Accept a layout here only once
# the node side installs it.
SUPPORTED_LAYOUTS = frozenset({2})
FILE_ROLES = ("root", "verity", "uki")
CHANNELS = "channels"
UPGRADE_RULE = "upgrade-one-minor"  # builder/profile/skew.py RULES
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def channel_target(channel: str) -> str:
    """The TUF target path of a channel's manifest: `channels/NAME.json`."""
    return f"{CHANNELS}/{channel}.json"


def check_name(kind: str, name: str) -> str:
    if not _NAME.match(name):
        raise HostbuildError(
            f"{kind} {name!r} is not allowed",
            hint="lower-case letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    return name


@dataclass(frozen=True)
class ChannelFile:
    target: str
    size: int
    sha256: str
    compressed_size: int
    compressed_sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "size": self.size, "sha256": self.sha256,
            "compressed_size": self.compressed_size, "compressed_sha256": self.compressed_sha256,
        }  # fmt: skip


@dataclass(frozen=True)
class ChannelVersion:
    version: str
    roothash: str
    layout: int
    kubelet_minor: str | None
    upgrade_from: str | None  # the oldest OS version that may update to this one; None: any
    files: Mapping[str, ChannelFile]
    added: str
    waves: tuple[Wave, ...] = ()

    @property
    def os_version(self) -> OsVersion:
        return parse_os_version(self.version, build=True)

    def as_dict(self) -> dict[str, Any]:
        waves = {"waves": [w.as_dict() for w in self.waves]} if self.waves else {}
        return {
            "version": self.version, "roothash": self.roothash, "layout": self.layout,
            "kubelet_minor": self.kubelet_minor, "upgrade_from": self.upgrade_from,
            "files": {role: f.as_dict() for role, f in self.files.items()}, "added": self.added,
        } | waves  # fmt: skip


@dataclass(frozen=True)
class Channel:
    channel: str
    image_id: str
    versions: tuple[ChannelVersion, ...] = ()

    @property
    def latest(self) -> ChannelVersion | None:
        return self.versions[-1] if self.versions else None

    def with_version(self, new: ChannelVersion) -> Channel:
        """The channel with `new` added, or in place of the entry of its version."""
        kept = (v for v in self.versions if v.version != new.version)
        versions = sorted((*kept, new), key=lambda v: v.os_version)
        return Channel(self.channel, self.image_id, tuple(versions))

    def entry(self, version: str) -> ChannelVersion | None:
        return next((v for v in self.versions if v.version == version), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "channel": self.channel, "image_id": self.image_id,
            "versions": [v.as_dict() for v in self.versions],
        }  # fmt: skip

    def to_bytes(self) -> bytes:
        return (json.dumps(self.as_dict(), indent=2) + "\n").encode()


def parse_channel(data: bytes, where: str) -> Channel:
    """Read a channel manifest; `where` names it in errors."""
    try:
        record = json.loads(data)
        if record.get("format") != FORMAT:
            raise ValueError(f"format {record.get('format')!r}; this hostbuild reads {FORMAT}")
        versions = tuple(
            ChannelVersion(
                version=str(v["version"]),
                roothash=str(v["roothash"]),
                layout=int(v["layout"]),
                kubelet_minor=v["kubelet_minor"],
                upgrade_from=v["upgrade_from"],
                files={role: ChannelFile(**f) for role, f in v["files"].items()},
                added=str(v["added"]),
                waves=parse_waves(v.get("waves"), f"versions[{index}].waves"),
            )  # fmt: skip
            for index, v in enumerate(record["versions"])
        )
        return Channel(str(record["channel"]), str(record["image_id"]), versions)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise HostbuildError(f"{where}: not a channel manifest: {e}") from e


def check_addition(
    channel: Channel, new: ChannelVersion, payload: Path, manifest: Path,
    *, skew_overrides: frozenset[str] = frozenset(),
) -> bool:  # fmt: skip
    """Whether `new` goes onto `channel`: False if the very same build is on it, an error if
    a rule refuses it (layout, version order, root hash, kubelet skew).

    The kubelet rule is the profile's `upgrade-one-minor`: a build whose manifest records an
    override of it (`skew.overrides`, with its reason) passes, with a warning.
    """
    name = channel.channel
    if new.layout not in SUPPORTED_LAYOUTS:
        allowed = ", ".join(str(n) for n in sorted(SUPPORTED_LAYOUTS))
        raise HostbuildError(
            f"{payload}: layout {new.layout} is not one the nodes can install (supported: "
            f"{allowed})",
            hint="build the image with a hostbuild whose disk layout the nodes support",
        )
    for old in channel.versions:
        if old.version != new.version:
            continue
        if old.roothash == new.roothash:
            return False
        raise HostbuildError(
            f"{payload}: version {new.version} is on channel {name!r} already with root hash "
            f"{old.roothash}; this build's is {new.roothash}",
            hint="a version names one build: rebuild with a new build number (a changed input "
            "gets the next one) or check that this is the build you meant",
        )
    latest = channel.latest
    if latest is None:
        return True
    if new.os_version <= latest.os_version:
        raise HostbuildError(
            f"{payload}: version {new.version} is not newer than {latest.version}, the newest "
            f"on channel {name!r}",
            hint="a channel only moves forward (nodes never install an older version on their "
            "own); add a newer build",
        )
    try:
        _check_kubelet(latest, new, name, manifest)
    except HostbuildError as e:
        if UPGRADE_RULE not in skew_overrides:
            raise
        logger.warning("  %s (rule %s overridden by the profile)", e.message, UPGRADE_RULE)
    if new.upgrade_from is not None and _older(latest.version, new.upgrade_from):
        logger.warning(
            "  %s: upgrade_from %s: nodes on %s (the newest on %r until now) cannot update to it",
            manifest, new.upgrade_from, latest.version, name,
        )  # fmt: skip
    return True


def _older(version: str, bound: str) -> bool:
    """Whether `version` (X.Y.Z-N) is older than `bound` (X.Y.Z, any build of it, or X.Y.Z-N)."""
    have, want = parse_os_version(version, build=True), parse_os_version(bound)
    if want.build is None:
        return (have.major, have.minor, have.patch) < (want.major, want.minor, want.patch)
    return have < want


def _check_kubelet(latest: ChannelVersion, new: ChannelVersion, name: str, manifest: Path) -> None:
    if latest.kubelet_minor is None or new.kubelet_minor is None:
        return
    old, now = release_tuple(latest.kubelet_minor), release_tuple(new.kubelet_minor)
    if old is None or now is None:
        return
    step = int(load_matrix()["upgrade_max_minors"])
    if now[0] != old[0] or now[1] > old[1] + step:
        raise HostbuildError(
            f"{manifest}: kubelet {new.kubelet_minor} is more than {step} minor past "
            f"{latest.kubelet_minor} of {latest.version}, the newest on channel {name!r}",
            hint=f"kubelet moves at most {step} minor per update: add a build with kubelet "
            f"{old[0]}.{old[1] + step} first, so nodes update through it (rule {UPGRADE_RULE})",
        )


def check_roothash(value: object, where: Path) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise HostbuildError(f"{where}: roothash {value!r} is not 64 hex digits")
    return value
