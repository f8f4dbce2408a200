"""Profile loading, inheritance and every class of validation error with its exact message."""

from __future__ import annotations

import os
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


def issues_of(ref: str) -> list[str]:
    with pytest.raises(ProfileError) as caught:
        load_profile(ref)
    return [str(i) for i in caught.value.issues]


def test_files_are_named_as_given(tmp_path: Path) -> None:
    bad = tmp_path / "x" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_text("extends: worker\ndescription: [unclosed\n")
    assert issues_of(str(bad)) == [
        f"{bad}: not valid YAML at line 3, column 1: expected ',' or ']', but got '<stream end>'"
    ]
    child = tmp_path / "child.yaml"
    child.write_text("extends: x/../x/bad.yaml\n")
    assert issues_of(str(child))[0].startswith(
        f"{child}: extends: 'x/../x/bad.yaml' names {bad}, which is not a profile: not valid YAML"
    )


def test_extends_of_what_is_not_a_profile_file_names_the_extends(tmp_path: Path) -> None:
    child = tmp_path / "child.yaml"
    for target, problem in [
        ("/dev/zero", "/dev/zero, which is not a profile: not a regular file, not a profile file"),
        (os.fspath(tmp_path), f"{tmp_path}, which is not a profile: a directory, not a profile"),
        ("./child.yaml", f"cycle in extends: {child} -> {child}"),
    ]:
        child.write_text(f"extends: {target}\n")
        (issue,) = issues_of(str(child))
        assert issue.startswith(f"{child}: extends: "), issue
        assert problem in issue, issue
    assert issues_of("profiles/") == ["profiles: a directory, not a profile file (NAME.yaml)"]


def test_an_unreadable_or_huge_profile_is_an_issue(tmp_path: Path) -> None:
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (1 << 20) + b"\n")
    assert issues_of(str(huge)) == [f"{huge}: over 1024 KiB: too big for a profile"]
    if os.geteuid() != 0:  # root reads files whatever their mode
        locked = tmp_path / "locked.yaml"
        locked.write_text("description: x\n")
        locked.chmod(0)
        assert issues_of(str(locked)) == [f"{locked}: cannot be read: Permission denied"]


def test_the_file_name_must_make_an_image_name(tmp_path: Path) -> None:
    bad = tmp_path / "My Worker.yaml"
    bad.write_text("extends: worker\n")
    assert issues_of(str(bad)) == [
        f"{bad}: the file name makes the image name 'My Worker'; allowed: a-z 0-9 . _ - (it is "
        "os-release's IMAGE_ID, and names the image's partitions and boot entry)"
    ]
