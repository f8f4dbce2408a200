"""The NodeConfig schema: the full example, every class of error with its exact message, the CLI."""

from __future__ import annotations

import base64
import gzip
from pathlib import Path

import pytest

from builder.cli.nodeconfig import NodeConfigError, load_nodeconfig
from builder.node.check import InvalidConfig
from builder.node.nodeconfig import parse, parse_text
from tests.conftest import DATA, REPO, Cli

NODECONFIG = DATA / "nodeconfig"
BAD = sorted(NODECONFIG.glob("bad_*.expected"))
FULL = NODECONFIG / "full.yaml"


def test_full_example_reads_every_section() -> None:
    config = load_nodeconfig(Path("tests/data/nodeconfig/full.yaml"))
    assert config.cluster is not None
    assert config.cluster.api_server == "https://10.0.0.10:6443"
    assert config.cluster.bootstrap_token == "abcdef.0123456789abcdef"
    assert config.cluster.certificate_authority.startswith("-----BEGIN CERTIFICATE-----\n")
    assert config.cluster.dns == ("10.96.0.10",)
    assert config.node.name == "worker-1"
    assert config.node.labels["node.kubernetes.io/pool"] == "general"
    assert [(t.key, t.value, t.effect) for t in config.node.taints] == [
        ("example.com/dedicated", "storage", "NoSchedule")
    ]
    assert config.kubelet.config["maxPods"] == 58
    assert config.kubelet.flags == ("--node-ip=10.0.0.21", "--v=2")
    registries = {r.name: r for r in config.containerd.registries}
    assert set(registries) == {"registry.example.com", "_default"}
    mirror = registries["registry.example.com"].mirrors[0]
    assert (
        mirror.auth is not None
        and mirror.auth.header() == "Basic " + base64.b64encode(b"puller:s3cret").decode()
    )
    assert registries["_default"].mirrors[0].capabilities == ("pull",)
    assert config.admin.serial_console is True
    assert config.admin.ssh_authorized_keys[0].startswith("ssh-ed25519 ")
    assert config.updates.fleet_lock is not None and config.updates.fleet_lock.group == "workers"
    window = config.updates.maintenance_windows[0]
    assert (window.days, window.start, window.duration_minutes) == (("Sat", "Sun"), "02:00", 240)
    assert config.health.deadline == 600
    assert [p.name for p in config.health.probes] == ["var-space"]
    updates = config.updates
    assert (updates.check_interval, updates.check_jitter) == (1800, 600)
    assert updates.bandwidth_limit == 10 << 20


def test_defaults_of_an_empty_spec() -> None:
    config = parse({"apiVersion": "hostbuild.dev/v1alpha1", "kind": "NodeConfig", "spec": {}})
    assert config.cluster is None
    assert config.admin.ssh_authorized_keys == () and config.admin.serial_console is False
    assert config.health.deadline is None
    assert config.updates.fleet_lock is None


@pytest.mark.parametrize(
    ("updates", "expected"),
    [
        ({"checkInterval": "1d", "checkJitter": "1d"}, (86400, 86400, None)),
        ({"checkInterval": "7d", "bandwidthLimit": "512KiB"}, (7 * 86400, None, 512 << 10)),
        ({"checkInterval": 300, "checkJitter": 0, "bandwidthLimit": 65536}, (300, 0, 65536)),
        ({"checkJitter": "1h", "bandwidthLimit": "1GiB"}, (None, 3600, 1 << 30)),
        ({"checkInterval": "2h30m"}, (9000, None, None)),
    ],
)
def test_update_timing_and_bandwidth(
    updates: dict[str, object], expected: tuple[int | None, ...]
) -> None:
    spec = {"updates": {"repository": "https://updates.example.com", **updates}}
    config = parse({"apiVersion": "hostbuild.dev/v1alpha1", "kind": "NodeConfig", "spec": spec})
    u = config.updates
    assert (u.check_interval, u.check_jitter, u.bandwidth_limit) == expected


def test_base64_certificate_authority_is_decoded_to_pem() -> None:
    config = load_nodeconfig(NODECONFIG / "good_kubeconfig.yaml")
    assert config.cluster is not None and config.cluster.kubeconfig is not None
    assert config.cluster.certificate_authority.startswith("-----BEGIN CERTIFICATE-----\n")
    assert config.cluster.api_server is None


def test_well_known_kubelet_labels_are_allowed() -> None:
    spec = {
        "node": {"labels": {"topology.kubernetes.io/zone": "a", "kubelet.kubernetes.io/x": "y"}}
    }
    config = parse({"apiVersion": "hostbuild.dev/v1alpha1", "kind": "NodeConfig", "spec": spec})
    assert len(config.node.labels) == 2
    spec = {"node": {"labels": {"sub.k8s.io/role": "a"}}}
    with pytest.raises(InvalidConfig) as caught:
        parse({"apiVersion": "hostbuild.dev/v1alpha1", "kind": "NodeConfig", "spec": spec})
    assert caught.value.issues[0].path == "spec.node.labels['sub.k8s.io/role']"


def test_secrets_are_not_echoed_in_messages() -> None:
    text = FULL.read_text().replace("abcdef.0123456789abcdef", "SECRET-TOKEN-VALUE")
    with pytest.raises(InvalidConfig) as caught:
        parse_text(text)
    assert [i.path for i in caught.value.issues] == ["spec.cluster.bootstrapToken"]
    assert "SECRET-TOKEN-VALUE" not in str(caught.value)


@pytest.mark.parametrize("expected", BAD, ids=lambda p: p.stem)
def test_bad_nodeconfig_reports_every_issue(expected: Path) -> None:
    with pytest.raises(NodeConfigError) as caught:
        load_nodeconfig(Path(f"tests/data/nodeconfig/{expected.stem}.yaml"))
    assert [str(i) for i in caught.value.issues] == expected.read_text().splitlines()
    assert caught.value.exit_code == 2


def test_every_bad_nodeconfig_has_expected_output() -> None:
    bad = {p.stem for p in NODECONFIG.glob("bad_*.yaml")}
    assert bad == {p.stem for p in BAD}, "each bad_*.yaml needs a .expected file"
    assert len(bad) >= 12


def test_readme_shows_the_full_example() -> None:
    readme = (REPO / "README.md").read_text()
    assert f"```yaml\n{FULL.read_text()}```\n" in readme, "README's example must be full.yaml"


def test_cli_validate_good(run_cli: Cli) -> None:
    result = run_cli("nodeconfig", "validate", "tests/data/nodeconfig/full.yaml")
    assert result.exit_code == 0
    assert result.output == "tests/data/nodeconfig/full.yaml: valid NodeConfig\n"


def test_cli_validate_bad_lists_every_issue(run_cli: Cli) -> None:
    result = run_cli("nodeconfig", "validate", "tests/data/nodeconfig/bad_unknown_key.yaml")
    assert result.exit_code == 2
    expected = (NODECONFIG / "bad_unknown_key.expected").read_text()
    assert result.output == (
        f"Error: {expected}(3 problems in the NodeConfig; fix them and run again)\n"
    )


def test_cli_validate_renders_over_the_profile(run_cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli(
        "nodeconfig", "validate", "tests/data/nodeconfig/full.yaml", "--render", str(out),
        "--profile", "worker",
    )  # fmt: skip
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == "tests/data/nodeconfig/full.yaml: valid NodeConfig"
    assert f"{out}/run/hostbuild/kubelet/config.yaml" in lines
    assert len(lines) == 17
    rendered = [str(p) for p in (out / "run/hostbuild").rglob("*") if p.is_file()]
    assert sorted(rendered) == sorted(lines[1:])
    config = (out / "run/hostbuild/kubelet/config.yaml").read_text()
    assert "cgroupDriver: systemd" in config  # from the profile
    assert "maxPods: 58" in config and "maxPods: 110" not in config  # the NodeConfig wins


def test_cli_validate_mime_user_data_without_our_part(run_cli: Cli, tmp_path: Path) -> None:
    user_data = tmp_path / "user-data"
    user_data.write_text(
        'Content-Type: multipart/mixed; boundary="b"\nMIME-Version: 1.0\n\n'
        "--b\nContent-Type: text/x-shellscript\n\n#!/bin/sh\necho hi\n--b--\n"
    )
    result = run_cli("nodeconfig", "validate", str(user_data))
    assert result.exit_code == 2
    assert "multi-part user-data without a NodeConfig part" in result.output


def test_cli_names_the_file_as_given(run_cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "x" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_bytes((NODECONFIG / "bad_yaml.yaml").read_bytes())
    result = run_cli("nodeconfig", "validate", str(bad))
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: {bad}: not valid YAML at line 5, column 1: ")


def test_cli_render_into_a_directory_that_cannot_be_made(run_cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "out"
    result = run_cli(
        "nodeconfig", "validate", "tests/data/nodeconfig/full.yaml", "--render", str(out)
    )
    assert result.exit_code == 1
    assert result.output.splitlines()[-2:] == [
        f"Error: cannot render into {out}: {out}/run/hostbuild: Not a directory",
        "(give --render a directory you can write to)",
    ]


def test_cli_validate_refuses_a_gzip_bomb(run_cli: Cli, tmp_path: Path) -> None:
    bomb = tmp_path / "user-data"
    bomb.write_bytes(gzip.compress(bytes(1 << 20)) * 900)  # 900 MiB from under 1 MiB
    result = run_cli("nodeconfig", "validate", str(bomb))
    assert result.exit_code == 2
    assert result.output == (
        f"Error: {bomb}: user-data is gzip that expands to over 1 MiB; decompressed user-data "
        "may be at most 1 MiB (all its gzip together)\n"
        "(1 problem in the NodeConfig; fix them and run again)\n"
    )


def test_urls_are_ascii() -> None:
    mirror = {"url": "https://mirr\N{LATIN SMALL LETTER O WITH DIAERESIS}r.example.com/\U0001f600"}
    spec = {"containerd": {"registries": {"_default": {"mirrors": [mirror]}}}}
    with pytest.raises(InvalidConfig) as caught:
        parse({"apiVersion": "hostbuild.dev/v1alpha1", "kind": "NodeConfig", "spec": spec})
    assert [str(i) for i in caught.value.issues] == [
        "spec.containerd.registries._default.mirrors[0].url: must be an https:// or http:// URL "
        "in ASCII (a host in punycode, 'xn--...'; a path %-encoded), got "
        f"{mirror['url']!r}"
    ]


@pytest.mark.parametrize("seed", [0, 1234, 2047])
def test_a_wave_seed_pins_the_nodes_place(seed: int) -> None:
    spec = {"updates": {"repository": "https://updates.example.com", "waveSeed": seed}}
    config = parse({"apiVersion": "hostbuild.dev/v1alpha1", "kind": "NodeConfig", "spec": spec})
    assert config.updates.wave_seed == seed


@pytest.mark.parametrize(
    ("value", "got"),
    [(-1, "-1 (an integer)"), (True, "True (a boolean)"), ("12", "'12' (a string)"),
     (3.5, "3.5 (a number)")],
)  # fmt: skip
def test_a_wave_seed_is_an_integer_in_range(value: object, got: str) -> None:
    spec = {"updates": {"repository": "https://updates.example.com", "waveSeed": value}}
    with pytest.raises(InvalidConfig) as caught:
        parse({"apiVersion": "hostbuild.dev/v1alpha1", "kind": "NodeConfig", "spec": spec})
    assert [str(i) for i in caught.value.issues] == [
        "spec.updates.waveSeed: must be an integer 0..2047 (this node's place in a version's "
        f"waves; leave it out to draw one), got {got}"
    ]
