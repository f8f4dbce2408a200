"""`hostbuild repo status`: each role's version, expiry and keys, the channels, and warnings."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

from builder.node.waves import SEEDS, Wave, format_time
from builder.update.images import read_channel
from builder.update.keys import OFFLINE_ROLES, ROLES, KeyStore
from builder.update.repository import open_repository
from builder.update.settings import format_duration

# warn once less than this share of a role's period is left (a daily timestamp: 6 hours)
WARN_SHARE = 0.25

REFRESH_HINT = {
    "root": "hostbuild repo refresh DIR --role root (with the root keys)",
    "targets": "hostbuild repo refresh DIR --role targets (with the targets key)",
    "snapshot": "hostbuild repo refresh DIR (the cron job)",
    "timestamp": "hostbuild repo refresh DIR (the cron job)",
}


def repository_status(
    path: Path, keys: KeyStore, now: datetime.datetime | None = None
) -> dict[str, Any]:
    """The state of the repository at `path` as a JSON-able dict (what `status --json` prints)."""
    now = now or datetime.datetime.now(datetime.UTC)
    repo = open_repository(path)
    found = keys.find()
    roles: dict[str, Any] = {}
    warnings: list[str] = []
    for role in ROLES:
        signed = repo.role(role).signed
        delegation = repo.root.signed.roles[role]
        left = signed.expires - now
        period = repo.settings.expiry[role]
        available = [k for k in delegation.keyids if k in found]
        roles[role] = {
            "version": signed.version,
            "expires": signed.expires.isoformat(),
            "expires_in_seconds": int(left.total_seconds()),
            "period": format_duration(period),
            "threshold": delegation.threshold,
            "keys": [
                {"keyid": k, "path": os.fspath(found[k].path) if k in found else None}
                for k in delegation.keyids
            ],
            "offline": role in OFFLINE_ROLES,
        }
        hint = REFRESH_HINT[role].replace("DIR", os.fspath(path))
        if left.total_seconds() <= 0:
            warnings.append(f"{role} expired at {signed.expires.isoformat()}: run {hint}")
        elif left < period * WARN_SHARE:
            warnings.append(f"{role} expires in {_human(left)}: run {hint}")
        if role not in OFFLINE_ROLES and len(available) < delegation.threshold:
            warnings.append(
                f"{role} has {len(available)} of its {delegation.threshold} signing key(s) in "
                f"{keys.describe()}: refresh cannot sign it here"
            )
    channels: dict[str, Any] = {}
    for target in sorted(repo.targets.signed.targets):
        if target.startswith("channels/") and target.endswith(".json"):
            name = target.removeprefix("channels/").removesuffix(".json")
            channel = read_channel(repo, name)
            assert channel is not None  # listed in targets just above
            channels[name] = {
                "image_id": channel.image_id,
                "versions": [v.version for v in channel.versions],
                "latest": channel.latest.version if channel.latest else None,
            }
            rollouts = {v.version: rollout(v.waves, now) for v in channel.versions if v.waves}
            if rollouts:  # only versions with waves have one
                channels[name]["rollouts"] = rollouts
    return {
        "repository": os.fspath(path),
        "consistent_snapshot": bool(repo.root.signed.consistent_snapshot),
        "roles": roles,
        "channels": channels,
        "targets": len(repo.targets.signed.targets),
        "warnings": warnings,
    }


def rollout(waves: tuple[Wave, ...], now: datetime.datetime) -> dict[str, Any]:
    """How far a version's waves are at `now`: the seeds they opened, when all are open."""
    opened = max((w.seed_below for w in waves if w.start <= now), default=0)
    return {"open_seeds_below": opened, "open_share": round(opened * 100 / SEEDS, 1),
            "complete_at": format_time(waves[-1].start)}  # fmt: skip


def _human(delta: datetime.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 86400:
        return f"{seconds // 86400}d {seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 60}m"


def format_status(status: dict[str, Any]) -> list[str]:
    """The text form of `repository_status`."""
    lines = [f"{'ROLE':<10} {'VERSION':>7}  {'EXPIRES':<25} {'PERIOD':<7} {'KEYS':<10} KEY FILES"]
    for role, info in status["roles"].items():
        here = [k["path"] for k in info["keys"] if k["path"]]
        keys = f"{len(here)}/{len(info['keys'])} (t{info['threshold']})"
        where = ", ".join(here) or ("offline" if info["offline"] else "MISSING")
        lines.append(f"{role:<10} {info['version']:>7}  {info['expires']:<25} "
                     f"{info['period']:<7} {keys:<10} {where}")  # fmt: skip
    if not status["channels"]:
        lines.append("no channels yet (hostbuild repo add DIR --image OUTPUT --channel NAME)")
    for name, channel in status["channels"].items():
        versions = ", ".join(channel["versions"]) or "-"
        lines.append(f"channel {name}: {channel['image_id']} {versions}")
        for version, r in channel.get("rollouts", {}).items():
            lines.append(f"  {version} in waves: {r['open_share']:g} % of seeds open, all from "
                         f"{r['complete_at']}")  # fmt: skip
    lines.extend(f"warning: {w}" for w in status["warnings"])
    return lines
