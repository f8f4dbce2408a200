"""The machine file: qemu/machine.yaml as the harness reads it, and every problem a file has."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.build.toolstree import OVMF_CODE, OVMF_CODE_SECBOOT, OVMF_VARS, PACKAGES, ToolsTree
from builder.errors import HostbuildError
from builder.vm.machine import (
    DEFAULT_MACHINE,
    Accelerator,
    MachineError,
    find_firmware,
    load_machine,
    with_option,
)

DEFAULT = yaml.safe_load(DEFAULT_MACHINE.read_text())


def write_machine(path: Path, change: Callable[[dict[str, Any]], object]) -> Path:
    """The default machine file with `change` applied to its data (comments are dropped)."""
    data = copy.deepcopy(DEFAULT)
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_default_machine() -> None:
    machine = load_machine()
    assert machine.source == DEFAULT_MACHINE
    assert Path(__file__).parents[2] / "qemu" / "machine.yaml" == DEFAULT_MACHINE
    assert (machine.type, machine.accel, machine.cpus, machine.memory) == (
        "q35", Accelerator.TCG, 2, 2048,
    )  # fmt: skip
    assert machine.cpu.model(Accelerator.TCG) == "max,svm=off,vmx=off"
    assert machine.cpu.model(Accelerator.KVM) == "host"
    assert machine.network.restrict is True
    assert machine.devices == ()


def test_the_default_firmware_is_the_tools_trees() -> None:
    machine = load_machine()
    assert (machine.firmware.code, machine.firmware.vars) == (OVMF_CODE, OVMF_VARS)
    assert PACKAGES["ovmf"] == machine.firmware.code, "the tree's ovmf check looks for it"
    assert machine.firmware.secure_code == OVMF_CODE_SECBOOT
    assert machine.tpm == "tpm-crb"


def test_secure_boot_and_tpm_keys_are_optional(tmp_path: Path) -> None:
    def change(data: dict[str, Any]) -> None:
        del data["firmware"]["secure_code"], data["tpm"]

    machine = load_machine(write_machine(tmp_path / "m.yaml", change))
    assert (machine.firmware.secure_code, machine.tpm) == ("", "tpm-crb")
    with pytest.raises(MachineError) as caught:
        find_firmware(machine, ToolsTree(tmp_path), secure_boot=True)
    assert [str(i) for i in caught.value.issues] == [
        f"{machine.where('firmware.secure_code')}: not set, and this boot asks for Secure Boot "
        "(e.g. secure_code: /usr/share/OVMF/OVMF_CODE_4M.secboot.fd)"
    ]


def test_secure_boot_needs_smm(tmp_path: Path) -> None:
    machine = load_machine(write_machine(tmp_path / "m.yaml", _set("type", "pc")))
    with pytest.raises(MachineError) as caught:
        find_firmware(machine, ToolsTree(tmp_path), secure_boot=True)
    assert [str(i) for i in caught.value.issues] == [
        f"{machine.where('type')}: 'pc' has no SMM, which Secure Boot firmware needs: use q35"
    ]


def test_restrict_written_as_on(tmp_path: Path) -> None:
    """YAML 1.1 reads `restrict: on`, QEMU's spelling, as true."""
    path = tmp_path / "machine.yaml"
    path.write_text(DEFAULT_MACHINE.read_text().replace("restrict: true", "restrict: on"))
    assert load_machine(path).network.restrict is True


def test_a_changed_file_is_read(tmp_path: Path) -> None:
    def change(data: dict[str, Any]) -> None:
        data.update(memory=4096, cpus=4, accel="auto", devices=["virtio-rng-pci"])
        data["cpu"]["tcg"] = "qemu64"

    machine = load_machine(write_machine(tmp_path / "big.yaml", change))
    assert (machine.memory, machine.cpus, machine.accel) == (4096, 4, Accelerator.AUTO)
    assert machine.cpu.tcg == "qemu64" and machine.devices == ("virtio-rng-pci",)
    assert machine.source == tmp_path / "big.yaml"


def test_optional_keys(tmp_path: Path) -> None:
    def change(data: dict[str, Any]) -> None:
        del data["devices"], data["disk"]["drive"]

    machine = load_machine(write_machine(tmp_path / "m.yaml", change))
    assert machine.devices == () and machine.disk.drive == ""


def _set(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, last = key.split(".")
        target = data
        for parent in parents:
            target = target[parent]
        target[last] = value

    return change


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, last = key.split(".")
        target = data
        for parent in parents:
            target = target[parent]
        del target[last]

    return change


BAD: dict[str, tuple[Callable[[dict[str, Any]], object], list[str]]] = {
    "unknown key": (
        _set("memroy", 4096),
        ["memroy: unknown key 'memroy'; did you mean 'memory'? "
         "allowed: accel, cpu, cpus, devices, disk, firmware, memory, network, tpm, type"],
    ),
    "memory with a unit": (
        _set("memory", "4G"), ["memory: expected an integer (MiB), got '4G' (a string)"]
    ),
    "no memory": (_set("memory", 0), ["memory: expected a positive integer (MiB), got 0"]),
    "cpus as a string": (_set("cpus", "2"), ["cpus: expected an integer, got '2' (a string)"]),
    "restrict off": (
        _set("network.restrict", False),
        ["network.restrict: must be true: no test traffic may leave the machine (with "
         "restrict=on the guest reaches nothing; only the forwarded SSH port reaches the guest)"],
    ),
    "restrict missing": (
        _drop("network.restrict"),
        ["network.restrict: missing required key (a boolean (true or false))"],
    ),
    "firmware vars missing": (
        _drop("firmware.vars"), ["firmware.vars: missing required key (a string)"]
    ),
    "firmware as a file name": (
        _set("firmware.code", "OVMF_CODE_4M.fd"),
        ["firmware.code: expected an absolute file path in the tools tree, got 'OVMF_CODE_4M.fd'"],
    ),
    "accelerator": (
        _set("accel", "fast"),
        ["accel: 'fast' (a string) is not allowed; allowed: 'tcg', 'kvm', 'auto'"],
    ),
    "cpu as one model": (_set("cpu", "max"), ["cpu: expected a mapping, got 'max' (a string)"]),
    "options the harness sets": (
        lambda d: (_set("network.nic", "virtio-net-pci,netdev=n1")(d),
                   _set("disk.drive", "file=/x,cache=none")(d),
                   _set("disk.device", "virtio-blk-pci,drive=other")(d)),
        ["disk.device: drive= is set by the QEMU harness; remove it",
         "disk.drive: file= is set by the QEMU harness; remove it",
         "network.nic: netdev= is set by the QEMU harness; remove it"],
    ),
    "secure firmware as a file name": (
        _set("firmware.secure_code", "OVMF_CODE_4M.secboot.fd"),
        ["firmware.secure_code: expected an absolute file path in the tools tree, "
         "got 'OVMF_CODE_4M.secboot.fd'"],
    ),
    "tpm options the harness sets": (
        _set("tpm", "tpm-tis,tpmdev=mine"),
        ["tpm: tpmdev= is set by the QEMU harness; remove it"],
    ),
    "tpm as an option": (
        _set("tpm", "-tpmdev"), ["tpm: expected a QEMU option value, got '-tpmdev'"]
    ),
    "devices": (
        _set("devices", ["bus=pcie.0", "-device", " ", 3]),
        ["devices[3]: expected a string, got 3 (an integer); quote it"],
    ),
    "device values": (
        _set("devices", ["bus=pcie.0", "-device", " "]),
        ["devices[0]: expected a device model first, got 'bus=pcie.0'",
         "devices[1]: expected a QEMU option value, got '-device'",
         "devices[2]: expected a QEMU option value, got ' '"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_machine_files(tmp_path: Path, case: str) -> None:
    change, expected = BAD[case]
    path = write_machine(tmp_path / "machine.yaml", change)
    with pytest.raises(MachineError) as caught:
        load_machine(path)
    assert [str(i) for i in caught.value.issues] == [f"{path}: {line}" for line in expected]
    assert caught.value.exit_code == 2


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    def change(data: dict[str, Any]) -> None:
        data.update(cpus=0, memory=None, extra=1)
        data["network"]["restrict"] = False

    path = write_machine(tmp_path / "machine.yaml", change)
    with pytest.raises(MachineError) as caught:
        load_machine(path)
    assert [i.path for i in caught.value.issues] == ["extra", "memory"]
    assert caught.value.hint == "2 problems in the machine file; fix them and run again"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- q35\n", "(top level): expected a mapping, got a list"),
        ("", "(top level): expected a mapping, got None (empty)"),
        ("type: [q35\n", "not valid YAML at line 2, column 1: expected ',' or ']', but got "
                         "'<stream end>'"),
    ],
)  # fmt: skip
def test_not_a_machine_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "machine.yaml"
    path.write_text(text)
    with pytest.raises(MachineError) as caught:
        load_machine(path)
    assert caught.value.message == f"{path}: {expected}"


def test_no_machine_file(tmp_path: Path) -> None:
    with pytest.raises(HostbuildError, match=f"^no machine file {tmp_path}/none.yaml$") as caught:
        load_machine(tmp_path / "none.yaml")
    assert caught.value.hint is not None and "--machine FILE" in caught.value.hint


def test_messages_name_the_file_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_machine(tmp_path / "machine.yaml", _set("memory", "4G"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MachineError, match="^machine.yaml: memory: "):
        load_machine(path)


def test_firmware_must_be_in_the_tools_tree(tmp_path: Path) -> None:
    machine = load_machine()
    with pytest.raises(MachineError) as caught:
        find_firmware(machine, ToolsTree(tmp_path))
    where = f"is not in the tools tree {tmp_path}"
    assert [str(i) for i in caught.value.issues] == [
        f"{machine.where('firmware.code')}: {OVMF_CODE!r} {where}",
        f"{machine.where('firmware.vars')}: {OVMF_VARS!r} {where}",
    ]
    for name in (OVMF_CODE, OVMF_VARS):
        (tmp_path / name.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name.lstrip("/")).touch()
    assert find_firmware(machine, ToolsTree(tmp_path)) == (
        tmp_path / OVMF_CODE.lstrip("/"), tmp_path / OVMF_VARS.lstrip("/"),
    )  # fmt: skip
    with pytest.raises(MachineError) as caught:
        find_firmware(machine, ToolsTree(tmp_path), secure_boot=True)
    assert [str(i) for i in caught.value.issues] == [
        f"{machine.where('firmware.secure_code')}: {OVMF_CODE_SECBOOT!r} {where}",
    ]
    (tmp_path / OVMF_CODE_SECBOOT.lstrip("/")).touch()
    assert find_firmware(machine, ToolsTree(tmp_path), secure_boot=True) == (
        tmp_path / OVMF_CODE_SECBOOT.lstrip("/"), tmp_path / OVMF_VARS.lstrip("/"),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("virtio-blk-pci,bootindex=0", "virtio-blk-pci,drive=disk,bootindex=0"),
        ("nvme", "nvme,drive=disk"),
    ],
)
def test_with_option_follows_the_model(device: str, expected: str) -> None:
    assert with_option(device, "drive=disk") == expected
