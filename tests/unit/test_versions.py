"""OS version strings and component version parsing."""

from __future__ import annotations

import pytest

from builder.profile.versions import (
    OsVersion,
    minor_of,
    parse_os_version,
    release_tuple,
    upstream_of,
)

FORMS = " (numbers without leading zeros, e.g. '1.2.3' or '1.2.3-4')"


def test_build_of_a_version() -> None:
    v = parse_os_version("1.2.3-4")
    assert v == OsVersion(1, 2, 3, 4)
    assert str(v) == "1.2.3-4" and v.release == "1.2.3"
    assert str(parse_os_version("1.2.3").with_build(7)) == "1.2.3-7"


def test_ordering() -> None:
    assert parse_os_version("1.2.10-1") > parse_os_version("1.2.9-3")
    assert parse_os_version("1.2.3-10") > parse_os_version("1.2.3-9")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.2", "'1.2' is not an OS version X.Y.Z or X.Y.Z-N" + FORMS),
        ("01.2.3", "'01.2.3' is not an OS version X.Y.Z or X.Y.Z-N" + FORMS),
        ("1.2.3-0", "'1.2.3-0' is not an OS version X.Y.Z or X.Y.Z-N" + FORMS),
        ("1.2.3-a", "'1.2.3-a' is not an OS version X.Y.Z or X.Y.Z-N" + FORMS),
        ("v1.2.3", "'v1.2.3' is not an OS version X.Y.Z or X.Y.Z-N" + FORMS),
    ],
)  # fmt: skip
def test_bad_forms_are_rejected_clearly(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_os_version(text)
    assert str(caught.value) == message


def test_build_number_required_or_forbidden() -> None:
    with pytest.raises(ValueError, match="has no build number; expected X.Y.Z-N"):
        parse_os_version("1.2.3", build=True)
    with pytest.raises(ValueError, match="carries a build number; expected X.Y.Z"):
        parse_os_version("1.2.3-4", build=False)


def test_component_versions() -> None:
    assert upstream_of("1.7.24~ds1-6+deb13u1") == "1.7.24"
    assert upstream_of("1:1.4.8-2") == "1.4.8"
    assert release_tuple("1.1.15+ds1-2+b4") == (1, 1, 15)
    assert release_tuple("1.35.8") == (1, 35, 8)
    assert minor_of("1.36.0") == "1.36"
    assert release_tuple("latest") is None
