"""The resolved profile as frozen dataclasses and StrEnums, and its YAML form (`dump_profile`)."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml


class Arch(StrEnum):
    AMD64 = "amd64"
    ARM64 = "arm64"


class KernelFlavour(StrEnum):
    CLOUD = "cloud"
    GENERIC = "generic"


class Source(StrEnum):
    DEBIAN = "debian"
    UPSTREAM = "upstream"


class CgroupDriver(StrEnum):
    SYSTEMD = "systemd"
    CGROUPFS = "cgroupfs"


@dataclass(frozen=True)
class Debian:
    release: str
    packages: tuple[str, ...] = ()
    mirror: str | None = None
    security_mirror: str | None = None


@dataclass(frozen=True)
class Kernel:
    flavour: KernelFlavour
    cmdline: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()


TEXT = {"text": True}  # a string that may hold line breaks and tabs (see profile/schema.py)


@dataclass(frozen=True)
class File:
    path: str
    content: str = field(metadata=TEXT)
    mode: str = "0644"


@dataclass(frozen=True)
class Component:
    """A node component pinned to an exact version from Debian or from an upstream release."""

    source: Source
    version: str
    package: str | None = None
    url: str | None = None
    sha256: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Components:
    containerd: Component | None = None
    runc: Component | None = None
    cni_plugins: Component | None = None
    crictl: Component | None = None
    kubelet: Component | None = None

    def pinned(self) -> dict[str, Component]:
        """The components the profile sets, by name."""
        names = ("containerd", "runc", "cni_plugins", "crictl", "kubelet")
        return {n: c for n in names if (c := getattr(self, n)) is not None}


@dataclass(frozen=True)
class Containerd:
    sandbox_image: str


@dataclass(frozen=True)
class Kubelet:
    """The common KubeletConfiguration settings, plus free-form escape hatches."""

    cgroup_driver: CgroupDriver = CgroupDriver.SYSTEMD
    cluster_dns: tuple[str, ...] = ()
    cluster_domain: str = "cluster.local"
    max_pods: int = 110
    eviction_hard: dict[str, str] = field(default_factory=dict)
    image_gc_high_threshold_percent: int = 85
    image_gc_low_threshold_percent: int = 80
    extra_config: dict[str, Any] = field(default_factory=dict)
    extra_args: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SkewOverride:
    """The only way past a compatibility rule: name the rules and say why."""

    rules: tuple[str, ...]
    reason: str = field(metadata=TEXT)


@dataclass(frozen=True)
class SecureBoot:
    """UEFI Secure Boot with the fleet's own keys: the public halves (paths relative to the
    profile file that names them, or absolute). The private keys come from the build's options."""

    pk: str
    kek: str
    db: str
    pcr_public_key: str | None = None  # signs PCR 11 predictions into every UKI when set
    enabled: bool = True
    # the directory of the profile file that set each key (filled by the loader)
    bases: dict[str, Path] = field(default_factory=dict, metadata={"internal": True})


@dataclass(frozen=True)
class Profile:
    """A resolved profile: everything a build needs to know about the image."""

    description: str = field(metadata=TEXT)
    version: str
    debian: Debian
    kernel: Kernel
    arch: Arch = Arch.AMD64
    sysctls: dict[str, str | int] = field(default_factory=dict)
    files: tuple[File, ...] = ()
    components: Components = field(default_factory=Components)
    containerd: Containerd | None = None
    kubelet: Kubelet | None = None
    skew_override: SkewOverride | None = None
    upgrade_from: str | None = None
    secure_boot: SecureBoot | None = None
    name: str = field(default="", metadata={"internal": True})
    path: Path = field(default=Path(), metadata={"internal": True})
    chain: tuple[Path, ...] = field(default=(), metadata={"internal": True})


def dump_profile(profile: Profile) -> str:
    """The resolved profile as YAML (what `hostbuild profiles show` prints)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {
                f.name: plain(getattr(value, f.name))
                for f in dataclasses.fields(value)
                if not f.metadata.get("internal")
            }
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return yaml.safe_dump(plain(profile), sort_keys=False)
