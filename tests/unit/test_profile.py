"""Profile loading, inheritance and every class of validation error with its exact message."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import ProfileError
from builder.profile.load import load_profile
from builder.profile.model import CgroupDriver, KernelFlavour, Source, dump_profile
from tests.conftest import DATA

BAD = sorted((DATA / "profiles").glob("bad_*.expected"))


def test_worker_extends_base() -> None:
    profile = load_profile("worker")
    assert profile.name == "worker"
    assert [p.name for p in profile.chain] == ["base.yaml", "worker.yaml"]
    assert profile.debian.release == "trixie"
    assert profile.kernel.flavour is KernelFlavour.CLOUD
    assert profile.kernel.cmdline[:2] == ("console=ttyS0,115200", "panic=10")  # from base
    assert profile.sysctls["kernel.panic"] == 10  # from base, merged with the worker's
    assert profile.sysctls["net.ipv4.ip_forward"] == 1
    assert "systemd-sysv" in profile.debian.packages and "iptables" in profile.debian.packages
    assert profile.kubelet is not None
    assert profile.kubelet.cgroup_driver is CgroupDriver.SYSTEMD
    pinned = profile.components.pinned()
    assert set(pinned) == {"containerd", "runc", "cni_plugins", "crictl", "kubelet"}
    assert pinned["kubelet"].source is Source.UPSTREAM
    assert pinned["containerd"].source is Source.DEBIAN


def test_base_has_no_node_components() -> None:
    profile = load_profile("base")
    assert profile.components.pinned() == {}
    assert profile.kubelet is None


def test_child_merges_mappings_and_appends_marked_lists() -> None:
    child = load_profile("tests/data/profiles/good_child.yaml")
    worker = load_profile("worker")
    assert child.version == "2.0.0"
    assert child.debian.packages == (*worker.debian.packages, "jq")
    assert child.debian.mirror == "http://127.0.0.1:9/debian"
    assert child.debian.release == "trixie"
    assert child.kubelet is not None and worker.kubelet is not None
    assert child.kubelet.max_pods == 250
    assert child.kubelet.eviction_hard == worker.kubelet.eviction_hard
    assert child.kubelet.extra_config["serializeImagePulls"] is False
    assert child.kubelet.extra_config["authentication"] == {"anonymous": {"enabled": True}}
    assert child.kubelet.extra_args == {"node-ip": "10.0.0.5"}


def test_profile_by_path_with_defaults() -> None:
    profile = load_profile("tests/data/profiles/good_minimal.yaml")
    assert profile.name == "good_minimal"
    assert profile.arch == "amd64"
    assert profile.components.pinned() == {}


def test_dump_round_trips_through_the_loader(tmp_path: Path) -> None:
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(dump_profile(load_profile("worker")))
    again = load_profile(str(dumped))
    assert dump_profile(again) == dumped.read_text()


@pytest.mark.parametrize("expected", BAD, ids=lambda p: p.stem)
def test_bad_profile_reports_every_issue(expected: Path) -> None:
    with pytest.raises(ProfileError) as caught:
        load_profile(f"tests/data/profiles/{expected.stem}.yaml")
    assert [str(i) for i in caught.value.issues] == expected.read_text().splitlines()
    assert caught.value.exit_code == 2


def test_every_bad_profile_has_expected_output() -> None:
    bad = {p.stem for p in (DATA / "profiles").glob("bad_*.yaml")}
    expected = {p.stem for p in BAD}
    assert bad - expected <= {"bad_cycle_b"}, "each bad_*.yaml needs a .expected file"
    assert len(expected) >= 12
