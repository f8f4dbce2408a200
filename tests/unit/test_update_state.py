"""The updater's record: atomic writes, and what a reboot did with a staged version."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from builder.node.updatestate import (
    BootEntry,
    State,
    load_state,
    reconcile,
    save_state,
    write_atomic,
)

IMAGE = "worker-standin"


def staged(version: str = "0.1.0-3", on: str = "0.1.0-2", boot: str = "boot-1") -> State:
    return State(staged={"version": version, "from": on, "boot_id": boot, "roothash": "ab" * 32,
                         "digest": "sha256:" + "cd" * 32, "slot": "b"})  # fmt: skip


def entries(*names: str) -> dict[str, BootEntry]:
    found = {}
    for name in names:
        m = re.match(r"^.+_(?P<version>[^+]+)(?:\+(?P<left>\d+)(?:-(?P<done>\d+))?)?\.efi$", name)
        assert m is not None
        left, done = m.group("left"), m.group("done")
        found[m.group("version")] = BootEntry(
            m.group("version"), name, int(left) if left else None, int(done) if done else None
        )
    return found


def test_same_boot_nothing_changes() -> None:
    state = staged()
    assert reconcile(state, "0.1.0-2", "boot-1", entries(f"{IMAGE}_0.1.0-3+3.efi")) == []
    assert state.staged is not None and state.failed is None


def test_booted_into_the_staged_version_is_a_success() -> None:
    state = staged()
    events = reconcile(state, "0.1.0-3", "boot-2", entries(f"{IMAGE}_0.1.0-3+2-1.efi"))
    assert events == ["booted into the staged version 0.1.0-3 (its entry is not blessed yet)"]
    assert state.staged is None and not state.failures()
    assert state.booted is not None and state.booted["blessed"] is False
    state = staged()
    reconcile(state, "0.1.0-3", "boot-2", entries(f"{IMAGE}_0.1.0-3.efi"))
    assert state.booted is not None and state.booted["blessed"] is True


def test_back_on_the_old_version_after_a_reboot_the_staged_one_failed() -> None:
    state = staged()
    events = reconcile(
        state, "0.1.0-2", "boot-2", entries(f"{IMAGE}_0.1.0-2.efi", f"{IMAGE}_0.1.0-3+0-3.efi")
    )
    reason = (
        "after a reboot the node runs 0.1.0-2, not 0.1.0-3: boot counting fell back "
        f"(entry {IMAGE}_0.1.0-3+0-3.efi: no tries left)"
    )
    assert events == [f"0.1.0-3 failed: {reason}"]
    assert state.staged is None
    failure = state.failures()["0.1.0-3"]
    assert failure["reason"] == reason
    assert failure["digest"] == "sha256:" + "cd" * 32 and failure["roothash"] == "ab" * 32


@pytest.mark.parametrize(
    ("names", "how"),
    [
        ((), "its boot entry is gone"),
        (None, "the ESP could not be read to tell how"),
        ((f"{IMAGE}_0.1.0-3+1-2.efi",),
         f"entry {IMAGE}_0.1.0-3+1-2.efi still had tries left: another entry was chosen"),
    ],
)  # fmt: skip
def test_back_on_the_old_version_without_a_spent_entry_still_failed(
    names: tuple[str, ...] | None, how: str
) -> None:
    state = staged()
    reconcile(state, "0.1.0-2", "boot-2", None if names is None else entries(*names))
    assert state.failures()["0.1.0-3"]["reason"].endswith(how)


def test_a_third_version_forgets_what_was_staged() -> None:
    state = staged()
    events = reconcile(state, "0.2.0-1", "boot-2", {})
    assert state.staged is None and not state.failures()
    assert events == [
        "the node runs 0.2.0-1, neither the staged 0.1.0-3 nor 0.1.0-2 it was staged on: "
        "the staged version is forgotten"
    ]


def test_an_entry_without_tries_left_is_a_failure_even_if_not_staged_here() -> None:
    state = State()
    events = reconcile(
        state, "0.1.0-2", "boot-2", entries(f"{IMAGE}_0.1.0-2.efi", f"{IMAGE}_9.9.9-1+0-1.efi")
    )
    assert list(state.failures()) == ["9.9.9-1"]
    assert events == [
        f"9.9.9-1 failed: boot entry {IMAGE}_9.9.9-1+0-1.efi has no tries left: it never "
        "reached a good boot"
    ]
    assert reconcile(state, "0.1.0-2", "boot-3", entries(f"{IMAGE}_9.9.9-1+0-1.efi")) == []


def test_the_running_entry_is_never_failed() -> None:
    # a running entry at +0-3 is on its last try now, the health gate decides
    state = State()
    assert reconcile(state, "0.1.0-2", "boot-2", entries(f"{IMAGE}_0.1.0-2+0-3.efi")) == []
    assert not state.failures()


def test_state_round_trips_and_failures_survive(tmp_path: Path) -> None:
    path = tmp_path / "update" / "state.json"
    assert load_state(path) == State()
    state = staged()
    reconcile(state, "0.1.0-2", "boot-2", {})
    save_state(path, state)
    again = load_state(path)
    assert again.failures() == state.failures() and again.staged is None
    assert json.loads(path.read_text())["format"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temporary left


def test_an_unreadable_state_is_kept_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json")
    assert load_state(path) == State()
    assert (tmp_path / "state.json.bad").read_text() == "{not json"
    path.write_text('{"format": 99}')
    assert load_state(path) == State()


def test_a_failed_write_keeps_the_previous_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:  # fmt: skip
    path = tmp_path / "state.json"
    write_atomic(path, b"old\n")

    def full(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.write", full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, b"new\n")
    monkeypatch.undo()
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
