"""A cached Debian trixie tools tree (QEMU, OVMF, ukify, erofs, verity) run through bubblewrap.

Bookworm's QEMU 7.2 crashes trixie guests under TCG, so older hosts run these tools from a tree.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from builder.errors import HostbuildError
from builder.log import step
from builder.run import Completed, run, stream

logger = logging.getLogger(__name__)

# Bump to rebuild every cached tree (e.g. after changing how it is bootstrapped).
TOOLS_TREE_VERSION = "1"
RELEASE = "trixie"
MIN_VERSION_ID = 13

# package -> a file it installs, to check that a tree (or the host) really has it
PACKAGES: dict[str, str] = {
    "qemu-system-x86": "/usr/bin/qemu-system-x86_64",
    "ovmf": "/usr/share/OVMF/OVMF_CODE_4M.fd",
    "qemu-utils": "/usr/bin/qemu-img",
    "systemd-ukify": "/usr/bin/ukify",
    "python3-pefile": "/usr/lib/python3/dist-packages/pefile.py",
    "systemd-boot-efi": "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
    "erofs-utils": "/usr/bin/mkfs.erofs",
    "cryptsetup-bin": "/usr/sbin/veritysetup",
    "dosfstools": "/usr/sbin/mkfs.vfat",
    "mtools": "/usr/bin/mcopy",
    "gdisk": "/usr/sbin/sgdisk",
    "e2fsprogs": "/usr/sbin/mkfs.ext4",
    "zstd": "/usr/bin/zstd",
    "openssh-client": "/usr/bin/ssh",
    # Secure Boot signing and TPM2 measured boot (issue 16): sbsign for systemd-boot,
    # systemd-measure (package systemd) for ukify's signed PCR 11 predictions, with the TSS
    # libraries it loads at run time, and a software TPM for the QEMU harness
    "sbsigntool": "/usr/bin/sbsign",
    "systemd": "/usr/lib/systemd/systemd-measure",
    "libtss2-esys-3.0.2-0t64": "/usr/lib/x86_64-linux-gnu/libtss2-esys.so.0",
    "libtss2-mu-4.0.1-0t64": "/usr/lib/x86_64-linux-gnu/libtss2-mu.so.0",
    "libtss2-rc0t64": "/usr/lib/x86_64-linux-gnu/libtss2-rc.so.0",
    "swtpm": "/usr/bin/swtpm",
    "swtpm-tools": "/usr/bin/swtpm_setup",
}

# Data files inside the tree, as absolute paths in the tree (see ToolsTree.path for host paths).
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
# Secure Boot capable firmware (needs q35 with SMM); its empty variable store is OVMF_VARS
OVMF_CODE_SECBOOT = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
SYSTEMD_BOOT_EFI = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"

# Tree paths a bind must not hide: the sandbox's own filesystems.
_RESERVED = ("/usr", "/etc", "/proc", "/dev", "/sys", "/bin", "/sbin", "/lib", "/lib64")
# Documentation and translations are dead weight in a tree that only runs tools.
_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")


@dataclass(frozen=True)
class ToolsTree:
    """Where the tools live: a bootstrapped tree run through bwrap, or the host itself ("/")."""

    root: Path

    @property
    def is_host(self) -> bool:
        return self.root == Path("/")

    def path(self, name: str | PurePosixPath) -> Path:
        """The host path of `name`, an absolute path inside the tree (e.g. OVMF_VARS)."""
        inner = PurePosixPath(name)
        if not inner.is_absolute():
            raise ValueError(f"tools tree paths are absolute, got {os.fspath(name)!r}")
        return self.root / inner.relative_to("/")

    def missing(self) -> list[str]:
        """Packages of PACKAGES whose marker file the tree lacks."""
        return [pkg for pkg, marker in PACKAGES.items() if not self.path(marker).exists()]

    def argv(
        self,
        argv: Sequence[str | os.PathLike[str]],
        binds: Sequence[Path] = (),
        *,
        readonly: Sequence[Path] = (),
        cwd: Path | None = None,
    ) -> list[str]:
        """The command line that runs `argv` inside the tree.

        Each path in `binds` (read-write) and `readonly` is visible at the same path inside, so
        host paths in `argv` stay valid. /tmp is private to the command. On the host it is `argv`.
        """
        args = [os.fspath(a) for a in argv]
        if self.is_host:
            return args
        root = os.fspath(self.root)
        sandbox = [
            "bwrap",
            "--die-with-parent",
            "--ro-bind", f"{root}/usr", "/usr",
            "--ro-bind", f"{root}/etc", "/etc",
            "--symlink", "usr/bin", "/bin",
            "--symlink", "usr/sbin", "/sbin",
            "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64",
            "--dev-bind", "/dev", "/dev",
            "--proc", "/proc",
            "--ro-bind", "/sys", "/sys",
            "--tmpfs", "/tmp",
            "--tmpfs", "/var/tmp",
            "--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf",
        ]  # fmt: skip
        for path, writable in _sorted_binds(binds, readonly):
            sandbox += ["--bind" if writable else "--ro-bind", path, path]
        if cwd is not None:
            sandbox += ["--chdir", os.fspath(cwd.absolute())]
        return [*sandbox, "--", *args]

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        binds: Sequence[Path] = (),
        readonly: Sequence[Path] = (),
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        check: bool = True,
        input: str | None = None,
    ) -> Completed:
        """`builder.run.run` of `argv` inside the tree; `cwd` is bound too."""
        binds = [*binds, cwd] if cwd is not None else binds
        inner = self.argv(argv, binds, readonly=readonly, cwd=cwd)
        return run(inner, env=env, cwd=cwd, check=check, input=input)

    def stream(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        binds: Sequence[Path] = (),
        readonly: Sequence[Path] = (),
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """`builder.run.stream` of `argv` inside the tree; `cwd` is bound too."""
        binds = [*binds, cwd] if cwd is not None else binds
        stream(self.argv(argv, binds, readonly=readonly, cwd=cwd), env=env, cwd=cwd)


def _sorted_binds(binds: Sequence[Path], readonly: Sequence[Path]) -> list[tuple[str, bool]]:
    """Absolute, deduplicated binds, parents before children so nested binds stack."""
    wanted: dict[Path, bool] = {}
    for path, writable in [*((p, True) for p in binds), *((p, False) for p in readonly)]:
        absolute = Path(os.path.normpath(path.absolute()))
        if absolute == Path("/") or any(
            absolute.is_relative_to(reserved) for reserved in _RESERVED
        ):
            raise HostbuildError(
                f"cannot bind {os.fspath(absolute)!r} into the tools tree: it would hide the "
                f"tree's own {', '.join(_RESERVED)}",
                hint="keep work files outside those directories (e.g. in the cache directory)",
            )
        if not absolute.exists():
            raise HostbuildError(
                f"cannot bind {os.fspath(absolute)!r} into the tools tree: it does not exist",
                hint="create it before running the command",
            )
        # A path asked for both ways is bound read-only.
        wanted[absolute] = wanted.get(absolute, True) and writable
    ordered = sorted(wanted.items(), key=lambda item: (len(item[0].parts), os.fspath(item[0])))
    return [(os.fspath(path), writable) for path, writable in ordered]


def host_is_new_enough(os_release: Path = Path("/etc/os-release")) -> bool:
    """Whether the host is Debian 13 (trixie) or newer, so it can run the tools itself."""
    try:
        text = os_release.read_text()
    except OSError:
        return False
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip("\"'")
    if fields.get("ID") != "debian":
        return False
    version = fields.get("VERSION_ID", "")
    return version.isdigit() and int(version) >= MIN_VERSION_ID


def tree_key(packages: Sequence[str], mirror: str) -> str:
    """Short digest of everything that changes a tree's content."""
    text = "\n".join([TOOLS_TREE_VERSION, RELEASE, mirror, *sorted(packages)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def mmdebstrap_argv(target: Path, mirror: str, packages: Sequence[str]) -> list[str]:
    """The bootstrap command of a tools tree (no recommends, no documentation)."""
    argv = [
        "mmdebstrap",
        "--variant=minbase",
        f"--include={','.join(sorted(packages))}",
        '--aptopt=APT::Install-Recommends "false"',
        '--aptopt=Acquire::Retries "3"',
    ]
    argv += [f"--dpkgopt=path-exclude={pattern}" for pattern in _EXCLUDES]
    # Bind targets must already exist in the read-only tree.
    argv += ['--customize-hook=touch "$1/etc/resolv.conf"']
    return [*argv, RELEASE, os.fspath(target), mirror]


def ensure_tools_tree(cache: Path, mirror: str) -> ToolsTree:
    """The tools tree for this host: the host itself on trixie or newer, else a cached tree.

    A tree is built once per (packages, mirror, TOOLS_TREE_VERSION) into
    `<cache>/tools/trixie-<key>` and appears there only when complete.
    """
    if host_is_new_enough():
        tree = ToolsTree(Path("/"))
        if missing := tree.missing():
            raise HostbuildError(
                f"the host lacks tools hostbuild runs directly on Debian {MIN_VERSION_ID}+: "
                + ", ".join(missing),
                hint=f"apt-get install -y --no-install-recommends {' '.join(missing)}",
            )
        return tree
    for command, package in (("bwrap", "bubblewrap"), ("mmdebstrap", "mmdebstrap")):
        if shutil.which(command) is None:
            raise HostbuildError(
                f"{command!r} is not installed; it is needed to run the {RELEASE} tools tree "
                "on this host (older than Debian 13)",
                hint=f"apt-get install -y {package}",
            )
    packages = list(PACKAGES)
    final = cache / "tools" / f"{RELEASE}-{tree_key(packages, mirror)}"
    if not final.is_dir():
        with _locked(final.with_name(f".{final.name}.lock")):
            if not final.is_dir():
                _build(final, mirror, packages)
    tree = ToolsTree(final)
    if missing := tree.missing():
        raise HostbuildError(
            f"the tools tree {final} lacks packages: {', '.join(missing)}",
            hint=f"delete {final} and run again to rebuild it",
        )
    return tree


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise concurrent builds of one tree."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(final: Path, mirror: str, packages: Sequence[str]) -> None:
    tmp = final.with_name(f".{final.name}.tmp")
    # Left by an interrupted build; we hold the lock, so nobody else is writing it.
    shutil.rmtree(tmp, ignore_errors=True)
    with step(f"Building the {RELEASE} tools tree in {final}"):
        try:
            stream(mmdebstrap_argv(tmp, mirror, packages))
            if missing := ToolsTree(tmp).missing():
                raise HostbuildError(
                    f"the {RELEASE} tools tree built from {mirror} lacks: {', '.join(missing)}",
                    hint="check that the mirror carries the full trixie main component",
                )
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
