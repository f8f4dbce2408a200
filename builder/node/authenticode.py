"""Would this node's firmware load a UKI? A pre-check of its Authenticode signer against db/dbx.

Pure functions over bytes (stdlib only): the PE's certificate table (optional header data
directory 4, IMAGE_DIRECTORY_ENTRY_SECURITY) and the EFI_SIGNATURE_LIST structures of the
db and dbx variables. This is not a cryptographic verification (the firmware does that, at
boot): it accepts a UKI when the DER bytes of one of db's X.509 certificates occur inside its
PKCS#7 SignedData (sbsign embeds the signer certificate), which catches a build signed with a
db key the firmware does not trust (a key rotation gone wrong) before the UKI is staged.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

EFI_CERT_X509 = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_SHA256 = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")
SECURITY_DIRECTORY = 4
WIN_CERT_REVISION_2_0 = 0x0200
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002
PE32, PE32_PLUS = 0x10B, 0x20B


class FormatError(ValueError):
    """The bytes are not the structure they should be (said where)."""


@dataclass(frozen=True)
class SignatureList:
    """One EFI_SIGNATURE_LIST: its type and its entries' data (owner GUIDs dropped)."""

    type: uuid.UUID
    entries: tuple[bytes, ...]


def signatures(data: bytes) -> list[bytes]:
    """The PKCS#7 SignedData blobs of a PE's certificate table ([]: the PE is not signed)."""
    if len(data) < 0x40 or data[:2] != b"MZ":
        raise FormatError("not a PE file: no MZ header")
    (pe,) = struct.unpack_from("<I", data, 0x3C)
    if data[pe : pe + 4] != b"PE\0\0":
        raise FormatError(f"not a PE file: no PE signature at offset {pe:#x}")
    optional = pe + 24
    if len(data) < optional + 2:
        raise FormatError("truncated PE header")
    (magic,) = struct.unpack_from("<H", data, optional)
    if magic not in (PE32, PE32_PLUS):
        raise FormatError(f"unknown PE optional header magic {magic:#x}")
    count_at = optional + (92 if magic == PE32 else 108)
    if len(data) < count_at + 4:
        raise FormatError("truncated PE optional header")
    (count,) = struct.unpack_from("<I", data, count_at)
    if count <= SECURITY_DIRECTORY:
        return []
    offset, size = struct.unpack_from("<II", data, count_at + 4 + 8 * SECURITY_DIRECTORY)
    if offset == 0 or size == 0:
        return []
    if offset + size > len(data):
        raise FormatError(f"the certificate table ({offset:#x}+{size:#x}) is past the file's end")
    found, at, end = [], offset, offset + size
    while at + 8 <= end:
        length, revision, kind = struct.unpack_from("<IHH", data, at)
        if length < 8 or at + length > end:
            raise FormatError(f"a WIN_CERTIFICATE at {at:#x} has length {length}")
        if revision == WIN_CERT_REVISION_2_0 and kind == WIN_CERT_TYPE_PKCS_SIGNED_DATA:
            found.append(data[at + 8 : at + length])
        at += (length + 7) & ~7  # each entry is 8-byte aligned
    return found


def signature_lists(data: bytes) -> list[SignatureList]:
    """The EFI_SIGNATURE_LISTs of a db/dbx variable's data (without efivarfs' 4 attribute bytes)."""
    lists, at = [], 0
    while at < len(data):
        if at + 28 > len(data):
            raise FormatError(f"a truncated EFI_SIGNATURE_LIST at offset {at}")
        kind = uuid.UUID(bytes_le=data[at : at + 16])
        list_size, header_size, size = struct.unpack_from("<III", data, at + 16)
        if list_size < 28 + header_size or at + list_size > len(data) or size < 16:
            raise FormatError(
                f"an EFI_SIGNATURE_LIST at offset {at} has sizes {list_size}/{header_size}/{size}"
            )
        first = at + 28 + header_size
        entries = tuple(
            data[e + 16 : e + size] for e in range(first, at + list_size - size + 1, size)
        )
        lists.append(SignatureList(kind, entries))
        at += list_size
    return lists


def x509_certificates(lists: list[SignatureList]) -> list[bytes]:
    """The DER certificates of the EFI_CERT_X509 lists."""
    return [e for s in lists if s.type == EFI_CERT_X509 for e in s.entries]


def refusal(uki: bytes, db: list[SignatureList], dbx: list[SignatureList]) -> str | None:
    """Why a firmware with this db and dbx would refuse `uki` (None: it would load it, or there
    is no telling: a db of hashes only)."""
    try:
        signed = signatures(uki)
    except FormatError as e:
        return f"the UKI is not a valid PE file ({e})"
    if not signed:
        return "the UKI is not signed, and this node's firmware enforces Secure Boot"
    for certificate in x509_certificates(dbx):
        if any(certificate in blob for blob in signed):
            return "the UKI's signer certificate is revoked in the firmware's dbx"
    trusted = x509_certificates(db)
    if not trusted:
        return None
    if not any(c in blob for c in trusted for blob in signed):
        return (
            f"the UKI is not signed by a certificate in the firmware's db ({len(trusted)} "
            "X.509 certificates): the build's db key is not one this node trusts"
        )
    return None
