"""The CLI through click's runner: exit codes and whole outputs."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import builder.cli as cli_module
from builder.build import image as image_module
from builder.build.apt import Mirrors
from builder.build.toolstree import ToolsTree
from builder.firmware.varstore import read_uefi_data
from builder.vm.machine import DEFAULT_MACHINE, load_machine
from builder.vm.qemu import Accelerator, VmConfig
from builder.vm.swtpm import SoftwareTpm
from tests.conftest import Cli
from tests.secureboot import empty_edk2_store, make_keys
from tests.standin import PROFILE, make_mirror

MIRRORS = Mirrors("http://deb.example.test/debian", "http://deb.example.test/debian-security")


@pytest.fixture(autouse=True)
def fixed_mirrors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests never read the host's apt configuration or reach a Debian mirror."""
    monkeypatch.setattr(image_module, "resolve_mirrors", lambda debian: MIRRORS)


def test_profiles_lists_names_versions_descriptions(run_cli: Cli) -> None:
    result = run_cli("profiles")
    assert result.exit_code == 0
    assert result.output == (
        "base             0.1.0      Minimal immutable Debian host\n"
        "worker           0.1.0      Kubernetes 1.35 worker node (containerd 1.7 from Debian)\n"
    )


def test_profiles_show_prints_the_resolved_profile(run_cli: Cli) -> None:
    result = run_cli("profiles", "show", "worker")
    assert result.exit_code == 0
    assert result.output.startswith("# worker: profiles/base.yaml -> profiles/worker.yaml\n")
    assert "  kubelet:\n    source: upstream\n    version: 1.35.8\n" in result.output
    assert "  cmdline:\n  - console=ttyS0,115200\n" in result.output


def test_bad_profile_exits_2_with_every_problem(run_cli: Cli) -> None:
    result = run_cli("image", "--profile", "tests/data/profiles/bad_missing.yaml")
    assert result.exit_code == 2
    assert result.output == (
        "Error: tests/data/profiles/bad_missing.yaml: debian.release: missing required key "
        "(a string)\n"
        "tests/data/profiles/bad_missing.yaml: kernel: missing required key (a mapping)\n"
        "(2 problems in the profile; fix them and run again)\n"
    )
    assert "Traceback" not in result.output


def test_unknown_profile_name(run_cli: Cli) -> None:
    result = run_cli("profiles", "show", "nope")
    assert result.exit_code == 2
    assert result.output.startswith(
        "Error: profiles/nope.yaml: no such profile; profiles: base, worker\n"
    )


def test_bad_option_is_a_usage_error(run_cli: Cli) -> None:
    result = run_cli("image")
    assert result.exit_code == 2
    assert "Missing option '--profile'" in result.output


def test_dry_run_prints_inputs_and_dib_command_and_changes_nothing(
    run_cli: Cli, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    result = run_cli("image", "--profile", "worker", "--output", str(output), "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["profile"] == "worker"
    assert plan["debian"]["mirror"] == "http://deb.example.test/debian"
    assert plan["debian"]["pinned"]["containerd"] == "1.7.24~ds1-6+deb13u1"
    assert [a["name"] for a in plan["artifacts"]] == ["crictl", "kubelet"]
    assert plan["secure_boot"] == {"signed": False}
    assert (
        plan["artifacts"][1]["url"] == "https://dl.k8s.io/release/v1.35.8/bin/linux/amd64/kubelet"
    )
    command = plan["dib_command"]
    assert "DIB_RELEASE=trixie" in command
    assert "DIB_DISTRIBUTION_MIRROR=http://deb.example.test/debian" in command
    assert "-t tar -n" in command
    assert "containerd=1.7.24~ds1-6+deb13u1" in command
    assert command.endswith(
        "hostbuild-debian hostbuild-base hostbuild-boot hostbuild-containerd hostbuild-crictl "
        "hostbuild-kubelet"
    )
    assert not output.exists()
    assert not run_cli.cache.exists()


def test_image_stops_early_naming_the_unreachable_artifact(run_cli: Cli, tmp_path: Path) -> None:
    result = run_cli(
        "image", "--profile", "worker", "--output", str(tmp_path / "out"),
        "--artifact-mirror", str(tmp_path / "empty-mirror"),
    )  # fmt: skip
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[-4].startswith("Error: crictl 1.35.0 (amd64) is not in the mirror: ")
    assert lines[-3].startswith("kubelet 1.35.8 (amd64) is not in the mirror: ")
    assert lines[-2].startswith(
        "(download these on a connected machine, put each at MIRROR/<path of its URL> and pass "
    )
    assert lines[-1].startswith(f"log: {run_cli.cache}/logs/worker-0.1.0-")
    assert not (tmp_path / "out").exists()
    assert not (run_cli.cache / "work").exists() or not any((run_cli.cache / "work").iterdir())


def test_artifacts_fetch_table(run_cli: Cli, tmp_path: Path) -> None:
    mirror = make_mirror(tmp_path / "mirror")
    first = run_cli(
        "artifacts", "fetch", "--profile", str(PROFILE), "--artifact-mirror", str(mirror)
    )
    assert first.exit_code == 0, first.output
    lines = first.output.splitlines()
    assert lines[0].split() == ["ARTIFACT", "VERSION", "SIZE", "CACHE", "SHA256"]
    assert lines[1].split()[:2] == ["crictl", "1.35.0"] and lines[1].split()[3] == "miss"
    assert lines[2].split()[:2] == ["kubelet", "1.35.8"] and lines[2].split()[3] == "miss"
    again = run_cli("artifacts", "fetch", "--profile", str(PROFILE))
    assert [line.split()[3] for line in again.output.splitlines()[1:]] == ["hit", "hit"]


def test_doctor_reports_each_check(run_cli: Cli) -> None:
    result = run_cli("doctor")
    names = [line.split()[1] for line in result.output.splitlines() if line[:2] in ("ok", "MI")]
    assert names[:3] == ["root", "mmdebstrap", "sudo"]
    assert "loop" in names and "free" in names
    assert result.exit_code in (0, 1)
    if result.exit_code == 1:
        assert "(run: apt-get install -y" in result.output or "MISSING" in result.output


@pytest.fixture
def booted(monkeypatch: pytest.MonkeyPatch) -> list[VmConfig]:
    """`hostbuild boot` without a tools tree or QEMU: records the VmConfig it would boot."""
    configs: list[VmConfig] = []

    @contextlib.contextmanager
    def boot_vm(config: VmConfig, tools: ToolsTree, work: Path) -> Iterator[Any]:
        configs.append(config)
        yield SimpleNamespace(serial_log=work / "serial.log", ssh_port=2222, exit_code=lambda: 0)

    monkeypatch.setattr(cli_module, "resolve_mirrors", lambda debian: MIRRORS)
    monkeypatch.setattr(cli_module, "ensure_tools_tree", lambda cache, mirror: ToolsTree(Path("/")))
    monkeypatch.setattr(cli_module, "boot_vm", boot_vm)
    return configs


def test_boot_uses_the_default_machine(
    run_cli: Cli, tmp_path: Path, booted: list[VmConfig]
) -> None:
    image = tmp_path / "disk.raw"
    image.touch()
    result = run_cli("boot", "--image", str(image))
    assert result.exit_code == 0, result.output
    [config] = booted
    assert config.machine == load_machine(DEFAULT_MACHINE)
    assert (config.memory_mib, config.cpus, config.accelerator) == (None, None, None)


def test_boot_options_override_the_machine_file(
    run_cli: Cli, tmp_path: Path, booted: list[VmConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "disk.raw"
    image.touch()
    machine = tmp_path / "big.yaml"
    machine.write_text(DEFAULT_MACHINE.read_text().replace("memory: 2048", "memory: 8192"))
    monkeypatch.setenv("HOSTBUILD_QEMU_MACHINE", str(machine))
    result = run_cli("boot", "--image", str(image), "--cpus", "4", "--accel", "auto")
    assert result.exit_code == 0, result.output
    [config] = booted
    assert config.machine.source == machine and config.machine.memory == 8192
    assert (config.memory_mib, config.cpus, config.accelerator) == (None, 4, Accelerator.AUTO)


def test_boot_refuses_a_machine_that_lets_traffic_out(
    run_cli: Cli, tmp_path: Path, booted: list[VmConfig]
) -> None:
    image = tmp_path / "disk.raw"
    image.touch()
    machine = tmp_path / "open.yaml"
    machine.write_text(DEFAULT_MACHINE.read_text().replace("restrict: true", "restrict: false"))
    result = run_cli("boot", "--image", str(image), "--machine", str(machine))
    assert result.exit_code == 2
    assert result.output == (
        f"Error: {machine}: network.restrict: must be true: no test traffic may leave the machine "
        "(with restrict=on the guest reaches nothing; only the forwarded SSH port reaches the "
        "guest)\n"
        "(1 problem in the machine file; fix them and run again)\n"
    )
    assert booted == [], "no VM starts"


def test_boot_help_names_the_machine_file_and_its_variable(run_cli: Cli) -> None:
    result = run_cli("boot", "--help")
    assert "HOSTBUILD_QEMU_MACHINE" in result.output
    assert "qemu/machine.yaml" in result.output


def test_boot_refuses_a_private_key_before_anything_else(run_cli: Cli, tmp_path: Path) -> None:
    image, key = tmp_path / "x.raw", tmp_path / "id_ed25519"
    image.write_bytes(b"")
    key.write_text(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaA==\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    result = run_cli("boot", "--image", str(image), "--ssh-key", str(key))
    assert result.exit_code == 2
    assert (
        f"Invalid value for --ssh-key: {key} is a private key; give the public one (like {key}.pub)"
    ) in result.output


def test_test_without_a_manifest_says_what_image_takes(run_cli: Cli, tmp_path: Path) -> None:
    result = run_cli("test", "--image", str(tmp_path))
    assert result.exit_code == 1
    assert result.output == (
        f"Error: no manifest.json in {str(tmp_path)!r}\n"
        "(give the output directory of 'hostbuild image' (it holds manifest.json and NAME.raw))\n"
    )
    (tmp_path / "manifest.json").write_bytes(b"\xff")
    result = run_cli("test", "--image", str(tmp_path))
    assert result.output.startswith(f"Error: {tmp_path}/manifest.json: not a manifest of ")


def test_boot_with_secure_boot_and_a_tpm(
    run_cli: Cli, tmp_path: Path, booted: list[VmConfig]
) -> None:
    image, store = tmp_path / "disk.raw", tmp_path / "fleet-vars.fd"
    image.touch()
    store.touch()
    result = run_cli("boot", "--image", str(image), "--secure-boot-vars", str(store), "--tpm")
    assert result.exit_code == 0, result.output
    [config] = booted
    assert config.secure_boot_vars == store
    assert config.tpm == SoftwareTpm(), "a throw-away TPM"
    assert run_cli("boot", "--image", str(image)).exit_code == 0
    assert (booted[1].secure_boot_vars, booted[1].tpm) == (None, None)


def test_firmware_vars_writes_both_stores(run_cli: Cli, tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    template = empty_edk2_store(tmp_path / "empty.fd")
    store, aws = tmp_path / "out" / "vars.fd", tmp_path / "out" / "uefi-data.b64"
    result = run_cli(
        "firmware", "vars", "--pk", str(keys.pk), "--kek", str(keys.kek[0]),
        "--db", str(keys.db[0]), "--template", str(template), "--output", str(store),
        "--aws-output", str(aws),
    )  # fmt: skip
    assert (result.exit_code, result.stdout) == (0, f"{store}\n{aws}\n")
    assert store.stat().st_size == template.stat().st_size
    assert read_uefi_data(aws) == aws.read_text().strip()


def test_firmware_vars_needs_an_output(run_cli: Cli, tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    result = run_cli("firmware", "vars", "--pk", str(keys.pk), "--kek", str(keys.kek[0]),
                     "--db", str(keys.db[0]))  # fmt: skip
    assert result.exit_code == 2
    assert "Error: give --output, --aws-output or both" in result.output


def test_firmware_vars_refuses_a_key_for_a_certificate(run_cli: Cli, tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    key = tmp_path / "PK.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nMIGHAgEA\n-----END PRIVATE KEY-----\n")
    result = run_cli("firmware", "vars", "--pk", str(key), "--kek", str(keys.kek[0]),
                     "--db", str(keys.db[0]), "--aws-output", str(tmp_path / "a.b64"))  # fmt: skip
    assert result.exit_code == 1
    assert result.output == (
        f"Error: the PK certificate {str(key)!r} is not an X.509 certificate\n"
        "(give a PEM ('-----BEGIN CERTIFICATE-----') or DER certificate, not a private key or "
        "a request)\n"
    )
    assert not (tmp_path / "a.b64").exists()
