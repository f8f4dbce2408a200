"""Mirrors come from the build host's apt configuration unless the profile names them."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.build.apt import Mirrors, host_mirrors, resolve_mirrors
from builder.errors import HostbuildError
from builder.profile.model import Debian


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_deb822_sources(tmp_path: Path) -> None:
    write(tmp_path, "sources.list.d/debian.sources", """\
Types: deb
# a comment
URIs: http://mirror.example.test/debian/
Suites: bookworm bookworm-updates
Components: main

Types: deb-src
URIs: http://src.example.test/debian
Suites: bookworm

Types: deb
URIs: http://mirror.example.test/debian-security
Suites: bookworm-security
Components: main
""")  # fmt: skip
    assert host_mirrors(tmp_path) == Mirrors(
        "http://mirror.example.test/debian", "http://mirror.example.test/debian-security"
    )


def test_one_line_sources_with_options(tmp_path: Path) -> None:
    write(tmp_path, "sources.list", """\
# deb http://commented.example.test/debian bookworm main
deb [signed-by=/usr/share/keyrings/x.gpg arch=amd64] http://one.example.test/debian bookworm main
deb http://sec.example.test/debian-security bookworm-security main
""")  # fmt: skip
    assert host_mirrors(tmp_path) == Mirrors(
        "http://one.example.test/debian", "http://sec.example.test/debian-security"
    )


def test_profile_overrides_host(tmp_path: Path) -> None:
    write(tmp_path, "sources.list", "deb http://host.example.test/debian bookworm main\n")
    debian = Debian(release="trixie", mirror="http://profile.example.test/debian/")
    assert resolve_mirrors(debian, tmp_path) == Mirrors("http://profile.example.test/debian", None)


def test_no_mirror_anywhere_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(HostbuildError, match="no Debian mirror"):
        resolve_mirrors(Debian(release="trixie"), tmp_path)


def test_sources_file_for_the_image() -> None:
    text = Mirrors("http://m.example.test/debian", "http://m.example.test/debian-security").sources(
        "trixie"
    )
    assert "URIs: http://m.example.test/debian\nSuites: trixie trixie-updates\n" in text
    assert "URIs: http://m.example.test/debian-security\nSuites: trixie-security\n" in text
    assert text.count("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg") == 2
