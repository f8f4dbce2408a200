"""The QEMU harness: boot an image on a throw-away overlay, watch its serial console, tear down.

The VM is the machine file's (qemu/machine.yaml); QEMU and OVMF come from the tools tree; the
image itself is only ever read.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import logging
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from builder.build.toolstree import OVMF_VARS, ToolsTree
from builder.log import step
from builder.run import Spawned, pid_alive, spawn
from builder.vm.errors import VmError as VmError  # callers catch it with the harness
from builder.vm.machine import Accelerator as Accelerator  # callers name it with VmConfig
from builder.vm.machine import (
    Machine,
    check_secure_boot,
    display,
    find_firmware,
    load_machine,
    with_option,
)
from builder.vm.qmp import Qmp
from builder.vm.swtpm import SoftwareTpm, TpmFiles, qemu_tpm_argv, start_swtpm

logger = logging.getLogger(__name__)

TAIL_LINES = 20
KVM_DEVICE = Path("/dev/kvm")
KVM_PROBE_TIMEOUT = 10.0  # OVMF prints its first boot-manager line in about a second under KVM
STOP_TIMEOUT = 10.0
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes including the NUL
_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]*")
_ANSI = re.compile(r"\x1b\[[0-9;?=]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\r")


@dataclass(frozen=True)
class VmConfig:
    """One VM: the image it boots, the machine it boots on and what this boot changes."""

    image: Path
    image_format: str = "raw"
    machine: Machine = field(default_factory=load_machine)  # default: qemu/machine.yaml
    memory_mib: int | None = None  # None: the machine's
    cpus: int | None = None  # None: the machine's
    ssh_port: int = 0  # on 127.0.0.1; 0 picks a free port
    serial_log: Path | None = None  # default: serial.log in the VM's work directory
    credentials: Mapping[str, bytes] = field(default_factory=dict)  # systemd credentials
    accelerator: Accelerator | None = None  # None: the machine's
    # Boot counting needs a guest reboot to reach the firmware again; False adds -no-reboot,
    # so a reboot ends QEMU instead.
    want_reboot: bool = True
    # A qcow2 overlay of `image` kept across VMs (created on first use, never removed), so a
    # second VM boots the disk the first one left, with other credentials; None: a throw-away one.
    disk: Path | None = None
    # Host services on 127.0.0.1 the guest may reach at these addresses (e.g. an update repository)
    guest_forwards: tuple[GuestForward, ...] = ()
    # Secure Boot: an edk2 variable store with the fleet's keys enrolled and Secure Boot on
    # (builder.firmware.varstore.write_variable_store). The VM boots the machine's
    # firmware.secure_code with SMM on a copy of it (the store itself is never written);
    # None: the plain firmware on a copy of the machine's empty template.
    secure_boot_vars: Path | None = None
    # A software TPM 2.0 (swtpm) attached as the machine's `tpm` device; None: no TPM
    tpm: SoftwareTpm | None = None

    def overlay(self, files: VmFiles) -> Path:
        return self.disk.absolute() if self.disk is not None else files.overlay


@dataclass(frozen=True)
class GuestForward:
    """A guest address whose TCP connections QEMU forwards to a service on the host's loopback.

    The only way out of the guest's restricted network: the guest reaches `host_port` on
    127.0.0.1, never anything beyond this machine.
    """

    guest_addr: str  # in QEMU's user network, 10.0.2.0/24, not one of its own addresses
    guest_port: int
    host_port: int

    def option(self, relay: Path) -> str:
        """The -netdev option: each connection runs `relay` (builder/vm/relay.py, copied into
        the VM's work directory) to reach the host port."""
        net = ipaddress.ip_network("10.0.2.0/24")
        reserved = {"10.0.2.2", "10.0.2.3", "10.0.2.4", "10.0.2.15"}  # gateway, DNS, SMB, guest
        try:
            addr = ipaddress.ip_address(self.guest_addr)
        except ValueError:
            addr = None
        if addr is None or addr not in net or self.guest_addr in reserved:
            raise VmError(
                f"guest forward address {self.guest_addr!r} is not a free address of 10.0.2.0/24",
                hint="use e.g. 10.0.2.100 (QEMU keeps .2, .3, .4 and .15 for itself)",
            )
        if "," in os.fspath(relay):
            raise VmError(f"the VM work directory {relay.parent} has a comma (QEMU's separator)")
        target = f"cmd:python3 {relay} {self.host_port}"
        return f"guestfwd=tcp:{self.guest_addr}:{self.guest_port}-{target}"


@dataclass(frozen=True)
class VmFiles:
    """The per-VM files in its work directory (all but the serial log are removed at teardown)."""

    workdir: Path
    serial_log: Path
    vars: Path  # the VM's copy of the firmware variables, named like the machine's template

    @classmethod
    def create(
        cls, workdir: Path, serial_log: Path | None = None, firmware_vars: str = OVMF_VARS
    ) -> VmFiles:
        workdir = workdir.absolute()
        workdir.mkdir(parents=True, exist_ok=True)
        serial = (serial_log or workdir / "serial.log").absolute()
        files = cls(workdir, serial, workdir / PurePosixPath(firmware_vars).name)
        files.serial_log.parent.mkdir(parents=True, exist_ok=True)
        if len(os.fsencode(files.swtpm_socket)) > SOCKET_PATH_MAX:  # the longest socket name
            raise VmError(
                f"the VM work directory {workdir} is too deep for the QMP and swtpm socket paths "
                f"(at most {SOCKET_PATH_MAX} bytes)",
                hint="use a shorter cache or work directory",
            )
        return files

    @property
    def overlay(self) -> Path:
        return self.workdir / "overlay.qcow2"

    @property
    def qmp(self) -> Path:
        return self.workdir / "qmp.sock"

    @property
    def swtpm_socket(self) -> Path:
        """Where a VM's swtpm listens (builder.vm.swtpm.TpmFiles.socket)."""
        return TpmFiles(self.workdir, self.workdir / "tpm").socket

    @property
    def relay(self) -> Path:
        """The guest forwards' relay (builder/vm/relay.py), copied here when a VM has any."""
        return self.workdir / "relay.py"

    @property
    def pidfile(self) -> Path:
        return self.workdir / "qemu.pid"

    @property
    def output(self) -> Path:
        """QEMU's own stdout and stderr (the guest's console is the serial log)."""
        return self.workdir / "qemu.log"

    def remove(self) -> None:
        for path in (self.vars, self.overlay, self.qmp, self.pidfile):
            path.unlink(missing_ok=True)


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (QEMU fails clearly if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def smbios_credentials(credentials: Mapping[str, bytes]) -> list[str]:
    """`-smbios type=11` options that pass each credential to systemd in the guest."""
    argv: list[str] = []
    for name, value in sorted(credentials.items()):
        if not _CREDENTIAL_NAME.fullmatch(name):
            raise VmError(
                f"invalid credential name {name!r}",
                hint="use letters, digits and '_', '.', '@', '-', starting with a letter or digit",
            )
        encoded = base64.b64encode(value).decode("ascii")
        argv += ["-smbios", f"type=11,value=io.systemd.credential.binary:{name}={encoded}"]
    return argv


def qemu_argv(config: VmConfig, files: VmFiles, accelerator: Accelerator, port: int) -> list[str]:
    """The QEMU command line of the config's machine; paths under /usr are the tools tree's."""
    if accelerator is Accelerator.AUTO:
        raise ValueError("finalize the accelerator before building the QEMU command line")
    machine = config.machine
    if not machine.network.restrict:  # load_machine refuses it; a Machine built in code may not
        raise VmError(f"{machine.where('network.restrict')}: must be true")
    drive = f"if=none,id=disk,file={config.overlay(files)},format=qcow2"
    secure = config.secure_boot_vars is not None
    if secure:
        check_secure_boot(machine)
    argv = [
        "qemu-system-x86_64",
        "-machine", f"{machine.type},smm=on" if secure else machine.type,
        "-accel", accelerator.value,
        "-cpu", machine.cpu.model(accelerator),
        "-smp", str(machine.cpus if config.cpus is None else config.cpus),
        "-m", str(machine.memory if config.memory_mib is None else config.memory_mib),
        "-no-user-config",
        "-nodefaults",
        "-display", "none",
        "-drive", "if=pflash,format=raw,unit=0,readonly=on,file="
                  + (machine.firmware.secure_code if secure else machine.firmware.code),
        "-drive", f"if=pflash,format=raw,unit=1,file={files.vars}",
        # only code running in SMM may write the flash: the OS cannot change PK, KEK or db
        *(["-global", "driver=cfi.pflash01,property=secure,value=on"] if secure else []),
        "-drive", f"{drive},{machine.disk.drive}" if machine.disk.drive else drive,
        "-device", with_option(machine.disk.device, "drive=disk"),
        "-netdev", ",".join([
            "user,id=n0,restrict=on", f"hostfwd=tcp:127.0.0.1:{port}-:22",
            *(forward.option(files.relay) for forward in config.guest_forwards),
        ]),
        "-device", with_option(machine.network.nic, "netdev=n0"),
        *(arg for device in machine.devices for arg in ("-device", device)),
        *(qemu_tpm_argv(files.swtpm_socket, machine.tpm) if config.tpm is not None else []),
        "-chardev", f"file,id=serial0,path={files.serial_log}",
        "-serial", "chardev:serial0",
        "-monitor", "none",
        "-qmp", f"unix:{files.qmp},server=on,wait=off",
        "-pidfile", os.fspath(files.pidfile),
    ]  # fmt: skip
    if not config.want_reboot:
        argv.append("-no-reboot")
    return argv + smbios_credentials(config.credentials)


_kvm_verdicts: dict[tuple[Path, Machine], str | None] = {}


def finalize_accelerator(
    requested: Accelerator,
    tools: ToolsTree,
    workdir: Path,
    machine: Machine,
    kvm_device: Path = KVM_DEVICE,
) -> Accelerator:
    """TCG or KVM: "auto" is KVM only when the device exists and a probe boots firmware on it."""
    if requested is Accelerator.TCG:
        return requested
    usable = kvm_device.exists() and os.access(kvm_device, os.R_OK | os.W_OK)
    if requested is Accelerator.KVM:
        if not usable:
            raise VmError(
                f"KVM was requested but {kvm_device} is missing or not accessible",
                hint="use the tcg accelerator, or run on a host with KVM",
            )
        return requested
    if not usable:
        logger.info("%s is not usable: using TCG", kvm_device)
        return Accelerator.TCG
    key = (tools.root, machine)
    if key not in _kvm_verdicts:
        _kvm_verdicts[key] = probe_kvm(tools, workdir, machine)
    reason = _kvm_verdicts[key]
    if reason is not None:
        logger.info("KVM does not work here (%s): using TCG", reason)
        return Accelerator.TCG
    return Accelerator.KVM


def probe_kvm(
    tools: ToolsTree, workdir: Path, machine: Machine, timeout: float = KVM_PROBE_TIMEOUT
) -> str | None:
    """Why KVM fails here, or None once OVMF printed a boot-manager line on `machine` with it.

    Creating a KVM VM is not enough: on some nested hosts the first guest instructions fail or
    hang, so the probe runs the real firmware and gives up after `timeout` seconds.
    """
    probe = workdir / "kvm-probe"
    probe.mkdir(parents=True, exist_ok=True)
    empty = probe / "empty.raw"
    with empty.open("wb") as f:
        f.truncate(1 << 20)
    config = VmConfig(empty, machine=machine, memory_mib=256, cpus=1, accelerator=Accelerator.KVM)
    try:
        with boot_vm(config, tools, probe) as vm:
            vm.wait_for_serial("BdsDxe", timeout)
    except VmError as e:
        return e.message.splitlines()[0]
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return None


@contextlib.contextmanager
def boot_vm(config: VmConfig, tools: ToolsTree, workdir: Path) -> Iterator[Vm]:
    """Boot `config.image` under QEMU on a qcow2 overlay; always stop QEMU and remove the overlay.

    The serial log stays for inspection. `workdir` holds the per-VM files.
    """
    image = config.image.absolute()
    if not image.is_file():
        raise VmError(f"cannot boot {image}: no such image file")
    machine = config.machine
    secure = config.secure_boot_vars is not None
    _, template = find_firmware(machine, tools, secure_boot=secure)
    if config.secure_boot_vars is not None:
        template = _secure_boot_store(config.secure_boot_vars)
    files = VmFiles.create(workdir, config.serial_log, machine.firmware.vars)
    if template.resolve() == files.vars.resolve():
        raise VmError(f"the variable store {template} is the VM's own copy, which teardown removes",
                      hint="keep the store outside the VM's work directory")  # fmt: skip
    vm: Vm | None = None
    with contextlib.ExitStack() as services:
        try:
            requested = machine.accel if config.accelerator is None else config.accelerator
            accelerator = finalize_accelerator(requested, tools, files.workdir, machine)
            port = config.ssh_port or pick_free_port()
            what = ", Secure Boot" if secure else ""
            what += ", TPM" if config.tpm is not None else ""
            with step(f"Starting QEMU ({accelerator}{what}, {display(machine.source)}) on "
                      f"{image.name}"):  # fmt: skip
                shutil.copyfile(template, files.vars)
                files.serial_log.unlink(missing_ok=True)
                overlay = config.overlay(files)
                if not (config.disk is not None and overlay.exists()):
                    tools.run(
                        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", config.image_format,
                         "-b", image, overlay],
                        binds=[overlay.parent], readonly=[image],
                    )  # fmt: skip
                argv = qemu_argv(config, files, accelerator, port)
                if config.guest_forwards:
                    shutil.copyfile(Path(__file__).with_name("relay.py"), files.relay)
                if config.tpm is not None:
                    services.enter_context(start_swtpm(tools, config.tpm, files.workdir))
                binds = sorted({files.workdir, files.serial_log.parent, overlay.parent})
                process = spawn(tools.argv(argv, binds, readonly=[image]), output=files.output)
                vm = Vm(process, files, port, accelerator)
            logger.info("QEMU pid %d, serial log %s, ssh on 127.0.0.1:%d", vm.pid,
                        vm.serial_log, port)  # fmt: skip
            yield vm
        finally:
            # QEMU first, then the services it used (swtpm), as the exit stack unwinds
            if vm is not None:
                vm.stop()
            files.remove()


def _secure_boot_store(path: Path) -> Path:
    store = path.absolute()
    if not store.is_file():
        raise VmError(
            f"no Secure Boot variable store {store}",
            hint="write one with 'hostbuild firmware vars' "
            "(builder.firmware.varstore.write_variable_store)",
        )
    return store


class Vm:
    """A running QEMU started by `boot_vm`."""

    def __init__(
        self, process: Spawned, files: VmFiles, ssh_port: int, accelerator: Accelerator
    ) -> None:
        self._process = process
        self._files = files
        self._qmp: Qmp | None = None
        self.ssh_port = ssh_port
        self.accelerator = accelerator
        self.started = time.monotonic()

    @property
    def serial_log(self) -> Path:
        return self._files.serial_log

    @property
    def pid(self) -> int:
        """The process we started (bwrap when QEMU runs in a tools tree)."""
        return self._process.pid

    @property
    def qemu_pid(self) -> int | None:
        """QEMU's own process, from its pidfile (None before QEMU wrote it)."""
        try:
            return int(self._files.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def exit_code(self) -> int | None:
        """QEMU's exit code, or None while it runs."""
        return self._process.poll()

    def output(self) -> str:
        """QEMU's own messages (not the guest console)."""
        try:
            return self._files.output.read_text(errors="replace")
        except OSError:
            return ""

    def serial_text(self) -> str:
        try:
            return self.serial_log.read_bytes().decode(errors="replace")
        except OSError:
            return ""

    def wait_for_serial(self, pattern: str | re.Pattern[str], timeout: float) -> str:
        """Wait until `pattern` appears on the serial console; return the line(s) it matched."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            exited = self.exit_code()
            text = self.serial_text()
            if match := regex.search(text):
                start = text.rfind("\n", 0, match.start()) + 1
                end = text.find("\n", match.end())
                line = _ANSI.sub("", text[start : end if end >= 0 else len(text)])
                logger.debug("serial matched %r after %.1fs", regex.pattern, self.uptime())
                return line
            if exited is not None or time.monotonic() >= deadline:
                raise self._serial_error(f"{regex.pattern!r} on the serial console", timeout)
            time.sleep(0.2)

    def wait_for_ssh(self, timeout: float) -> str:
        """Wait until sshd answers on the forwarded port; return its banner."""
        deadline = time.monotonic() + timeout
        last = "no attempt yet"
        while True:
            if self.exit_code() is not None:
                raise self._serial_error(f"SSH on 127.0.0.1:{self.ssh_port}", timeout)
            try:
                # The user-mode network accepts every connection on the host side; only a
                # banner proves that sshd in the guest answered.
                with socket.create_connection(("127.0.0.1", self.ssh_port), timeout=5) as s:
                    s.settimeout(5)
                    banner = s.recv(256)
                if banner.startswith(b"SSH-"):
                    return banner.split(b"\r\n")[0].decode(errors="replace")
                last = f"got {banner[:40]!r} instead of an SSH banner"
            except OSError as e:
                last = str(e) or type(e).__name__
            if time.monotonic() >= deadline:
                raise self._serial_error(f"SSH on 127.0.0.1:{self.ssh_port} ({last})", timeout)
            time.sleep(1)

    def uptime(self) -> float:
        """Seconds since QEMU was started."""
        return time.monotonic() - self.started

    def qmp(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Run a QMP command and return its result."""
        if self._qmp is None:
            self._qmp = Qmp.connect(self._files.qmp, timeout=STOP_TIMEOUT)
        return self._qmp.execute(command, arguments)

    def status(self) -> str:
        """QEMU's run state ("running", "paused", "shutdown", ...)."""
        result = self.qmp("query-status")
        return str(result["status"])

    def poweroff(self, timeout: float = 60.0) -> None:
        """Press the ACPI power button and wait; quit or kill QEMU if the guest ignores it."""
        if self.exit_code() is not None:
            return
        try:
            self.qmp("system_powerdown")
        except (VmError, OSError) as e:
            logger.warning("cannot send the power button press over QMP: %s", e)
        if self._process.wait(timeout) is not None:
            logger.info("VM powered off after %.1fs", self.uptime())
            return
        logger.warning("the guest did not power off within %.0fs: stopping QEMU", timeout)
        self.stop()

    def stop(self) -> None:
        """Make sure QEMU is gone: QMP quit, then SIGKILL. Safe to call more than once."""
        if self.exit_code() is None:
            grace = 0.0  # without QMP there is no clean way out: kill at once
            if self._qmp is not None or self._files.qmp.exists():
                with contextlib.suppress(VmError, OSError):
                    self.qmp("quit")
                    grace = STOP_TIMEOUT
            if self._process.wait(grace) is None:
                logger.warning("QEMU did not quit: killing it")
                self._process.kill()
                self._process.wait(STOP_TIMEOUT)
            logger.debug("QEMU stopped (exit code %s)", self.exit_code())
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        # bwrap kills QEMU when it dies (--die-with-parent); make sure anyway.
        qemu = self.qemu_pid
        if qemu is not None and pid_alive(qemu):
            with contextlib.suppress(ProcessLookupError):
                os.kill(qemu, signal.SIGKILL)
            deadline = time.monotonic() + STOP_TIMEOUT
            while pid_alive(qemu) and time.monotonic() < deadline:
                time.sleep(0.1)

    def _serial_error(self, what: str, timeout: float) -> VmError:
        lines = [_ANSI.sub("", line) for line in self.serial_text().splitlines()[-TAIL_LINES:]]
        code = self.exit_code()
        if code is not None:
            head = f"QEMU exited with code {code} before {what} (timeout {timeout:g}s)"
            lines += ["QEMU said:", *self.output().splitlines()[-TAIL_LINES:]]
        else:
            head = f"timed out after {timeout:g}s waiting for {what}"
        body = "\n".join(f"  {line}" for line in lines) if lines else "  (nothing)"
        return VmError(
            f"{head}\nlast lines of the serial log {self.serial_log}:\n{body}",
            hint=f"the full console is in {self.serial_log}, QEMU's messages in "
            f"{self._files.output}",
        )
