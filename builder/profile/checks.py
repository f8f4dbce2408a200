"""Rules a profile must follow beyond its types: versions, checksums, URLs, names, ranges."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import string
import urllib.parse
from collections.abc import Iterator
from typing import Any

from builder.build.artifacts import load_catalogue
from builder.build.lock import load_lock, lock_path
from builder.keys.secureboot import check_section
from builder.node.check import describe, join_path
from builder.node.nodeconfig import DNS_NAME, IMAGE_REF
from builder.profile.cmdline import check_cmdline
from builder.profile.components import KINDS, package_of, sha256_of, template_of
from builder.profile.model import Arch, Component, Containerd, Kubelet, Profile, Source
from builder.profile.skew import RULES, evaluate_skew
from builder.profile.versions import parse_os_version

SUPPORTED_RELEASES = ("trixie",)
ARCHES = tuple(a.value for a in Arch)
# patterns end in \Z, not $: $ also matches before a final line break
DEBIAN_VERSION = re.compile(r"^([0-9]+:)?[0-9][A-Za-z0-9.+~-]*\Z")
UPSTREAM_VERSION = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?\Z")
DEBIAN_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+\Z")
MODULE = re.compile(r"^[A-Za-z0-9_-]+\Z")
SYSCTL = re.compile(r"^[a-z0-9_-]+([./][A-Za-z0-9_-]+)+\Z")
SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
MODE = re.compile(r"^0?[0-7]{3}\Z")
FLAG = re.compile(r"^[a-z0-9][a-z0-9-]*\Z")
QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?%|[0-9]+(\.[0-9]+)?([KMGTPE]i?)?)\Z")
EVICTION_SIGNALS = (
    "memory.available", "nodefs.available", "nodefs.inodesFree", "imagefs.available",
    "imagefs.inodesFree", "containerfs.available", "containerfs.inodesFree", "pid.available",
)  # fmt: skip
FILE_ROOTS = ("/etc/", "/usr/", "/opt/")
HOSTBUILD_DIR = "/usr/lib/hostbuild/"  # the node agent, the initrd's tree: hostbuild's own
IMAGE_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*\Z")  # os-release IMAGE_ID
# kubelet's unit takes extra_args on its ExecStart= line, which splits at whitespace and unquotes
FLAG_VALUE = re.compile(r"^[^\s\"'\\]*\Z")
# KubeletConfiguration keys set by typed fields or by hostbuild itself
MANAGED_CONFIG = {
    "cgroupDriver": "kubelet.cgroup_driver",
    "clusterDNS": "kubelet.cluster_dns",
    "clusterDomain": "kubelet.cluster_domain",
    "maxPods": "kubelet.max_pods",
    "evictionHard": "kubelet.eviction_hard",
    "imageGCHighThresholdPercent": "kubelet.image_gc_high_threshold_percent",
    "imageGCLowThresholdPercent": "kubelet.image_gc_low_threshold_percent",
    "kind": None,
    "apiVersion": None,
}
MANAGED_FLAGS = ("config", "kubeconfig", "bootstrap-kubeconfig", "container-runtime-endpoint")

Found = Iterator[tuple[str, str]]


def check_profile(profile: Profile) -> list[tuple[str, str]]:
    """Every rule the profile breaks, as (dotted path, message)."""
    return [
        *_check_name(profile.name),
        *_check_os(profile),
        *_check_files(profile),
        *_check_components(profile),
        *(_check_containerd(profile.containerd) if profile.containerd else ()),
        *(_check_kubelet(profile.kubelet) if profile.kubelet else ()),
        *_check_requirements(profile),
        # a disabled section (a development build) needs no certificate files
        *(check_section(sb) if (sb := profile.secure_boot) and sb.enabled else ()),
    ]


def _check_name(name: str) -> Found:
    if not IMAGE_ID.match(name):
        yield (
            "",
            f"the file name makes the image name {name!r}; allowed: a-z 0-9 . _ - (it is "
            "os-release's IMAGE_ID, and names the image's partitions and boot entry)",
        )


def _check_url(url: str, schemes: tuple[str, ...]) -> bool:
    """An URL of `schemes` without whitespace; http(s) with a host, file with a path."""
    try:
        parsed = urllib.parse.urlsplit(url)
        parsed.port  # noqa: B018 -- raises ValueError for a port that is not one
    except ValueError:  # e.g. 'http://[::1' (an unclosed IPv6 address)
        return False
    where = parsed.path if parsed.scheme == "file" else parsed.hostname
    return parsed.scheme in schemes and bool(where) and url.isascii() and not re.search(r"\s", url)


def _check_os(profile: Profile) -> Found:
    try:
        parse_os_version(profile.version, build=False)
    except ValueError as e:
        yield "version", str(e)
    if profile.debian.release not in SUPPORTED_RELEASES:
        allowed = ", ".join(map(repr, SUPPORTED_RELEASES))
        yield "debian.release", f"{profile.debian.release!r} is not supported; allowed: {allowed}"
    for key in ("mirror", "security_mirror"):
        url = getattr(profile.debian, key)
        if url is not None and not _check_url(url, ("http", "https", "file")):
            yield f"debian.{key}", f"{url!r} is not an http://, https:// or file:// URL"
    for i, package in enumerate(profile.debian.packages):
        if not DEBIAN_PACKAGE.match(package):
            yield f"debian.packages[{i}]", f"{package!r} is not a Debian package name"
    yield from check_cmdline(profile.kernel.cmdline)
    for i, module in enumerate(profile.kernel.modules):
        if not MODULE.match(module):
            yield f"kernel.modules[{i}]", f"{module!r} is not a kernel module name"
    for key, value in profile.sysctls.items():
        if not SYSCTL.match(key):
            yield f"sysctls[{key!r}]", f"{key!r} is not a sysctl name (like 'net.ipv4.ip_forward')"
        elif key.replace("/", ".") == "kernel.panic" and str(value).strip() == "0":
            yield (
                f"sysctls[{key!r}]",
                "0 would leave a node hung after a panic (a dm-verity corruption) instead of "
                "rebooting into the previous entry; allowed: seconds > 0, or < 0 for at once",
            )


def _check_files(profile: Profile) -> Found:
    ours = _hostbuild_paths(profile)
    paths = [f.path for f in profile.files]
    for i, file in enumerate(profile.files):
        path = f"files[{i}].path"
        if not file.path.startswith(FILE_ROOTS):
            yield (
                path,
                f"{file.path!r} must be below {', '.join(FILE_ROOTS)} "
                "(/var is the data partition, /run is generated at boot)",
            )
        elif any(p in ("", ".", "..") for p in file.path.split("/")[1:]):
            yield path, f"{file.path!r} has a '.', '..' or empty part; write it like '/etc/motd'"
        elif file.path in paths[:i]:
            yield path, f"{file.path!r} is already files[{paths.index(file.path)}]"
        elif file.path in ours:
            yield path, f"{file.path!r} is a file hostbuild renders itself; choose another path"
        elif file.path.startswith(HOSTBUILD_DIR):
            yield path, f"{file.path!r} is below {HOSTBUILD_DIR}, hostbuild's own; choose another"
        elif any(p.startswith(file.path + "/") for p in (*ours, *paths)):
            yield path, f"{file.path!r} is a directory that holds other files; name a file in it"
        if not MODE.match(file.mode):
            yield f"files[{i}].mode", f"{file.mode!r} is not an octal mode like '0644'"


def _hostbuild_paths(profile: Profile) -> set[str]:
    """Every file hostbuild itself renders into this profile's image."""
    from builder.build.elements import config_files  # the build stage: only for this check

    return {f.path for f in config_files(dataclasses.replace(profile, files=()), build=0)}


def _check_components(profile: Profile) -> Found:
    for name, component in profile.components.pinned().items():
        path = f"components.{name}"
        if component.source is Source.DEBIAN:
            yield from _check_debian(name, component, path)
        else:
            yield from _check_upstream(name, component, path, profile.arch.value)


def _check_debian(name: str, component: Component, path: str) -> Found:
    if not DEBIAN_VERSION.match(component.version):
        yield f"{path}.version", f"{component.version!r} is not a Debian package version"
    if package_of(name, component) is None:
        yield f"{path}.source", f"{name} is not packaged by Debian; use source 'upstream'"
    if component.package is not None and not DEBIAN_PACKAGE.match(component.package):
        yield f"{path}.package", f"{component.package!r} is not a Debian package name"
    for key in ("url", "sha256"):
        if getattr(component, key):
            yield f"{path}.{key}", "only allowed with source 'upstream'"


def _check_upstream(name: str, component: Component, path: str, arch: str) -> Found:
    if not UPSTREAM_VERSION.match(component.version):
        yield f"{path}.version", f"{component.version!r} is not a release version like '1.2.3'"
    if component.package:
        yield f"{path}.package", "only allowed with source 'debian'"
    template = template_of(name, component)
    yield from _check_template(template, f"{path}.url")
    for key, digest in component.sha256.items():
        if key not in ARCHES:
            allowed = ", ".join(map(repr, ARCHES))
            yield f"{path}.sha256.{key}", f"unknown arch {key!r}; allowed: {allowed}"
        elif not SHA256.match(digest.removeprefix("sha256:")):
            yield f"{path}.sha256.{key}", f"{digest!r} is not a sha256 digest (64 hex digits)"
    if sha256_of(name, component, arch) is None:
        entry = load_catalogue().get(KINDS[name].catalogue)
        known = ", ".join(entry.versions(arch)) if entry else "none"
        yield (
            f"{path}.version",
            f"{component.version!r} has no sha256 for arch {arch!r} in the artifact catalogue "
            f"(catalogued: {known}); pin a catalogued version or set {path}.sha256.{arch}",
        )


def _check_template(template: str, path: str) -> Found:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        yield path, f"{template!r} is not a valid URL template: {e}"
        return
    unknown = fields - {"version", "arch"}
    if unknown:
        yield (
            path,
            (
                f"{template!r} uses unknown placeholder(s) {', '.join(sorted(unknown))}; "
                "allowed: {version}, {arch}"
            ),
        )
    if "version" not in fields:
        yield path, f"{template!r} must contain {{version}} so each version has its own URL"
    if not _check_url(template.replace("{", "").replace("}", ""), ("http", "https")):
        yield path, f"{template!r} is not an http:// or https:// URL"


def _check_containerd(containerd: Containerd) -> Found:
    if not IMAGE_REF.match(containerd.sandbox_image):
        yield (
            "containerd.sandbox_image",
            f"{containerd.sandbox_image!r} is not an image reference like "
            "'registry.k8s.io/pause:3.10.1'",
        )


def _check_kubelet(kubelet: Kubelet) -> Found:
    for i, address in enumerate(kubelet.cluster_dns):
        try:
            ipaddress.ip_address(address)
        except ValueError:
            yield f"kubelet.cluster_dns[{i}]", f"{address!r} is not an IP address"
    if not DNS_NAME.match(kubelet.cluster_domain):
        yield (
            "kubelet.cluster_domain",
            f"{kubelet.cluster_domain!r} is not a DNS domain like 'cluster.local'",
        )
    if not 1 <= kubelet.max_pods <= 10000:
        yield "kubelet.max_pods", f"{kubelet.max_pods} is out of range; allowed: 1 to 10000"
    for key in ("image_gc_high_threshold_percent", "image_gc_low_threshold_percent"):
        if not 0 <= getattr(kubelet, key) <= 100:
            yield f"kubelet.{key}", f"{getattr(kubelet, key)} is not a percentage (0 to 100)"
    if kubelet.image_gc_low_threshold_percent >= kubelet.image_gc_high_threshold_percent:
        yield (
            "kubelet.image_gc_low_threshold_percent",
            f"{kubelet.image_gc_low_threshold_percent} must be below "
            f"image_gc_high_threshold_percent ({kubelet.image_gc_high_threshold_percent})",
        )
    for signal, value in kubelet.eviction_hard.items():
        path = f"kubelet.eviction_hard[{signal!r}]"
        if signal not in EVICTION_SIGNALS:
            yield (
                path,
                f"unknown eviction signal {signal!r}; allowed: {', '.join(EVICTION_SIGNALS)}",
            )
        if not QUANTITY.match(value):
            yield path, f"{value!r} is not a quantity ('100Mi') or a percentage ('10%')"
    yield from _check_plain(kubelet.extra_config, "kubelet.extra_config")
    for key in kubelet.extra_config:
        if key in MANAGED_CONFIG:
            typed = MANAGED_CONFIG[key]
            use = f"set {typed} instead" if typed else "hostbuild sets it"
            yield f"kubelet.extra_config.{key}", f"{key!r} is managed by hostbuild; {use}"
    for flag in kubelet.extra_args:
        path = f"kubelet.extra_args[{flag!r}]"
        if not FLAG.match(flag):
            yield path, f"{flag!r} is not a flag name (write 'node-ip', not '--node-ip')"
        elif flag in MANAGED_FLAGS:
            yield path, f"{flag!r} is managed by hostbuild"
        value = kubelet.extra_args[flag]
        if not FLAG_VALUE.match(value):
            yield (
                path,
                f"{value!r} must be one word without whitespace, quotes or backslashes (it goes "
                "onto kubelet's ExecStart= line)",
            )


def _check_plain(value: Any, path: str) -> Found:
    """Free-form data is what JSON holds too: it goes into the manifest and the build inputs."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = join_path(path, str(key))
            if not isinstance(key, str):
                yield where, f"keys must be strings, got {describe(key)}"
            yield from _check_plain(item, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _check_plain(item, join_path(path, i))
    elif isinstance(value, float) and not math.isfinite(value):
        yield path, f"{value!r} is not a finite number"
    elif value is not None and not isinstance(value, (str, int, float)):
        yield (
            path,
            f"{describe(value)} is not plain YAML data; allowed: strings, numbers, booleans, null, "
            "lists and mappings (quote a date; YAML tags like !!binary are not allowed)",
        )


def _check_requirements(profile: Profile) -> Found:
    pinned = profile.components.pinned()
    if "kubelet" in pinned:
        for needed in ("containerd", "runc", "cni_plugins"):
            if needed not in pinned:
                yield f"components.{needed}", "missing: a node with kubelet needs it"
        if profile.kubelet is None:
            yield "kubelet", "missing: components.kubelet is pinned but has no configuration"
    if "containerd" in pinned and profile.containerd is None:
        yield "containerd", "missing: components.containerd is pinned but has no configuration"


def check_versions(profile: Profile) -> list[tuple[str, str]]:
    """Rules across components (skew, upgrade path): reported against the profile being loaded."""
    return list(_check_versions(profile))


def _check_versions(profile: Profile) -> Found:
    override = profile.skew_override
    if override is not None:
        if not override.reason.strip():
            yield "skew_override.reason", "must say why the rules do not apply"
        for i, rule in enumerate(override.rules):
            if rule not in RULES:
                allowed = ", ".join(RULES)
                yield f"skew_override.rules[{i}]", f"unknown rule {rule!r}; rules: {allowed}"
    upgrade_kubelet = None
    if profile.upgrade_from is not None:
        try:
            old = parse_os_version(profile.upgrade_from, build=False)
            new = parse_os_version(profile.version, build=False)
        except ValueError as e:
            yield "upgrade_from", str(e)
            return
        lock = load_lock(lock_path(profile.path))
        upgrade_kubelet = lock.kubelet_of(old.release)
        if old >= new:
            yield "upgrade_from", f"{old} is not older than this version {new}"
        elif not lock.kubelet_of(old.release) and old.release not in lock.releases():
            recorded = ", ".join(lock.releases()) or "none"
            yield (
                "upgrade_from",
                f"{old} is not a recorded build in {lock.path.name} (recorded: {recorded})",
            )
    for violation in evaluate_skew(profile, upgrade_kubelet)[0]:
        yield (
            violation.path,
            (
                f"{violation.message} (rule {violation.rule}; only "
                f"skew_override: {{rules: [{violation.rule}], reason: ...}} gets past it)"
            ),
        )
