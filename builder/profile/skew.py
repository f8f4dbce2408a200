"""Version skew: the pinned components against the compatibility matrix (data, not code)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from builder.profile.model import Profile
from builder.profile.versions import minor_of, release_tuple

MATRIX = Path(__file__).parents[1] / "data" / "compatibility.yaml"

RULES = {
    "kubernetes-minor": "kubelet's minor is in the compatibility matrix",
    "containerd-range": "containerd is in the range the Kubernetes minor supports",
    "runc-minimum": "runc is at least the minimum the Kubernetes minor needs",
    "cni-plugins-minimum": "the CNI plugins are at least the minimum the Kubernetes minor needs",
    "crictl-minor": "crictl's minor equals kubelet's",
    "cgroup-v2": "the kernel command line keeps the cgroup hierarchy the Kubernetes minor needs",
    "upgrade-one-minor": "an in-place update moves kubelet by at most one minor",
}


CGROUP_V1_ARGS = (
    "systemd.unified_cgroup_hierarchy=0",
    "systemd.legacy_systemd_cgroup_controller=1",
)


@dataclass(frozen=True)
class Violation:
    rule: str
    path: str
    message: str


@cache
def load_matrix(path: Path = MATRIX) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def _version(v: str) -> tuple[int, int, int]:
    parsed = release_tuple(v)
    assert parsed is not None, v
    return parsed


def supported_api_servers(kubelet_version: str) -> list[str]:
    """Control-plane minors a kubelet supports: its own and up to N newer, never older."""
    parsed = release_tuple(kubelet_version)
    if parsed is None:
        return []
    skew = int(load_matrix()["api_server_skew_minors"])
    return [f"{parsed[0]}.{parsed[1] + i}" for i in range(skew + 1)]


def check_skew(profile: Profile, upgrade_from_kubelet: str | None) -> Iterator[Violation]:
    """Every matrix rule the profile's pinned components break (overrides not applied)."""
    pinned = profile.components.pinned()
    kubelet = pinned.get("kubelet")
    if kubelet is None:
        return
    minor = minor_of(kubelet.version)
    matrix = load_matrix()["kubernetes"]
    if minor is None:
        return  # reported by the version syntax check
    if minor not in matrix:
        known = ", ".join(matrix)
        yield Violation(
            "kubernetes-minor", "components.kubelet.version",
            f"{kubelet.version} is Kubernetes {minor}, which the compatibility matrix does not "
            f"cover (covered: {known})",
        )  # fmt: skip
        return
    rules = matrix[minor]
    yield from _range("containerd-range", "containerd", profile, minor, rules["containerd"])
    yield from _range("runc-minimum", "runc", profile, minor, rules["runc"])
    yield from _range("cni-plugins-minimum", "cni_plugins", profile, minor, rules["cni_plugins"])
    crictl = pinned.get("crictl")
    if crictl is not None and minor_of(crictl.version) != minor:
        yield Violation(
            "crictl-minor", "components.crictl.version",
            f"{crictl.version} does not match kubelet minor {minor}",
        )  # fmt: skip
    if "v1" not in rules["cgroup"]:
        for i, arg in enumerate(profile.kernel.cmdline):
            if arg in CGROUP_V1_ARGS:
                yield Violation(
                    "cgroup-v2", f"kernel.cmdline[{i}]",
                    f"{arg!r} selects cgroup v1, which kubelet {minor} refuses (cgroup v2 only)",
                )  # fmt: skip
    if upgrade_from_kubelet is not None:
        old, new = _version(upgrade_from_kubelet), _version(kubelet.version)
        step = int(load_matrix()["upgrade_max_minors"])
        if (new[0], new[1]) > (old[0], old[1] + step) or new[0] != old[0]:
            yield Violation(
                "upgrade-one-minor", "upgrade_from",
                f"updating from {profile.upgrade_from} (kubelet {upgrade_from_kubelet}) to kubelet "
                f"{kubelet.version} skips a Kubernetes minor; kubelet moves {step} minor at a time",
            )  # fmt: skip


def _range(
    rule: str, name: str, profile: Profile, minor: str, bounds: dict[str, str]
) -> Iterator[Violation]:
    component = profile.components.pinned().get(name)
    if component is None:
        return
    version = release_tuple(component.version)
    if version is None:
        return  # reported by the version syntax check
    low = _version(str(bounds["min"]))
    high = _version(str(bounds["below"])) if "below" in bounds else None
    shown = ".".join(map(str, version))
    if version < low or (high is not None and version >= high):
        allowed = f">= {bounds['min']}" + (f", < {bounds['below']}" if high else "")
        yield Violation(
            rule, f"components.{name}.version",
            f"{shown} is outside what Kubernetes {minor} supports: {allowed}",
        )  # fmt: skip


def evaluate_skew(
    profile: Profile, upgrade_from_kubelet: str | None
) -> tuple[list[Violation], list[dict[str, str]]]:
    """(violations left, overrides applied), taking the profile's skew_override into account."""
    violations = list(check_skew(profile, upgrade_from_kubelet))
    override = profile.skew_override
    if override is None:
        return violations, []
    left = [v for v in violations if v.rule not in override.rules]
    applied = [
        {"rule": v.rule, "path": v.path, "message": v.message, "reason": override.reason}
        for v in violations
        if v.rule in override.rules
    ]
    return left, applied
