"""The lock: what each build of a profile resolved, and the build number derived from it.

A build's inputs (resolved profile, artifact digests, Debian archive state, hostbuild's elements
and templates) hash to one digest. The same digest for the same OS version gets the same build
number; a new digest gets the next one. The lock sits next to its profile and is committed with
it, so the number is derived from the repository, not from a counter on one machine.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import HostbuildError
from builder.profile.versions import OsVersion, parse_os_version

LOCK_VERSION = 1


def lock_path(profile_path: Path) -> Path:
    """`profiles/worker.yaml` -> `profiles/worker.lock.json`."""
    return profile_path.with_name(f"{profile_path.stem}.lock.json")


@dataclass
class Lock:
    path: Path
    builds: list[dict[str, Any]]

    def build_number(self, version: OsVersion, inputs: str) -> int:
        """The build number of these inputs: a recorded one, else the next free one."""
        same = [b for b in self.builds if parse_os_version(b["version"]).release == version.release]
        for build in same:
            if build["inputs"] == inputs:
                return parse_os_version(build["version"]).build or 1
        return 1 + max((parse_os_version(b["version"]).build or 0 for b in same), default=0)

    def check_reproduced(self, version: str, inputs: str, roothash: str) -> None:
        """Fail when a recorded build of these inputs had another root hash: one build number
        would name two images (the build is not reproducible, or the lock was edited)."""
        for build in self.builds:
            if build["version"] != version or build["inputs"] != inputs:
                continue
            recorded = build.get("roothash")
            if recorded is not None and recorded != roothash:
                raise HostbuildError(
                    f"build {version} (inputs {inputs[:12]}) was recorded in {self.path} with "
                    f"root hash {recorded}, and this build of the same inputs gave {roothash}: "
                    "one build number would name two images",
                    hint="the build is not reproducible; compare both builds' trees with "
                    "diffoscope (see the README's reproducibility section) and fix the source "
                    "of the difference; nothing was written",
                )

    def kubelet_of(self, release: str) -> str | None:
        """The kubelet version of the newest recorded build of OS version `release`."""
        found = [b for b in self.builds if parse_os_version(b["version"]).release == release]
        if not found:
            return None
        newest = max(found, key=lambda b: parse_os_version(b["version"]))
        kubelet: str | None = newest.get("kubelet")
        return kubelet

    def releases(self) -> list[str]:
        return sorted({parse_os_version(b["version"]).release for b in self.builds})

    def record(self, entry: dict[str, Any]) -> None:
        """Add or replace the entry of a build and write the lock atomically."""
        self.builds = [b for b in self.builds if b["version"] != entry["version"]] + [entry]
        self.builds.sort(key=lambda b: parse_os_version(b["version"]))
        data = {"lock": LOCK_VERSION, "builds": self.builds}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)


def load_lock(path: Path) -> Lock:
    if not path.exists():
        return Lock(path, [])
    try:
        data = json.loads(path.read_text())
        builds = list(data["builds"])
        for build in builds:
            parse_os_version(build["version"], build=True)
            str(build["inputs"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise HostbuildError(
            f"{path}: not a hostbuild lock file: {e}",
            hint="restore it from version control; it records every build's inputs",
        ) from e
    return Lock(path, builds)


def inputs_digest(inputs: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a build's inputs."""
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def tree_digest(*roots: Path) -> str:
    """sha256 over the paths, modes and contents of every file below `roots`."""
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            if "__pycache__" in path.parts:
                continue
            digest.update(f"{path.relative_to(root.parent)}\0{path.stat().st_mode:o}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
