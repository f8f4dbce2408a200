"""Render what the profile puts into the image into the build's copy of the elements.

Each hostbuild element gets a `files/` tree (configuration rendered with Jinja2, verified upstream
binaries); DIB merges them and `hostbuild-base` installs them. Templates carry data only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2
import yaml

from builder.build.artifacts import Fetched
from builder.errors import HostbuildError
from builder.profile.components import KINDS
from builder.profile.model import CgroupDriver, Kubelet, Profile

ELEMENTS_DIR = Path(os.environ.get("HOSTBUILD_ELEMENTS", Path(__file__).parents[2] / "elements"))
TEMPLATES = Path(__file__).parent / "templates"
# The CIS Kubernetes Benchmark's strong ciphers (4.2.12) with forward secrecy: its list without
# the two TLS_RSA_WITH_* suites (RSA key exchange). TLS 1.3 suites are not configurable.
TLS_CIPHER_SUITES = (
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
)  # fmt: skip
# A pod's PID limit (CIS 4.2.13): ample for any one workload (threads count), while 110 pods at
# the limit take 450,560 PIDs, a ninth of the pid_max systemd sets (4,194,304)
POD_PIDS_LIMIT = 4096

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)


@dataclass(frozen=True)
class ImageFile:
    """A file to put at `path` in the image, with its element, content and mode."""

    element: str
    path: str
    content: bytes
    mode: int = 0o644

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


def render(template: str, **values: Any) -> str:
    return _env.get_template(template).render(**values)


def image_elements(profile: Profile) -> list[str]:
    """The DIB elements the profile needs, in dependency-friendly order."""
    names = ["hostbuild-debian", "hostbuild-base", "hostbuild-boot"]
    pinned = profile.components.pinned()
    if "containerd" in pinned:
        names.append("hostbuild-containerd")
    if "crictl" in pinned:
        names.append("hostbuild-crictl")
    if "kubelet" in pinned:
        names.append("hostbuild-kubelet")
    return names


def kubelet_config(kubelet: Kubelet) -> dict[str, Any]:
    """The KubeletConfiguration: typed fields and hostbuild's, then `extra_config` merged over."""
    config: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": kubelet.cgroup_driver.value,
        "clusterDNS": list(kubelet.cluster_dns),
        "clusterDomain": kubelet.cluster_domain,
        "maxPods": kubelet.max_pods,
        "imageGCHighThresholdPercent": kubelet.image_gc_high_threshold_percent,
        "imageGCLowThresholdPercent": kubelet.image_gc_low_threshold_percent,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": "/run/hostbuild/kubelet/ca.crt"},
        },
        "authorization": {"mode": "Webhook"},
        "rotateCertificates": True,
        "serverTLSBootstrap": True,
        "staticPodPath": "/etc/kubernetes/manifests",
        # the CIS Kubernetes Benchmark's worker node section (tests/data/cis/worker-node.yaml)
        "readOnlyPort": 0,
        "podPidsLimit": POD_PIDS_LIMIT,
        "tlsCipherSuites": list(TLS_CIPHER_SUITES),
    }
    if kubelet.eviction_hard:
        config["evictionHard"] = dict(kubelet.eviction_hard)
    for key, value in kubelet.extra_config.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def _text(element: str, path: str, text: str, mode: int = 0o644) -> ImageFile:
    return ImageFile(element, path, text.encode(), mode)


def config_files(profile: Profile, build: int) -> list[ImageFile]:
    """Every configuration file rendered from the profile, for its `build`-th build."""
    p = profile.name
    release = render(
        "hostbuild-release.j2", image_id=p, version_id=profile.version,
        image_version=f"{profile.version}-{build}", debian_release=profile.debian.release,
    )  # fmt: skip
    enable = ["systemd-networkd.service", "systemd-resolved.service", "systemd-timesyncd.service"]
    files = [
        _text("hostbuild-base", "/usr/lib/sysctl.d/90-hostbuild.conf",
              render("sysctl.conf.j2", profile=p, sysctls=profile.sysctls)),
        _text("hostbuild-base", "/usr/lib/modules-load.d/hostbuild.conf",
              render("modules-load.conf.j2", profile=p, modules=profile.kernel.modules)),
        _text("hostbuild-base", "/usr/lib/systemd/network/80-hostbuild-dhcp.network",
              render("dhcp.network")),
        _text("hostbuild-base", "/usr/lib/systemd/journald.conf.d/hostbuild.conf",
              render("journald.conf")),
        _text("hostbuild-base", "/usr/lib/hostbuild/os-release", release),
    ]  # fmt: skip
    files += boot_files() + node_files() + update_files()
    enable += [
        "ssh.service",
        "hostbuild-node.service",
        "hostbuild-health.service",
        "hostbuild-smoke.service",
        "hostbuild-update.timer",
    ]
    for f in profile.files:
        files.append(_text("hostbuild-base", f.path, f.content, int(f.mode, 8)))
    pinned = profile.components.pinned()
    if profile.containerd and "containerd" in pinned:
        enable.append("containerd.service")
        runc = "/usr/sbin/runc" if "runc" in pinned else "runc"
        systemd = profile.kubelet is None or profile.kubelet.cgroup_driver is CgroupDriver.SYSTEMD
        files.append(_text("hostbuild-containerd", "/etc/containerd/config.toml", render(
            "containerd-config.toml.j2", profile=p, sandbox_image=profile.containerd.sandbox_image,
            runc=runc, systemd_cgroup=systemd, cni_bin_dir="/opt/cni/bin")))  # fmt: skip
        system = "/usr/lib/systemd/system"
        files += [
            _text("hostbuild-containerd", f"{system}/hostbuild-cni-dirs.service",
                  render("cni-dirs.service")),
            _text("hostbuild-containerd", f"{system}/opt-cni-bin.mount",
                  render("opt-cni-bin.mount")),
            _text("hostbuild-containerd", f"{system}/etc-cni-net.d.mount",
                  render("etc-cni-net.d.mount")),
            _text("hostbuild-containerd", f"{system}/containerd.service.d/50-hostbuild.conf",
                  render("containerd-dropin.conf")),
            # hostbuild's unit, also over Debian's: that one waits for the network and sysinit
            _text("hostbuild-containerd", f"{system}/containerd.service",
                  render("containerd.service")),
        ]  # fmt: skip
    if "crictl" in pinned:
        files.append(_text("hostbuild-crictl", "/etc/crictl.yaml", render("crictl.yaml")))
    if profile.kubelet and "kubelet" in pinned:
        enable.append("kubelet.service")
        # 0600, as CIS 4.1.1 and 4.1.9 ask: only systemd and the node agent (root) read them
        # on ExecStart=, % starts a specifier and $ a variable: each is doubled to stand for itself
        flags = "".join(
            f"--{k}={v.replace('%', '%%').replace('$', '$$')} \\\n  "
            for k, v in profile.kubelet.extra_args.items()
        )
        files += [
            _text("hostbuild-kubelet", "/usr/lib/systemd/system/kubelet.service",
                  render("kubelet.service.j2", profile=p, flags=flags,
                         version=pinned["kubelet"].version), 0o600),
            _text("hostbuild-kubelet", "/etc/kubernetes/kubelet/config.yaml",
                  yaml.safe_dump(kubelet_config(profile.kubelet), sort_keys=False), 0o600),
        ]  # fmt: skip
    disable = [
        "systemd-networkd-wait-online.service", "apt-daily.timer", "apt-daily-upgrade.timer",
        "cni-dhcp.service", "cni-dhcp.socket", "e2scrub_reap.service", "e2scrub_all.timer",
    ]  # fmt: skip
    files.append(_text("hostbuild-base", "/usr/lib/systemd/system-preset/80-hostbuild.preset",
                       render("preset.j2", profile=p, enable=enable, disable=disable)))  # fmt: skip
    return files


def boot_files() -> list[ImageFile]:
    """The initrd's configuration: dracut settings and the tree dracut --include's."""
    initrd = "/usr/lib/hostbuild/initrd"
    system = f"{initrd}/usr/lib/systemd/system"
    var_device = (
        "dev-disk-by\\x2dpartlabel-var.device"  # systemd-escape -p /dev/disk/by-partlabel/var
    )
    return [
        _text("hostbuild-boot", "/etc/dracut.conf.d/90-hostbuild.conf", render("dracut.conf")),
        _text("hostbuild-boot", f"{initrd}/usr/lib/repart.d/50-hostbuild-var.conf",
              render("initrd/repart-var.conf")),
        _text("hostbuild-boot", f"{system}/systemd-repart.service.d/50-hostbuild.conf",
              render("initrd/repart-dropin.conf")),
        _text("hostbuild-boot", f"{system}/systemd-veritysetup@root.service.d/50-hostbuild.conf",
              render("initrd/verity-dropin.conf")),
        _text("hostbuild-boot", f"{system}/hostbuild-machine-id.service",
              render("initrd/machine-id.service")),
        _text("hostbuild-boot", f"{system}/initrd.target.d/50-hostbuild.conf",
              render("initrd/initrd-target-dropin.conf")),
        _text("hostbuild-boot", f"{system}/emergency.service.d/50-hostbuild.conf",
              render("initrd/emergency-dropin.conf")),
        _text("hostbuild-boot", f"{system}/systemd-udev-trigger.service.d/50-hostbuild.conf",
              render("initrd/udev-trigger-dropin.conf")),
        _text("hostbuild-boot", f"{system}/sysroot-var.mount", render("initrd/var.mount")),
        _text("hostbuild-boot", f"{system}/{var_device}.d/50-hostbuild.conf",
              render("initrd/var-device-dropin.conf")),
        _text("hostbuild-boot", f"{system}/initrd-fs.target.d/50-hostbuild.conf",
              render("initrd/initrd-fs-dropin.conf")),
        _text("hostbuild-boot", f"{initrd}/usr/lib/hostbuild/repart-root-disk",
              render("initrd/repart-root-disk"), 0o755),
        _text("hostbuild-boot", f"{initrd}/usr/lib/hostbuild/machine-id",
              render("initrd/machine-id"), 0o755),
        _text("hostbuild-boot", f"{system}/initrd-parse-etc.service.d/50-hostbuild.conf",
              render("initrd/parse-etc-dropin.conf")),
        _text("hostbuild-boot", f"{system}/hostbuild-readahead.service",
              render("initrd/readahead.service")),
        _text("hostbuild-boot", f"{initrd}/usr/lib/hostbuild/readahead",
              render("initrd/readahead"), 0o755),
    ]  # fmt: skip


def node_files() -> list[ImageFile]:
    """What the running node needs from hostbuild: mounts, the health gate, gated SSH."""
    # builder/node is stdlib + PyYAML with relative imports: it runs as the package hostbuild_node
    package = [
        _text(
            "hostbuild-base", f"/usr/lib/hostbuild/hostbuild_node/{source.name}", source.read_text()
        )
        for source in sorted((Path(__file__).parents[1] / "node").glob("*.py"))
    ]
    system = "/usr/lib/systemd/system"
    return [
        *package,
        _text("hostbuild-base", "/usr/bin/hostbuild-node", render("hostbuild-node"), 0o755),
        _text("hostbuild-base", f"{system}/hostbuild-node.service", render("node.service")),
        _text("hostbuild-base", f"{system}/serial-getty@.service.d/50-hostbuild.conf",
              render("serial-getty-dropin.conf")),
        _text("hostbuild-base", "/usr/lib/hostbuild/fstab", render("fstab")),
        _text("hostbuild-base", "/usr/lib/systemd/system/hostbuild-health.service",
              render("health.service")),
        _text("hostbuild-base", "/etc/ssh/sshd_config.d/50-hostbuild.conf", render("sshd.conf")),
        _text("hostbuild-base", "/usr/lib/systemd/system/ssh.service.d/50-hostbuild.conf",
              render("ssh-dropin.conf")),
        _text("hostbuild-base",
              "/usr/lib/systemd/system/systemd-bless-boot.service.d/50-hostbuild.conf",
              render("bless-dropin.conf")),
        _text("hostbuild-base", "/usr/lib/tmpfiles.d/hostbuild-var.conf",
              render("var-tmpfiles.conf")),
        _text("hostbuild-base", "/usr/lib/systemd/system/hostbuild-smoke.service",
              render("smoke.service")),
        _text("hostbuild-base", "/usr/lib/hostbuild/smoke", render("smoke"), 0o755),
        # timesyncd waits for the CPU while the node boots; networkd and resolved do not: kubelet
        # needs the network and name resolution to join its cluster, and a node joining sooner
        # matters more than an earlier verdict
        _text("hostbuild-base", f"{system}/systemd-timesyncd.service.d/50-hostbuild-startup.conf",
              render("startup-weight-low.conf")),
    ]  # fmt: skip


def update_files() -> list[ImageFile]:
    """OS updates on the node (builder/node/updater.py): the timer and the unit it starts.

    The repository's trusted root.json (/usr/lib/hostbuild/update/root.json) comes from the
    update repository's build side, not from here.
    """
    system = "/usr/lib/systemd/system"
    return [
        _text("hostbuild-base", f"{system}/hostbuild-update.service",
              render("hostbuild-update.service")),
        _text("hostbuild-base", f"{system}/hostbuild-update.timer",
              render("hostbuild-update.timer")),
    ]  # fmt: skip


def binary_files(fetched: list[Fetched]) -> list[ImageFile]:
    """The files of every verified upstream artifact, where the component's kind puts them."""
    files = []
    for item in fetched:
        kind = KINDS[item.artifact.name]
        element, install = kind.element, kind.install
        if item.artifact.kind == "file":
            files.append(ImageFile(element, install[""], item.path.read_bytes(), 0o755))
            continue
        files.extend(_from_tarball(element, item, install))
    return files


def _from_tarball(element: str, item: Fetched, install: dict[str, str]) -> list[ImageFile]:
    wanted = {str(PurePosixPath(m)): dest for m, dest in install.items()}
    found = []
    with tarfile.open(item.path) as tar:
        for member in tar.getmembers():
            name = str(PurePosixPath(member.name))
            if not member.isfile():
                continue
            if name in wanted:
                dest = wanted.pop(name)
            elif "*" in wanted and "/" not in name:
                dest = wanted["*"] + name
            else:
                continue
            data = tar.extractfile(member)
            assert data is not None
            found.append(ImageFile(element, dest, data.read(), 0o755))
    wanted.pop("*", None)
    if wanted:
        raise HostbuildError(
            f"{item.artifact.name} {item.artifact.version} archive {item.path} lacks "
            f"{', '.join(sorted(wanted))}",
            hint="the pinned checksum matched, so the release changed its layout; "
            "update KINDS in builder/profile/components.py",
        )
    return found


def prepare_elements(profile: Profile, files: list[ImageFile], dest: Path) -> list[str]:
    """Copy the project's elements to `dest` and write each element's `files/` tree."""
    names = image_elements(profile)
    shutil.copytree(ELEMENTS_DIR, dest, symlinks=True)
    for f in files:
        if f.element not in names:
            raise HostbuildError(f"internal: {f.path} belongs to unused element {f.element}")
        target = dest / f.element / "files" / f.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.content)
        target.chmod(f.mode)
    return names
