"""The node agent end to end into a temporary root, its CLI, and its standalone packaging."""

from __future__ import annotations

import ast
import gzip
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from builder.node import agent
from builder.node.command import CommandFailed
from builder.node.sources import Imds, Sources
from builder.run import base_environment, run
from tests.conftest import DATA, REPO

NODE = REPO / "builder" / "node"
FULL = (DATA / "nodeconfig" / "full.yaml").read_bytes()
KUBELET_FILES = ("kubelet/bootstrap-kubeconfig", "kubelet/kubeconfig", "kubelet/config.yaml",
                 "kubelet/flags.env", "kubelet/ca.crt")  # fmt: skip


class Node:
    """A temporary root with the image's kubelet configuration, and the agent's surroundings."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "root"
        self.run = self.root / "run" / "hostbuild"
        profile = self.root / "etc/kubernetes/kubelet/config.yaml"
        profile.parent.mkdir(parents=True)
        (self.root / "etc/containerd").mkdir()
        shutil.copy(DATA / "golden/worker/etc/kubernetes/kubelet/config.yaml", profile)
        shutil.copy(DATA / "golden/worker/etc/containerd/config.toml", self.root / "etc/containerd")
        self.creds = tmp_path / "creds"
        self.creds.mkdir()
        (tmp_path / "dmi").mkdir()
        (tmp_path / "dmi" / "sys_vendor").write_text("QEMU\n")
        self.console = tmp_path / "console"
        self.console.touch()
        self.hostnames: list[str] = []
        self.restarts: list[str] = []
        self.sources = Sources(
            dmi=tmp_path / "dmi", imds=Imds("http://127.0.0.1:9", timeout=0.1, deadline=0.1),
            credential_dirs=[self.creds], by_label=tmp_path / "no-such-label",
            mountpoint=tmp_path / "mnt", settle=lambda: None,
        )  # fmt: skip

    def user_data(self, data: bytes) -> None:
        (self.creds / "hostbuild.nodeconfig").write_bytes(data)

    def apply(self) -> dict[str, object]:
        return agent.apply(
            self.root, self.sources, self.console, self.hostnames.append, self.restarts.append
        )

    def status(self) -> dict[str, object]:
        result: dict[str, object] = json.loads((self.run / "node-status.json").read_text())
        return result


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def test_good_config_is_rendered_and_reported(node: Node) -> None:
    node.user_data(FULL)
    status = node.apply()
    assert status == node.status()
    assert status["ok"] is True and status["errors"] == [] and status["warnings"] == []
    assert (status["source"], status["kubelet"]) == ("credential", "configured")
    assert status["detail"] == os.fspath(node.creds / "hostbuild.nodeconfig")
    assert str(status["digest"]).startswith("sha256:") and len(str(status["digest"])) == 71
    assert "/run/hostbuild/kubelet/bootstrap-kubeconfig" in status["outputs"]  # type: ignore[operator]
    assert (node.run / "kubelet/bootstrap-kubeconfig").stat().st_mode & 0o777 == 0o600
    config = (node.run / "kubelet/config.yaml").read_text()
    assert "cgroupDriver: systemd" in config and "maxPods: 58" in config
    assert node.hostnames == ["worker-1"]
    assert node.console.read_text() == (
        f"hostbuild-node: node configuration from credential ({status['detail']}) applied; "
        "kubelet configured\n"
    )
    assert "pause:3.10.1" in (node.run / "containerd/conf.d/sandbox.toml").read_text()


def test_containerd_is_restarted_only_when_its_dropins_change(node: Node) -> None:
    node.user_data(FULL)  # sets a sandbox image: a drop-in containerd did not start with
    assert node.apply()["restarted"] == ["containerd.service"]
    assert node.restarts == ["containerd.service"]
    assert node.apply()["restarted"] == []  # the same drop-in again: containerd has it already
    node.user_data(FULL.replace(b"pause:3.10.1", b"pause:3.11"))
    node.apply()
    node.user_data(FULL.replace(b"sandboxImage:", b"# sandboxImage:"))  # the drop-in goes away
    assert node.apply()["restarted"] == ["containerd.service"]
    assert not (node.run / "containerd/conf.d/sandbox.toml").exists()
    assert node.restarts == ["containerd.service"] * 3


def test_no_dropin_no_restart(node: Node) -> None:
    assert node.apply()["restarted"] == []  # no user-data: nothing containerd imports
    assert node.restarts == []


def test_a_failed_restart_is_a_warning(node: Node) -> None:
    def fail(unit: str) -> None:
        raise CommandFailed(f"systemctl restart --no-block {unit} exited 1: masked")

    node.user_data(FULL)
    status = agent.apply(node.root, node.sources, node.console, node.hostnames.append, fail)
    assert (status["ok"], status["restarted"]) == (True, [])
    assert status["warnings"] == [
        "containerd's drop-ins changed, restarting it failed: "
        "systemctl restart --no-block containerd.service exited 1: masked"
    ]


def test_invalid_config_configures_no_kubelet_and_says_why(node: Node) -> None:
    node.user_data(FULL)
    node.apply()
    node.console.write_text("")  # the next boot's console
    (node.creds / "ssh.authorized_keys.root").write_text("ssh-ed25519 AAAA from-credential\n")
    node.user_data(FULL.replace(b"https://10.0.0.10:6443", b"foo").replace(b"Sun]", b"Sunday]"))
    status = node.apply()
    errors = [
        "spec.cluster.apiServer: must be an https:// URL, got 'foo'",
        "spec.updates.maintenanceWindows[0].days[1]: 'Sunday' (a string) is not allowed; "
        "allowed: 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun'",
    ]
    assert (status["ok"], status["errors"], status["kubelet"]) == (False, errors, "not configured")
    for rel in KUBELET_FILES:
        assert not (node.run / rel).exists(), f"{rel} left from the previous boot's config"
    assert not (node.run / "health.d").exists() or not list((node.run / "health.d").iterdir())
    # keys from the credential still let an operator in; the NodeConfig's do not
    assert (node.run / "ssh/authorized_keys.root").read_text() == (
        "ssh-ed25519 AAAA from-credential\n"
    )
    console = node.console.read_text()
    assert console.startswith(
        f"hostbuild-node: node configuration from credential ({node.creds}/hostbuild.nodeconfig) "
        "NOT applied: kubelet will not start.\n"
    )
    assert f"hostbuild-node:   {errors[0]}\n" in console
    assert f"hostbuild-node:   {errors[1]}\n" in console
    assert node.status() == status


def test_unparsable_user_data(node: Node) -> None:
    node.user_data(b"#!/bin/sh\necho this is not a NodeConfig\n")
    status = node.apply()
    assert status["ok"] is False
    assert status["errors"] == [
        "not a NodeConfig: expected a mapping with apiVersion 'hostbuild.dev/v1alpha1', "
        "kind 'NodeConfig' and spec, got a string"
    ]


def test_user_data_that_is_not_utf8_or_repeats_a_key(node: Node) -> None:
    node.user_data(FULL.replace(b"name: worker-1", b"name: w\xf6rker-1"))
    status = node.apply()
    assert (status["ok"], status["kubelet"]) == (False, "not configured")
    assert status["errors"] == [
        "not UTF-8: byte 0xf6 at line 22, column 12 is not valid UTF-8 (save the file as UTF-8)"
    ]
    node.user_data(FULL.replace(b"  node:\n", b"  node:\n    name: worker-2\n"))
    assert node.apply()["errors"] == [
        "spec.node.name: duplicate key 'name' (lines 22 and 23); a key may appear once in a "
        "mapping (YAML would keep only the last)"
    ]


def test_deeply_nested_user_data_is_an_error_the_node_reports(node: Node) -> None:
    node.user_data(b"spec: " + b"[" * 100_000)
    status = node.apply()
    assert (status["ok"], status["kubelet"]) == (False, "not configured")
    assert status["errors"] == [
        "not valid YAML at line 1, column 56: mappings and lists nest deeper than 50 levels"
    ]


def test_a_gzip_bomb_is_an_error_the_node_reports(node: Node) -> None:
    node.user_data(gzip.compress(bytes(1 << 20)) * 64)  # 64 KiB that expand to 64 MiB
    status = node.apply()
    assert (status["ok"], status["source"], status["kubelet"]) == (False, None, "not configured")
    assert status["errors"] == [
        f"credential {node.creds}/hostbuild.nodeconfig: user-data is gzip that expands to over "
        "1 MiB; decompressed user-data may be at most 1 MiB (all its gzip together)"
    ]


def test_a_key_credential_that_is_not_utf8_is_a_warning(node: Node) -> None:
    node.user_data(FULL)
    (node.creds / "ssh.authorized_keys.root").write_bytes(b"ssh-ed25519 AAAA r\xf6ot@example\n")
    status = node.apply()
    assert status["ok"] is True
    assert status["warnings"] == [
        f"credential {node.creds}/ssh.authorized_keys.root: not UTF-8: byte 0xf6 at line 1, "
        "column 19 is not valid UTF-8 (save the file as UTF-8); its keys are not installed"
    ]
    keys = (node.run / "ssh/authorized_keys.root").read_text()
    assert keys.startswith("ssh-ed25519 ") and "r\ufffdot" not in keys  # the NodeConfig's key


def test_no_source_at_all(node: Node) -> None:
    status = node.apply()
    assert (status["ok"], status["source"], status["digest"]) == (True, None, None)
    assert status["outputs"] == [] and status["kubelet"] == "not configured"
    assert node.console.read_text() == (
        "hostbuild-node: no node configuration (no user-data); kubelet not configured\n"
    )
    assert node.hostnames == [] and not (node.run / "kubelet/config.yaml").exists()


def test_unreachable_metadata_on_ec2_is_an_error_not_a_failure(node: Node, tmp_path: Path) -> None:
    (tmp_path / "dmi" / "sys_vendor").write_text("Amazon EC2\n")
    status = node.apply()
    assert status["ok"] is False and status["source"] is None
    assert "IMDS: http://127.0.0.1:9/latest/api/token" in str(status["errors"])
    assert "node configuration NOT applied" in node.console.read_text()


def test_unwritable_console_is_skipped(node: Node, tmp_path: Path) -> None:
    node.console = tmp_path / "missing-dir" / "console"
    node.user_data(b"apiVersion: nope\n")
    assert node.apply()["ok"] is False  # and no exception


def test_hostname_failure_is_a_warning(node: Node) -> None:
    def refuse(name: str) -> None:
        raise PermissionError(1, "Operation not permitted")

    node.user_data(FULL)
    status = agent.apply(node.root, node.sources, node.console, refuse, node.restarts.append)
    assert status["ok"] is True
    assert status["warnings"] == [
        "setting the hostname 'worker-1': [Errno 1] Operation not permitted"
    ]


def test_status_command(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    assert agent.main(["--root", os.fspath(node.root), "status"]) == 1
    assert "no status" in capsys.readouterr().err
    node.user_data(FULL.replace(b"worker-1 ", b"Worker-1 "))
    node.apply()
    assert agent.main(["--root", os.fspath(node.root), "status"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "result:   ERROR"
    assert out[1] == f"source:   credential ({node.creds}/hostbuild.nodeconfig)"
    assert out[3:4] == ["kubelet:  not configured"]
    assert out[5:7] == [
        "secure boot: no-uefi (no /sys/firmware/efi: booted without UEFI)",
        "tpm:      none",
    ], "the temporary root has no /sys"
    assert out[7:] == [
        "errors:",
        "  spec.node.name: must be a lowercase DNS name like 'worker-1', got 'Worker-1'",
    ]
    node.user_data(FULL)
    node.apply()
    assert agent.main(["--root", os.fspath(node.root), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_validate_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert agent.main(["validate", "tests/data/nodeconfig/full.yaml"]) == 0
    assert capsys.readouterr().out == "tests/data/nodeconfig/full.yaml: valid\n"
    assert agent.main(["validate", "tests/data/nodeconfig/bad_unknown_key.yaml"]) == 2
    expected = (DATA / "nodeconfig" / "bad_unknown_key.expected").read_text()
    assert capsys.readouterr().err == expected


def test_validate_command_names_what_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert agent.main(["validate", os.fspath(tmp_path)]) == 2
    assert capsys.readouterr().err == f"{tmp_path}: cannot be read: Is a directory\n"
    bomb = tmp_path / "user-data"
    bomb.write_bytes(gzip.compress(bytes(4 << 20)))
    assert agent.main(["validate", os.fspath(bomb)]) == 2
    assert capsys.readouterr().err.startswith(f"{bomb}: user-data is gzip that expands to over")


def test_node_modules_import_only_the_stdlib_yaml_and_each_other() -> None:
    """What runs on the node: the stdlib, PyYAML (the agent), h2 (the health gate's gRPC) and
    python3-tuf (the updater's TUF client)."""
    for module in NODE.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                extra = {"grpc.py": {"h2"}, "tufclient.py": {"tuf"}}.get(module.name, set())
                allowed = {"yaml"} | extra
                assert top in sys.stdlib_module_names or top in allowed, f"{module.name}: {name}"


def test_runs_as_a_standalone_package(tmp_path: Path) -> None:
    """As the image installs it: builder/node/*.py as hostbuild_node, run with python3 -m."""
    package = tmp_path / "lib" / "hostbuild_node"
    package.mkdir(parents=True)
    for module in NODE.glob("*.py"):
        shutil.copy(module, package)
    env = base_environment() | {"PYTHONPATH": os.fspath(tmp_path / "lib")}
    good = os.fspath(DATA / "nodeconfig" / "full.yaml")
    argv = [sys.executable, "-I", "-m", "hostbuild_node.agent", "validate", good]
    # -I ignores PYTHONPATH: run without it first to show the package is really needed
    assert run(argv, env=env, cwd=tmp_path, check=False).returncode != 0
    argv.remove("-I")
    result = run(argv, env=env, cwd=tmp_path, check=False)
    assert (result.returncode, result.stdout) == (0, f"{good}: valid\n"), result.stderr
