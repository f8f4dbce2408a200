"""The one place that runs commands: argv lists, explicit environment, logged output."""

from __future__ import annotations

import collections
import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.errors import CommandError
from builder.log import current_log_file

logger = logging.getLogger(__name__)

TAIL_LINES = 20


@dataclass(frozen=True)
class Completed:
    """What a finished command left: its exit code and captured output."""

    returncode: int
    stdout: str
    stderr: str


def base_environment() -> dict[str, str]:
    """A minimal environment to build command environments from (never the whole os.environ)."""
    keep = ("PATH", "HOME", "TERM", "http_proxy", "https_proxy", "no_proxy")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["LC_ALL"] = "C.UTF-8"
    return env


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
    input: str | None = None,
) -> Completed:
    """Run a short command and capture its output; raise CommandError on failure."""
    args = [os.fspath(a) for a in argv]
    logger.debug("+ %s", shlex.join(args))
    proc = subprocess.run(
        args,
        env=dict(env) if env is not None else base_environment(),
        cwd=cwd,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    for line in (proc.stdout + proc.stderr).splitlines():
        logger.debug("  %s", line)
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).splitlines()[-TAIL_LINES:]
        raise CommandError(args, proc.returncode, tail, current_log_file())
    return Completed(proc.returncode, proc.stdout, proc.stderr)


def stream(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> None:
    """Run a long command, logging each output line at DEBUG as it arrives."""
    args = [os.fspath(a) for a in argv]
    logger.debug("+ %s", shlex.join(args))
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    with subprocess.Popen(
        args,
        env=dict(env) if env is not None else base_environment(),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            logger.debug("  %s", line)
        returncode = proc.wait()
    if returncode != 0:
        raise CommandError(args, returncode, list(tail), current_log_file())


class Spawned:
    """A background command started by `spawn`: poll it, wait for it, stop it."""

    def __init__(self, argv: Sequence[str], proc: subprocess.Popen[bytes]) -> None:
        self.argv = list(argv)
        self._proc = proc

    @property
    def pid(self) -> int:
        return self._proc.pid

    def poll(self) -> int | None:
        """The exit code, or None while the command runs."""
        return self._proc.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to `timeout` seconds; the exit code, or None if it still runs."""
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def terminate(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    output: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Spawned:
    """Start a long-running command in the background, its stdout and stderr written to `output`.

    The caller must stop it (`kill`, then `wait`); nothing here raises on its exit code.
    """
    args = [os.fspath(a) for a in argv]
    logger.debug("+ %s &", shlex.join(args))
    logger.debug("  (output in %s)", output)
    with output.open("wb") as out:
        proc = subprocess.Popen(
            args,
            env=dict(env) if env is not None else base_environment(),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Spawned(args, proc)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie has finished): for processes a tool forked
    away from the one `spawn` started, e.g. the QEMU or swtpm behind bwrap, known by a pidfile."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
