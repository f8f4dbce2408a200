"""The QEMU harness without QEMU: command line, credentials, accelerator choice, waits, QMP."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.build.toolstree import OVMF_CODE, OVMF_CODE_SECBOOT, OVMF_VARS, ToolsTree
from builder.run import spawn
from builder.vm import qemu
from builder.vm.machine import DEFAULT_MACHINE, Machine, MachineError, load_machine
from builder.vm.qemu import (
    Accelerator,
    GuestForward,
    Vm,
    VmConfig,
    VmError,
    VmFiles,
    boot_vm,
    finalize_accelerator,
    pick_free_port,
    qemu_argv,
    smbios_credentials,
)
from builder.vm.relay import relay
from builder.vm.swtpm import SoftwareTpm

MACHINE = load_machine()  # qemu/machine.yaml


def option(argv: list[str], name: str) -> list[str]:
    """Every value given to `name` on a command line."""
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == name]


# The default machine's command lines, generated from the harness before the machine definition
# moved to qemu/machine.yaml: the file must describe exactly the VM the code used to build.
PINNED_TCG = [
    "qemu-system-x86_64",
    "-machine", "q35",
    "-accel", "tcg",
    "-cpu", "max,svm=off,vmx=off",
    "-smp", "2",
    "-m", "2048",
    "-no-user-config",
    "-nodefaults",
    "-display", "none",
    "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
    "-drive", "if=pflash,format=raw,unit=1,file={w}/OVMF_VARS_4M.fd",
    "-drive", "if=none,id=disk,file={w}/overlay.qcow2,format=qcow2,discard=unmap",
    "-device", "virtio-blk-pci,drive=disk,bootindex=0",
    "-netdev", "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22",
    "-device", "virtio-net-pci,netdev=n0,romfile=",
    "-chardev", "file,id=serial0,path={w}/serial.log",
    "-serial", "chardev:serial0",
    "-monitor", "none",
    "-qmp", "unix:{w}/qmp.sock,server=on,wait=off",
    "-pidfile", "{w}/qemu.pid",
]  # fmt: skip
PINNED_KVM_OVERRIDES = [
    "qemu-system-x86_64",
    "-machine", "q35",
    "-accel", "kvm",
    "-cpu", "host",
    "-smp", "1",
    "-m", "512",
    "-no-user-config",
    "-nodefaults",
    "-display", "none",
    "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
    "-drive", "if=pflash,format=raw,unit=1,file={w}/OVMF_VARS_4M.fd",
    "-drive", "if=none,id=disk,file=/state/kept.qcow2,format=qcow2,discard=unmap",
    "-device", "virtio-blk-pci,drive=disk,bootindex=0",
    "-netdev", "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:40000-:22",
    "-device", "virtio-net-pci,netdev=n0,romfile=",
    "-chardev", "file,id=serial0,path={w}/serial.log",
    "-serial", "chardev:serial0",
    "-monitor", "none",
    "-qmp", "unix:{w}/qmp.sock,server=on,wait=off",
    "-pidfile", "{w}/qemu.pid",
    "-no-reboot",
    "-smbios", "type=11,value=io.systemd.credential.binary:a=eA==",
]  # fmt: skip


def test_default_argv_is_pinned(tmp_path: Path) -> None:
    files = VmFiles.create(tmp_path)
    argv = qemu_argv(VmConfig(Path("/images/disk.raw")), files, Accelerator.TCG, 2222)
    assert argv == [a.format(w=tmp_path) for a in PINNED_TCG]


def test_default_argv_with_every_override_is_pinned(tmp_path: Path) -> None:
    config = VmConfig(
        Path("/images/disk.raw"), memory_mib=512, cpus=1, want_reboot=False,
        credentials={"a": b"x"}, disk=Path("/state/kept.qcow2"),
    )  # fmt: skip
    argv = qemu_argv(config, VmFiles.create(tmp_path), Accelerator.KVM, 40000)
    assert argv == [a.format(w=tmp_path) for a in PINNED_KVM_OVERRIDES]


def edited_machine(path: Path, *edits: tuple[str, str]) -> Machine:
    """qemu/machine.yaml with lines replaced, as a user would edit it."""
    text = DEFAULT_MACHINE.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return load_machine(path)


def test_an_edited_machine_file_changes_the_argv(tmp_path: Path) -> None:
    machine = edited_machine(
        tmp_path / "machine.yaml",
        ("memory: 2048", "memory: 4096"),
        ("cpus: 2", "cpus: 4"),
        ("tcg: max,svm=off,vmx=off", "tcg: qemu64"),
        ("device: virtio-blk-pci,bootindex=0", "device: nvme,serial=hb0,bootindex=0"),
        ("drive: discard=unmap", "drive: discard=unmap,cache=unsafe"),
        ("nic: virtio-net-pci,romfile=", "nic: e1000"),
        ("devices: []", "devices:\n  - virtio-rng-pci\n  - virtio-balloon-pci"),
    )
    files = VmFiles.create(tmp_path / "vm")
    argv = qemu_argv(
        VmConfig(Path("/images/disk.raw"), machine=machine), files, Accelerator.TCG, 2222
    )
    expected = [a.format(w=tmp_path / "vm") for a in PINNED_TCG]
    changes = {
        "max,svm=off,vmx=off": "qemu64",
        "2": "4",
        "2048": "4096",
        f"if=none,id=disk,file={files.overlay},format=qcow2,discard=unmap":
            f"if=none,id=disk,file={files.overlay},format=qcow2,discard=unmap,cache=unsafe",
        "virtio-blk-pci,drive=disk,bootindex=0": "nvme,drive=disk,serial=hb0,bootindex=0",
        "virtio-net-pci,netdev=n0,romfile=": "e1000,netdev=n0",
    }  # fmt: skip
    expected = [changes.get(a, a) for a in expected]
    chardev = expected.index("-chardev")
    expected[chardev:chardev] = ["-device", "virtio-rng-pci", "-device", "virtio-balloon-pci"]
    assert argv == expected


def test_a_boot_overrides_the_machine(tmp_path: Path) -> None:
    machine = edited_machine(tmp_path / "m.yaml", ("memory: 2048", "memory: 4096"))
    config = VmConfig(Path("/images/disk.raw"), machine=machine, memory_mib=1024, cpus=1)
    argv = qemu_argv(config, VmFiles.create(tmp_path), Accelerator.KVM, 2222)
    assert (option(argv, "-m"), option(argv, "-smp"), option(argv, "-cpu")) == (
        ["1024"], ["1"], ["host"],
    )  # fmt: skip


def test_the_vars_copy_is_named_like_the_machines_template(tmp_path: Path) -> None:
    secure = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
    machine = edited_machine(tmp_path / "m.yaml", (OVMF_VARS, secure))
    files = VmFiles.create(tmp_path / "vm", firmware_vars=machine.firmware.vars)
    assert files.vars == tmp_path / "vm" / "OVMF_VARS_4M.ms.fd"
    argv = qemu_argv(VmConfig(Path("/images/disk.raw"), machine=machine), files, Accelerator.TCG, 1)
    assert f"if=pflash,format=raw,unit=1,file={files.vars}" in argv


def test_secure_boot_argv_is_pinned(tmp_path: Path) -> None:
    """Secure Boot: the secboot build on q35 with SMM, flash writable only from SMM, our store."""
    config = VmConfig(Path("/images/disk.raw"), secure_boot_vars=tmp_path / "fleet-vars.fd")
    argv = qemu_argv(config, VmFiles.create(tmp_path / "vm"), Accelerator.TCG, 2222)
    expected = [a.format(w=tmp_path / "vm") for a in PINNED_TCG]
    expected[expected.index("q35")] = "q35,smm=on"
    plain = "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
    expected[expected.index(plain)] = plain.replace("_4M.fd", "_4M.secboot.fd")
    at = expected.index(f"if=pflash,format=raw,unit=1,file={tmp_path}/vm/OVMF_VARS_4M.fd") + 1
    expected[at:at] = ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    assert argv == expected


def test_a_tpm_is_the_machines_device_on_swtpms_socket(tmp_path: Path) -> None:
    config = VmConfig(Path("/images/disk.raw"), tpm=SoftwareTpm())
    files = VmFiles.create(tmp_path)
    argv = qemu_argv(config, files, Accelerator.TCG, 2222)
    expected = [a.format(w=tmp_path) for a in PINNED_TCG]
    at = expected.index("-chardev")
    expected[at:at] = [
        "-chardev", f"socket,id=chrtpm,path={tmp_path}/swtpm.sock",
        "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
        "-device", "tpm-crb,tpmdev=tpm0",
    ]  # fmt: skip
    assert argv == expected
    machine = edited_machine(tmp_path / "m.yaml", ("tpm: tpm-crb", "tpm: tpm-tis,id=t0"))
    argv = qemu_argv(dataclasses.replace(config, machine=machine), files, Accelerator.TCG, 1)
    assert "tpm-tis,tpmdev=tpm0,id=t0" in option(argv, "-device")


def test_secure_boot_on_a_machine_without_smm_is_refused(tmp_path: Path) -> None:
    machine = edited_machine(tmp_path / "m.yaml", ("type: q35", "type: pc"))
    config = VmConfig(Path("/x"), machine=machine, secure_boot_vars=tmp_path / "v.fd")
    with pytest.raises(MachineError, match=r"type: 'pc' has no SMM"):
        qemu_argv(config, VmFiles.create(tmp_path / "vm"), Accelerator.TCG, 1)


def firmware_tree(root: Path) -> ToolsTree:
    """A tools tree holding only empty firmware files (enough for boot_vm's checks)."""
    for name in (OVMF_CODE, OVMF_CODE_SECBOOT, OVMF_VARS):
        (root / name.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / name.lstrip("/")).touch()
    return ToolsTree(root)


def test_boot_vm_needs_the_secure_boot_store(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.touch()
    config = VmConfig(image, secure_boot_vars=tmp_path / "missing.fd")
    with (
        pytest.raises(VmError, match=r"no Secure Boot variable store .*missing\.fd"),
        boot_vm(config, firmware_tree(tmp_path / "tree"), tmp_path / "vm"),
    ):
        pass
    assert not (tmp_path / "vm").exists(), "nothing starts without the store"
    inside = tmp_path / "vm" / "OVMF_VARS_4M.fd"
    inside.parent.mkdir()
    inside.touch()
    with (
        pytest.raises(VmError, match="is the VM's own copy"),
        boot_vm(
            dataclasses.replace(config, secure_boot_vars=inside),
            firmware_tree(tmp_path / "tree"),
            tmp_path / "vm",
        ),  # fmt: skip
    ):
        pass


def test_a_machine_without_restrict_never_runs(tmp_path: Path) -> None:
    machine = dataclasses.replace(
        MACHINE, network=dataclasses.replace(MACHINE.network, restrict=False)
    )
    with pytest.raises(VmError, match=r"qemu/machine\.yaml: network\.restrict: must be true"):
        qemu_argv(
            VmConfig(Path("/x"), machine=machine), VmFiles.create(tmp_path), Accelerator.TCG, 1
        )


def test_boot_vm_needs_the_machines_firmware(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.touch()
    with (
        pytest.raises(
            MachineError, match=r"firmware\.code: '/usr/share/OVMF/OVMF_CODE_4M\.fd' is not"
        ),
        boot_vm(VmConfig(image), ToolsTree(tmp_path / "tree"), tmp_path / "vm"),
    ):
        pass
    assert not (tmp_path / "vm").exists(), "nothing starts without the firmware"


def test_qemu_argv_tcg(tmp_path: Path) -> None:
    files = VmFiles.create(tmp_path)
    argv = qemu_argv(VmConfig(tmp_path / "disk.raw"), files, Accelerator.TCG, 2222)
    assert argv[0] == "qemu-system-x86_64"
    assert option(argv, "-machine") == ["q35"]
    assert option(argv, "-accel") == ["tcg"]
    assert option(argv, "-cpu") == ["max,svm=off,vmx=off"]
    assert option(argv, "-smp") == ["2"]
    assert option(argv, "-m") == ["2048"]
    assert option(argv, "-drive") == [
        "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
        f"if=pflash,format=raw,unit=1,file={tmp_path}/OVMF_VARS_4M.fd",
        f"if=none,id=disk,file={tmp_path}/overlay.qcow2,format=qcow2,discard=unmap",
    ]
    assert option(argv, "-device") == [
        "virtio-blk-pci,drive=disk,bootindex=0",
        "virtio-net-pci,netdev=n0,romfile=",
    ]
    assert option(argv, "-netdev") == [
        "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22",
    ]
    assert option(argv, "-chardev") == [f"file,id=serial0,path={tmp_path}/serial.log"]
    assert option(argv, "-serial") == ["chardev:serial0"]
    assert option(argv, "-monitor") == ["none"]
    assert option(argv, "-qmp") == [f"unix:{tmp_path}/qmp.sock,server=on,wait=off"]
    assert "-no-reboot" not in argv, "boot counting needs guest reboots"
    assert "-smbios" not in argv


def test_qemu_argv_kvm_without_reboot(tmp_path: Path) -> None:
    config = VmConfig(tmp_path / "disk.raw", memory_mib=512, cpus=1, want_reboot=False)
    argv = qemu_argv(config, VmFiles.create(tmp_path), Accelerator.KVM, 2222)
    assert option(argv, "-accel") == ["kvm"]
    assert option(argv, "-cpu") == ["host"]
    assert option(argv, "-smp") == ["1"]
    assert option(argv, "-m") == ["512"]
    assert "-no-reboot" in argv


def test_qemu_argv_needs_a_final_accelerator(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="finalize"):
        qemu_argv(VmConfig(tmp_path / "x"), VmFiles.create(tmp_path), Accelerator.AUTO, 1)


def test_serial_log_elsewhere(tmp_path: Path) -> None:
    files = VmFiles.create(tmp_path / "vm", tmp_path / "logs" / "console.log")
    assert files.serial_log == tmp_path / "logs" / "console.log"
    assert files.serial_log.parent.is_dir()
    assert files.overlay.parent == tmp_path / "vm"


def test_too_deep_workdir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(VmError, match="too deep for the QMP and swtpm socket paths"):
        VmFiles.create(tmp_path / ("d" * 120))


def test_smbios_credentials_are_base64() -> None:
    argv = smbios_credentials({"ssh.authorized_keys.root": b"ssh-ed25519 AAAA k\n", "a": b"\0,"})
    assert argv[0::2] == ["-smbios", "-smbios"]
    prefix = "type=11,value=io.systemd.credential.binary:"
    assert argv[1] == prefix + "a=" + base64.b64encode(b"\0,").decode()
    name, _, value = argv[3].removeprefix(prefix).partition("=")
    assert name == "ssh.authorized_keys.root"
    assert base64.b64decode(value) == b"ssh-ed25519 AAAA k\n"
    assert "," not in value, "a comma would end QEMU's option value"


@pytest.mark.parametrize("name", ["", "a,b", "a=b", "../x", "-x", "a b"])
def test_smbios_credential_names_are_checked(name: str) -> None:
    with pytest.raises(VmError, match="invalid credential name"):
        smbios_credentials({name: b"x"})


def test_pick_free_port_is_bindable() -> None:
    port = pick_free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


@pytest.fixture
def no_probe(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, Machine]]:
    """Replace the KVM probe (which starts QEMU) by a recorder that says KVM works."""
    calls: list[tuple[Path, Machine]] = []

    def probe(tools: ToolsTree, workdir: Path, machine: Machine) -> str | None:
        calls.append((tools.root, machine))
        return None

    monkeypatch.setattr(qemu, "probe_kvm", probe)
    monkeypatch.setattr(qemu, "_kvm_verdicts", {})
    return calls


def finalize(requested: Accelerator, tools: ToolsTree, device: Path) -> Accelerator:
    return finalize_accelerator(requested, tools, tools.root, MACHINE, device)


def test_auto_without_kvm_device_is_tcg(tmp_path: Path, no_probe: list[Path]) -> None:
    chosen = finalize(Accelerator.AUTO, ToolsTree(tmp_path), tmp_path / "kvm")
    assert chosen is Accelerator.TCG
    assert no_probe == [], "no QEMU may start without /dev/kvm"


def test_tcg_is_never_probed(tmp_path: Path, no_probe: list[Path]) -> None:
    device = tmp_path / "kvm"
    device.touch()
    assert finalize(Accelerator.TCG, ToolsTree(tmp_path), device) is Accelerator.TCG
    assert no_probe == []


def test_explicit_kvm_without_device_fails(tmp_path: Path, no_probe: list[Path]) -> None:
    with pytest.raises(VmError, match="KVM was requested"):
        finalize(Accelerator.KVM, ToolsTree(tmp_path), tmp_path / "kvm")


def test_auto_probes_once_per_tree_and_machine(
    tmp_path: Path, no_probe: list[tuple[Path, Machine]], monkeypatch: pytest.MonkeyPatch
) -> None:
    device = tmp_path / "kvm"
    device.touch()
    tools = ToolsTree(tmp_path)
    assert finalize(Accelerator.AUTO, tools, device) is Accelerator.KVM
    assert finalize(Accelerator.AUTO, tools, device) is Accelerator.KVM
    assert no_probe == [(tmp_path, MACHINE)], "the probe boots the VM's own machine"
    other_machine = dataclasses.replace(MACHINE, type="pc")
    finalize_accelerator(Accelerator.AUTO, tools, tmp_path, other_machine, device)
    assert no_probe[1:] == [(tmp_path, other_machine)]
    monkeypatch.setattr(qemu, "probe_kvm", lambda tools, workdir, machine: "KVM internal error")
    assert finalize(Accelerator.AUTO, ToolsTree(tmp_path / "other"), device) is Accelerator.TCG


def test_boot_vm_needs_the_image(tmp_path: Path) -> None:
    with (
        pytest.raises(VmError, match="no such image file"),
        boot_vm(VmConfig(tmp_path / "missing.raw"), ToolsTree(tmp_path), tmp_path),
    ):
        pass


@pytest.fixture
def fake_vm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Vm]:
    """A Vm whose "QEMU" is `sleep`, with a serial log the test writes."""
    monkeypatch.setattr(qemu, "STOP_TIMEOUT", 1.0)  # `sleep` ignores QMP quit
    files = VmFiles.create(tmp_path)
    process = spawn(["sleep", "60"], output=files.output)
    vm = Vm(process, files, pick_free_port(), Accelerator.TCG)
    yield vm
    vm.stop()


def test_wait_for_serial_returns_the_matching_line(fake_vm: Vm) -> None:
    fake_vm.serial_log.write_bytes(b"\x1b[2J\x1b[=3hBdsDxe: loading Boot0001\r\nnext\r\n")
    assert fake_vm.wait_for_serial(r"BdsDxe: \w+", 5) == "BdsDxe: loading Boot0001"


def test_wait_for_serial_timeout_names_pattern_timeout_and_log(fake_vm: Vm) -> None:
    fake_vm.serial_log.write_text("".join(f"line {i}\n" for i in range(1, 31)))
    with pytest.raises(VmError) as info:
        fake_vm.wait_for_serial("login:", 0.3)
    message = info.value.message
    assert message.startswith("timed out after 0.3s waiting for 'login:' on the serial console")
    assert f"last lines of the serial log {fake_vm.serial_log}:" in message
    assert "  line 11\n" in message and message.endswith("  line 30")
    assert "line 10\n" not in message
    assert info.value.hint is not None and os.fspath(fake_vm.serial_log) in info.value.hint


def test_wait_for_serial_stops_when_qemu_exits(tmp_path: Path) -> None:
    files = VmFiles.create(tmp_path)
    process = spawn(
        ["sh", "-c", "echo 'qemu: could not open disk' >&2; exit 1"], output=files.output
    )
    vm = Vm(process, files, 1, Accelerator.TCG)
    process.wait(5)
    with pytest.raises(VmError) as info:
        vm.wait_for_serial("login:", 30)
    assert "QEMU exited with code 1 before 'login:'" in info.value.message
    assert "qemu: could not open disk" in info.value.message


def test_stop_kills_qemu(fake_vm: Vm) -> None:
    assert fake_vm.exit_code() is None
    fake_vm.stop()
    assert fake_vm.exit_code() is not None
    fake_vm.stop()  # idempotent


@pytest.fixture
def ssh_server() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server on 127.0.0.1 that sends the next queued greeting (the last one repeats)."""
    greetings: list[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(greetings.pop(0) if len(greetings) > 1 else greetings[0])

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], greetings
    server.shutdown(socket.SHUT_RDWR)  # wakes accept(), so the thread ends before the fd is reused
    server.close()


def test_wait_for_ssh_reads_the_banner(fake_vm: Vm, ssh_server: tuple[int, list[bytes]]) -> None:
    port, greetings = ssh_server
    greetings += [b"", b"SSH-2.0-OpenSSH_10.0p2 Debian-7\r\n"]
    fake_vm.ssh_port = port
    assert fake_vm.wait_for_ssh(10) == "SSH-2.0-OpenSSH_10.0p2 Debian-7"


def test_wait_for_ssh_needs_a_banner(fake_vm: Vm, ssh_server: tuple[int, list[bytes]]) -> None:
    port, greetings = ssh_server
    greetings.append(b"HTTP/1.0 400\r\n")
    fake_vm.ssh_port = port
    with pytest.raises(VmError, match=r"SSH on 127\.0\.0\.1:\d+ \(got b'HTTP/1\.0 400"):
        fake_vm.wait_for_ssh(0.5)


def test_qmp_skips_events_and_reports_errors(fake_vm: Vm, tmp_path: Path) -> None:
    replies: dict[str, list[dict[str, Any]]] = {
        "qmp_capabilities": [{"return": {}}],
        "query-status": [{"event": "RESUME"}, {"return": {"status": "running"}}],
        "nope": [{"error": {"class": "CommandNotFound", "desc": "The command nope was not found"}}],
    }
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(os.fspath(tmp_path / "qmp.sock"))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn, conn.makefile("rb") as reader:
            conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\n')
            while line := reader.readline():
                for reply in replies.get(json.loads(line)["execute"], [{"return": {}}]):
                    conn.sendall(json.dumps(reply).encode() + b"\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        assert fake_vm.status() == "running"
        with pytest.raises(VmError, match="QMP nope failed: The command nope was not found"):
            fake_vm.qmp("nope")
    finally:
        fake_vm.stop()
        server.close()


def test_a_persistent_disk_is_the_drive_and_survives_teardown(tmp_path: Path) -> None:
    disk = tmp_path / "kept.qcow2"
    config = VmConfig(tmp_path / "disk.raw", disk=disk)
    files = VmFiles.create(tmp_path / "vm")
    argv = qemu_argv(config, files, Accelerator.TCG, 2222)
    assert f"if=none,id=disk,file={disk},format=qcow2,discard=unmap" in argv
    disk.write_bytes(b"state")
    files.remove()
    assert disk.read_bytes() == b"state"


def test_guest_forwards_reach_only_the_hosts_loopback(tmp_path: Path) -> None:
    forward = GuestForward("10.0.2.100", 80, 8431)
    config = VmConfig(Path("/images/disk.raw"), guest_forwards=(forward,))
    argv = qemu_argv(config, VmFiles.create(tmp_path), Accelerator.TCG, 2222)
    netdev = argv[argv.index("-netdev") + 1]
    assert netdev == (
        "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,"
        f"guestfwd=tcp:10.0.2.100:80-cmd:python3 {tmp_path / 'relay.py'} 8431"
    )
    for bad in ("10.0.2.2", "10.0.3.100", "192.168.1.1", "updates.example.com"):
        with pytest.raises(VmError, match="is not a free address of 10.0.2.0/24"):
            GuestForward(bad, 80, 8431).option(tmp_path / "relay.py")


def test_the_relay_carries_a_connection_both_ways(tmp_path: Path) -> None:
    """relay.py between a pipe pair (what QEMU gives it) and an echo server on 127.0.0.1."""
    server = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(1024):
                conn.sendall(data.upper())

    threading.Thread(target=echo, daemon=True).start()
    guest_in, to_relay = os.pipe()
    from_relay, guest_out = os.pipe()
    thread = threading.Thread(target=relay, args=(server.getsockname()[1], guest_in, guest_out))
    thread.start()
    os.write(to_relay, b"get /metadata/timestamp.json")
    os.close(to_relay)  # the guest is done sending: the relay ends when the host closes
    thread.join(10)
    os.close(guest_out)
    assert os.read(from_relay, 1024) == b"GET /METADATA/TIMESTAMP.JSON"
    assert not thread.is_alive()
    server.close()
