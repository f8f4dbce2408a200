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
