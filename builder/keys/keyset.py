"""A Secure Boot key set in one directory: PK, KEK, db (X.509 + private key) and a PCR key pair.

The `cryptography` library makes the keys and certificates (already a dependency through
securesystemslib), so no openssl command line or configuration file is involved.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from builder.errors import HostbuildError

ROLES = ("PK", "KEK", "db")
PCR_PRIVATE = "pcr-private.pem"
PCR_PUBLIC = "pcr-public.pem"
README = "README.txt"
RSA_BITS = 2048  # what UEFI firmware must support (and what systemd-measure signs with)
DEFAULT_DAYS = 3650


def cert_name(role: str) -> str:
    return f"{role}.crt"


def key_name(role: str) -> str:
    return f"{role}.key"


def keyset_files() -> list[str]:
    """Every file a complete key set holds, private keys included."""
    return [*(n for r in ROLES for n in (cert_name(r), key_name(r))), PCR_PRIVATE, PCR_PUBLIC]


@dataclass(frozen=True)
class KeySet:
    """What `init_keyset` wrote: the directory and the files, private ones marked."""

    directory: Path
    written: tuple[str, ...]
    imported: tuple[str, ...]

    def private(self) -> list[str]:
        return [n for n in self.written if n.endswith(".key") or n == PCR_PRIVATE]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str, key: rsa.RSAPrivateKey, issuer: x509.Certificate | None,
    issuer_key: rsa.RSAPrivateKey, days: int, ca: bool,
) -> x509.Certificate:  # fmt: skip
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    if not ca:  # db signs boot loaders and UKIs
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool) -> None:
    """Private files are created 0600 (never readable by others, not even for a moment)."""
    mode = 0o600 if private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)  # the umask may take bits away, never add them: exact modes
        f.write(data)


def _refuse_existing(directory: Path) -> None:
    present = [n for n in (*keyset_files(), README) if (directory / n).exists()]
    if present:
        raise HostbuildError(
            f"{directory} already holds a key set ({', '.join(present)}); refusing to overwrite it",
            hint="choose an empty directory; replacing PK, KEK or db means enrolling the new "
            "certificates on every machine",
        )


def init_keyset(
    directory: Path, organisation: str, days: int = DEFAULT_DAYS, existing: Path | None = None
) -> KeySet:
    """Make PK, KEK, db and a PCR key pair in `directory` (taking what `existing` holds).

    KEK is issued by PK and db by KEK, so the set reads as one chain; firmware trusts each db
    certificate by itself. From `existing`, a directory laid out like a key set, every file
    present is copied after checking that each private key matches its certificate; what is
    missing (a role's certificate and key, the PCR pair) is made anew.
    """
    if directory.exists():
        _refuse_existing(directory)
    imported = _read_existing(existing) if existing else {}
    directory.mkdir(parents=True, exist_ok=True)
    keys: dict[str, rsa.RSAPrivateKey | None] = {}
    certs: dict[str, x509.Certificate] = {}
    out: dict[str, tuple[bytes, bool]] = {}
    for role, parent in zip(ROLES, (None, "PK", "KEK"), strict=True):
        if cert_name(role) in imported:
            certs[role] = x509.load_pem_x509_certificate(imported[cert_name(role)])
            raw = imported.get(key_name(role))
            keys[role] = _load_rsa(raw) if raw else None
            continue
        key = _new_key()
        issuer_key = keys.get(parent) if parent else key
        issuer = certs[parent] if parent and issuer_key is not None else None
        cert = _certificate(
            f"{organisation} {role}", key, issuer, issuer_key or key, days, ca=role != "db"
        )
        keys[role], certs[role] = key, cert
        out[cert_name(role)] = (cert.public_bytes(serialization.Encoding.PEM), False)
        out[key_name(role)] = (_pem_key(key), True)
    if PCR_PUBLIC not in imported:
        pcr = _new_key()
        out[PCR_PRIVATE] = (_pem_key(pcr), True)
        public = pcr.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        out[PCR_PUBLIC] = (public, False)
    for name, data in imported.items():
        out[name] = (data, name.endswith(".key") or name == PCR_PRIVATE)
    for name, (data, private) in sorted(out.items()):
        _write(directory / name, data, private)
    _write(directory / README, readme(organisation).encode(), private=False)
    return KeySet(directory, tuple(sorted(out)), tuple(sorted(imported)))


def _load_rsa(data: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA key")
    return key


def _read_existing(source: Path) -> dict[str, bytes]:
    """The key set files of `source`, each parsed and each private key checked against its
    public half."""
    if not source.is_dir():
        raise HostbuildError(f"{source} is not a directory", hint="give a directory that holds "
                             f"some of {', '.join(keyset_files())}")  # fmt: skip
    found = {n: (source / n).read_bytes() for n in keyset_files() if (source / n).is_file()}
    problems: list[str] = []
    for role in ROLES:
        cert, key = found.get(cert_name(role)), found.get(key_name(role))
        if key is not None and cert is None:
            problems.append(f"{key_name(role)} without {cert_name(role)}")
        if cert is not None:
            problems += _check_pair(cert_name(role), cert, key_name(role), key)
    if (PCR_PRIVATE in found) != (PCR_PUBLIC in found):
        problems.append(f"{PCR_PRIVATE} and {PCR_PUBLIC} come together (one is missing)")
    elif PCR_PUBLIC in found:
        problems += _check_public(found[PCR_PUBLIC], found[PCR_PRIVATE])
    if problems or not found:
        raise HostbuildError(
            f"{source}: " + ("; ".join(problems) or "holds none of the key set's files"),
            hint=f"the files are named {', '.join(keyset_files())} (PEM)",
        )
    return found


def _check_pair(cert_file: str, cert: bytes, key_file: str, key: bytes | None) -> list[str]:
    try:
        certificate = x509.load_pem_x509_certificate(cert)
    except ValueError:
        return [f"{cert_file} is not a PEM X.509 certificate"]
    if key is None:
        return []
    try:
        private = _load_rsa(key)
    except (ValueError, TypeError):
        return [f"{key_file} is not an unencrypted PEM RSA private key"]
    if private.public_key() != certificate.public_key():
        return [f"{key_file} is not the private key of {cert_file}"]
    return []


def _check_public(public: bytes, private: bytes) -> list[str]:
    try:
        key = _load_rsa(private)
        if key.public_key() != serialization.load_pem_public_key(public):
            return [f"{PCR_PRIVATE} is not the private key of {PCR_PUBLIC}"]
    except (ValueError, TypeError):
        return [f"{PCR_PRIVATE} / {PCR_PUBLIC} are not a PEM RSA key pair"]
    return []


def readme(organisation: str) -> str:
    """Where each file of the set belongs (written as DIR/README.txt)."""
    return f"""Secure Boot key set of {organisation} (made by hostbuild keys init)

PK.crt / PK.key    Platform Key: owns the firmware's key database. PK.key is needed only to
                   replace KEK: keep it OFFLINE (a safe, an HSM), never on a build host.
KEK.crt / KEK.key  Key Exchange Key: signs updates of db and dbx. Keep KEK.key OFFLINE too.
db.crt / db.key    Signature database key: signs systemd-boot and every UKI at build time.
                   db.key lives on the build host (or in a PKCS#11 token): pass it to
                   hostbuild image with --db-key or HOSTBUILD_DB_KEY.
pcr-private.pem    Signs the UKI's TPM2 PCR 11 predictions at build time: pass it with
                   --pcr-key or HOSTBUILD_PCR_KEY. Nodes bind secrets to its public half.
pcr-public.pem     Its public half, embedded in every UKI (.pcrpkey).

Public files (*.crt, pcr-public.pem) go into the profile, e.g.:

  secure_boot:
    enabled: true
    pk: keys/PK.crt
    kek: keys/KEK.crt
    db: keys/db.crt
    pcr_public_key: keys/pcr-public.pem

and PK.crt, KEK.crt, db.crt are enrolled in the firmware's variable store (QEMU's, the AMI's
UefiData). Never commit a private key (*.key, pcr-private.pem): they are written mode 0600.
"""


def describe_files(directory: Path, names: Sequence[str]) -> list[str]:
    """`  PK.key (private, 0600)` lines for the CLI."""
    lines = []
    for name in names:
        mode = (directory / name).stat().st_mode & 0o777
        private = name.endswith(".key") or name == PCR_PRIVATE
        lines.append(f"  {name}{' (private' if private else ' (public'}, {mode:04o})")
    return lines
