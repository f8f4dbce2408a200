"""Rendering a NodeConfig: golden files, merging, quoting, and stale outputs on re-render."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
import yaml

from builder.node.nodeconfig import parse_text
from builder.node.render import (
    Output,
    env_quote,
    install_outputs,
    merge,
    render_outputs,
    sandbox_dropin,
)
from builder.node.sources import Platform
from tests.conftest import DATA

GOLDEN = DATA / "golden" / "nodeconfig"
UPDATE = os.environ.get("HOSTBUILD_UPDATE_GOLDEN") == "1"
BASE_KUBELET = yaml.safe_load(
    (DATA / "golden/worker/etc/kubernetes/kubelet/config.yaml").read_text()
)
EC2 = Platform("ip-10-0-0-21.test.internal", "aws:///zone-a/i-0123456789abcdef0")
BASE_CONTAINERD = (DATA / "golden/worker/etc/containerd/config.toml").read_text()
CASES = {"full": Platform(), "good_kubeconfig": EC2}


def rendered(name: str, platform: Platform | None = None) -> dict[str, Output]:
    config = parse_text((DATA / "nodeconfig" / f"{name}.yaml").read_text())
    keys = ["ssh-ed25519 AAAA from-credential"]
    return render_outputs(config, BASE_KUBELET, platform or Platform(), keys, BASE_CONTAINERD)


def modes(outputs: dict[str, Output]) -> str:
    return "".join(f"{o.mode:04o} {rel}\n" for rel, o in sorted(outputs.items()))


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_files_match_golden(name: str) -> None:
    outputs = rendered(name, CASES[name])
    root = GOLDEN / name
    if UPDATE:
        for rel, output in outputs.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(output.content)
        (GOLDEN / f"{name}.modes").write_text(modes(outputs))
    golden = {os.fspath(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert set(outputs) == golden, "run with HOSTBUILD_UPDATE_GOLDEN=1 after a deliberate change"
    for rel, output in outputs.items():
        assert output.content == (root / rel).read_bytes(), rel
    assert modes(outputs) == (GOLDEN / f"{name}.modes").read_text()


def test_secrets_are_private() -> None:
    outputs = rendered("full")
    assert outputs["kubelet/bootstrap-kubeconfig"].mode == 0o600
    assert outputs["ssh/authorized_keys.root"].mode == 0o600
    assert outputs["containerd/certs.d/registry.example.com/hosts.toml"].mode == 0o600
    assert outputs["containerd/certs.d/registry.example.com/client.key"].mode == 0o600
    assert outputs["containerd/certs.d/_default/hosts.toml"].mode == 0o644


def test_platform_supplies_name_and_provider_id_unless_given() -> None:
    outputs = rendered("good_kubeconfig", EC2)
    assert outputs["hostname"].content == b"ip-10-0-0-21.test.internal\n"
    config = yaml.safe_load(outputs["kubelet/config.yaml"].content)
    assert config["providerID"] == "aws:///zone-a/i-0123456789abcdef0"
    assert b"--hostname-override" not in outputs["kubelet/flags.env"].content
    full = rendered("full", EC2)
    assert full["hostname"].content == b"worker-1\n"
    assert yaml.safe_load(full["kubelet/config.yaml"].content)["providerID"] == (
        "metal:///rack-4/worker-1"
    )
    assert b"--hostname-override=worker-1" in full["kubelet/flags.env"].content


def test_no_config_renders_only_credential_keys() -> None:
    outputs = render_outputs(
        None, BASE_KUBELET, EC2, ["ssh-ed25519 AAAA a", "", "ssh-ed25519 AAAA a"]
    )
    assert outputs == {"ssh/authorized_keys.root": Output(b"ssh-ed25519 AAAA a\n", 0o600)}


def test_merge_replaces_lists_and_merges_mappings() -> None:
    base = {"a": {"x": 1, "y": [1, 2]}, "b": [1], "c": "keep"}
    assert merge(base, {"a": {"y": [3]}, "b": [], "d": {"e": 1}}) == {
        "a": {"x": 1, "y": [3]}, "b": [], "c": "keep", "d": {"e": 1},
    }  # fmt: skip
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": [1], "c": "keep"}, "merge must not mutate"


def test_env_quote_escapes_what_systemd_unescapes() -> None:
    assert env_quote('--a=x"y --b=$HOME\\n `c`') == '"--a=x\\"y --b=\\$HOME\\\\n \\`c\\`"'


def test_long_names_give_a_kernel_hostname_of_the_first_label() -> None:
    name = "node-1." + "sub." * 15 + "example"
    config = parse_text(
        f"apiVersion: hostbuild.dev/v1alpha1\nkind: NodeConfig\nspec: {{node: {{name: {name}}}}}"
    )
    assert render_outputs(config, {}, Platform())["hostname"].content == b"node-1\n"


def tree(run: Path) -> dict[str, str]:
    return {
        os.fspath(p.relative_to(run)): f"{p.stat().st_mode & 0o7777:04o}"
        for p in run.rglob("*") if p.is_file()
    }  # fmt: skip


def test_rerender_removes_stale_outputs(tmp_path: Path) -> None:
    run = tmp_path / "run" / "hostbuild"
    run.mkdir(parents=True)
    (run / "health.json").write_text("{}")  # the health gate's, not ours: kept
    install_outputs(rendered("full"), run)
    first = tree(run)
    assert "kubelet/bootstrap-kubeconfig" in first and "health.d/10-var-space" in first
    install_outputs(rendered("good_kubeconfig"), run)
    second = tree(run)
    assert set(second) == {*rendered("good_kubeconfig"), "health.json"}
    for stale in ("kubelet/bootstrap-kubeconfig", "health.d/10-var-space", "hostname",
                  "containerd/certs.d/_default/hosts.toml", "serial-getty.enabled", "health.env",
                  "containerd/conf.d/sandbox.toml", "updates.json"):  # fmt: skip
        assert stale not in second, stale
    assert second["kubelet/kubeconfig"] == "0600"
    assert (run / "kubelet").stat().st_mode & 0o777 == 0o700
    install_outputs({}, run)
    assert tree(run) == {"health.json": "0644"}
    assert not [p for p in run.iterdir() if p.name.startswith(".")], "no staging left behind"


def test_install_refuses_paths_it_does_not_own(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an output the agent owns"):
        install_outputs({"../etc/passwd": Output(b"")}, tmp_path)
    with pytest.raises(ValueError, match="not an output the agent owns"):
        install_outputs({"health.json": Output(b"")}, tmp_path)


def test_sandbox_dropin_carries_the_whole_cri_section() -> None:
    # containerd 1.7 replaces a plugin's section with an imported one: nothing may be lost
    base = BASE_CONTAINERD  # the worker image's, which imports what the agent renders
    assert "imports" in tomllib.loads(base)
    dropin = tomllib.loads(sandbox_dropin(base, "registry.example.com/pause:9"))
    original = tomllib.loads(base)
    assert "imports" not in dropin
    cri = dropin["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri.pop("sandbox_image") == "registry.example.com/pause:9"
    assert original["plugins"]["io.containerd.grpc.v1.cri"].pop("sandbox_image") != (
        "registry.example.com/pause:9"
    )
    assert cri == original["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["registry"]["config_path"].endswith(":/run/hostbuild/containerd/certs.d")


@pytest.mark.parametrize(
    ("base", "reason"),
    [
        (None, "the image has no /etc/containerd/config.toml"),
        ("version = 2\n", "config.toml has no single plugins.'io.containerd.grpc.v1.cri'"),
        ('version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = """x\n"""\n',
         "config.toml is not in the expected layout"),
    ],
)  # fmt: skip
def test_sandbox_override_without_a_usable_config_is_a_warning(
    base: str | None, reason: str
) -> None:
    config = parse_text((DATA / "nodeconfig" / "full.yaml").read_text())
    warnings: list[str] = []
    outputs = render_outputs(config, BASE_KUBELET, Platform(), (), base, warnings)
    assert "containerd/conf.d/sandbox.toml" not in outputs
    assert len(warnings) == 1
    assert warnings[0].startswith(
        f"sandbox image 'registry.example.com/pause:3.10.1' not applied: {reason}"
    )


def test_the_fleet_lock_ca_and_client_certificate_are_rendered_for_the_updater() -> None:
    full = (DATA / "nodeconfig" / "full.yaml").read_text()
    spec = yaml.safe_load(full)["spec"]
    registry = spec["containerd"]["registries"]["registry.example.com"]
    lock = spec["updates"]["fleetLock"]
    lock["ca"] = registry["mirrors"][0]["ca"]
    lock["clientCertificate"] = registry["clientCertificate"]
    document = {"apiVersion": "hostbuild.dev/v1alpha1", "kind": "NodeConfig", "spec": spec}
    outputs = render_outputs(parse_text(yaml.safe_dump(document)), BASE_KUBELET, Platform())
    assert outputs["fleetlock/ca.crt"].content.decode() == lock["ca"]
    assert (
        outputs["fleetlock/client.crt"].content.decode() == lock["clientCertificate"]["certificate"]
    )
    assert outputs["fleetlock/client.key"].mode == 0o600
    assert "PRIVATE KEY" not in outputs["updates.json"].content.decode()
    assert yaml.safe_load(outputs["updates.json"].content)["fleetLock"] == {
        "url": "https://fleetlock.example.com", "group": "workers",
        "ca": "/run/hostbuild/fleetlock/ca.crt",
        "certificate": "/run/hostbuild/fleetlock/client.crt",
        "key": "/run/hostbuild/fleetlock/client.key",
    }  # fmt: skip


def test_a_pinned_wave_seed_is_rendered_for_the_updater() -> None:
    def updates_json(updates: dict[str, object]) -> dict[str, object]:
        spec = {"updates": {"repository": "https://updates.example.com", **updates}}
        document = {"apiVersion": "hostbuild.dev/v1alpha1", "kind": "NodeConfig", "spec": spec}
        outputs = render_outputs(parse_text(yaml.safe_dump(document)), BASE_KUBELET, Platform())
        data = yaml.safe_load(outputs["updates.json"].content)
        assert isinstance(data, dict)
        return data

    assert updates_json({"waveSeed": 0})["waveSeed"] == 0  # 0 is a seed, not "none"
    assert "waveSeed" not in updates_json({})
