"""The updater on a node whose firmware enforces Secure Boot: a UKI the firmware would refuse."""

from __future__ import annotations

import dataclasses
import json
import struct
import uuid
from pathlib import Path

import pytest

from builder.node import updatecli
from builder.node.authenticode import EFI_CERT_X509
from builder.node.bootsecurity import EFI_GLOBAL_VARIABLE, IMAGE_SECURITY_DATABASE
from tests.unit.sbkeys import keys, other_keys
from tests.unit.test_authenticode import TREE, der, sign
from tests.unit.test_authenticode import unsigned_pe as unsigned_systemd_boot
from tests.unit.test_update_apply import NEW, Setup, setup
from tests.unit.updatefakes import IMAGE, make_image

__all__ = ["keys", "other_keys", "setup"]  # the fixtures

ATTRIBUTES = struct.pack("<I", 0x27)  # non-volatile, boot and runtime access, time-authenticated


def unsigned_pe(padding: int = 4096) -> bytes:
    """A PE32+ header with 16 data directories, all empty (no certificate table), then padding."""
    coff = struct.pack("<HHIIIHH", 0x8664, 0, 0, 0, 0, 240, 0x22)
    optional = struct.pack("<H", 0x20B) + bytes(106) + struct.pack("<I", 16) + bytes(16 * 8)
    return (
        b"MZ" + bytes(0x3A) + struct.pack("<I", 0x40) + b"PE\0\0" + coff + optional + bytes(padding)
    )


def efivars(root: Path, secure_boot: int, db_certificate: bytes) -> None:
    directory = root / "sys/firmware/efi/efivars"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"SecureBoot-{EFI_GLOBAL_VARIABLE}").write_bytes(
        struct.pack("<I", 6) + bytes([secure_boot])
    )
    entry = uuid.uuid4().bytes_le + db_certificate
    signature_list = EFI_CERT_X509.bytes_le + struct.pack("<III", 28 + len(entry), 0, len(entry))
    (directory / f"db-{IMAGE_SECURITY_DATABASE}").write_bytes(ATTRIBUTES + signature_list + entry)


def test_an_unsigned_uki_is_rejected_before_anything_is_written(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = setup.fake
    setup.publish(dataclasses.replace(make_image("0.1.0-3"), uki=unsigned_pe()))
    efivars(fake.root, 1, b"\x30\x82\x01\x00 the fleet's db certificate")
    ukis, other_slot = fake.ukis(), fake.partition(4)["name"]
    assert updatecli.main(["apply", "--json"], fake.node) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["result"], report["kind"]) == ("error", "rejected")
    assert report["detail"] == (
        f"{IMAGE}/0.1.0-3/uki.zst: the UKI is not signed, and this node's firmware enforces "
        "Secure Boot, not staged"
    )
    # nothing was touched: no new UKI, the other slot (and its UKI) as they were
    assert fake.ukis() == ukis and f"{NEW}+3.efi" not in ukis
    assert fake.partition(4)["name"] == other_slot
    assert [c for c in fake.commands() if c.startswith("zstd")] == [
        f"zstd {IMAGE}%2F0.1.0-3%2Fuki.zst"
    ]
    state = setup.state()
    assert state["staged"] is None and state["writing"] is None
    assert state["last_apply"]["kind"] == "rejected"
    assert updatecli.main(["status"], fake.node) == 1
    assert "error (rejected)" in capsys.readouterr().out


def test_with_secure_boot_off_the_uki_is_not_checked(setup: Setup) -> None:
    fake = setup.fake
    setup.publish(dataclasses.replace(make_image("0.1.0-3"), uki=unsigned_pe()))
    efivars(fake.root, 0, b"\x30\x82\x01\x00 the fleet's db certificate")
    assert setup.apply()["result"] == "staged"
    assert f"{NEW}+3.efi" in fake.ukis()
    # one decompression of the UKI: the one onto the ESP
    assert [c for c in fake.commands() if c.endswith("uki.zst")] == [
        f"zstd {IMAGE}%2F0.1.0-3%2Fuki.zst"
    ]


def test_a_uki_signed_by_a_db_certificate_is_staged_and_by_another_fleet_rejected(
    setup: Setup, keys: Path, other_keys: Path, tmp_path: Path
) -> None:
    if TREE is None:
        pytest.skip("no complete tools tree in the cache")
    source = unsigned_systemd_boot(TREE, tmp_path / "in")
    (tmp_path / "out").mkdir()
    theirs = sign(TREE, other_keys, source, tmp_path / "out" / "theirs.efi")
    ours = sign(TREE, keys, source, tmp_path / "out" / "ours.efi")
    fake = setup.fake
    efivars(fake.root, 1, der(keys))
    setup.publish(dataclasses.replace(make_image("0.1.0-3"), uki=theirs))
    assert "is not signed by a certificate in the firmware's db" in setup.refused("rejected")
    assert f"{NEW}+3.efi" not in fake.ukis()
    setup.publish(dataclasses.replace(make_image("0.1.0-4"), uki=ours))
    assert setup.apply()["result"] == "staged"
    assert (fake.esp / f"EFI/Linux/{IMAGE}_0.1.0-4+3.efi").read_bytes() == ours
