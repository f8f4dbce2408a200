"""The build number is derived from the lock: same inputs, same N; changed inputs, next N."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.build import artifacts, elements, image
from builder.build.lock import inputs_digest, load_lock, lock_path, tree_digest
from builder.errors import HostbuildError
from builder.profile.versions import parse_os_version

V = parse_os_version("1.2.3")


def entry(version: str, inputs: str) -> dict[str, str]:
    return {"version": version, "inputs": inputs, "kubelet": "1.35.8"}


def test_first_build_is_one(tmp_path: Path) -> None:
    assert load_lock(tmp_path / "x.lock.json").build_number(V, "a") == 1


def test_same_inputs_same_number_changed_inputs_next(tmp_path: Path) -> None:
    lock = load_lock(tmp_path / "x.lock.json")
    lock.record(entry("1.2.3-1", "a"))
    lock.record(entry("1.2.3-2", "b"))
    again = load_lock(tmp_path / "x.lock.json")  # read back from disk: nothing kept in memory
    assert again.build_number(V, "a") == 1
    assert again.build_number(V, "b") == 2
    assert again.build_number(V, "c") == 3
    assert again.build_number(parse_os_version("1.2.4"), "a") == 1  # a new release starts at 1
    assert again.kubelet_of("1.2.3") == "1.35.8"
    assert again.releases() == ["1.2.3"]


def test_inputs_digest_is_canonical() -> None:
    assert inputs_digest({"a": 1, "b": [1, 2]}) == inputs_digest({"b": [1, 2], "a": 1})
    assert inputs_digest({"a": 1}) != inputs_digest({"a": 2})


def test_tree_digest_follows_content(tmp_path: Path) -> None:
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "f").write_text("one")
    first = tree_digest(tmp_path / "e")
    assert tree_digest(tmp_path / "e") == first
    (tmp_path / "e" / "f").write_text("two")
    assert tree_digest(tmp_path / "e") != first


def test_lock_path_next_to_profile() -> None:
    assert lock_path(Path("profiles/worker.yaml")) == Path("profiles/worker.lock.json")


def test_corrupt_lock_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.lock.json"
    path.write_text('{"builds": [{"version": "1.2.3", "inputs": "a"}]}')
    with pytest.raises(
        HostbuildError, match="not a hostbuild lock file: '1.2.3' has no build number"
    ):
        load_lock(path)


def test_build_number_covers_what_decides_the_image() -> None:
    """A changed element, template, artifact catalogue or renderer (which files the image gets)
    is a new build number: an image's version never names two different contents."""

    def covered(path: Path) -> bool:
        return any(
            path.resolve().is_relative_to(root.resolve()) for root in image.HOSTBUILD_SOURCES
        )

    assert covered(elements.ELEMENTS_DIR / "hostbuild-base")
    assert covered(elements.TEMPLATES / "node.service")
    assert covered(artifacts.CATALOGUE)
    assert covered(Path(elements.__file__))  # renders the image's files
    assert covered(
        Path(elements.__file__).parents[1] / "node" / "agent.py"
    )  # copied into the image


def test_a_rebuild_with_another_root_hash_fails_naming_both(tmp_path: Path) -> None:
    lock = load_lock(tmp_path / "x.lock.json")
    lock.record({**entry("1.2.3-1", "a"), "roothash": "11" * 32})
    again = load_lock(tmp_path / "x.lock.json")
    again.check_reproduced("1.2.3-1", "a", "11" * 32)  # reproduced: fine
    again.check_reproduced("1.2.3-2", "b", "22" * 32)  # another build: fine
    with pytest.raises(HostbuildError) as failed:
        again.check_reproduced("1.2.3-1", "a", "22" * 32)
    assert "11" * 32 in failed.value.message and "22" * 32 in failed.value.message
    assert "1.2.3-1" in failed.value.message


def test_builds_recorded_before_root_hashes_are_not_checked(tmp_path: Path) -> None:
    lock = load_lock(tmp_path / "x.lock.json")
    lock.record(entry("1.2.3-1", "a"))
    load_lock(tmp_path / "x.lock.json").check_reproduced("1.2.3-1", "a", "33" * 32)


def test_a_lock_that_is_a_directory_or_not_utf8_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(HostbuildError, match="not a hostbuild lock file: .*Is a directory"):
        load_lock(tmp_path)
    (tmp_path / "x.lock.json").write_bytes(b"\xff")
    with pytest.raises(HostbuildError, match="not a hostbuild lock file: 'utf-8' codec"):
        load_lock(tmp_path / "x.lock.json")
