"""The Secure Boot pre-check of a UKI's signer (builder/node/authenticode.py), with a PE signed
by the tools tree's sbsign and db/dbx variables built as EFI_SIGNATURE_LIST bytes."""

from __future__ import annotations

import shutil
import struct
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from builder.build.toolstree import SYSTEMD_BOOT_EFI, ToolsTree
from builder.node.authenticode import (
    EFI_CERT_SHA256,
    EFI_CERT_X509,
    FormatError,
    refusal,
    signature_lists,
    signatures,
)
from tests.secureboot import find_tools_tree
from tests.unit.sbkeys import keys, other_keys

__all__ = ["keys", "other_keys"]  # the fixtures

TREE = find_tools_tree()
OWNER = uuid.UUID("11111111-2222-3333-4444-555555555555")


def signature_list(kind: uuid.UUID, *entries: bytes) -> bytes:
    """One EFI_SIGNATURE_LIST of equally sized entries (owner GUID + data), no header."""
    size = 16 + len(entries[0])
    body = b"".join(OWNER.bytes_le + e for e in entries)
    return kind.bytes_le + struct.pack("<III", 28 + len(body), 0, size) + body


def der(keys: Path) -> bytes:
    return x509.load_pem_x509_certificate((keys / "db.crt").read_bytes()).public_bytes(Encoding.DER)


def unsigned_pe(tools: ToolsTree, directory: Path) -> Path:
    """Debian's systemd-boot: a small, real, unsigned PE."""
    directory.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(tools.path(SYSTEMD_BOOT_EFI), directory / "boot.efi"))


def sign(tools: ToolsTree, keys: Path, source: Path, output: Path) -> bytes:
    tools.run(["sbsign", "--key", keys / "db.key", "--cert", keys / "db.crt", "--output",
               output, source], binds=[output.parent], readonly=[keys, source.parent])  # fmt: skip
    return output.read_bytes()


@pytest.fixture
def tools() -> ToolsTree:
    if TREE is None:
        pytest.skip("no complete tools tree in the cache")
    return TREE


def test_signature_lists_parse_x509_and_hash_lists_with_their_owners_dropped() -> None:
    certificate, digest = b"\x30\x82certificate", b"\xab" * 32
    data = signature_list(EFI_CERT_X509, certificate) + signature_list(
        EFI_CERT_SHA256, digest, b"\xcd" * 32
    )
    lists = signature_lists(data)
    assert [(s.type, s.entries) for s in lists] == [
        (EFI_CERT_X509, (certificate,)), (EFI_CERT_SHA256, (digest, b"\xcd" * 32)),
    ]  # fmt: skip
    # the GUID's mixed-endian layout: its first three fields little-endian
    assert data[:4] == bytes.fromhex("a159c0a5")
    with pytest.raises(FormatError, match="offset 0 has sizes"):
        signature_lists(data[:40])


def test_a_pe_signed_by_db_is_accepted_and_by_another_key_refused(
    tools: ToolsTree, keys: Path, other_keys: Path, tmp_path: Path
) -> None:
    source = unsigned_pe(tools, tmp_path / "in")
    (tmp_path / "out").mkdir()
    ours = sign(tools, keys, source, tmp_path / "out" / "ours.efi")
    theirs = sign(tools, other_keys, source, tmp_path / "out" / "theirs.efi")
    assert len(signatures(ours)) == 1 and signatures(source.read_bytes()) == []
    db = signature_lists(signature_list(EFI_CERT_X509, der(keys)))
    assert refusal(ours, db, []) is None
    refused = refusal(theirs, db, [])
    assert refused is not None and "not signed by a certificate in the firmware's db" in refused
    # a db trusting both fleets (during a key rotation) takes either
    both = db + signature_lists(signature_list(EFI_CERT_X509, der(other_keys)))
    assert refusal(theirs, both, []) is None


def test_an_unsigned_pe_is_refused_and_a_hash_only_db_cannot_tell(
    tools: ToolsTree, keys: Path, tmp_path: Path
) -> None:
    source = unsigned_pe(tools, tmp_path / "in")
    (tmp_path / "out").mkdir()
    db = signature_lists(signature_list(EFI_CERT_X509, der(keys)))
    assert refusal(source.read_bytes(), db, []) == (
        "the UKI is not signed, and this node's firmware enforces Secure Boot"
    )
    ours = sign(tools, keys, source, tmp_path / "out" / "ours.efi")
    hashes = signature_lists(signature_list(EFI_CERT_SHA256, b"\x00" * 32))
    assert refusal(ours, hashes, []) is None
    assert refusal(b"MZ" + b"\0" * 100, db, []) is not None  # not a PE: refused, said why


def test_a_signer_listed_in_dbx_is_refused_even_when_db_trusts_it(
    tools: ToolsTree, keys: Path, tmp_path: Path
) -> None:
    source = unsigned_pe(tools, tmp_path / "in")
    (tmp_path / "out").mkdir()
    ours = sign(tools, keys, source, tmp_path / "out" / "ours.efi")
    db = signature_lists(signature_list(EFI_CERT_X509, der(keys)))
    dbx = signature_lists(signature_list(EFI_CERT_SHA256, b"\x01" * 32))  # another hash: no match
    assert refusal(ours, db, dbx) is None
    dbx += signature_lists(signature_list(EFI_CERT_X509, der(keys)))
    assert refusal(ours, db, dbx) == "the UKI's signer certificate is revoked in the firmware's dbx"
