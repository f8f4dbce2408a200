"""The node agent's commands: waiting for udev's coldplug before looking for a late partition."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.node import command


def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trigger_after: int) -> Path:
    """systemctl says the coldplug trigger ran on its `trigger_after`-th question; udevadm logs."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(
        f'#!/bin/sh\necho "systemctl $*" >> {log}\n'
        f'[ "$(grep -c systemctl {log})" -ge {trigger_after} ]\n'
    )
    (bin_dir / "udevadm").write_text(f'#!/bin/sh\necho "udevadm $*" >> {log}\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_settle_waits_for_the_coldplug_then_udevs_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = fake_tools(tmp_path, monkeypatch, trigger_after=3)
    command.settle(30, poll=0.01)
    calls = log.read_text().splitlines()
    assert calls[:3] == ["systemctl is-active --quiet systemd-udev-trigger.service"] * 3
    assert calls[3].startswith("udevadm settle --timeout=")
    assert len(calls) == 4


def test_settle_gives_up_when_the_coldplug_never_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = fake_tools(tmp_path, monkeypatch, trigger_after=10**6)
    with pytest.raises(command.CommandFailed, match="coldplug did not run within 0.1 s"):
        command.settle(0.1, poll=0.01)
    assert "udevadm" not in log.read_text()


def test_stream_yields_stdout_and_fails_on_a_nonzero_exit() -> None:
    with command.stream(["sh", "-c", "head -c 3000000 /dev/zero; echo done >&2"]) as out:
        assert sum(len(c) for c in iter(lambda: out.read(1 << 16), b"")) == 3_000_000
    with (
        pytest.raises(command.CommandFailed, match=r"exited 3: broken"),
        command.stream(["sh", "-c", "echo broken >&2; exit 3"]) as out,
    ):
        out.read()
    with (
        pytest.raises(command.CommandFailed, match="no-such-program"),
        command.stream(["no-such-program"]),
    ):
        pass


def test_stream_kills_the_command_when_the_reader_gives_up() -> None:
    with pytest.raises(ValueError, match="enough"), command.stream(["yes"]) as out:
        out.read(10)
        raise ValueError("enough")
