"""The stand-in artifacts are deterministic and their profile pins exactly their digests."""

from __future__ import annotations

from pathlib import Path

from builder.profile.components import upstream_artifacts
from builder.profile.load import load_profile
from tests.standin import PATHS, PROFILE, digests, make_mirror


def test_profile_pins_the_stand_in_digests() -> None:
    profile = load_profile(str(PROFILE))
    pinned = {a.name: a.sha256 for a in upstream_artifacts(profile)}
    assert pinned == digests()
    assert "STAND-IN" in profile.description


def test_mirror_holds_files_at_upstream_paths(tmp_path: Path) -> None:
    make_mirror(tmp_path)
    profile = load_profile(str(PROFILE))
    for artifact in upstream_artifacts(profile):
        assert artifact.url.endswith(PATHS[artifact.name])
        assert (tmp_path / PATHS[artifact.name]).is_file()


def test_stand_ins_never_referenced_from_profiles() -> None:
    for path in Path("profiles").glob("*.yaml"):
        text = path.read_text()
        assert "standin" not in text.lower() and "stand-in" not in text.lower(), path
