"""The harness for real: trixie tools from the tree, OVMF on an empty disk under QEMU."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from builder.build.toolstree import OVMF_VARS, SYSTEMD_BOOT_EFI, ToolsTree
from builder.firmware.varstore import write_variable_store
from builder.vm.machine import DEFAULT_MACHINE, load_machine
from builder.vm.qemu import Accelerator, VmConfig, VmError, boot_vm
from builder.vm.swtpm import SoftwareTpm
from tests.secureboot import make_keys

pytestmark = pytest.mark.vm

# OVMF's boot manager prints this (e.g. "BdsDxe: failed to load Boot0001 ...") on the serial
# console about 2 s after start under TCG; 30 s leaves room for a loaded CI host.
BOOT_MANAGER = "BdsDxe"
FIRMWARE_TIMEOUT = 30.0


def empty_disk(path: Path, size: int = 64 << 20) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def gone(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["qemu-system-x86_64", "--version"], "QEMU emulator version 10."),
        (["ukify", "--version"], "ukify 25"),
        (["mkfs.erofs", "--version"], "mkfs.erofs (erofs-utils) 1."),
        (["veritysetup", "--version"], "veritysetup 2."),
    ],
)
def test_tools_tree_runs_trixie_tools(
    tools_tree: ToolsTree, argv: list[str], expected: str
) -> None:
    result = tools_tree.run(argv)
    assert (result.stdout + result.stderr).startswith(expected)


def test_empty_disk_reaches_the_firmware_boot_manager(
    tools_tree: ToolsTree, tmp_path: Path
) -> None:
    image = empty_disk(tmp_path / "empty.raw")
    before = digest(image)
    workdir = tmp_path / "vm"
    with boot_vm(VmConfig(image, accelerator=Accelerator.TCG), tools_tree, workdir) as vm:
        line = vm.wait_for_serial(BOOT_MANAGER, FIRMWARE_TIMEOUT)
        assert line.startswith(BOOT_MANAGER)
        assert vm.status() == "running"
        qemu_pid = vm.qemu_pid
        assert qemu_pid is not None and not gone(qemu_pid)
        assert (workdir / "overlay.qcow2").is_file()
        # Nothing listens on port 22 in the guest: the forward is there, the banner is not.
        with pytest.raises(VmError, match=f"SSH on 127.0.0.1:{vm.ssh_port}"):
            vm.wait_for_ssh(2)
        # The firmware ignores the ACPI power button: poweroff falls back to quitting QEMU.
        vm.poweroff(timeout=2)
        assert vm.exit_code() is not None
    assert gone(qemu_pid)
    assert not (workdir / "overlay.qcow2").exists()
    assert not (workdir / "OVMF_VARS_4M.fd").exists()
    assert BOOT_MANAGER in vm.serial_log.read_text(errors="replace"), "the serial log is kept"
    assert digest(image) == before, "the image is never written"


def test_teardown_after_an_exception(tools_tree: ToolsTree, tmp_path: Path) -> None:
    image = empty_disk(tmp_path / "empty.raw")
    workdir = tmp_path / "vm"
    qemu_pid: int | None = None
    with (
        pytest.raises(VmError, match="timed out after 0.5s waiting for 'login:'"),
        boot_vm(VmConfig(image, memory_mib=256, cpus=1), tools_tree, workdir) as vm,
    ):
        deadline = time.monotonic() + FIRMWARE_TIMEOUT
        while qemu_pid is None and time.monotonic() < deadline:
            qemu_pid = vm.qemu_pid
            time.sleep(0.1)
        vm.wait_for_serial("login:", 0.5)
    assert qemu_pid is not None, "QEMU wrote no pidfile"
    assert gone(qemu_pid)
    assert sorted(p.name for p in workdir.iterdir()) == ["qemu.log", "serial.log"]


def test_auto_accelerator_boots_the_firmware(tools_tree: ToolsTree, tmp_path: Path) -> None:
    """ "auto" uses KVM only if a probe boots firmware on it; either way the VM must work."""
    image = empty_disk(tmp_path / "empty.raw")
    config = VmConfig(image, memory_mib=512, accelerator=Accelerator.AUTO)
    with boot_vm(config, tools_tree, tmp_path / "vm") as vm:
        assert vm.accelerator in (Accelerator.TCG, Accelerator.KVM)
        vm.wait_for_serial(BOOT_MANAGER, FIRMWARE_TIMEOUT)


def test_an_edited_machine_file_is_the_vm(tools_tree: ToolsTree, tmp_path: Path) -> None:
    """What the machine file says is what QEMU runs: memory, CPUs and an extra device."""
    path = tmp_path / "machine.yaml"
    text = DEFAULT_MACHINE.read_text()
    for old, new in [("memory: 2048", "memory: 768"), ("cpus: 2", "cpus: 3"),
                     ("devices: []", "devices:\n  - virtio-rng-pci,id=rng0")]:  # fmt: skip
        assert old in text
        text = text.replace(old, new)
    path.write_text(text)
    config = VmConfig(empty_disk(tmp_path / "empty.raw"), machine=load_machine(path))
    with boot_vm(config, tools_tree, tmp_path / "vm") as vm:
        vm.wait_for_serial(BOOT_MANAGER, FIRMWARE_TIMEOUT)
        assert vm.qmp("query-memory-size-summary")["base-memory"] == 768 << 20
        assert len(vm.qmp("query-cpus-fast")) == 3
        rng = vm.qmp("qom-get", {"path": "/machine/peripheral/rng0", "property": "type"})
        assert rng == "virtio-rng-pci"


def unsigned_loader_disk(tools: ToolsTree, directory: Path) -> Path:
    """A GPT disk whose ESP's removable-media loader is the tree's unsigned systemd-boot."""
    esp, disk = directory / "esp.img", directory / "loader.raw"
    tools.run(["mkfs.vfat", "-C", esp, str(60 * 1024)], binds=[directory])
    tools.run(["mmd", "-i", esp, "::/EFI", "::/EFI/BOOT"], binds=[directory])
    loader = tools.path(SYSTEMD_BOOT_EFI)
    tools.run(["mcopy", "-i", esp, loader, "::/EFI/BOOT/BOOTX64.EFI"], binds=[directory],
              readonly=[loader])  # fmt: skip
    empty_disk(disk)
    tools.run(["sgdisk", "-n", "1:2048:+60M", "-t", "1:ef00", disk], binds=[directory])
    with disk.open("r+b") as f:
        f.seek(2048 * 512)
        f.write(esp.read_bytes())
    return disk


def test_secure_boot_with_our_keys_refuses_an_unsigned_loader_and_swtpm_is_attached(
    tools_tree: ToolsTree, tmp_path: Path
) -> None:
    """OVMF's Secure Boot build on a store holding throw-away PK, KEK and db: systemd-boot,
    unsigned, is refused (in setup mode it would load); the TPM is QEMU's, swtpm goes with it."""
    store = tmp_path / "fleet-vars.fd"
    write_variable_store(make_keys(tmp_path / "keys"), tools_tree.path(OVMF_VARS), store)
    before = digest(store)
    workdir = tmp_path / "vm"
    config = VmConfig(unsigned_loader_disk(tools_tree, tmp_path), memory_mib=512, cpus=1,
                      want_reboot=False, secure_boot_vars=store, tpm=SoftwareTpm())  # fmt: skip
    with boot_vm(config, tools_tree, workdir) as vm:
        line = vm.wait_for_serial(r"Access Denied|BdsDxe: starting", FIRMWARE_TIMEOUT)
        assert line.startswith("BdsDxe: failed to load Boot0001") and "Access Denied" in line
        assert vm.qmp("qom-get", {"path": "/machine", "property": "smm"}) == "on"
        [tpm] = vm.qmp("query-tpm")
        assert (tpm["model"], tpm["options"]["type"]) == ("tpm-crb", "emulator")
        swtpm_pid = int((workdir / "swtpm.pid").read_text())
    assert gone(swtpm_pid)
    assert sorted(p.name for p in workdir.iterdir()) == ["qemu.log", "serial.log", "swtpm.log"]
    assert digest(store) == before, "the store is only copied"
