"""The rollout policy: per group its slots, reboot deadline, soak, windows and canary order.

```yaml
version: 2.1.0              # the version rolled out (else: any the asking node does not run)
groups:
  canary: {slots: 1, reboot_deadline: 30m}
  workers:
    slots: 10               # at most this many nodes of the group down at once
    reboot_deadline: 30m    # a holder that has not reported steady state by then has failed
    soak: 5m                # at least this long between two grants in the group
    after: [canary]         # slots only once these groups report healthy on `version`
    after_healthy: 1        # ... at least this many of their nodes
    windows: [{days: [Sat], start: "02:00", durationMinutes: 240}]   # UTC
```
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import Issue, IssuesError
from builder.node.windows import DAYS
from builder.node.yamlsafe import YamlError, load_yaml
from builder.update.settings import parse_duration

from .protocol import GROUP_RE, VERSION_RE

MAX_CONFIG = 1 << 20
GROUP_KEYS = ("slots", "reboot_deadline", "soak", "after", "after_healthy", "windows")
DEFAULT_DEADLINE = 1800.0


class PolicyError(IssuesError):
    subject = "the fleet policy"


@dataclass(frozen=True)
class GroupPolicy:
    name: str
    slots: int = 1
    reboot_deadline: float = DEFAULT_DEADLINE  # seconds
    soak: float = 0.0
    after: tuple[str, ...] = ()
    after_healthy: int = 1
    windows: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class FleetPolicy:
    groups: Mapping[str, GroupPolicy] = field(default_factory=dict)
    version: str | None = None

    def group(self, name: str) -> GroupPolicy | None:
        return self.groups.get(name)


def single_group(
    name: str = "default", slots: int = 1, deadline: float = DEFAULT_DEADLINE
) -> FleetPolicy:
    """The policy without a file: one group (Zincati's default name) with `slots` slots."""
    return FleetPolicy({name: GroupPolicy(name, slots=slots, reboot_deadline=deadline)})


def _seconds(value: Any, where: str, issues: list[Issue], file: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    try:
        return parse_duration(str(value)).total_seconds()
    except ValueError as e:
        issues.append(Issue(file, where, str(e)))
        return 0.0


_START = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def _windows(value: Any, where: str, issues: list[Issue], file: str) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list):
        issues.append(Issue(file, where, "must be a list of {days, start, durationMinutes}"))
        return ()
    out = []
    for i, w in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(w, dict) or set(w) - {"days", "start", "durationMinutes"}:
            issues.append(
                Issue(file, at, "must be {days: [Mon..Sun], start: 'HH:MM', durationMinutes: N}")
            )
            continue
        days = w.get("days", list(DAYS))
        if not isinstance(days, list) or any(d not in DAYS for d in days):
            issues.append(Issue(file, f"{at}.days", f"must be a list of {', '.join(DAYS)}"))
        if not _START.match(str(w.get("start", ""))):
            issues.append(
                Issue(file, f"{at}.start", f"{w.get('start')!r} is not a UTC time 'HH:MM'")
            )
        minutes = w.get("durationMinutes")
        if not isinstance(minutes, int) or isinstance(minutes, bool) or not 1 <= minutes <= 1440:
            issues.append(Issue(file, f"{at}.durationMinutes", "must be a whole number 1 to 1440"))
        out.append(dict(w))
    return tuple(out)


def parse_policy(doc: Any, file: str) -> FleetPolicy:
    """A FleetPolicy from a loaded document; PolicyError lists every problem at once."""
    issues: list[Issue] = []
    if not isinstance(doc, dict):
        raise PolicyError([Issue(file, "", "must be a mapping with 'groups' (and 'version')")])
    for key in set(doc) - {"groups", "version"}:
        issues.append(Issue(file, str(key), "unknown key; allowed: groups, version"))
    version = doc.get("version")
    if version is not None and not (isinstance(version, str) and VERSION_RE.match(version)):
        issues.append(Issue(file, "version", f"{version!r} is not a version string (quote it)"))
        version = None
    raw_groups = doc.get("groups")
    if not isinstance(raw_groups, dict) or not raw_groups:
        issues.append(Issue(file, "groups", "must map at least one group name to its policy"))
        raw_groups = {}
    groups: dict[str, GroupPolicy] = {}
    for name, raw in raw_groups.items():
        at = f"groups.{name}"
        if not isinstance(name, str) or not GROUP_RE.match(name):
            issues.append(Issue(file, at, f"a group name must match {GROUP_RE.pattern}"))
            continue
        raw = raw or {}
        if not isinstance(raw, dict):
            issues.append(Issue(file, at, f"must be a mapping of {', '.join(GROUP_KEYS)}"))
            continue
        for key in set(raw) - set(GROUP_KEYS):
            issues.append(
                Issue(file, f"{at}.{key}", f"unknown key; allowed: {', '.join(GROUP_KEYS)}")
            )
        slots = raw.get("slots", 1)
        if not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= 10000:
            issues.append(
                Issue(file, f"{at}.slots", f"{slots!r} must be a whole number 1 to 10000")
            )
            slots = 1
        healthy = raw.get("after_healthy", 1)
        if not isinstance(healthy, int) or isinstance(healthy, bool) or healthy < 1:
            issues.append(
                Issue(file, f"{at}.after_healthy", "must be a whole number of at least 1")
            )
            healthy = 1
        after = raw.get("after", [])
        if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
            issues.append(Issue(file, f"{at}.after", "must be a list of group names"))
            after = []
        deadline = _seconds(
            raw.get("reboot_deadline", DEFAULT_DEADLINE), f"{at}.reboot_deadline", issues, file
        )
        if deadline < 2:
            issues.append(
                Issue(file, f"{at}.reboot_deadline", "must be at least 2 seconds (an etcd lease)")
            )
        groups[name] = GroupPolicy(
            name=name,
            slots=slots,
            reboot_deadline=deadline,
            soak=_seconds(raw.get("soak", 0), f"{at}.soak", issues, file),
            after=tuple(after),
            after_healthy=healthy,
            windows=_windows(raw.get("windows", []), f"{at}.windows", issues, file),
        )
    for g in groups.values():
        for dep in g.after:
            if dep not in groups:
                issues.append(
                    Issue(
                        file,
                        f"groups.{g.name}.after",
                        f"unknown group {dep!r}; known: {', '.join(groups)}",
                    )
                )
            elif dep == g.name:
                issues.append(
                    Issue(file, f"groups.{g.name}.after", "a group cannot wait for itself")
                )
    for name in groups:
        if not issues and _waits_for(groups, name, name, set()):
            issues.append(
                Issue(
                    file,
                    f"groups.{name}.after",
                    "the groups wait for each other in a circle: none would ever reboot",
                )
            )
    if issues:
        raise PolicyError(sorted(issues, key=lambda i: i.path))
    return FleetPolicy(groups, version)


def _waits_for(groups: Mapping[str, GroupPolicy], name: str, target: str, seen: set[str]) -> bool:
    """Whether `name` waits, directly or through others, for `target`."""
    for dep in groups[name].after:
        if dep == target:
            return True
        if dep not in seen:
            seen.add(dep)
            if _waits_for(groups, dep, target, seen):
                return True
    return False


def load_policy(path: Path) -> FleetPolicy:
    """Read a policy file (UTF-8 YAML, at most 1 MiB)."""
    file = str(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG + 1)
    except OSError as e:
        raise PolicyError([Issue(file, "", f"cannot be read: {e.strerror}")]) from None
    if len(data) > MAX_CONFIG:
        raise PolicyError([Issue(file, "", "is larger than 1 MiB")])
    try:
        doc = load_yaml(data)
    except YamlError as e:
        raise PolicyError([Issue(file, e.path, e.message)]) from None
    return parse_policy(doc, file)
