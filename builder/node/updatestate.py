"""The updater's record on /var: last check, staged and failed versions, a write under way.

Written atomically (temporary file, fsync, rename, fsync of the directory), so a power loss
leaves the previous record or the new one. `reconcile` turns what the node booted into
(os-release and the ESP's boot entries) into success or failure of what was staged.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

STATE_FORMAT = 1


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class BootEntry:
    """A UKI of this image on the ESP: `IMAGEID_VERSION[+LEFT[-DONE]].efi`."""

    version: str
    name: str
    tries_left: int | None  # None: no counter, the entry was blessed (or never counted)
    tries_done: int | None

    @property
    def bad(self) -> bool:
        """No tries left: systemd-boot tried it and it never reached boot-complete.target."""
        return self.tries_left == 0


@dataclass
class State:
    """state.json as a mutable record; unknown keys are dropped, missing ones default."""

    last_check: dict[str, Any] | None = None  # time, result (ok|error), detail, decision
    last_apply: dict[str, Any] | None = None  # time, result (staged|nothing|error), detail
    staged: dict[str, Any] | None = None  # version, roothash, digest, from, boot_id, slot, time
    writing: dict[str, Any] | None = None  # version, slot, partitions, boot_id, time
    failed: dict[str, dict[str, Any]] | None = None  # version -> reason, digest, roothash, time
    booted: dict[str, Any] | None = None  # the last staged version that booted: version, time
    schedule: dict[str, Any] | None = None  # the timer's last run: time, boot_id, failures, next
    fleet_lock: dict[str, Any] | None = None  # held, version, boot_id, released_boot, last, next

    def failures(self) -> dict[str, dict[str, Any]]:
        if self.failed is None:
            self.failed = {}
        return self.failed

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "last_check": self.last_check,
            "last_apply": self.last_apply,
            "staged": self.staged,
            "writing": self.writing,
            "failed": self.failed or {},
            "booted": self.booted,
            "schedule": self.schedule,
            "fleet_lock": self.fleet_lock,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> State:
        def mapping(key: str) -> dict[str, Any] | None:
            value = data.get(key)
            return value if isinstance(value, dict) else None

        failed = mapping("failed") or {}
        return cls(
            last_check=mapping("last_check"),
            last_apply=mapping("last_apply"),
            staged=mapping("staged"),
            writing=mapping("writing"),
            failed={str(k): v for k, v in failed.items() if isinstance(v, dict)},
            booted=mapping("booted"),
            schedule=mapping("schedule"),
            fleet_lock=mapping("fleet_lock"),
        )


def load_state(path: Path) -> State:
    """The record at `path`; a fresh one if there is none.

    An unreadable record is kept aside as `state.json.bad` (the failed versions in it are
    shown to whoever looks) and a fresh one is started.
    """
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return State()
    except (OSError, ValueError) as e:
        logger.error("update state %s is unreadable (%s); kept as %s.bad", path, e, path.name)
        try:
            os.replace(path, path.with_name(path.name + ".bad"))
        except OSError as e2:
            logger.error("keeping %s aside: %s", path, e2)
        return State()
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        logger.error("update state %s has an unknown format; starting afresh", path)
        return State()
    return State.from_json(data)


def save_state(path: Path, state: State) -> None:
    """Write `state` to `path` atomically (the previous record survives any failure)."""
    write_atomic(path, (json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n").encode())


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def reconcile(
    state: State, running: str, boot_id: str, entries: Mapping[str, BootEntry] | None
) -> list[str]:
    """Settle what was staged against what booted; returns what changed, as sentences.

    - The staged version runs: it booted (blessed or not yet); nothing is staged any more.
    - Another boot, and the node runs another version: boot counting fell back (or the entry
      is gone), so the staged version failed on this node and is never taken again.
    - An entry of this image with no tries left, other than the running version's: it failed
      to boot (whoever installed it); recorded as failed too.

    `entries` is None when the ESP could not be read: os-release and the state decide alone.
    """
    events = []
    known = entries is not None
    entries = entries or {}
    staged = state.staged
    if staged is not None and staged.get("version") == running:
        entry = entries.get(running)
        blessed = entry is not None and entry.tries_left is None
        state.booted = {
            "version": running, "time": now(), "blessed": blessed,
            "digest": staged.get("digest"), "roothash": staged.get("roothash"),
        }  # fmt: skip
        state.staged = None
        note = "its entry is blessed" if blessed else "its entry is not blessed yet"
        events.append(f"booted into the staged version {running} ({note})")
    elif staged is not None and staged.get("boot_id") != boot_id and staged.get("from") != running:
        state.staged = None
        events.append(
            f"the node runs {running}, neither the staged {staged.get('version')} nor "
            f"{staged.get('from')} it was staged on: the staged version is forgotten"
        )
    elif staged is not None and staged.get("boot_id") != boot_id:
        version = str(staged.get("version"))
        entry = entries.get(version)
        if not known:
            how = "the ESP could not be read to tell how"
        elif entry is None:
            how = "its boot entry is gone"
        elif entry.bad:
            how = f"boot counting fell back (entry {entry.name}: no tries left)"
        else:
            how = f"entry {entry.name} still had tries left: another entry was chosen"
        reason = f"after a reboot the node runs {running}, not {version}: {how}"
        record_failure(state, version, reason, staged.get("digest"), staged.get("roothash"))
        state.staged = None
        events.append(f"{version} failed: {reason}")
    for entry in entries.values():
        if entry.bad and entry.version != running and entry.version not in state.failures():
            reason = f"boot entry {entry.name} has no tries left: it never reached a good boot"
            booted = state.booted or {}
            if booted.get("version") != entry.version:
                booted = {}
            record_failure(state, entry.version, reason, booted.get("digest"),
                           booted.get("roothash"))  # fmt: skip
            events.append(f"{entry.version} failed: {reason}")
    return events


def record_failure(state: State, version: str, reason: str, digest: Any, roothash: Any) -> None:
    """Mark `version` failed on this node: never installed again automatically."""
    state.failures()[version] = {
        "reason": reason,
        "digest": digest if isinstance(digest, str) else None,
        "roothash": roothash if isinstance(roothash, str) else None,
        "time": now(),
    }


class UpdateError(Exception):
    """A step of an update failed; `kind` names which for state.json and `update status`.

    Kinds: not-configured, unreachable (repository down, slow, HTTP errors), rejected (TUF
    refused metadata or a payload: expired, rolled back, bad signature, tampered; or a UKI
    the firmware's Secure Boot would refuse), no-space,
    too-large (payload bigger than the slot or the ESP), busy (another run), system (this
    node's disk or tools), write, verify.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
