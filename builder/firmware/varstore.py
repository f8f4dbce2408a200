"""UEFI variable stores with the fleet's Secure Boot keys enrolled, through virt-firmware.

One `virt-fw-vars` run writes both the edk2 store QEMU boots (OVMF_VARS layout) and the AWS
UefiData blob RegisterImage takes, so a VM and an EC2 instance enforce the same PK, KEK and db.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import struct
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from builder.errors import HostbuildError
from builder.run import run

logger = logging.getLogger(__name__)

# The owner GUID (SignatureOwner) of every certificate hostbuild enrols. Fixed, so a store is
# the same bytes for the same certificates; it only tells who added an entry (the firmware checks
# signatures against the certificate, never against the owner). Made once with uuid4 for hostbuild.
OWNER_GUID = "5f0df05e-e956-42e1-8b40-5b2dd6449ab2"
# EFI_GLOBAL_VARIABLE: PK, KEK, SecureBoot, SetupMode; db and dbx use EFI_IMAGE_SECURITY_DATABASE
GLOBAL_GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
X509_GUID = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")  # EFI_CERT_X509_GUID entries
AWS_MAGIC = b"AMZNUEFI"  # the first 8 bytes of a decoded UefiData blob (little-endian magic)
UEFI_DATA_MAX = 64000  # RegisterImage's limit on UefiData (base64 characters)


@dataclass(frozen=True)
class SecureBootKeys:
    """The public half of a Secure Boot key set: one PK, then KEK and db certificates.

    Paths to X.509 certificates (PEM or DER); the private keys are never needed here.
    """

    pk: Path
    kek: tuple[Path, ...]
    db: tuple[Path, ...]

    @classmethod
    def of(cls, pk: Path, kek: Path | Sequence[Path], db: Path | Sequence[Path]) -> SecureBootKeys:
        """From single paths or lists of them."""
        return cls(pk, _paths(kek), _paths(db))

    def named(self) -> list[tuple[str, Path]]:
        return [("PK", self.pk), *(("KEK", p) for p in self.kek), *(("db", p) for p in self.db)]


def _paths(paths: Path | Sequence[Path]) -> tuple[Path, ...]:
    return (paths,) if isinstance(paths, Path) else tuple(paths)


def check_certificates(keys: SecureBootKeys) -> None:
    """Refuse a missing or non-certificate file before virt-firmware sees it."""
    if not keys.kek or not keys.db:
        missing = "KEK" if not keys.kek else "db"
        raise HostbuildError(
            f"no {missing} certificate given: Secure Boot needs a PK, a KEK and a db certificate",
            hint="'hostbuild keys init DIR' makes a set (PK.crt, KEK.crt, db.crt)",
        )
    for name, path in keys.named():
        try:
            data = path.read_bytes()
        except OSError as e:
            raise HostbuildError(
                f"cannot read the {name} certificate {os.fspath(path)!r}: {e.strerror}",
                hint="give the path of an X.509 certificate (PEM or DER)",
            ) from None
        try:
            load_certificate(data)
        except ValueError:
            raise HostbuildError(
                f"the {name} certificate {os.fspath(path)!r} is not an X.509 certificate",
                hint="give a PEM ('-----BEGIN CERTIFICATE-----') or DER certificate, "
                "not a private key or a request",
            ) from None


def load_certificate(data: bytes) -> x509.Certificate:
    """A PEM or DER certificate; ValueError otherwise."""
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def write_variable_store(
    keys: SecureBootKeys, template: Path, output: Path | None = None,
    aws_output: Path | None = None,
) -> None:  # fmt: skip
    """Enrol `keys` with Secure Boot on into a copy of `template` (an empty OVMF_VARS) at `output`
    and/or as an AWS UefiData file (base64 text) at `aws_output`.

    SecureBootEnable is set and CustomMode cleared; with a PK the firmware leaves setup mode, so
    it enforces db from the first boot. The output depends only on the inputs (the variables'
    timestamps come from the certificates).
    """
    if output is None and aws_output is None:
        raise ValueError("write_variable_store needs an output, an aws_output or both")
    check_certificates(keys)
    if output is not None and not template.is_file():
        raise HostbuildError(
            f"no firmware variable template {os.fspath(template)!r}",
            hint="it is OVMF_VARS_4M.fd of the tools tree (builder.build.toolstree.OVMF_VARS)",
        )
    argv: list[str | os.PathLike[str]] = [sys.executable, "-m", "virt.firmware.vars"]
    argv += ["--loglevel", "warning", "--set-pk", OWNER_GUID, keys.pk]
    for path in keys.kek:
        argv += ["--add-kek", OWNER_GUID, path]
    for path in keys.db:
        argv += ["--add-db", OWNER_GUID, path]
    argv.append("--secure-boot")
    if output is not None:
        argv += ["--input", template, "--output", output]
    if aws_output is not None:
        argv += ["--output-aws", aws_output]
    written = [path for path in (output, aws_output) if path is not None]
    for path in written:
        path.parent.mkdir(parents=True, exist_ok=True)
    run(argv)
    where = ", ".join(os.fspath(path) for path in written)
    logger.info("enrolled PK, %d KEK, %d db certificates in %s", len(keys.kek), len(keys.db), where)


def read_uefi_data(path: Path) -> str:
    """The UefiData of an AWS variable store file, checked: base64 of an AMZNUEFI store."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise HostbuildError(
            f"cannot read the UefiData file {os.fspath(path)!r}: {e.strerror}",
            hint="write it with 'hostbuild firmware vars --aws-output FILE'",
        ) from None
    text = data.decode("ascii", errors="replace").strip()
    try:
        blob = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):  # ValueError: not ASCII
        blob = b""
    if not blob.startswith(AWS_MAGIC):
        raise HostbuildError(
            f"{os.fspath(path)!r} is not an AWS UEFI variable store (base64 of an "
            f"{AWS_MAGIC.decode()} blob)",
            hint="write it with 'hostbuild firmware vars --aws-output FILE' (virt-fw-vars "
            "--output-aws), not the edk2 store QEMU boots",
        )
    if len(text) > UEFI_DATA_MAX:
        raise HostbuildError(
            f"{os.fspath(path)!r}: {len(text)} characters of UefiData, RegisterImage takes at "
            f"most {UEFI_DATA_MAX}",
            hint="enrol fewer or smaller certificates",
        )
    return text


def read_certificates(store: Path) -> dict[str, list[str]]:
    """SHA-256 fingerprints (over DER) of the X.509 certificates in PK, KEK and db of an edk2 or
    AWS store, as virt-firmware reads it back: what a machine booted with it trusts."""
    argv: list[str | os.PathLike[str]] = [sys.executable, "-m", "virt.firmware.vars",
                                          "--loglevel", "error", "--input", store,
                                          "--output-json", "-"]  # fmt: skip
    variables = {v["name"]: v for v in json.loads(run(argv).stdout)["variables"]}
    found: dict[str, list[str]] = {}
    for name in ("PK", "KEK", "db"):
        data = bytes.fromhex(variables[name]["data"]) if name in variables else b""
        found[name] = [hashlib.sha256(der).hexdigest() for der in x509_entries(data)]
    return found


def x509_entries(data: bytes) -> list[bytes]:
    """The DER certificates of an EFI_SIGNATURE_LIST sequence (hash entries are skipped)."""
    entries, offset = [], 0
    while offset + 28 <= len(data):
        kind = uuid.UUID(bytes_le=data[offset : offset + 16])
        list_size, header_size, entry_size = struct.unpack_from("<LLL", data, offset + 16)
        if list_size < 28 or entry_size <= 16:
            break  # malformed: nothing more can be read safely
        at = offset + 28 + header_size
        while kind == X509_GUID and at + entry_size <= offset + list_size:
            entries.append(data[at + 16 : at + entry_size])  # past the owner GUID
            at += entry_size
        offset += list_size
    return entries
