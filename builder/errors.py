"""Errors shown to users: a message, a hint, and for profiles a list of located issues."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class HostbuildError(Exception):
    """An error the user can act on; `cli.main` prints it without a traceback."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.log: Path | None = None  # the build's log file, set by the command that failed


@dataclass(frozen=True)
class Issue:
    """One problem in one profile file, at a dotted path."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}: {self.path}: {self.message}"
            if self.path
            else f"{self.file}: {self.message}"
        )


class IssuesError(HostbuildError):
    """Every problem found in one input, reported together (exit code 2)."""

    exit_code = 2
    subject = "the input"

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = list(issues)
        count = len(self.issues)
        super().__init__(
            "\n".join(str(i) for i in self.issues),
            hint=f"{count} problem{'s' if count != 1 else ''} in {self.subject}; "
            "fix them and run again",
        )


class ProfileError(IssuesError):
    """Every problem found in a profile, reported together (exit code 2)."""

    subject = "the profile"


class CommandError(HostbuildError):
    """A command we ran failed: its argv, exit code, output tail and the log path."""

    def __init__(
        self, argv: Sequence[str], returncode: int, output_tail: Sequence[str], log: Path | None
    ) -> None:
        import shlex

        self.argv = list(argv)
        self.returncode = returncode
        self.output_tail = list(output_tail)
        self.log = log
        lines = [f"command failed with exit code {returncode}: {shlex.join(self.argv)}"]
        if self.output_tail:
            lines.append(f"last {len(self.output_tail)} lines of output:")
            lines.extend(f"  {line}" for line in self.output_tail)
        super().__init__(
            "\n".join(lines), hint=f"full output in {log}" if log else "run with -v to see output"
        )
