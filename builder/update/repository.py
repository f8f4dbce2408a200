"""TUF metadata of an update repository: create it, sign new versions, refresh, rotate keys.

Consistent snapshots: every version of root, targets and snapshot is its own file
(`metadata/N.ROLE.json`) and every target is stored under its sha256 (`targets/DIR/HASH.NAME`),
so a reader that has fetched `metadata/timestamp.json` finds exactly the files it names.
Metadata stays within TUF specification 1.0 as python-tuf 5.1 (the node's) reads it.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import fcntl
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, MetaFile, Role, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from builder.errors import HostbuildError
from builder.log import step
from builder.update.files import Changes
from builder.update.keys import ROLES, KeyStore
from builder.update.settings import SETTINGS, Settings, format_duration, load_settings

logger = logging.getLogger(__name__)

METADATA = "metadata"
TARGETS = "targets"
LOCK = ".hostbuild-repo.lock"
SERIALIZER = JSONSerializer(compact=False)
# snapshot and timestamp name their child's hash too: a reader never pairs a version number
# with other bytes than the ones signed
HASHES = ["sha256"]
_VERSIONED = re.compile(r"^([1-9][0-9]*)\.(root|targets|snapshot)\.json$")

S = TypeVar("S", Root, Timestamp, Snapshot, Targets)  # as tuf.api.metadata.T


@dataclass
class Repository:
    """The current metadata of a repository: newest root, and what timestamp.json leads to."""

    path: Path
    settings: Settings
    root: Metadata[Root]
    targets: Metadata[Targets]
    snapshot: Metadata[Snapshot]
    timestamp: Metadata[Timestamp]

    @property
    def metadata_dir(self) -> Path:
        return self.path / METADATA

    @property
    def targets_dir(self) -> Path:
        return self.path / TARGETS

    def role(self, name: str) -> Metadata[Any]:
        md: Metadata[Any] = getattr(self, name)
        return md


def metadata_path(repository: Path, role: str, version: int) -> Path:
    name = "timestamp.json" if role == "timestamp" else f"{version}.{role}.json"
    return repository / METADATA / name


def _versions(repository: Path, role: str) -> list[int]:
    directory = repository / METADATA
    names = (m for p in directory.iterdir() if (m := _VERSIONED.match(p.name)))
    return sorted(int(m[1]) for m in names if m[2] == role)


def root_metadata(repository: Path) -> bytes:
    """The newest `metadata/N.root.json`: what an image bakes in as its trusted root.

    A node trusting an older root (`1.root.json` and on) follows the chain of root versions up
    to the newest at its first refresh; baking in the newest means it never trusts keys that
    were rotated out before it was built.
    """
    versions = _versions(repository, "root") if (repository / METADATA).is_dir() else []
    if not versions:
        raise HostbuildError(
            f"{repository} has no root metadata ({METADATA}/1.root.json)",
            hint="create the repository with: hostbuild repo init DIR",
        )
    return metadata_path(repository, "root", versions[-1]).read_bytes()


@contextlib.contextmanager
def locked(repository: Path) -> Iterator[None]:
    """One command at a time changes a repository (a cron refresh next to an add)."""
    load_settings(repository)  # not a repository: say so, and leave no lock file behind
    path = repository / LOCK
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise HostbuildError(
                f"another hostbuild repo command is changing {repository} ({path} is locked)",
                hint="run this one again when it is done",
            ) from e
        yield


def _load(path: Path, kind: type[S]) -> Metadata[S]:
    try:
        md: Metadata[Any] = Metadata.from_file(os.fspath(path))
    except FileNotFoundError as e:
        raise HostbuildError(
            f"{path} is missing", hint="the repository is incomplete; restore it from a copy"
        ) from e
    except Exception as e:  # tuf raises DeserializationError and ValueErrors of its own
        raise HostbuildError(f"{path}: not valid TUF metadata: {e}") from e
    if not isinstance(md.signed, kind):
        raise HostbuildError(f"{path}: holds {md.signed.type} metadata, not {kind.type}")
    return md


def open_repository(path: Path) -> Repository:
    """Load the current metadata of the repository at `path`."""
    settings = load_settings(path)
    roots = _versions(path, "root") if (path / METADATA).is_dir() else []
    if not roots:
        raise HostbuildError(
            f"{path / METADATA} holds no root metadata",
            hint="the repository is incomplete; restore it from a copy",
        )
    root = _load(metadata_path(path, "root", roots[-1]), Root)
    timestamp = _load(metadata_path(path, "timestamp", 0), Timestamp)
    snapshot = _load(
        metadata_path(path, "snapshot", timestamp.signed.snapshot_meta.version), Snapshot
    )
    targets_meta = snapshot.signed.meta["targets.json"]
    targets = _load(metadata_path(path, "targets", targets_meta.version), Targets)
    return Repository(path, settings, root, targets, snapshot, timestamp)


def _expiry(settings: Settings, role: str, now: datetime.datetime) -> datetime.datetime:
    return now + settings.expiry[role]


def _now(now: datetime.datetime | None) -> datetime.datetime:
    return (now or datetime.datetime.now(datetime.UTC)).replace(microsecond=0)


def sign_roles(
    repo: Repository, keys: KeyStore, changes: Changes, roles: set[str],
    now: datetime.datetime, *, previous_root: Root | None = None, bump: bool = True,
) -> dict[str, int]:  # fmt: skip
    """Stage new, signed versions of `roles` in `changes`; return role -> version.

    A new targets needs a new snapshot, a new snapshot a new timestamp: they follow. A new
    root is signed by a threshold of `previous_root`'s root keys (default: the current root's)
    and of its own, so a node that trusts the previous one accepts it.
    """
    roles = set(roles)
    if "targets" in roles:
        roles.add("snapshot")
    if "snapshot" in roles:
        roles.add("timestamp")
    root = repo.root.signed
    versions: dict[str, int] = {}
    for role in (r for r in ROLES if r in roles):
        md = repo.role(role)
        signed = md.signed
        if bump:
            files = _versions(repo.path, role) if role != "timestamp" else []
            signed.version = max([signed.version, *files]) + 1
        signed.expires = _expiry(repo.settings, role, now)
        if role == "snapshot":
            data = repo.targets.to_bytes(SERIALIZER)
            signed.meta["targets.json"] = MetaFile.from_data(repo.targets.signed.version, data,
                                                             HASHES)  # fmt: skip
        if role == "timestamp" and "snapshot" in roles:
            data = repo.snapshot.to_bytes(SERIALIZER)
            signed.snapshot_meta = MetaFile.from_data(repo.snapshot.signed.version, data, HASHES)
        delegators = [root] if role != "root" else [previous_root or root, root]
        signers: dict[str, CryptoSigner] = {}
        for delegator in delegators:
            keyids = delegator.roles[role].keyids
            threshold = delegator.roles[role].threshold
            for signer in keys.signers(role, keyids, threshold):
                signers.setdefault(signer.public_key.keyid, signer)
        md.signatures.clear()
        for signer in signers.values():
            md.sign(signer, append=True)
        for delegator in delegators:
            try:
                delegator.verify_delegate(role, md.signed_bytes, md.signatures)
            except UnsignedMetadataError as e:  # keys.signers found them: a bug if it happens
                raise HostbuildError(f"new {role} metadata does not verify: {e}") from e
        changes.stage_data(metadata_path(repo.path, role, signed.version), md.to_bytes(SERIALIZER))
        versions[role] = signed.version
        logger.info("  %s v%d, expires %s", role, signed.version, signed.expires.isoformat())
    return versions


@dataclass(frozen=True)
class InitResult:
    path: Path
    keys: dict[str, list[str]]  # role -> paths of its new private keys
    thresholds: dict[str, int]
    expiry: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {"repository": os.fspath(self.path), "keys": self.keys,
                "thresholds": self.thresholds, "expiry": self.expiry}  # fmt: skip


def init_repository(
    path: Path, keys: KeyStore, *, expiry: Mapping[str, datetime.timedelta],
    thresholds: Mapping[str, int], key_counts: Mapping[str, int],
    now: datetime.datetime | None = None,
) -> InitResult:  # fmt: skip
    """Create an empty repository at `path` (version 1 of every role) and its keys."""
    now = _now(now)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise HostbuildError(
            f"{path} exists and is not empty; hostbuild repo init never overwrites a repository",
            hint="choose a new directory, or change this one with rotate-key, refresh or add",
        )
    for role in ROLES:
        if key_counts[role] < thresholds[role]:
            raise HostbuildError(
                f"{role}: {key_counts[role]} key(s) cannot meet a threshold of {thresholds[role]}",
                hint=f"--key-count-{role} must be at least --threshold-{role}",
            )
    settings = Settings(dict(expiry))
    root = Root(expires=now, consistent_snapshot=True,
                roles={r: Role([], thresholds[r]) for r in ROLES})  # fmt: skip
    repo = Repository(
        path, settings, Metadata(root), Metadata(Targets(expires=now)),
        Metadata(Snapshot(expires=now)), Metadata(Timestamp(expires=now)),
    )  # fmt: skip
    made: dict[str, list[str]] = {}
    written: list[Path] = []
    try:
        with step(f"Create update repository {path}"):
            for role in ROLES:
                for _ in range(key_counts[role]):
                    key = keys.generate(role)
                    written.append(key.path)
                    root.add_key(key.signer.public_key, role)
                    made.setdefault(role, []).append(os.fspath(key.path))
            with Changes() as changes:
                changes.stage_data(path / SETTINGS, settings.to_json())
                changes.stage_data(path / LOCK, b"")
                sign_roles(repo, keys, changes, set(ROLES), now, bump=False)
                changes.commit()
    except BaseException:
        for key_path in written:  # they never signed anything published
            key_path.unlink(missing_ok=True)
        raise
    return InitResult(path, made, dict(thresholds), {r: format_duration(expiry[r]) for r in ROLES})


@dataclass(frozen=True)
class RefreshResult:
    signed: dict[str, int]  # role -> new version (empty: nothing was due)
    expires: dict[str, str]  # role -> its expiry (every role)

    def as_dict(self) -> dict[str, Any]:
        return {"signed": self.signed, "expires": self.expires}


def refresh_repository(
    path: Path, keys: KeyStore, roles: Sequence[str] = ("snapshot", "timestamp"),
    *, within: datetime.timedelta | None = None, now: datetime.datetime | None = None,
) -> RefreshResult:  # fmt: skip
    """Sign new versions of `roles` with new expiries; with `within`, only those expiring
    sooner than that (or whose child is re-signed)."""
    now = _now(now)
    with locked(path):
        repo = open_repository(path)
        due = {r for r in roles if within is None or repo.role(r).signed.expires - now < within}
        signed: dict[str, int] = {}
        if due:
            with (
                step(f"Refresh {', '.join(r for r in ROLES if r in due)} of {path}"),
                Changes() as changes,
            ):
                signed = sign_roles(repo, keys, changes, due, now)
                changes.commit()
        else:
            logger.info("Nothing to refresh in %s: no role expires within %s", path,
                        format_duration(within) if within else "-")  # fmt: skip
        expires = {r: repo.role(r).signed.expires.isoformat() for r in ROLES}
    return RefreshResult(signed, expires)


@dataclass(frozen=True)
class RotateResult:
    role: str
    old_keyid: str
    new_keyid: str
    new_key: Path
    retired: Path | None  # the old private key, renamed *.pem.retired, if it was here
    signed: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role, "old_keyid": self.old_keyid, "new_keyid": self.new_keyid,
            "new_key": os.fspath(self.new_key),
            "retired": os.fspath(self.retired) if self.retired else None, "signed": self.signed,
        }  # fmt: skip


def rotate_key(
    path: Path, keys: KeyStore, role: str, keyid: str | None = None,
    now: datetime.datetime | None = None,
) -> RotateResult:  # fmt: skip
    """Replace one key of `role` by a new one, in a new root version (and a new `role`).

    The new root is signed by the old root's keys and its own, so nodes follow the chain; for
    another role its metadata is re-signed with the new key at once.
    """
    now = _now(now)
    with locked(path):
        repo = open_repository(path)
        root = repo.root.signed
        old = _pick_key(root, role, keyid, path)
        previous = copy.deepcopy(root)
        new_key = keys.generate(role)
        try:
            root.revoke_key(old, role)
            root.add_key(new_key.signer.public_key, role)
            with (
                step(f"Rotate {role} key {old[:16]} -> {new_key.keyid[:16]} in {path}"),
                Changes() as changes,
            ):
                signed = sign_roles(repo, keys, changes, {"root", role}, now,
                                    previous_root=previous)  # fmt: skip
                changes.commit()
        except BaseException:
            new_key.path.unlink(missing_ok=True)
            raise
        still_used = any(old in r.keyids for r in root.roles.values())
        retired = None if still_used else keys.retire(old)
    return RotateResult(role, old, new_key.keyid, new_key.path, retired, signed)


def _pick_key(root: Root, role: str, keyid: str | None, path: Path) -> str:
    current = root.roles[role].keyids
    if keyid is None:
        if len(current) == 1:
            return current[0]
        raise HostbuildError(
            f"{role} has {len(current)} keys in {path}: say which to replace",
            hint="--keyid one of " + ", ".join(current),
        )
    matches = [k for k in current if k.startswith(keyid)]
    if len(matches) != 1:
        raise HostbuildError(
            f"--keyid {keyid!r} names {'no' if not matches else 'more than one'} {role} key",
            hint=f"{role} keys: " + ", ".join(current),
        )
    return matches[0]
