"""The software TPM's life around a VM, with a stand-in `swtpm` on PATH (no TPM emulated)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from builder.build.toolstree import ToolsTree
from builder.run import pid_alive
from builder.vm import swtpm
from builder.vm.errors import VmError
from builder.vm.swtpm import SoftwareTpm, start_swtpm, swtpm_argv

# Records its argv in argv.json beside it, writes --pid, listens on --ctrl's socket, then waits
# to be stopped; a file `fail` beside it makes it print a message and exit 1 instead (commands
# get a minimal environment, so the test talks to it through files).
FAKE = """\
import json, os, socket, sys, time
args = sys.argv[1:]
here = os.path.dirname(os.path.abspath(sys.argv[0]))
with open(os.path.join(here, "argv.json"), "w") as f:
    json.dump(args, f)
if os.path.exists(os.path.join(here, "fail")):
    print("swtpm: Could not open TPM state: Permission denied", file=sys.stderr)
    sys.exit(1)
def value(option, key):
    text = args[args.index(option) + 1]
    return dict(p.split("=", 1) for p in text.split(",") if "=" in p)[key]
with open(value("--pid", "file"), "w") as f:
    f.write(str(os.getpid()))
server = socket.socket(socket.AF_UNIX)
server.bind(value("--ctrl", "path"))
server.listen(1)
time.sleep(60)
"""


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The host as the tools tree, with the stand-in first on PATH; returns its argv record."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "swtpm"
    script.write_text(f"#!{sys.executable}\n{FAKE}")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(swtpm, "STOP_TIMEOUT", 2.0)
    return bin_dir / "argv.json"


def test_swtpm_runs_while_the_block_does(host: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "vm"
    workdir.mkdir()
    with start_swtpm(ToolsTree(Path("/")), SoftwareTpm(), workdir) as files:
        assert json.loads(host.read_text()) == swtpm_argv(files)[1:]
        assert files.socket == workdir / "swtpm.sock" and files.state == workdir / "tpm"
        pid = int(files.pidfile.read_text())
        assert pid_alive(pid)
    assert not pid_alive(pid)
    assert sorted(p.name for p in workdir.iterdir()) == ["swtpm.log"], "a throw-away state"


def test_swtpm_stops_after_an_exception_and_keeps_a_given_state(host: Path, tmp_path: Path) -> None:
    workdir, state = tmp_path / "vm", tmp_path / "kept-tpm"
    workdir.mkdir()
    pid = None
    with (
        pytest.raises(RuntimeError, match="the test failed"),
        start_swtpm(ToolsTree(Path("/")), SoftwareTpm(state), workdir) as files,
    ):
        pid = int(files.pidfile.read_text())
        (state / "tpm2-00.permall").write_bytes(b"seeds")
        raise RuntimeError("the test failed")
    assert pid is not None and not pid_alive(pid)
    assert (state / "tpm2-00.permall").read_bytes() == b"seeds"
    assert f"dir={state},mode=0600" in json.loads(host.read_text())


def test_a_failing_swtpm_is_reported_with_what_it_said(host: Path, tmp_path: Path) -> None:
    (host.parent / "fail").touch()
    workdir = tmp_path / "vm"
    workdir.mkdir()
    with (
        pytest.raises(VmError, match="swtpm exited with code 1") as caught,
        start_swtpm(ToolsTree(Path("/")), SoftwareTpm(), workdir),
    ):
        pass
    assert "Could not open TPM state: Permission denied" in caught.value.message


def test_the_argv_is_tpm2_on_one_control_socket(tmp_path: Path) -> None:
    files = swtpm.TpmFiles(tmp_path, tmp_path / "state")
    assert swtpm_argv(files) == [
        "swtpm", "socket", "--tpm2",
        "--tpmstate", f"dir={tmp_path}/state,mode=0600",
        "--ctrl", f"type=unixio,path={tmp_path}/swtpm.sock",
        "--pid", f"file={tmp_path}/swtpm.pid",
        "--terminate",
    ]  # fmt: skip


# A stand-in QEMU: records whether swtpm's socket was there when it started, writes its pidfile
# and waits. The stand-in swtpm, when stopped, records whether that QEMU still ran.
FAKE_QEMU = """\
import os, sys, time
args = sys.argv[1:]
here = os.path.dirname(os.path.abspath(sys.argv[0]))
chardev = next(v for k, v in zip(args, args[1:]) if k == "-chardev" and v.startswith("socket"))
with open(os.path.join(here, "qemu-saw-socket"), "w") as f:
    f.write(str(os.path.exists(chardev.split("path=")[1])))
for pidfile in (args[args.index("-pidfile") + 1], os.path.join(here, "qemu-pid")):
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
time.sleep(60)
"""
FAKE_QEMU_IMG = """\
import sys
import time
open(sys.argv[-1], "w").close()
"""
ON_TERM = """
import signal
def stopped(*_):
    qemu = open(os.path.join(here, "qemu-pid")).read()  # the VM's pidfile is gone by now
    try:
        alive = open(f"/proc/{qemu}/stat").read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        alive = False
    with open(os.path.join(here, "qemu-alive-at-swtpm-stop"), "w") as f:
        f.write(str(alive))
    sys.exit(0)
signal.signal(signal.SIGTERM, stopped)
"""


def test_boot_vm_starts_swtpm_before_qemu_and_stops_it_after_an_exception(
    host: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from builder.vm import qemu
    from builder.vm.qemu import VmConfig, boot_vm

    bin_dir = host.parent
    swtpm_script = bin_dir / "swtpm"
    text = swtpm_script.read_text().replace("time.sleep(60)", ON_TERM + "time.sleep(60)")
    swtpm_script.write_text(text)
    for name, body in (("qemu-system-x86_64", FAKE_QEMU), ("qemu-img", FAKE_QEMU_IMG)):
        (bin_dir / name).write_text(f"#!{sys.executable}\n{body}")
        (bin_dir / name).chmod(0o755)
    firmware = tmp_path / "firmware"
    firmware.mkdir()
    for name in ("code.fd", "vars.fd", "fleet-vars.fd"):
        (firmware / name).write_bytes(name.encode())
    monkeypatch.setattr(qemu, "find_firmware", lambda machine, tools, secure_boot=False: (
        firmware / "code.fd", firmware / "vars.fd"))  # fmt: skip
    monkeypatch.setattr(qemu, "STOP_TIMEOUT", 2.0)
    image = tmp_path / "disk.raw"
    image.touch()
    workdir = tmp_path / "vm"
    config = VmConfig(image, secure_boot_vars=firmware / "fleet-vars.fd", tpm=SoftwareTpm())
    with (
        pytest.raises(RuntimeError, match="a test step failed"),
        boot_vm(config, ToolsTree(Path("/")), workdir) as vm,
    ):
        assert (workdir / "OVMF_VARS_4M.fd").read_bytes() == b"fleet-vars.fd", "the store's copy"
        for _ in range(100):
            if vm.qemu_pid is not None:
                break
            time.sleep(0.05)
        qemu_pid, swtpm_pid = vm.qemu_pid, int((workdir / "swtpm.pid").read_text())
        raise RuntimeError("a test step failed")
    assert qemu_pid is not None and not pid_alive(qemu_pid) and not pid_alive(swtpm_pid)
    assert (bin_dir / "qemu-saw-socket").read_text() == "True", "swtpm listened before QEMU"
    assert (bin_dir / "qemu-alive-at-swtpm-stop").read_text() == "False", "QEMU stopped first"
    # the logs stay (the stand-in writes no serial log, which QEMU would create)
    assert sorted(p.name for p in workdir.iterdir()) == ["qemu.log", "swtpm.log"]
    assert (firmware / "fleet-vars.fd").read_bytes() == b"fleet-vars.fd", "never written"
