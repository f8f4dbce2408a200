"""The crash-safety test's failpoints: inert unless named, and then they stop for good."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.node import failpoints


class Stopped(Exception):
    pass


def test_an_unknown_point_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown failpoint 'rootwrite'"):
        failpoints.reached("rootwrite")


def test_points_do_nothing_unless_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(failpoints, "MARK", tmp_path / "mark")
    monkeypatch.setattr(failpoints, "ACTIVE", None)
    for point in failpoints.POINTS:
        failpoints.reached(point)
    monkeypatch.setattr(failpoints, "ACTIVE", "root-write")
    failpoints.reached("download")
    failpoints.reached("root-write", when=False)
    assert not (tmp_path / "mark").exists()


def test_the_named_point_makes_its_work_durable_marks_and_stops(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    done: list[str] = []

    def sleep(seconds: float) -> None:
        done.append("sleep")
        raise Stopped

    monkeypatch.setattr(failpoints, "MARK", tmp_path / "mark")
    monkeypatch.setattr(failpoints, "ACTIVE", "uki-copy")
    monkeypatch.setattr("builder.node.failpoints.time.sleep", sleep)
    with pytest.raises(Stopped):
        failpoints.reached("uki-copy", True, lambda: done.append("sync"))
    assert done == ["sync", "sleep"]
    assert (tmp_path / "mark").read_text() == "uki-copy\n"
