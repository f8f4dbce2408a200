"""Throw-away Secure Boot material for tests: self-signed certificates and an empty edk2 store."""

from __future__ import annotations

import datetime
import hashlib
import json
import struct
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from builder.firmware.varstore import SecureBootKeys, write_variable_store

NV_DATA = uuid.UUID("fff12b8d-7696-4c8b-a985-2747075b4f50")  # edk2's NV variable volume
AUTH_VARS = uuid.UUID("aaf32c78-947b-439a-a180-2e144ec37792")  # authenticated variable store


def make_certificate(path: Path, name: str, pem: bool = True) -> Path:
    """A self-signed certificate called `name`, valid from a fixed date (deterministic store
    timestamps), written as PEM or DER."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    encoding = serialization.Encoding.PEM if pem else serialization.Encoding.DER
    path.write_bytes(certificate.public_bytes(encoding))
    return path


def make_keys(directory: Path, db: int = 1) -> SecureBootKeys:
    """PK, KEK and `db` db certificates (the second db one in DER) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    return SecureBootKeys(
        make_certificate(directory / "PK.crt", "test PK"),
        (make_certificate(directory / "KEK.crt", "test KEK"),),
        tuple(make_certificate(directory / f"db{i}.crt", f"test db {i}", pem=i == 0)
              for i in range(db)),
    )  # fmt: skip


def empty_edk2_store(path: Path, size: int = 0x40000) -> Path:
    """An empty edk2 variable volume as OVMF_VARS lays it out (firmware volume header, block
    map, authenticated variable store header, erased flash), for tests without the tools tree."""
    header_length = 0x48
    volume = bytes(16) + NV_DATA.bytes_le
    volume += struct.pack("<QLLHHHxB", size, 0x4856465F, 0x4FEFF, header_length, 0, 0, 2)
    volume += struct.pack("<LLLL", size // 0x1000, 0x1000, 0, 0)
    store_size = size - header_length
    volume += AUTH_VARS.bytes_le + struct.pack("<LBBHL", store_size, 0x5A, 0xFE, 0, 0)
    path.write_bytes(volume + b"\xff" * (size - len(volume)))
    return path


def fingerprint(path: Path) -> str:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def mark_signed(build: Path, keys: SecureBootKeys | None = None) -> Path:
    """Make a build's manifest say its UKIs are signed for Secure Boot, as the image build
    records it (secure_boot.certificates.{pk,kek,db}.sha256 when `keys` are given)."""
    path = build / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["secure_boot"] = {"signed": True}
    if keys is not None:
        manifest["secure_boot"]["certificates"] = {
            name: {"sha256": fingerprint(cert), "subject": f"CN=test {name}"}
            for name, cert in (("pk", keys.pk), ("kek", keys.kek[0]), ("db", keys.db[0]))
        }
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return build


def make_uefi_data(directory: Path, keys: SecureBootKeys | None = None) -> Path:
    """An AWS UefiData file enrolling `keys` (default: throw-away ones), by virt-firmware."""
    keys = keys or make_keys(directory / "keys")
    write_variable_store(keys, directory / "no-template", aws_output=directory / "uefi-data.b64")
    return directory / "uefi-data.b64"
