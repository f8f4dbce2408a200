"""Secure Boot material for tests: key sets and secure-boot profiles (unit, build and VM tests
that sign an image), throw-away self-signed certificates, an empty edk2 store and AWS UefiData."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import struct
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from builder.build.toolstree import ToolsTree, host_is_new_enough
from builder.firmware.varstore import SecureBootKeys, write_variable_store
from builder.keys.keyset import init_keyset
from builder.keys.secureboot import SigningKeys
from tests.conftest import REPO

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hostbuild"
WORKER = REPO / "profiles" / "worker.yaml"


def make_keyset(directory: Path, organisation: str = "Test fleet") -> Path:
    init_keyset(directory, organisation, days=30)
    return directory


def signing_keys(keys: Path, pcr: bool = True) -> SigningKeys:
    """The private keys of a key set, as hostbuild image's --db-key and --pcr-key give them."""
    return SigningKeys(str(keys / "db.key"), str(keys / "pcr-private.pem") if pcr else None)


def secure_profile(
    directory: Path, keys: Path, *, pcr: bool = True, enabled: bool = True,
    extends: Path = WORKER, name: str = "secure",
) -> Path:  # fmt: skip
    """`directory/NAME.yaml` extending `extends`, naming copies of the key set's public files
    in `directory/keys/` by relative path."""
    (directory / "keys").mkdir(parents=True, exist_ok=True)
    for file in ("PK.crt", "KEK.crt", "db.crt", "pcr-public.pem"):
        (directory / "keys" / file).write_bytes((keys / file).read_bytes())
    pcr_line = "  pcr_public_key: keys/pcr-public.pem\n" if pcr else ""
    path = directory / f"{name}.yaml"
    path.write_text(
        f"extends: {extends}\n"
        "secure_boot:\n"
        f"  enabled: {'true' if enabled else 'false'}\n"
        "  pk: keys/PK.crt\n  kek: keys/KEK.crt\n  db: keys/db.crt\n" + pcr_line
    )
    return path


def find_tools_tree() -> ToolsTree | None:
    """The host on Debian 13+ with every tool, else a complete trixie tools tree already in the
    cache (never built by a unit test)."""
    if host_is_new_enough() and not ToolsTree(Path("/")).missing():
        return ToolsTree(Path("/"))
    for root in sorted((CACHE / "tools").glob("trixie-*"), reverse=True):
        tree = ToolsTree(root)
        if root.is_dir() and not tree.missing():
            return tree
    return None


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
