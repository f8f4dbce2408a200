"""`hostbuild repo add`: a build's update payload becomes TUF targets and a channel entry.

It reads OUTPUT/manifest.json and OUTPUT/NAME.update/payload.json, checks the channel's rules,
copies the compressed files into `targets/IMAGE/VERSION/` (verifying their sha256 on the way)
and signs new targets, snapshot and timestamp versions.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tuf.api.exceptions import LengthOrHashMismatchError
from tuf.api.metadata import TargetFile

from builder.build.manifest import MANIFEST
from builder.disk.payload import PAYLOAD_VERSION
from builder.errors import HostbuildError
from builder.log import step
from builder.node.waves import Wave
from builder.profile.versions import parse_os_version
from builder.update.channel import (
    FILE_ROLES,
    Channel,
    ChannelFile,
    ChannelVersion,
    channel_target,
    check_addition,
    check_name,
    check_roothash,
    parse_channel,
)
from builder.update.files import Changes
from builder.update.keys import KeyStore
from builder.update.repository import HASHES, Repository, locked, open_repository, sign_roles
from builder.update.waves import Schedule, describe, waves_at

logger = logging.getLogger(__name__)

PAYLOAD = "payload.json"
_MINOR = re.compile(r"^[0-9]+\.[0-9]+$")


@dataclass(frozen=True)
class PayloadFile:
    role: str
    source: Path
    size: int
    sha256: str
    compressed_size: int
    compressed_sha256: str


@dataclass(frozen=True)
class Build:
    """What `repo add` takes from a build's output directory."""

    manifest: Path
    payload: Path
    image_id: str
    version: str
    roothash: str
    layout: int
    kubelet_minor: str | None
    upgrade_from: str | None
    skew_overrides: frozenset[str]
    files: tuple[PayloadFile, ...]


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise HostbuildError(
            f"{path} is missing",
            hint="--image is the output directory of hostbuild image (manifest.json, "
            "NAME.update/payload.json)",
        ) from e
    except (OSError, ValueError) as e:
        raise HostbuildError(f"{path}: unreadable JSON: {e}") from e
    if not isinstance(data, dict):
        raise HostbuildError(f"{path}: expected a JSON object")
    return data


def read_build(output: Path) -> Build:
    """The manifest and payload of the build in `output`, checked against each other."""
    manifest_path = output / MANIFEST
    manifest = _json(manifest_path)
    try:
        name, image_id = str(manifest["name"]), check_name("image id", str(manifest["profile"]))
        version, roothash = str(manifest["version"]), manifest["roothash"]
        layout = int(manifest["layout"]["version"])
        skew = manifest.get("skew") or {}
    except (KeyError, TypeError, ValueError) as e:
        raise HostbuildError(
            f"{manifest_path}: no {e} (name, profile, version, roothash, layout.version)",
            hint="is this the output of hostbuild image?",
        ) from e
    payload_path = output / f"{name}.update" / PAYLOAD
    payload = _json(payload_path)
    if payload.get("payload") != PAYLOAD_VERSION:
        raise HostbuildError(
            f"{payload_path}: payload format {payload.get('payload')!r}; this hostbuild reads "
            f"{PAYLOAD_VERSION}"
        )
    for key, want in (("version", version), ("roothash", roothash), ("layout", layout)):
        if payload.get(key) != want:
            raise HostbuildError(
                f"{payload_path}: {key} {payload.get(key)!r} differs from {manifest_path.name}'s "
                f"{want!r}",
                hint="the payload is not this build's; rebuild the image",
            )
    check_roothash(roothash, payload_path)
    entries = payload.get("files")
    if not isinstance(entries, dict) or sorted(entries) != sorted(FILE_ROLES):
        have = sorted(entries) if isinstance(entries, dict) else entries
        raise HostbuildError(
            f"{payload_path}: files {have!r}; a payload has {', '.join(FILE_ROLES)}"
        )
    files = []
    for role in FILE_ROLES:
        entry = entries[role]
        try:
            file_name = str(entry["file"])
            if "/" in file_name or file_name.startswith("."):
                raise ValueError(f"file name {file_name!r}")
            files.append(PayloadFile(
                role, payload_path.parent / file_name, int(entry["size"]), str(entry["sha256"]),
                int(entry["compressed_size"]), str(entry["compressed_sha256"]),
            ))  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise HostbuildError(
                f"{payload_path}: files.{role}: {e}",
                hint="each file has file, size, sha256, compressed_size, compressed_sha256",
            ) from e
    overrides = frozenset(str(o.get("rule")) for o in skew.get("overrides") or [])
    kubelet, upgrade_from = skew.get("kubernetes"), manifest.get("upgrade_from")
    try:
        parse_os_version(version, build=True)
        if upgrade_from is not None:
            parse_os_version(str(upgrade_from))
        if kubelet is not None and not _MINOR.match(str(kubelet)):
            raise ValueError(f"skew.kubernetes {kubelet!r} is not a Kubernetes minor X.Y")
    except ValueError as e:
        hint = "is this the output of hostbuild image?"
        raise HostbuildError(f"{manifest_path}: {e}", hint=hint) from e
    return Build(
        manifest_path, payload_path, image_id, version, roothash, layout, kubelet,
        upgrade_from, overrides, tuple(files),
    )  # fmt: skip


def target_path(image_id: str, version: str, file_name: str) -> str:
    return f"{image_id}/{version}/{file_name}"


def stored_target(repo: Repository, path: str, sha256: str) -> Path:
    """Where a target lives (consistent snapshot: its sha256 before its name)."""
    directory, _, name = path.rpartition("/")
    return repo.targets_dir / directory / f"{sha256}.{name}"


def read_channel(repo: Repository, channel: str) -> Channel | None:
    """The channel's manifest as the current targets metadata names it, or None."""
    target = repo.targets.signed.targets.get(channel_target(channel))
    if target is None:
        return None
    path = stored_target(repo, target.path, target.hashes["sha256"])
    data = path.read_bytes()
    try:
        target.verify_length_and_hashes(data)
    except LengthOrHashMismatchError as e:
        raise HostbuildError(f"{path} does not match the targets metadata: {e}") from e
    return parse_channel(data, os.fspath(path))


@dataclass(frozen=True)
class AddResult:
    changed: bool
    channel: str
    image_id: str
    version: str
    targets: list[str]
    signed: dict[str, int]
    waves: tuple[Wave, ...] = ()
    rewaved: bool = False  # the version was on the channel: only its waves changed

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed, "channel": self.channel, "image_id": self.image_id,
            "version": self.version, "targets": self.targets, "signed": self.signed,
            "waves": [w.as_dict() for w in self.waves], "waves_changed": self.rewaved,
        }  # fmt: skip

    @property
    def rollout(self) -> str:
        return describe(self.waves)


def add_build(
    path: Path, keys: KeyStore, output: Path, channel: str = "stable",
    now: datetime.datetime | None = None, waves: Schedule | None = None,
) -> AddResult:  # fmt: skip
    """Add the build in `output` to `channel`; the same build again changes nothing.

    `waves` spreads the version over the fleet, its delays counted from when the version was
    first added (so the same schedule again changes nothing); None keeps the entry's waves (a
    new one gets none), an empty schedule removes them. A build on the channel already gets
    the new waves and nothing else.
    """
    now = (now or datetime.datetime.now(datetime.UTC)).replace(microsecond=0)
    check_name("channel", channel)
    build = read_build(output)
    with locked(path):
        repo = open_repository(path)
        current = read_channel(repo, channel) or Channel(channel, build.image_id)
        if current.image_id != build.image_id:
            raise HostbuildError(
                f"{build.manifest}: image {build.image_id!r} cannot go onto channel {channel!r}, "
                f"which carries {current.image_id!r}",
                hint="a channel carries one image; use another --channel",
            )
        files = {
            f.role: ChannelFile(
                target_path(build.image_id, build.version, f.source.name), f.size, f.sha256,
                f.compressed_size, f.compressed_sha256,
            )
            for f in build.files
        }  # fmt: skip
        entry = ChannelVersion(
            build.version, build.roothash, build.layout, build.kubelet_minor, build.upgrade_from,
            files, now.isoformat(), waves_at(waves or (), now),
        )  # fmt: skip
        new = check_addition(current, entry, build.payload, build.manifest,
                             skew_overrides=build.skew_overrides)  # fmt: skip
        if not new:
            old = next(v for v in current.versions if v.version == build.version)
            entry = old if waves is None else replace(old, waves=_rewave(old, waves))
            if entry == old:
                logger.info("%s %s is on channel %r already: nothing to do", build.image_id,
                            build.version, channel)  # fmt: skip
                return AddResult(False, channel, build.image_id, build.version, [], {}, old.waves)
            logger.info("%s %s is on channel %r already: its waves change to %s",
                        build.image_id, build.version, channel, describe(entry.waves))  # fmt: skip
        with (
            step(f"Add {build.image_id} {build.version} to channel {channel!r} of {path}"),
            Changes() as changes,
        ):
            added = _stage_files(repo, changes, build, files) if new else []
            updated = current.with_version(entry)
            data = updated.to_bytes()
            manifest = TargetFile.from_data(channel_target(channel), data, HASHES)
            repo.targets.signed.targets[manifest.path] = manifest
            changes.stage_data(stored_target(repo, manifest.path, manifest.hashes["sha256"]),
                               data)  # fmt: skip
            signed = sign_roles(repo, keys, changes, {"targets"}, now)
            changes.commit()
    return AddResult(True, channel, build.image_id, build.version,
                     [*added, manifest.path], signed, entry.waves, not new)  # fmt: skip


def _rewave(entry: ChannelVersion, waves: Schedule) -> tuple[Wave, ...]:
    """`waves` counted from when `entry` was added (its `added` time)."""
    try:
        added = datetime.datetime.fromisoformat(entry.added)
    except ValueError:
        raise HostbuildError(
            f"version {entry.version}: its added time {entry.added!r} is not an ISO time",
            hint="the channel manifest was edited by hand; restore it from the repository",
        ) from None
    return waves_at(waves, added if added.tzinfo else added.replace(tzinfo=datetime.UTC))


def _stage_files(
    repo: Repository, changes: Changes, build: Build, files: dict[str, ChannelFile]
) -> list[str]:
    """Stage the payload's files as targets; a target that another channel added already (the
    same bytes) is kept, one with other bytes is refused."""
    added = []
    targets = repo.targets.signed.targets
    for payload_file in build.files:
        entry = files[payload_file.role]
        known = targets.get(entry.target)
        if known is not None:
            if known.hashes.get("sha256") == entry.compressed_sha256:
                continue
            raise HostbuildError(
                f"{build.payload}: target {entry.target} is in the repository already with "
                f"sha256 {known.hashes.get('sha256')}; this build's is {entry.compressed_sha256}",
                hint="a version names one build; rebuild with a new build number",
            )
        changes.stage_copy(
            payload_file.source, stored_target(repo, entry.target, entry.compressed_sha256),
            entry.compressed_size, entry.compressed_sha256, build.payload,
        )  # fmt: skip
        targets[entry.target] = TargetFile(
            entry.compressed_size, {"sha256": entry.compressed_sha256}, entry.target
        )
        added.append(entry.target)
    return added
