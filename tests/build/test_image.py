"""`hostbuild image` of the stand-in worker profile: the root tree carries what the profile pins."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml

from builder.profile.load import load_profile
from tests.build.conftest import Built, invoke
from tests.standin import PROFILE, artifacts

pytestmark = pytest.mark.build


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_upstream_binaries_are_the_pinned_ones(built: Built) -> None:
    assert sha256(built.read("/usr/bin/kubelet")) == sha256(artifacts()["kubelet"])
    with tarfile.open(fileobj=io.BytesIO(artifacts()["crictl"])) as crictl:
        member = crictl.extractfile("crictl")
        assert member is not None
        assert built.read("/usr/bin/crictl") == member.read()
    assert built.resolve("/usr/bin/kubelet").stat().st_mode & 0o111


def test_debian_components_carry_the_pinned_versions(built: Built) -> None:
    profile = load_profile(os.fspath(PROFILE))
    installed = {p["package"]: p["version"] for p in built.manifest["packages"]}
    pinned = profile.components.pinned()
    assert installed["containerd"] == pinned["containerd"].version
    assert installed["runc"] == pinned["runc"].version
    assert installed["containernetworking-plugins"] == pinned["cni_plugins"].version
    names = built.names()
    assert {"/usr/bin/containerd", "/usr/sbin/runc", "/usr/lib/cni/bridge"} <= names
    assert "linux-image-cloud-amd64" in installed
    assert "linux-image-amd64" not in installed  # only the profile's kernel flavour


def test_boot_chain_packages_are_installed(built: Built) -> None:
    installed = {p["package"] for p in built.manifest["packages"]}
    assert {"dracut", "systemd-boot-efi", "systemd-cryptsetup", "systemd-repart"} <= installed
    names = built.names()
    assert "/usr/lib/systemd/boot/efi/systemd-bootx64.efi" in names
    assert "/usr/lib/dracut/modules.d/01systemd-veritysetup/module-setup.sh" in names


def test_units_enabled(built: Built) -> None:
    wants = "/etc/systemd/system/multi-user.target.wants"
    names = built.names()
    assert f"{wants}/containerd.service" in names
    assert f"{wants}/kubelet.service" in names
    assert f"{wants}/hostbuild-node.service" in names
    assert f"{wants}/cni-dhcp.service" not in names
    unit = built.read("/usr/lib/systemd/system/kubelet.service").decode()
    # kubelet runs from what the node agent rendered from this boot's NodeConfig
    assert "ConditionPathExists=/run/hostbuild/kubelet/config.yaml" in unit
    assert "--config=/run/hostbuild/kubelet/config.yaml" in unit
    assert "$KUBELET_KUBECONFIG_ARGS" in unit


def test_sysinit_target_waits_for_fewer_units(built: Built) -> None:
    """boot-complete.target comes after sysinit.target: resolved and timesyncd are still wanted by
    it but no longer ordered before it; units a node never uses on the way to it are masked."""
    for unit in ("systemd-resolved.service", "systemd-timesyncd.service"):
        text = built.read(f"/etc/systemd/system/{unit}").decode()
        before = [line.split("=", 1)[1].split() for line in text.splitlines()
                  if line.startswith("Before=")]  # fmt: skip
        assert before and all(targets and "sysinit.target" not in targets for targets in before)
        assert "shutdown.target" in before[0]  # the rest of systemd's ordering stays
        assert f"/etc/systemd/system/sysinit.target.wants/{unit}" in built.names()
    for unit in ("systemd-udev-load-credentials.service", "systemd-binfmt.service",
                 "systemd-network-generator.service"):  # fmt: skip
        assert os.readlink(built.root / f"etc/systemd/system/{unit}") == "/dev/null"


def test_containerd_config_parses_with_profile_values(built: Built) -> None:
    config = tomllib.loads(built.read("/etc/containerd/config.toml").decode())
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "registry.k8s.io/pause:3.10.1"
    options = cri["containerd"]["runtimes"]["runc"]["options"]
    assert options["SystemdCgroup"] is True
    # network add-ons add plugins next to the pinned ones: /opt/cni/bin is an overlay on /var
    assert cri["cni"]["bin_dir"] == "/opt/cni/bin"
    assert {"/opt/cni/bin", "/etc/cni/net.d", "/usr/lib/cni/bridge"} <= built.names()
    assert config["imports"] == ["/run/hostbuild/containerd/conf.d/*.toml"]


def test_kubelet_configuration_carries_profile_and_extra_config(built: Built) -> None:
    config = yaml.safe_load(built.read("/etc/kubernetes/kubelet/config.yaml"))
    assert config["kind"] == "KubeletConfiguration"
    assert config["apiVersion"] == "kubelet.config.k8s.io/v1beta1"
    assert config["cgroupDriver"] == "systemd"
    assert config["maxPods"] == 110
    assert config["clusterDNS"] == ["10.96.0.10"]
    assert config["evictionHard"]["memory.available"] == "100Mi"
    assert config["serializeImagePulls"] is False  # extra_config
    assert config["protectKernelDefaults"] is True  # extra_config


def test_sysctls_modules_and_identity(built: Built) -> None:
    sysctl = built.read("/usr/lib/sysctl.d/90-hostbuild.conf").decode()
    assert "net.ipv4.ip_forward = 1" in sysctl
    modules = built.read("/usr/lib/modules-load.d/hostbuild.conf").decode().split()
    assert "br_netfilter" in modules and "overlay" in modules
    release = built.read("/etc/os-release").decode()
    assert "IMAGE_ID=worker-standin\n" in release
    assert "IMAGE_VERSION=0.1.0-1\n" in release
    assert "VERSION_ID=0.1.0\n" in release
    assert "ID=hostbuild\n" in release and "ID_LIKE=debian\n" in release
    assert built.read("/etc/machine-id") == b""
    assert built.read("/etc/fstab").split()[:3] == [b"#", b"The", b"data"]
    assert list(built.resolve("/boot").iterdir()) == []  # the kernel lives in the UKI


def test_no_apt_indexes_left(built: Built) -> None:
    assert not [n for n in built.names() if n.startswith("/var/lib/apt/lists/") and "_" in n]


def test_manifest_records_inputs_and_outputs(built: Built) -> None:
    manifest = built.manifest
    assert manifest["name"] == "worker-standin-0.1.0-1"
    assert (manifest["version"], manifest["os_version"], manifest["build_number"]) == (
        "0.1.0-1", "0.1.0", 1,
    )  # fmt: skip
    assert manifest["skew"]["api_servers_supported"] == ["1.35", "1.36", "1.37", "1.38"]
    assert manifest["components"]["kubelet"]["sha256"] == sha256(artifacts()["kubelet"])
    for name, output in manifest["outputs"].items():
        assert output["sha256"] == sha256((built.output / name).read_bytes()), name
    assert set(manifest["outputs"]) == {
        "worker-standin-0.1.0-1.raw", "worker-standin-0.1.0-1.qcow2",
        "worker-standin-0.1.0-1.update/payload.json", "worker-standin-0.1.0-1.spdx.json",
    }  # fmt: skip
    assert manifest["files"]["/etc/containerd/config.toml"]["sha256"] == sha256(
        built.read("/etc/containerd/config.toml")
    )
    assert (built.output / "build.log").stat().st_size > 0


def test_lock_records_the_build(built: Built) -> None:
    lock = json.loads(built.output.with_name("worker-standin.lock.json").read_text())
    [entry] = lock["builds"]
    assert entry["version"] == "0.1.0-1"
    assert entry["inputs"] == built.manifest["inputs_digest"]
    assert entry["kubelet"] == "1.35.8"
    assert entry["packages"]["containerd"] == "1.7.24~ds1-6+deb13u1"


def test_failed_build_leaves_no_output(mirror_url: str, build_cache: Path, tmp_path: Path) -> None:
    profile = tmp_path / "broken.yaml"
    profile.write_text(
        f"extends: {PROFILE}\n"
        "components:\n  runc:\n    source: debian\n    version: 1.1.15+ds1-99hostbuild-missing\n"
    )
    output = tmp_path / "out"
    result = invoke(
        build_cache, "image", "--profile", os.fspath(profile), "--output", os.fspath(output),
        "--artifact-mirror", mirror_url, "--lock", os.fspath(tmp_path / "broken.lock.json"),
    )  # fmt: skip
    assert result.exit_code == 1
    assert "command failed with exit code" in result.output
    assert "disk-image-create" in result.output
    assert "log: " in result.output
    assert not output.exists()
    assert list(tmp_path.iterdir()) == [profile]
