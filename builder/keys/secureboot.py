"""The profile's Secure Boot certificates and the build's private keys, checked against them.

`certificate_paths(profile)` gives a profile's PK/KEK/db, `build_certificates(output, manifest)`
those of a finished build (for the firmware variable store, the AMI's UefiData);
`prepare_signer` is the build's check, before any long step.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from builder.errors import HostbuildError
from builder.firmware import varstore
from builder.profile.model import Profile, SecureBoot

logger = logging.getLogger(__name__)

CERT_KEYS = ("pk", "kek", "db")
# The boot phases PCR 11 is predicted and signed for (systemd-measure's own default, written
# out so the manifest says what a node can bind to): the initrd, the switch to the root, sysinit
# and the booted system.
PHASES = (
    "enter-initrd",
    "enter-initrd:leave-initrd",
    "enter-initrd:leave-initrd:sysinit",
    "enter-initrd:leave-initrd:sysinit:ready",
)
KEYS_HINT = "hostbuild keys init DIR makes a key set; its README.txt says which file goes where"


@dataclass(frozen=True)
class Certificates:
    """The public halves a secure-boot profile names, as absolute host paths."""

    pk: Path
    kek: Path
    db: Path
    pcr_public_key: Path | None = None


@dataclass(frozen=True)
class SigningKeys:
    """The private keys a build was given: file paths, or engine key designations (PKCS#11
    URIs) with `engine`."""

    db_key: str | None = None
    pcr_key: str | None = None
    engine: str | None = None


@dataclass(frozen=True)
class Signer:
    """Checked keys for one build: db signs PE files, the PCR key signs PCR 11 predictions."""

    certificates: Certificates
    db_key: str
    pcr_key: Path | None = None
    engine: str | None = None

    def readonly(self) -> list[Path]:
        """Host directories the signing tools read (certificates and key files)."""
        files = [self.certificates.db, self.certificates.pcr_public_key, self.pcr_key]
        if self.engine is None:
            files.append(Path(self.db_key))
        return sorted({f.parent for f in files if f is not None})

    def staged(self, directory: Path) -> Signer:
        """This signer with its files copied into `directory` (made 0700; keys stay 0600).

        The tools tree binds the directories of the files a tool reads, and cannot bind one
        below /etc or /usr (where a build host may keep its keys): the copies, in the build's
        work directory, are removed with it.
        """
        directory.mkdir(mode=0o700, parents=True)
        directory.chmod(0o700)

        def copy(path: Path, name: str) -> Path:
            target = directory / name
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(path.read_bytes())
            return target

        c = self.certificates
        pcr_public = copy(c.pcr_public_key, "pcr-public.pem") if c.pcr_public_key else None
        certificates = Certificates(
            copy(c.pk, "PK.crt"), copy(c.kek, "KEK.crt"), copy(c.db, "db.crt"), pcr_public
        )
        db_key = self.db_key if self.engine else os.fspath(copy(Path(self.db_key), "db.key"))
        pcr_key = copy(self.pcr_key, "pcr-private.pem") if self.pcr_key else None
        return Signer(certificates, db_key, pcr_key, self.engine)

    def record(self) -> dict[str, Any]:
        """What the manifest says of the signing: certificate and key fingerprints."""
        return {"signed": True, **fingerprints(self.certificates),
                "pcr_phases": list(PHASES) if self.pcr_key else []}  # fmt: skip


EXPORT_DIR = "secure-boot"  # in a build's output directory: the public halves it was signed for
EXPORT_NAMES = {
    "pk": "PK.crt",
    "kek": "KEK.crt",
    "db": "db.crt",
    "pcr_public_key": "pcr-public.pem",
}


def export_certificates(certificates: Certificates, output: Path) -> dict[str, Path]:
    """PEM copies of the certificates (and the PCR public key) in `output`/secure-boot/, so a
    build's output directory is enough to enrol its keys (QEMU's variable store, an AMI)."""
    directory = output / EXPORT_DIR
    directory.mkdir()
    files = {}
    for key, name in EXPORT_NAMES.items():
        source = getattr(certificates, key)
        if source is None:
            continue
        if key == "pcr_public_key":
            data = load_public_key(source).public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        else:
            data = load_certificate(source).public_bytes(serialization.Encoding.PEM)
        (directory / name).write_bytes(data)
        files[key] = directory / name
    return files


def build_certificates(output: Path, manifest: dict[str, Any]) -> Certificates | None:
    """The certificates a build in `output` was signed for (None for an unsigned build), from
    its manifest's `secure_boot.files`; HostbuildError when one is missing or was changed."""
    record = manifest.get("secure_boot") or {}
    if not record.get("signed"):
        return None
    paths: dict[str, Path | None] = {}
    for key in EXPORT_NAMES:
        name = record.get("files", {}).get(key)
        paths[key] = output / name if name else None
    pk, kek, db = (paths[k] for k in CERT_KEYS)
    if pk is None or kek is None or db is None:
        raise HostbuildError(f"{output}: the manifest of a signed build names no certificates")
    certificates = Certificates(pk, kek, db, paths["pcr_public_key"])
    try:
        found = fingerprints(certificates)
    except (OSError, ValueError) as e:
        raise HostbuildError(f"{output}: a certificate of the build cannot be read: {e}") from None
    for key in ("certificates", "pcr_public_key"):
        if found[key] != record.get(key):
            raise HostbuildError(
                f"{output}/{EXPORT_DIR}: the files are not the ones the build was signed for "
                f"({key} fingerprints differ from the manifest's)",
                hint="use the output directory as hostbuild image wrote it",
            )
    return certificates


def resolve(secure_boot: SecureBoot, key: str) -> Path | None:
    """The host path of one file the section names: relative to the profile file that set it."""
    value = getattr(secure_boot, key)
    if value is None:
        return None
    path = Path(value)
    return path if path.is_absolute() else secure_boot.bases.get(key, Path()) / path


def certificate_paths(profile: Profile) -> Certificates | None:
    """PK, KEK, db certificates and the PCR public key of a profile with Secure Boot enabled
    (None without it)."""
    section = profile.secure_boot
    if section is None or not section.enabled:
        return None
    pk, kek, db = (resolve(section, k) for k in CERT_KEYS)
    assert pk is not None and kek is not None and db is not None  # required by the schema
    return Certificates(pk, kek, db, resolve(section, "pcr_public_key"))


def load_certificate(path: Path) -> x509.Certificate:
    """A PEM (or DER) X.509 certificate; ValueError if it is none."""
    return varstore.load_certificate(path.read_bytes())


def load_public_key(path: Path) -> rsa.RSAPublicKey:
    """A PEM RSA public key (what systemd-measure takes); ValueError otherwise."""
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    return key


def certificate_sha256(cert: x509.Certificate) -> str:
    """The fingerprint `openssl x509 -fingerprint -sha256` shows (over the DER form)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def public_key_sha256(key: rsa.RSAPublicKey) -> str:
    """SHA-256 of the DER RSAPublicKey (PKCS#1): the `pkfp` systemd writes into .pcrsig."""
    return hashlib.sha256(
        key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    ).hexdigest()


def fingerprints(certificates: Certificates) -> dict[str, Any]:
    """`certificates: {pk: {sha256, subject}, ...}, pcr_public_key: {sha256} | None`."""
    certs = {}
    for key in CERT_KEYS:
        cert = load_certificate(getattr(certificates, key))
        certs[key] = {"sha256": certificate_sha256(cert), "subject": cert.subject.rfc4514_string()}
    pcr = certificates.pcr_public_key
    pcr_record = {"sha256": public_key_sha256(load_public_key(pcr))} if pcr else None
    return {"certificates": certs, "pcr_public_key": pcr_record}


def describe_signing(profile: Profile) -> dict[str, Any]:
    """What a build of `profile` would sign with (for --dry-run; the keys are not read)."""
    certificates = certificate_paths(profile)
    if certificates is None:
        return {"signed": False}
    return {"signed": True, **fingerprints(certificates)}


def check_section(secure_boot: SecureBoot) -> Iterator[tuple[str, str]]:
    """Profile rules: every file the section names exists and is what its key says."""
    for key in (*CERT_KEYS, "pcr_public_key"):
        path = resolve(secure_boot, key)
        if path is None:
            continue
        where = f"secure_boot.{key}"
        what = "a PEM RSA public key" if key == "pcr_public_key" else "a PEM or DER certificate"
        if not path.is_file():
            looked = "" if path == Path(value := getattr(secure_boot, key)) else (
                f" (looked for {os.path.relpath(path)})"
            )  # fmt: skip
            yield where, f"{value!r}: no such file{looked}; expected {what}"
            continue
        try:
            load_public_key(path) if key == "pcr_public_key" else load_certificate(path)
        except ValueError:
            yield where, f"{getattr(secure_boot, key)!r} is not {what}"
            continue
        if key != "pcr_public_key" and b"PRIVATE KEY" in path.read_bytes():
            yield where, f"{getattr(secure_boot, key)!r} holds a private key; name the .crt only"


def prepare_signer(profile: Profile, keys: SigningKeys) -> Signer | None:
    """The checked signer of a secure-boot profile, None for an unsigned build.

    Raises HostbuildError when a key is missing or is not the private half of the profile's
    certificate; a key behind an engine is checked after signing (sbverify).
    """
    certificates = certificate_paths(profile)
    if certificates is None:
        if keys.db_key or keys.pcr_key:
            logger.warning("profile %s has no secure_boot enabled: the signing keys given are "
                           "not used (an unsigned image)", profile.name)  # fmt: skip
        return None
    if not keys.db_key:
        raise HostbuildError(
            f"profile {profile.name!r} has secure_boot enabled, but no db private key was given",
            hint="pass --db-key FILE (or a PKCS#11 URI with --signing-engine pkcs11) or set "
            f"HOSTBUILD_DB_KEY; {KEYS_HINT}",
        )
    db_cert = load_certificate(certificates.db)
    if keys.engine is None:
        _check_private(Path(keys.db_key), db_cert.public_key(), "--db-key", certificates.db)
    elif not keys.db_key.startswith("pkcs11:") and os.path.exists(keys.db_key):
        raise HostbuildError(
            f"--db-key {keys.db_key!r} is a file, but --signing-engine {keys.engine!r} loads "
            "keys through the engine",
            hint="give the key's PKCS#11 URI ('pkcs11:token=...;object=...'), or drop "
            "--signing-engine for a key file",
        )
    pcr_key = _pcr_key(profile, certificates, keys)
    return Signer(certificates, keys.db_key, pcr_key, keys.engine)


def _pcr_key(profile: Profile, certificates: Certificates, keys: SigningKeys) -> Path | None:
    public = certificates.pcr_public_key
    if public is None:
        if keys.pcr_key:
            raise HostbuildError(
                f"a PCR signing key was given, but profile {profile.name!r} names no "
                "secure_boot.pcr_public_key",
                hint="add secure_boot.pcr_public_key (the key set's pcr-public.pem) to sign "
                "PCR 11 predictions, or drop --pcr-key",
            )
        return None
    if not keys.pcr_key:
        raise HostbuildError(
            f"profile {profile.name!r} names secure_boot.pcr_public_key, but no PCR private key "
            "was given",
            hint=f"pass --pcr-key FILE or set HOSTBUILD_PCR_KEY; {KEYS_HINT}",
        )
    if keys.pcr_key.startswith("pkcs11:"):
        raise HostbuildError(
            "--pcr-key: a PKCS#11 URI is not supported for the PCR key",
            hint="ukify 257 loads both keys through one engine and then wants the PCR public half "
            "as a certificate; give the PCR private key as a PEM file",
        )
    path = Path(keys.pcr_key)
    _check_private(path, load_public_key(public), "--pcr-key", public)
    return path


def _check_private(path: Path, public: Any, option: str, against: Path) -> None:
    """`path` is an unencrypted PEM private key whose public half is `public`."""
    env = {"--db-key": "HOSTBUILD_DB_KEY", "--pcr-key": "HOSTBUILD_PCR_KEY"}[option]
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        hint = f"give the private key file ({env}); {KEYS_HINT}"
        raise HostbuildError(f"{option} {os.fspath(path)!r}: no such file", hint=hint) from None
    except (ValueError, TypeError) as e:
        raise HostbuildError(
            f"{option} {os.fspath(path)!r} is not an unencrypted PEM private key ({e})",
            hint="give the PEM key file hostbuild keys init wrote (or a PKCS#11 URI with "
            "--signing-engine for a key in a token)",
        ) from None
    if key.public_key() != public:
        raise HostbuildError(
            f"{option} {os.fspath(path)!r} is not the private key of {against}",
            hint=f"the profile's secure_boot section and {env} must name the two halves of "
            "one key pair (from the same key set)",
        )
