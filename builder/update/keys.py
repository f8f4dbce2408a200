"""Signing keys: ed25519 pairs made with securesystemslib, private halves as PKCS#8 PEM (0600).

Keys live outside the published tree, in one or more key directories (`--keys`, repeatable),
as `ROLE-KEYID.pem`. A key is found by its key id, computed from the file's content, so the
root and targets keys can move to offline media and come back for the commands that need them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner

from builder.errors import HostbuildError

logger = logging.getLogger(__name__)

ROLES = ("root", "targets", "snapshot", "timestamp")
# Signing root needs its keys only to create the repository and to change keys or root's
# expiry; targets only when a build is added. snapshot and timestamp sign every refresh (a
# cron job), so they stay online.
OFFLINE_ROLES = frozenset({"root", "targets"})
RETIRED = ".retired"


def default_key_dir(repository: Path) -> Path:
    """`DIR/../keys`: next to the repository, never inside what is published."""
    return repository.absolute().parent / "keys"


@dataclass(frozen=True)
class FoundKey:
    keyid: str
    path: Path
    signer: CryptoSigner


@dataclass(frozen=True)
class KeyStore:
    """The key directories of a command; new keys go into the first one."""

    dirs: tuple[Path, ...]

    @classmethod
    def for_repository(cls, repository: Path, dirs: Sequence[Path] = ()) -> KeyStore:
        store = cls(tuple(d.absolute() for d in dirs) or (default_key_dir(repository),))
        published = repository.absolute()
        for d in store.dirs:
            if d.resolve().is_relative_to(published.resolve()):
                raise HostbuildError(
                    f"key directory {os.fspath(d)!r} is inside the repository "
                    f"{os.fspath(published)!r}",
                    hint="the repository is published as it is; keep keys outside it "
                    f"(default: {default_key_dir(repository)})",
                )
        return store

    def describe(self) -> str:
        return ", ".join(os.fspath(d) for d in self.dirs)

    def generate(self, role: str) -> FoundKey:
        """A new key pair for `role`, its private half written (0600) to the first directory."""
        signer = CryptoSigner.generate_ed25519()
        keyid = signer.public_key.keyid
        directory = self.dirs[0]
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / f"{role}-{keyid[:16]}.pem"
        # O_EXCL: never overwrite a key; the mode is set at creation, the key is never readable
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(signer.private_bytes)
            f.flush()
            os.fsync(f.fileno())
        logger.info("  new %s key %s: %s", role, keyid[:16], path)
        return FoundKey(keyid, path, signer)

    def find(self) -> dict[str, FoundKey]:
        """Every private key in the directories, by key id (the first copy found wins)."""
        found: dict[str, FoundKey] = {}
        for directory in self.dirs:
            for path in sorted(directory.glob("*.pem")) if directory.is_dir() else []:
                key = load_key(path)
                found.setdefault(key.keyid, key)
        return found

    def signers(self, role: str, keyids: Iterable[str], threshold: int) -> list[CryptoSigner]:
        """The signers of `keyids` that are here; at least `threshold` of them, or an error."""
        wanted = list(keyids)
        found = self.find()
        signers = [found[k].signer for k in wanted if k in found]
        if len(signers) < threshold:
            missing = ", ".join(k[:16] for k in wanted if k not in found)
            raise HostbuildError(
                f"signing {role} needs {threshold} of its keys; found {len(signers)} in "
                f"{self.describe()} (missing: {missing})",
                hint=f"bring the {role} keys ({role}-KEYID.pem) and pass their directory "
                "with --keys DIR (repeatable)",
            )
        return signers

    def retire(self, keyid: str) -> Path | None:
        """Rename a key that nothing trusts any more to `*.pem.retired`; None if not here."""
        key = self.find().get(keyid)
        if key is None:
            return None
        retired = key.path.with_name(key.path.name + RETIRED)
        key.path.rename(retired)
        return retired


def load_key(path: Path) -> FoundKey:
    try:
        private = load_pem_private_key(path.read_bytes(), password=None)
        signer = CryptoSigner(private)
    except (OSError, ValueError, TypeError) as e:
        raise HostbuildError(
            f"{path}: not a usable private key: {e}",
            hint="key files are unencrypted PKCS#8 PEM (hostbuild repo init writes them); "
            "move other .pem files out of the key directory",
        ) from e
    return FoundKey(signer.public_key.keyid, path, signer)
