"""The compatibility matrix: each rule passes and fails, the override, the upgrade path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.errors import ProfileError
from builder.profile.load import load_profile
from builder.profile.skew import RULES, evaluate_skew, load_matrix, supported_api_servers
from tests.conftest import DATA


def test_worker_passes_every_rule() -> None:
    assert evaluate_skew(load_profile("worker"), None) == ([], [])


def test_kubernetes_136_with_upstream_runtime_passes() -> None:
    profile = load_profile("tests/data/profiles/good_k136_upstream.yaml")
    assert evaluate_skew(profile, None) == ([], [])


def test_override_lets_a_named_rule_pass_and_is_recorded() -> None:
    profile = load_profile("tests/data/profiles/good_skew_override.yaml")
    left, applied = evaluate_skew(profile, None)
    assert left == []
    assert applied == [{
        "rule": "crictl-minor",
        "path": "components.crictl.version",
        "message": "1.34.0 does not match kubelet minor 1.35",
        "reason": "crictl 1.35 has a regression in 'crictl pods' output that our tooling parses",
    }]  # fmt: skip


def test_api_server_skew() -> None:
    assert supported_api_servers("1.35.8") == ["1.35", "1.36", "1.37", "1.38"]


def test_matrix_is_data_covering_the_catalogued_kubelets() -> None:
    matrix = load_matrix()["kubernetes"]
    assert {"1.35", "1.36"} <= set(matrix)
    for rules in matrix.values():
        assert set(rules) == {"containerd", "runc", "cni_plugins", "cgroup"}
    assert set(RULES) >= {"containerd-range", "crictl-minor", "cgroup-v2", "upgrade-one-minor"}


def write_profile(tmp_path: Path, kubelet: str, crictl: str, upgrade_from: str) -> Path:
    profile = tmp_path / "node.yaml"
    profile.write_text(
        f"extends: {DATA}/profiles/good_k136_upstream.yaml\n"
        f"version: 0.3.0\nupgrade_from: {upgrade_from}\n"
        f"components:\n  kubelet: {{version: {kubelet}}}\n  crictl: {{version: {crictl}}}\n"
    )
    return profile


@pytest.fixture
def lock(tmp_path: Path) -> Path:
    path = tmp_path / "node.lock.json"
    path.write_text(json.dumps({"lock": 1, "builds": [
        {"version": "0.1.0-1", "inputs": "a" * 64, "kubelet": "1.34.3"},
        {"version": "0.2.0-1", "inputs": "b" * 64, "kubelet": "1.35.8"},
    ]}))  # fmt: skip
    return path


def test_upgrade_by_one_minor_passes(tmp_path: Path, lock: Path) -> None:
    load_profile(str(write_profile(tmp_path, "1.36.4", "1.36.0", "0.2.0")))


def test_upgrade_skipping_a_minor_fails(tmp_path: Path, lock: Path) -> None:
    path = write_profile(tmp_path, "1.36.4", "1.36.0", "0.1.0")
    with pytest.raises(ProfileError) as caught:
        load_profile(str(path))
    assert [str(i) for i in caught.value.issues] == [
        f"{path}: upgrade_from: updating from 0.1.0 (kubelet 1.34.3) to kubelet 1.36.4 skips a "
        "Kubernetes minor; kubelet moves 1 minor at a time (rule upgrade-one-minor; only "
        "skew_override: {rules: [upgrade-one-minor], reason: ...} gets past it)"
    ]


def test_upgrade_from_unknown_or_newer_version(tmp_path: Path, lock: Path) -> None:
    path = write_profile(tmp_path, "1.36.4", "1.36.0", "0.0.9")
    with pytest.raises(ProfileError) as caught:
        load_profile(str(path))
    assert [i.message for i in caught.value.issues] == [
        "0.0.9 is not a recorded build in node.lock.json (recorded: 0.1.0, 0.2.0)"
    ]
    path = write_profile(tmp_path, "1.36.4", "1.36.0", "0.3.0")
    with pytest.raises(ProfileError) as caught:
        load_profile(str(path))
    assert [i.message for i in caught.value.issues] == [
        "0.3.0 is not older than this version 0.3.0"
    ]
