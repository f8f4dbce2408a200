"""Secure Boot state and TPM PCRs as `hostbuild-node status` reads them, from a fake root."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from builder.node import agent
from builder.node.bootsecurity import (
    EFI_GLOBAL_VARIABLE,
    boot_security,
    describe,
    read_efi_flag,
    secure_boot_state,
    tpm_state,
)

# efivarfs attributes: non-volatile, boot service and runtime access (SecureBoot and SetupMode
# are volatile in the firmware, but efivarfs shows whatever attributes they carry)
ATTRIBUTES = struct.pack("<I", 0x6)


def efivar(root: Path, name: str, value: bytes) -> None:
    path = root / "sys/firmware/efi/efivars" / f"{name}-{EFI_GLOBAL_VARIABLE}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(ATTRIBUTES + value)


def tpm(root: Path, pcrs: dict[int, str], version: str | None = "2") -> None:
    device = root / "sys/class/tpm/tpm0"
    (device / "pcr-sha256").mkdir(parents=True, exist_ok=True)
    if version is not None:
        (device / "tpm_version_major").write_text(f"{version}\n")
    for index, value in pcrs.items():
        (device / "pcr-sha256" / str(index)).write_text(value.upper() + "\n")


@pytest.mark.parametrize(
    ("secure", "setup", "state"),
    [(b"\x01", b"\x00", "enabled"), (b"\x00", b"\x00", "disabled"), (b"\x00", b"\x01", "setup")],
)
def test_secure_boot_states(tmp_path: Path, secure: bytes, setup: bytes, state: str) -> None:
    efivar(tmp_path, "SecureBoot", secure)
    efivar(tmp_path, "SetupMode", setup)
    report = secure_boot_state(tmp_path)
    assert (report["state"], report["secure_boot"], report["setup_mode"]) == (
        state, secure[0], setup[0],
    )  # fmt: skip


def test_the_attribute_bytes_are_not_the_value(tmp_path: Path) -> None:
    """The first four bytes are attributes: 0x06 there must not read as "enabled"."""
    efivar(tmp_path, "SecureBoot", b"\x00")
    assert read_efi_flag(tmp_path, "SecureBoot") == 0
    efivar(tmp_path, "SetupMode", b"")  # attributes only: no value
    assert read_efi_flag(tmp_path, "SetupMode") is None
    assert read_efi_flag(tmp_path, "AuditMode") is None


def test_without_uefi_or_efivarfs_or_secure_boot(tmp_path: Path) -> None:
    assert secure_boot_state(tmp_path)["state"] == "no-uefi"
    (tmp_path / "sys/firmware/efi").mkdir(parents=True)
    assert secure_boot_state(tmp_path)["state"] == "unknown"
    (tmp_path / "sys/firmware/efi/efivars").mkdir()
    assert secure_boot_state(tmp_path) == {
        "state": "unsupported", "secure_boot": None, "setup_mode": None,
        "detail": "the firmware has no SecureBoot variable",
    }  # fmt: skip


def test_pcrs_are_read_lowercase_in_order_and_only_0_to_15(tmp_path: Path) -> None:
    values = {i: f"{i:02x}" * 32 for i in range(24)}
    tpm(tmp_path, values)
    report = tpm_state(tmp_path)
    assert report["present"] is True and report["version"] == "2" and report["bank"] == "sha256"
    assert report["pcrs"] == {str(i): values[i] for i in range(16)}
    lines = describe(boot_security(tmp_path))
    assert lines[1] == "tpm:      TPM 2, PCRs (sha256):"
    assert lines[2] == f"   0: {'00' * 32}" and lines[17] == f"  15: {'0f' * 32}"
    assert len(lines) == 18


def test_no_tpm_and_a_tpm_without_pcrs_in_sysfs(tmp_path: Path) -> None:
    assert tpm_state(tmp_path) == {"present": False, "version": None, "bank": None, "pcrs": {}}
    assert describe(boot_security(tmp_path))[1] == "tpm:      none"
    tpm(tmp_path, {}, version=None)
    assert tpm_state(tmp_path)["present"] is True
    assert describe(boot_security(tmp_path))[1] == "tpm:      TPM ?, no sha256 PCRs in sysfs"


def test_status_reports_secure_boot_and_pcrs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    run = root / "run/hostbuild"
    run.mkdir(parents=True)
    (run / "node-status.json").write_text(json.dumps({
        "ok": True, "source": None, "kubelet": "waiting", "time": "2026-12-01T14:00:00Z",
        "errors": [], "warnings": [], "outputs": [], "restarted": [],
    }))  # fmt: skip
    efivar(root, "SecureBoot", b"\x01")
    efivar(root, "SetupMode", b"\x00")
    tpm(root, {11: "ab" * 32})
    assert agent.main(["--root", os.fspath(root), "status"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[5:] == [
        "secure boot: enabled (the firmware verified the boot loader and the UKI with db)",
        "tpm:      TPM 2, PCRs (sha256):",
        f"  11: {'ab' * 32}",
    ]
    assert agent.main(["--root", os.fspath(root), "status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["kubelet"] == "waiting"
    assert report["secure_boot"]["state"] == "enabled"
    assert report["tpm"]["pcrs"] == {"11": "ab" * 32}
