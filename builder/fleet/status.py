"""Per group: slots, holders and their deadlines, the queue, failures, why paused, versions."""

from __future__ import annotations

import collections
import datetime
from typing import Any

from .coordinator import Coordinator


def _when(t: float | None) -> str:
    if not t:
        return "-"
    return datetime.datetime.fromtimestamp(t, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fleet_status(coordinator: Coordinator, group: str | None = None) -> dict[str, Any]:
    """The status of `group` (or every group of the policy), read from etcd."""
    names = [group] if group else sorted(coordinator.policy.groups)
    waiting = coordinator.waiting()
    out: dict[str, Any] = {"version": coordinator.policy.version, "groups": {}}
    for name in names:
        policy = coordinator.policy.groups[name]
        snap = coordinator.store.snapshot(name)
        reports = coordinator.store.reports(name)
        versions = collections.Counter(
            str(r.get("version")) for r in reports.values() if r.get("version")
        )
        states = collections.Counter(str(r.get("state")) for r in reports.values())
        out["groups"][name] = {
            "slots": policy.slots,
            "reboot_deadline": policy.reboot_deadline,
            "after": list(policy.after),
            "paused": snap.state.paused,
            "holders": {
                i: {**h, "lease_alive": i in snap.live} for i, h in snap.state.holders.items()
            },
            "queue": waiting.get(name, []),
            "failures": snap.state.failures[-10:],
            "versions": dict(sorted(versions.items())),
            "states": dict(sorted(states.items())),
            "nodes": len(reports),
        }
    return out


def format_status(status: dict[str, Any]) -> list[str]:
    lines = []
    if status.get("version"):
        lines.append(f"rolling out {status['version']}")
    for name, g in status["groups"].items():
        paused = g["paused"]
        head = f"group {name}: {len(g['holders'])}/{g['slots']} slots held, {g['nodes']} nodes"
        if g["after"]:
            head += f", after {', '.join(g['after'])}"
        lines.append(
            head
            + (
                f"; PAUSED since {_when(paused['since'])} ({paused['by']}): {paused['reason']}"
                if paused
                else ""
            )
        )
        for node_id, h in sorted(g["holders"].items()):
            alive = "" if h["lease_alive"] else " (deadline passed)"
            lines.append(
                f"  holder {node_id} since {_when(h['since'])}, deadline "
                f"{_when(h['deadline'])}{alive}"
            )
        if g["queue"]:
            lines.append(f"  queue: {', '.join(g['queue'])}")
        if g["versions"]:
            lines.append("  versions: " + ", ".join(f"{v} x{n}" for v, n in g["versions"].items()))
        for f in g["failures"]:
            lines.append(f"  failure {_when(f['at'])}: {f['reason']}")
    return lines
