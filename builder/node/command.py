"""The node agent's one way to run a command (argv lists, bounded time, captured output)."""

from __future__ import annotations

import os
import shlex
import subprocess  # noqa: TID251 -- runs on the node, outside the builder
from collections.abc import Sequence
from pathlib import Path


class CommandFailed(Exception):
    """A command exited non-zero or could not run."""


def run(argv: Sequence[str], timeout: float = 30.0) -> str:
    """Run `argv`; its stdout, or CommandFailed naming the command and its stderr."""
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CommandFailed(f"{shlex.join(argv)}: {e}") from None
    if result.returncode != 0:
        raise CommandFailed(
            f"{shlex.join(argv)} exited {result.returncode}: {result.stderr.strip()[-300:]}"
        )
    return result.stdout


def mount_ro(device: Path, mountpoint: Path) -> None:
    run(["mount", "-o", "ro,nodev,nosuid,noexec", os.fspath(device), os.fspath(mountpoint)])


def umount(mountpoint: Path) -> None:
    run(["umount", os.fspath(mountpoint)])
