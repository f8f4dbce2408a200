"""Helpers for VM tests of a built image: build it once, boot it, reach it over SSH."""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import testinfra
from click.testing import CliRunner

from builder.build.toolstree import ToolsTree
from builder.cli import cli
from builder.run import run
from builder.vm.qemu import Vm, VmConfig, boot_vm
from tests.reproducible import BuiltImage as BuiltImage  # one definition, re-exported
from tests.secureboot import secure_profile
from tests.standin import PROFILE, make_mirror


def build_standin_image(
    cache: Path, work: Path, update_root: Path | None = None, keys: Path | None = None
) -> BuiltImage:
    """`hostbuild image` of the stand-in worker (or HOSTBUILD_TEST_IMAGE_DIR, already built),
    trusting the update repository of `update_root`; with a key set (`hostbuild keys init`), a
    secure-boot build signed with it (a profile of the same name extending the stand-in's)."""
    if existing := os.environ.get("HOSTBUILD_TEST_IMAGE_DIR"):
        output = Path(existing)
    else:
        mirror = make_mirror(work / "mirror")
        output = work / "image"
        profile, signing = PROFILE, []
        if keys is not None:
            profile = secure_profile(work / "profile", keys, extends=PROFILE, name=PROFILE.stem)
            signing = ["--db-key", os.fspath(keys / "db.key"),
                       "--pcr-key", os.fspath(keys / "pcr-private.pem")]  # fmt: skip
        result = CliRunner().invoke(cli, [
            "--cache-dir", os.fspath(cache), "image", "--profile", os.fspath(profile),
            "--output", os.fspath(output), "--artifact-mirror", os.fspath(mirror),
            "--lock", os.fspath(work / "standin.lock.json"), *signing,
            *(["--update-root", os.fspath(update_root)] if update_root else []),
        ], catch_exceptions=False)  # fmt: skip
        assert result.exit_code == 0, result.output
    return BuiltImage(output, json.loads((output / "manifest.json").read_text()))


@dataclass(frozen=True)
class SshKey:
    private: Path
    public: str


def make_ssh_key(directory: Path) -> SshKey:
    private = directory / "id_ed25519"
    if not private.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hostbuild-test", "-f", private])
    return SshKey(private, (directory / "id_ed25519.pub").read_text())


def ssh_config(path: Path, port: int, key: SshKey) -> Path:
    """An ssh_config for testinfra's ssh backend: host `vm`, throwaway host keys."""
    path.write_text(
        "Host vm\n"
        "  HostName 127.0.0.1\n"
        f"  Port {port}\n"
        "  User root\n"
        f"  IdentityFile {key.private}\n"
        "  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n"
        "  UserKnownHostsFile /dev/null\n"
        "  LogLevel ERROR\n"
        "  ConnectTimeout 10\n"
        "  ServerAliveInterval 5\n"
        "  ServerAliveCountMax 6\n"
    )
    return path


@contextmanager
def booted(
    image: Path, tools: ToolsTree, work: Path, key: SshKey | None, timeout: float = 300.0,
    **options: Any,
) -> Iterator[Vm]:  # fmt: skip
    """Boot `image` with root's SSH key as a systemd credential; wait until SSH answers. `options`:
    more VmConfig fields (secure_boot_vars, tpm)."""
    credentials = {"ssh.authorized_keys.root": key.public.encode()} if key else {}
    config = VmConfig(
        image=image, credentials=credentials, serial_log=work / "serial.log", **options
    )
    with boot_vm(config, tools, work) as vm:
        if key is not None:
            vm.wait_for_ssh(timeout)
        yield vm


def ssh_command(config: Path, command: str) -> list[str]:
    return ["ssh", "-F", os.fspath(config), "vm", command]


def quote(*args: str) -> str:
    return shlex.join(args)


def uki_sections(image: BuiltImage, tools: ToolsTree, work: Path, *names: str) -> list[Path]:
    """Sections of the image's UKI (taken out of its update payload), e.g. `.linux`, `.initrd`."""
    name = image.manifest["name"]
    work.mkdir(parents=True, exist_ok=True)
    run(["zstd", "-q", "-d", "-f", image.output / f"{name}.update" / f"{name}.efi.zst",
         "-o", work / "image.efi"])  # fmt: skip
    tools.run(["python3", "-c", (
        "import pefile, sys\n"
        "pe = pefile.PE(sys.argv[1])\n"
        "for s in pe.sections:\n"
        "    n = s.Name.rstrip(b'\\0').decode()\n"
        "    if n in sys.argv[3:]:\n"
        "        open(sys.argv[2] + n, 'wb').write(s.get_data()[:s.Misc_VirtualSize])\n"
    ), work / "image.efi", work / "section", *names], binds=[work])  # fmt: skip
    return [work / f"section{n}" for n in names]


def build_uki_variant(
    image: BuiltImage, tools: ToolsTree, work: Path, version: str, cmdline: str
) -> Path:
    """A UKI of a newer `version` with another command line: a stand-in for a bad update.

    It carries the image's own kernel and initrd (taken out of the built UKI), so only the
    command line differs from what the image boots.
    """
    linux, initrd, osrel = uki_sections(image, tools, work, ".linux", ".initrd", ".osrel")
    text = osrel.read_bytes().rstrip(b"\0").decode()
    lines = [line for line in text.splitlines() if not line.startswith("IMAGE_VERSION=")]
    (work / "os-release").write_text("\n".join([*lines, f"IMAGE_VERSION={version}"]) + "\n")
    out = work / f"variant-{version}.efi"
    tools.run([
        "ukify", "build", f"--linux={linux}", f"--initrd={initrd}",
        f"--os-release=@{work / 'os-release'}", f"--cmdline={cmdline}", f"--output={out}",
    ], binds=[work])  # fmt: skip
    return out


def tampered_copy(image: BuiltImage, work: Path) -> Path:
    """A copy of the raw image with bytes flipped in root slot A's erofs superblock."""
    copy = work / "tampered.raw"
    run(["cp", "--sparse=always", image.raw, copy])
    start = image.partition("root-a")["start"]
    with copy.open("r+b") as f:
        f.seek(start + 1024)
        block = bytearray(f.read(64))
        f.seek(start + 1024)
        f.write(bytes(b ^ 0xFF for b in block))
    return copy


class Node:
    """The booted VM and a testinfra host on it."""

    def __init__(self, vm: Vm, config: Path) -> None:
        self.vm = vm
        self.config = config
        self.host = testinfra.get_host("ssh://vm", ssh_config=os.fspath(config))

    def run(self, command: str) -> Any:
        """host.run, again (up to three times, 5 s apart) when sshd reset the connection before
        the key exchange: the command never started (a loaded guest restarting its sshd)."""
        for attempt in range(3):
            try:
                return self.host.run(command)
            except RuntimeError as e:
                if "kex_exchange_identification" not in str(e) or attempt == 2:
                    raise
                time.sleep(5)
        raise AssertionError("unreachable")

    def sh(self, command: str) -> str:
        result = self.run(command)
        assert result.rc == 0, f"{command}: rc={result.rc}\n{result.stdout}{result.stderr}"
        return str(result.stdout)

    def wait_for(self, command: str, timeout: float = 180.0) -> str:
        end = time.monotonic() + timeout
        while True:
            result = self.host.run(command)
            if result.rc == 0:
                return str(result.stdout)
            if time.monotonic() > end:
                raise AssertionError(f"{command} still fails: {result.stdout}{result.stderr}")
            time.sleep(3)
