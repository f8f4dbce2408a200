"""A software TPM 2.0 for one VM: swtpm from the tools tree, started before QEMU, stopped after.

QEMU's `emulator` TPM backend talks to swtpm over its control socket; the TPM's state (seeds,
NV indexes) lives in a directory, throw-away or kept across VMs like a persistent disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from builder.build.toolstree import ToolsTree
from builder.run import Spawned, pid_alive, spawn
from builder.vm.errors import VmError
from builder.vm.machine import with_option

logger = logging.getLogger(__name__)

START_TIMEOUT = 10.0  # swtpm makes its socket in well under a second
STOP_TIMEOUT = 10.0
TAIL_LINES = 20


@dataclass(frozen=True)
class SoftwareTpm:
    """A VM's TPM: `state` is kept across VMs (created on first use, never removed), so secrets a
    guest sealed stay unsealable on the next boot of the same disk; None: a throw-away TPM."""

    state: Path | None = None


@dataclass(frozen=True)
class TpmFiles:
    """swtpm's files in the VM's work directory."""

    workdir: Path
    state: Path

    @property
    def socket(self) -> Path:
        """The control socket QEMU connects to (commands go over it too)."""
        return self.workdir / "swtpm.sock"

    @property
    def pidfile(self) -> Path:
        return self.workdir / "swtpm.pid"

    @property
    def output(self) -> Path:
        """swtpm's own messages; kept after teardown, like QEMU's."""
        return self.workdir / "swtpm.log"


def swtpm_argv(files: TpmFiles) -> list[str]:
    """swtpm's command line: TPM 2.0, one control socket, and exit once QEMU hangs up."""
    return [
        "swtpm", "socket", "--tpm2",
        "--tpmstate", f"dir={files.state},mode=0600",
        "--ctrl", f"type=unixio,path={files.socket}",
        "--pid", f"file={files.pidfile}",
        "--terminate",
    ]  # fmt: skip


def qemu_tpm_argv(socket: Path, device: str) -> list[str]:
    """QEMU's options for the TPM behind `socket`: a chardev, the emulator backend, the device."""
    return [
        "-chardev", f"socket,id=chrtpm,path={socket}",
        "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
        "-device", with_option(device, "tpmdev=tpm0"),
    ]  # fmt: skip


@contextlib.contextmanager
def start_swtpm(
    tools: ToolsTree, tpm: SoftwareTpm, workdir: Path, timeout: float = START_TIMEOUT
) -> Iterator[TpmFiles]:
    """Run swtpm until the block ends (an exception included); yield its files once its socket
    accepts connections. A throw-away state directory is removed at the end."""
    workdir = workdir.absolute()
    state = tpm.state.absolute() if tpm.state is not None else workdir / "tpm"
    files = TpmFiles(workdir, state)
    state.mkdir(parents=True, exist_ok=True)
    for path in (files.socket, files.pidfile):
        path.unlink(missing_ok=True)
    process = spawn(tools.argv(swtpm_argv(files), sorted({workdir, state})), output=files.output)
    try:
        _wait_for_socket(process, files, timeout)
        logger.info("swtpm pid %d, state in %s", process.pid, state)
        yield files
    finally:
        stop_swtpm(process, files)
        if tpm.state is None:
            shutil.rmtree(state, ignore_errors=True)


def stop_swtpm(process: Spawned, files: TpmFiles) -> None:
    """Make sure swtpm is gone (after QEMU: with --terminate it has usually left already)."""
    if process.wait(0) is None:
        process.terminate()
        if process.wait(STOP_TIMEOUT) is None:
            logger.warning("swtpm did not stop: killing it")
            process.kill()
            process.wait(STOP_TIMEOUT)
    # bwrap kills swtpm when it dies (--die-with-parent); make sure anyway.
    pid = _read_pid(files.pidfile)
    if pid is not None and pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + STOP_TIMEOUT
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    for path in (files.socket, files.pidfile):
        path.unlink(missing_ok=True)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _wait_for_socket(process: Spawned, files: TpmFiles, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _is_socket(files.socket):
        code = process.poll()
        if code is not None or time.monotonic() >= deadline:
            head = (f"swtpm exited with code {code}" if code is not None
                    else f"swtpm made no socket {files.socket} within {timeout:g}s")  # fmt: skip
            raise VmError(
                f"{head}; it said:\n{_tail(files.output)}",
                hint=f"its state is in {files.state}; a state directory another swtpm version "
                "wrote may need removing",
            )
        time.sleep(0.05)


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-TAIL_LINES:]
    except OSError:
        lines = []
    return "\n".join(f"  {line}" for line in lines) if lines else "  (nothing)"
