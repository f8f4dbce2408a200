"""Version strings: OS versions (`X.Y.Z`, builds `X.Y.Z-N`) and component versions."""

from __future__ import annotations

import re
from dataclasses import dataclass

_OS = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(?:-([1-9][0-9]*))?\Z")
_RELEASE = re.compile(r"^v?([0-9]+)\.([0-9]+)(?:\.([0-9]+))?")


@dataclass(frozen=True, order=True)
class OsVersion:
    """`1.2.3` is an OS version; `1.2.3-4` is the 4th build of it."""

    major: int
    minor: int
    patch: int
    build: int | None = None

    @property
    def release(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    def __str__(self) -> str:
        return self.release if self.build is None else f"{self.release}-{self.build}"

    def with_build(self, build: int) -> OsVersion:
        return OsVersion(self.major, self.minor, self.patch, build)


def parse_os_version(text: str, *, build: bool | None = None) -> OsVersion:
    """Parse `X.Y.Z` or `X.Y.Z-N`; `build` True/False requires/forbids the build number."""
    match = _OS.match(text)
    if not match:
        want = {True: "X.Y.Z-N", False: "X.Y.Z", None: "X.Y.Z or X.Y.Z-N"}[build]
        raise ValueError(
            f"{text!r} is not an OS version {want} (numbers without leading zeros, "
            "e.g. '1.2.3' or '1.2.3-4')"
        )
    major, minor, patch, n = match.groups()
    if build is True and n is None:
        raise ValueError(f"{text!r} has no build number; expected X.Y.Z-N, e.g. '1.2.3-4'")
    if build is False and n is not None:
        raise ValueError(f"{text!r} carries a build number; expected X.Y.Z, e.g. '1.2.3'")
    return OsVersion(int(major), int(minor), int(patch), int(n) if n else None)


def upstream_of(version: str) -> str:
    """The upstream part of a Debian version: `1:1.7.24~ds1-6+deb13u1` -> `1.7.24`."""
    version = version.split(":", 1)[-1]
    return re.split(r"[~+-]", version, maxsplit=1)[0]


def release_tuple(version: str) -> tuple[int, int, int] | None:
    """`1.35.8` -> (1, 35, 8); Debian versions by their upstream part; None if unparsable."""
    match = _RELEASE.match(upstream_of(version))
    if not match:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def minor_of(version: str) -> str | None:
    parsed = release_tuple(version)
    return f"{parsed[0]}.{parsed[1]}" if parsed else None
