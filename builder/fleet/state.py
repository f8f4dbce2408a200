"""A group's state in etcd and the pure rules that change it (no I/O here).

The group key holds the holders, the pause and recent failures; each holder also has a key
bound to an etcd lease whose TTL is the group's reboot deadline. A holder whose lease key is
gone has not come back in time: its slot is freed and the group paused.
"""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from builder.node.windows import in_window, next_window

from .policy import GroupPolicy
from .protocol import ClientParams, FleetLockError

MAX_FAILURES = 50


@dataclass
class GroupState:
    holders: dict[str, dict[str, Any]] = field(default_factory=dict)
    paused: dict[str, Any] | None = None
    last_grant: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> bytes:
        record = {
            "format": 1,
            "holders": self.holders,
            "paused": self.paused,
            "last_grant": self.last_grant,
            "failures": self.failures,
        }
        return json.dumps(record, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> GroupState:
        doc = json.loads(data)
        return cls(
            holders=dict(doc.get("holders") or {}),
            paused=doc.get("paused"),
            last_grant=float(doc.get("last_grant") or 0.0),
            failures=list(doc.get("failures") or []),
        )

    def copy(self) -> GroupState:
        return copy.deepcopy(self)


@dataclass(frozen=True)
class Snapshot:
    """The group key (0: absent) and the ids with a live lease key, read at one revision."""

    state: GroupState
    mod_revision: int
    live: frozenset[str]
    read_at: float  # monotonic


@dataclass
class Changes:
    """What a batch writes besides the group key."""

    lease_puts: dict[str, int] = field(default_factory=dict)
    lease_deletes: set[str] = field(default_factory=set)
    must_have_lease: set[str] = field(default_factory=set)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.lease_puts or self.lease_deletes or self.reports)


@dataclass(frozen=True)
class Granted:
    reentrant: bool
    drained: bool


@dataclass(frozen=True)
class Released:
    holder: dict[str, Any] | None  # None: the node held no slot (a no-op, still a 200)
    failed: bool


def fail(state: GroupState, node_id: str, reason: str, now: float, *, pause: bool) -> None:
    state.failures = [*state.failures, {"id": node_id, "reason": reason, "at": now}][-MAX_FAILURES:]
    if pause and state.paused is None:
        state.paused = {"reason": reason, "since": now, "by": "auto", "node": node_id}


def reap(state: GroupState, live: frozenset[str], changes: Changes, now: float) -> list[str]:
    """Free the slots of holders whose lease expired (their lease key is gone); pause."""
    expired = [i for i in state.holders if i not in live and i not in changes.lease_puts]
    for node_id in expired:
        holder = state.holders.pop(node_id)
        deadline = holder.get("deadline", 0.0)
        fail(
            state,
            node_id,
            f"node {node_id!r} did not report steady state by its reboot "
            f"deadline ({deadline - holder.get('since', deadline):.0f}s after its slot was "
            "granted)",
            now,
            pause=True,
        )
        changes.reports[node_id] = {
            "id": node_id,
            "state": "lost",
            "at": now,
            "version": holder.get("version"),
        }
    return expired


def report(
    params: ClientParams, state: str, now: float, version: str | None = None
) -> dict[str, Any]:
    return {
        "id": params.id,
        "node_name": params.node_name,
        "state": state,
        "at": now,
        "version": version or params.version,
        "health": params.health,
        "failed_version": params.failed_version,
    }


def lock(
    state: GroupState,
    params: ClientParams,
    policy: GroupPolicy,
    changes: Changes,
    now: float,
    lease: Callable[[], int],
    gate: Callable[[ClientParams], FleetLockError | None],
    drain: bool,
) -> Granted | FleetLockError:
    """RecursiveLock: a holder gets its slot again; a free slot goes to a node the policy allows."""
    if (holder := state.holders.get(params.id)) is not None:
        return Granted(reentrant=True, drained=bool(holder.get("drained")))
    if state.paused is not None:
        p = state.paused
        return FleetLockError(
            423,
            "group_paused",
            f"group {policy.name!r} is paused: "
            f"{p.get('reason')} (resume with 'hostbuild fleet resume "
            f"--group {policy.name}')",
        )
    if not in_window(policy.windows, _utc(now)):
        opens = next_window(policy.windows, _utc(now))
        when = opens.isoformat() if opens else "never"
        return FleetLockError(
            409,
            "outside_window",
            f"group {policy.name!r} reboots only in "
            f"its maintenance windows; the next opens at {when}",
        )
    if len(state.holders) >= policy.slots:
        return FleetLockError(
            409,
            "failed_lock",
            f"all {policy.slots} slot(s) of group "
            f"{policy.name!r} are held ({', '.join(sorted(state.holders))})",
        )
    if policy.soak and now < state.last_grant + policy.soak:
        return FleetLockError(
            409,
            "soaking",
            f"group {policy.name!r} waits {policy.soak:.0f}s "
            f"between grants: {state.last_grant + policy.soak - now:.0f}s left",
        )
    if (refusal := gate(params)) is not None:
        return refusal
    lease_id = lease()
    state.holders[params.id] = {
        "since": now,
        "deadline": now + policy.reboot_deadline,
        "lease": lease_id,
        "node_name": params.node_name,
        "version": params.version,
        "drained": not drain,
    }
    state.last_grant = now
    changes.lease_puts[params.id] = lease_id
    changes.lease_deletes.discard(params.id)
    changes.reports[params.id] = report(params, "rebooting" if not drain else "draining", now)
    return Granted(reentrant=False, drained=not drain)


def unlock(
    state: GroupState, params: ClientParams, policy: GroupPolicy, changes: Changes, now: float
) -> Released:
    """UnlockIfHeld, and a failed health verdict pauses the group."""
    failed = params.health == "failed" or params.failed_version is not None
    if failed:
        bad = params.failed_version or params.version or "its new version"
        fail(
            state, params.id, f"node {params.id!r} failed its health gate on {bad}", now, pause=True
        )
    if params.version or params.health or params.failed_version or params.node_name:
        changes.reports[params.id] = report(params, "failed" if failed else "steady", now)
    holder = state.holders.pop(params.id, None)
    if holder is not None:
        changes.lease_deletes.add(params.id)
        changes.lease_puts.pop(params.id, None)
        changes.must_have_lease.add(params.id)
        if params.id not in changes.reports:
            changes.reports[params.id] = report(params, "steady", now, holder.get("version"))
    return Released(holder, failed)


def mark_drained(
    state: GroupState,
    node_id: str,
    policy: GroupPolicy,
    changes: Changes,
    now: float,
    lease: Callable[[], int],
) -> bool:
    """The node may reboot now: its reboot deadline starts again (on a new lease), so the time
    the drain took does not count against the reboot."""
    holder = state.holders.get(node_id)
    if holder is None:
        return False
    if not holder.get("drained"):
        lease_id = lease()
        holder.update(drained=True, lease=lease_id, deadline=now + policy.reboot_deadline)
        changes.lease_puts[node_id] = lease_id
        changes.reports[node_id] = {**report_of(holder, node_id), "state": "rebooting", "at": now}
    return True


def report_of(holder: dict[str, Any], node_id: str) -> dict[str, Any]:
    return {"id": node_id, "node_name": holder.get("node_name"), "version": holder.get("version")}


def drain_failed(
    state: GroupState, node_id: str, reason: str, changes: Changes, now: float
) -> None:
    """Fail closed: the node keeps running, its slot is freed and why is recorded."""
    if state.holders.pop(node_id, None) is not None:
        changes.lease_deletes.add(node_id)
        changes.lease_puts.pop(node_id, None)
    fail(state, node_id, f"drain of {node_id!r} failed: {reason}", now, pause=False)
    changes.reports[node_id] = {"id": node_id, "state": "drain_failed", "at": now, "reason": reason}


def pause(state: GroupState, reason: str, now: float) -> None:
    state.paused = {"reason": reason, "since": now, "by": "admin", "node": None}


def resume(state: GroupState) -> None:
    state.paused = None


def _utc(now: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
