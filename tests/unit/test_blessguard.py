"""The bless guard: systemd-bless-boot blesses only the entry that booted."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.node import blessguard
from builder.node.blessguard import LOADER, counted_is_booted, entry_id, main


def set_var(root: Path, name: str, value: str) -> None:
    efivars = root / "sys/firmware/efi/efivars"
    efivars.mkdir(parents=True, exist_ok=True)
    data = b"\x06\x00\x00\x00" + (value + "\0").encode("utf-16-le")
    (efivars / f"{name}-{LOADER}").write_bytes(data)


def test_entry_ids_drop_the_tries_counter() -> None:
    assert entry_id("\\EFI\\Linux\\worker_9.9.9-3+0-1.efi") == "worker_9.9.9-3.efi"
    assert entry_id("\\EFI\\Linux\\worker_0.1.0-1+3.efi") == "worker_0.1.0-1.efi"
    assert entry_id("worker_0.1.0-1.efi") == "worker_0.1.0-1.efi"
    assert entry_id("/loader/entries/a+2.conf") == "a.conf"


def test_a_counted_entry_that_booted_is_blessed(tmp_path: Path) -> None:
    set_var(tmp_path, "LoaderBootCountPath", "\\EFI\\Linux\\worker_0.2.0-1+2-1.efi")
    set_var(tmp_path, "LoaderEntrySelected", "worker_0.2.0-1.efi")
    assert counted_is_booted(tmp_path)[0]
    assert main([], tmp_path) == 0


def test_no_count_nothing_to_guard(tmp_path: Path) -> None:
    assert counted_is_booted(tmp_path) == (True, "this boot counted no try")
    set_var(tmp_path, "LoaderEntrySelected", "worker_0.1.0-1.efi")
    assert main([], tmp_path) == 0


def test_a_refused_entry_is_marked_bad_and_nothing_blessed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The firmware refused the counted UKI; a second systemd-boot run booted the blessed one."""
    set_var(tmp_path, "LoaderBootCountPath", "\\EFI\\Linux\\worker_9.9.9-3+0-1.efi")
    set_var(tmp_path, "LoaderEntrySelected", "worker_0.1.0-1.efi")
    ran: list[list[str]] = []

    def fake_run(argv: list[str], timeout: float = 30.0) -> str:
        ran.append(list(argv))
        return ""

    monkeypatch.setattr(blessguard, "run", fake_run)
    assert main([], tmp_path) == 1
    assert ran == [[blessguard.BLESS, "bad"]]
    out = capsys.readouterr().out
    assert "worker_9.9.9-3+0-1.efi was counted, but worker_0.1.0-1.efi booted" in out
