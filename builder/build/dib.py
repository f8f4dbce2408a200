"""One diskimage-builder run as a value: elements, explicit DIB_* environment and arguments."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from builder.run import base_environment, stream

# DIB writes the tree through a loop-mounted whole-device ext4 and tars it; it never
# partitions (no device-mapper on build hosts), the disk assembler does that later.
IMAGE_TYPE = "tar"


@dataclass(frozen=True)
class DibInvocation:
    """`disk-image-create` with everything it reads spelled out."""

    elements: tuple[str, ...]
    elements_path: Path
    output: Path  # without extension: DIB writes output.tar and output.d/
    arch: str
    image_cache: Path
    packages: tuple[str, ...] = ()
    environment: dict[str, str] = field(default_factory=dict)

    def argv(self) -> list[str]:
        argv = [os.fspath(dib_command()), "-a", self.arch, "-t", IMAGE_TYPE, "-n"]
        argv += ["--image-cache", os.fspath(self.image_cache), "-o", os.fspath(self.output)]
        if self.packages:
            argv += ["-p", ",".join(self.packages)]
        return [*argv, *self.elements]

    def env(self) -> dict[str, str]:
        env = base_environment()
        env["PATH"] = f"{dib_command().parent}:{env['PATH']}"
        env["ELEMENTS_PATH"] = os.fspath(self.elements_path)
        env.update(self.environment)
        return env

    def describe(self) -> str:
        """The command as a shell line, for --dry-run and the log."""
        variables = {"ELEMENTS_PATH": os.fspath(self.elements_path), **self.environment}
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(variables.items()))
        return f"{assignments} {shlex.join(self.argv())}"

    def run(self) -> None:
        stream(self.argv(), env=self.env())


def dib_command() -> Path:
    """disk-image-create from the virtualenv hostbuild runs in."""
    return Path(sys.executable).parent / "disk-image-create"
