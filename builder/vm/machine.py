"""The test machine as data: qemu/machine.yaml becomes a frozen `Machine` for the QEMU harness.

Loading reports every problem of the file at once, as `file: key: message`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath

import yaml

from builder.build.toolstree import ToolsTree
from builder.errors import HostbuildError, Issue, IssuesError
from builder.profile.schema import INVALID, convert

QEMU_DIR = Path(__file__).parents[2] / "qemu"  # read from the checkout, like profiles/
DEFAULT_MACHINE = QEMU_DIR / "machine.yaml"

# Options of the parts the harness wires together itself: a machine file may not set them.
_OWNED = {
    "disk.device": ("drive",),
    "disk.drive": ("if", "id", "file", "format"),
    "network.nic": ("netdev",),
    "tpm": ("tpmdev",),
}
# q35 is the machine type with SMM, which the Secure Boot firmware needs to guard its variables
_SMM_TYPES = ("q35", "pc-q35-")
_UNITS = {"memory": "MiB"}


class Accelerator(StrEnum):
    TCG = "tcg"
    KVM = "kvm"
    AUTO = "auto"  # KVM only when a short probe boots firmware with it, else TCG


class MachineError(IssuesError):
    """Every problem found in a machine file, reported together (exit code 2)."""

    subject = "the machine file"


@dataclass(frozen=True)
class Cpu:
    """The `-cpu` model under each accelerator."""

    tcg: str
    kvm: str

    def model(self, accelerator: Accelerator) -> str:
        if accelerator is Accelerator.AUTO:
            raise ValueError("finalize the accelerator before choosing the CPU model")
        return self.kvm if accelerator is Accelerator.KVM else self.tcg


@dataclass(frozen=True)
class Firmware:
    """OVMF, as absolute paths inside the tools tree."""

    code: str  # read-only flash
    vars: str  # the variable store's template; each VM writes its own copy
    # The Secure Boot build of OVMF, booted with SMM when a VM asks for Secure Boot; "": none
    secure_code: str = ""


@dataclass(frozen=True)
class Disk:
    """The device the image's overlay is attached to, and more options of its `-drive`."""

    device: str  # a -device value; the harness adds drive=disk after the model
    drive: str = ""  # added after the harness's if=none,id=disk,file=...,format=qcow2


@dataclass(frozen=True)
class Network:
    """User networking with restrict=on: the guest reaches nothing; SSH is forwarded to it."""

    restrict: bool  # must be true
    nic: str  # a -device value; the harness adds netdev=n0 after the model


@dataclass(frozen=True)
class Machine:
    """One test machine: what `qemu/machine.yaml` says."""

    type: str
    accel: Accelerator
    cpu: Cpu
    cpus: int
    memory: int  # MiB
    firmware: Firmware
    disk: Disk
    network: Network
    devices: tuple[str, ...] = ()  # more -device values
    tpm: str = "tpm-crb"  # the -device model of a software TPM, when a VM asks for one
    source: Path = field(default=Path(), metadata={"internal": True})

    def where(self, key: str) -> str:
        """How a message names one key of this machine's file."""
        return str(Issue(display(self.source), key, "")).removesuffix(": ")


def display(path: Path) -> str:
    """A path as messages show it: relative to the working directory when below it."""
    try:
        return os.fspath(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return os.fspath(path)


def with_option(device: str, option: str) -> str:
    """`model,option,rest...`: the harness's option right after the device model."""
    model, sep, rest = device.partition(",")
    return f"{model},{option}{sep}{rest}"


def load_machine(path: Path = DEFAULT_MACHINE) -> Machine:
    """Read and check a machine file; raise MachineError listing every problem."""
    name = display(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise HostbuildError(
            f"no machine file {name}",
            hint=f"the default is {display(DEFAULT_MACHINE)} in a hostbuild checkout; "
            "give another with --machine FILE",
        ) from None
    except OSError as e:
        raise HostbuildError(f"cannot read the machine file {name}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise MachineError([Issue(name, "", f"not valid YAML{where}: {problem}")]) from None
    raw: list[tuple[str, str]] = []
    machine = convert(Machine, data, "", raw)
    issues = [Issue(name, p, _with_unit(p, m)) for p, m in raw]
    if machine is not INVALID:
        issues += [Issue(name, p, m) for p, m in check_machine(machine)]
    if issues:
        raise MachineError(issues)
    result: Machine = dataclasses.replace(machine, source=path)
    return result


def find_firmware(
    machine: Machine, tools: ToolsTree, secure_boot: bool = False
) -> tuple[Path, Path]:
    """The host paths of the firmware's code (the Secure Boot build with `secure_boot`) and
    variables template, which `tools` must have."""
    where = "on this host" if tools.is_host else f"in the tools tree {tools.root}"
    code = ("firmware.secure_code", machine.firmware.secure_code) if secure_boot else (
        "firmware.code", machine.firmware.code)  # fmt: skip
    if secure_boot:
        check_secure_boot(machine)
    issues = [
        Issue(display(machine.source), key, f"{name!r} is not {where}")
        for key, name in (code, ("firmware.vars", machine.firmware.vars))
        if not tools.path(name).is_file()
    ]  # fmt: skip
    if issues:
        raise MachineError(issues)
    return tools.path(code[1]), tools.path(machine.firmware.vars)


def check_secure_boot(machine: Machine) -> None:
    """Refuse Secure Boot on a machine without the Secure Boot firmware or without SMM."""
    issues = []
    if not machine.firmware.secure_code:
        issues.append(Issue(
            display(machine.source), "firmware.secure_code",
            "not set, and this boot asks for Secure Boot (e.g. "
            "secure_code: /usr/share/OVMF/OVMF_CODE_4M.secboot.fd)",
        ))  # fmt: skip
    if not machine.type.partition(",")[0].startswith(_SMM_TYPES):
        issues.append(Issue(
            display(machine.source), "type",
            f"{machine.type!r} has no SMM, which Secure Boot firmware needs: use q35",
        ))  # fmt: skip
    if issues:
        raise MachineError(issues)


def check_machine(machine: Machine) -> list[tuple[str, str]]:
    """The rules beyond types, as (key, message)."""
    issues: list[tuple[str, str]] = []
    if not machine.network.restrict:
        issues.append((
            "network.restrict",
            "must be true: no test traffic may leave the machine (with restrict=on the guest "
            "reaches nothing; only the forwarded SSH port reaches the guest)",
        ))  # fmt: skip
    if machine.cpus < 1:
        issues.append(("cpus", f"expected a positive integer, got {machine.cpus!r}"))
    if machine.memory < 1:
        issues.append(("memory", f"expected a positive integer (MiB), got {machine.memory!r}"))
    for key, path in (("firmware.code", machine.firmware.code),
                      ("firmware.vars", machine.firmware.vars),
                      ("firmware.secure_code", machine.firmware.secure_code)):  # fmt: skip
        if key == "firmware.secure_code" and not path:
            continue  # optional: only Secure Boot boots need it
        if not PurePosixPath(path).is_absolute() or path.endswith("/"):
            issues.append((key, f"expected an absolute file path in the tools tree, got {path!r}"))
    values = {"type": machine.type, "cpu.tcg": machine.cpu.tcg, "cpu.kvm": machine.cpu.kvm}
    devices = {"disk.device": machine.disk.device, "network.nic": machine.network.nic,
               "tpm": machine.tpm}  # fmt: skip
    devices |= {f"devices[{i}]": device for i, device in enumerate(machine.devices)}
    for key, value in (values | devices).items():
        if not value.strip() or value.startswith("-"):
            issues.append((key, f"expected a QEMU option value, got {value!r}"))
        elif key in devices and "=" in value.partition(",")[0]:
            issues.append((key, f"expected a device model first, got {value!r}"))
    options = {"disk.device": machine.disk.device, "disk.drive": machine.disk.drive,
               "network.nic": machine.network.nic, "tpm": machine.tpm}  # fmt: skip
    for key, value in options.items():
        given = {part.partition("=")[0] for part in value.split(",")}
        issues += [(key, f"{name}= is set by the QEMU harness; remove it")
                   for name in _OWNED[key] if name in given]  # fmt: skip
    return issues


def _with_unit(path: str, message: str) -> str:
    """convert's message for a key with a unit, e.g. "expected an integer (MiB), got ..."."""
    unit = _UNITS.get(path)
    return message.replace("an integer", f"an integer ({unit})", 1) if unit else message
