"""The node agent's one way to run a command (argv lists, bounded time, captured output)."""

from __future__ import annotations

import os
import shlex
import subprocess  # noqa: TID251 -- runs on the node, outside the builder
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO


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


@contextmanager
def stream(argv: Sequence[str], timeout: float = 60.0) -> Iterator[IO[bytes]]:
    """Run `argv` and yield its stdout as a binary stream (never read whole into memory).

    Leaving the block early kills the command; after it, CommandFailed when it exited non-zero
    (it then has `timeout` seconds to exit once its stdout is closed).
    """
    with tempfile.TemporaryFile() as stderr:
        try:
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
            )
        except OSError as e:
            raise CommandFailed(f"{shlex.join(argv)}: {e}") from None
        assert proc.stdout is not None
        try:
            yield proc.stdout
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            try:
                returncode = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                returncode = proc.wait()
        if returncode != 0:
            stderr.seek(0)
            tail = stderr.read()[-300:].decode(errors="replace").strip()
            raise CommandFailed(f"{shlex.join(argv)} exited {returncode}: {tail}")


def mount_ro(device: Path, mountpoint: Path) -> None:
    run(["mount", "-o", "ro,nodev,nosuid,noexec", os.fspath(device), os.fspath(mountpoint)])


def umount(mountpoint: Path) -> None:
    run(["umount", os.fspath(mountpoint)])


def settle(timeout: float, poll: float = 0.2) -> None:
    """Wait (at most `timeout` s) until udev's coldplug ran and udev handled all its events.

    The agent starts before the coldplug (it needs no device for its usual sources), so it first
    waits for systemd-udev-trigger.service to have run, then for udev's queue to empty.
    """
    end = time.monotonic() + timeout
    while True:
        try:
            run(["systemctl", "is-active", "--quiet", "systemd-udev-trigger.service"])
            break
        except CommandFailed:
            if time.monotonic() >= end:
                raise CommandFailed(f"udev's coldplug did not run within {timeout:g} s") from None
            time.sleep(poll)
    left = max(end - time.monotonic(), 1.0)
    run(["udevadm", "settle", f"--timeout={left:.0f}"], timeout=left + 5)
