"""What each node component is: its catalogue entry, its Debian package, where its files go."""

from __future__ import annotations

from dataclasses import dataclass

from builder.build.artifacts import Artifact, load_catalogue
from builder.profile.model import Component, Profile, Source


@dataclass(frozen=True)
class Kind:
    """How hostbuild installs one node component."""

    catalogue: str
    debian_package: str | None
    element: str
    # upstream layout: member of the download ("" for a plain file, "*" for every top-level
    # file) -> path in the image
    install: dict[str, str]


KINDS: dict[str, Kind] = {
    "containerd": Kind(
        "containerd",
        "containerd",
        "hostbuild-containerd",
        {
            "bin/containerd": "/usr/bin/containerd",
            "bin/containerd-shim-runc-v2": "/usr/bin/containerd-shim-runc-v2",
            "bin/ctr": "/usr/bin/ctr",
        },
    ),
    "runc": Kind("runc", "runc", "hostbuild-containerd", {"": "/usr/sbin/runc"}),
    "cni_plugins": Kind(
        "cni-plugins",
        "containernetworking-plugins",
        "hostbuild-containerd",
        {"*": "/usr/lib/cni/"},
    ),
    "crictl": Kind("crictl", None, "hostbuild-crictl", {"crictl": "/usr/bin/crictl"}),
    "kubelet": Kind("kubelet", None, "hostbuild-kubelet", {"": "/usr/bin/kubelet"}),
}


def template_of(name: str, component: Component) -> str:
    """The URL template of an upstream component: the profile's, else the catalogue's."""
    if component.url:
        return component.url
    entry = load_catalogue().get(KINDS[name].catalogue)
    return entry.url if entry else ""


def sha256_of(name: str, component: Component, arch: str) -> str | None:
    """The pinned digest: the profile's own for this arch, else the catalogue's."""
    if arch in component.sha256:
        return component.sha256[arch].removeprefix("sha256:")
    entry = load_catalogue().get(KINDS[name].catalogue)
    return entry.checksums.get(arch, {}).get(component.version) if entry else None


def package_of(name: str, component: Component) -> str | None:
    return component.package or KINDS[name].debian_package


def upstream_artifacts(profile: Profile) -> list[Artifact]:
    """The files a build downloads: every component pinned from an upstream release."""
    artifacts = []
    for name, component in profile.components.pinned().items():
        if component.source is not Source.UPSTREAM:
            continue
        sha256 = sha256_of(name, component, profile.arch)
        assert sha256 is not None, "checked by check_profile"
        url = template_of(name, component).format(version=component.version, arch=profile.arch)
        kind = "file" if "" in KINDS[name].install else "tar.gz"
        artifacts.append(Artifact(name, component.version, profile.arch, url, sha256, kind))
    return artifacts


def debian_pins(profile: Profile) -> dict[str, str]:
    """Debian package -> exact version, for every component pinned from Debian."""
    pins = {}
    for name, component in profile.components.pinned().items():
        if component.source is Source.DEBIAN and (package := package_of(name, component)):
            pins[package] = component.version
    return pins
