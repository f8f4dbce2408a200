"""Upstream artifacts: the catalogue (name x version x arch -> URL + sha256), downloads and cache.

Files are stored content-addressed (`<cache>/artifacts/sha256/<digest>`), verified while
streaming, and re-verified before every use.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from builder.errors import HostbuildError

logger = logging.getLogger(__name__)

CATALOGUE = Path(__file__).parents[1] / "data" / "artifacts.yaml"
CHUNK = 1 << 20
ATTEMPTS = 3
TIMEOUT = 30.0
BACKOFF = 0.5  # seconds before the second attempt; doubles after each failure


@dataclass(frozen=True)
class CatalogueEntry:
    """One upstream project's download URL template and published checksums."""

    name: str
    url: str
    kind: str
    checksums: dict[str, dict[str, str]]  # arch -> version -> hex digest

    def versions(self, arch: str) -> list[str]:
        return list(self.checksums.get(arch, {}))


@cache
def load_catalogue(path: Path = CATALOGUE) -> dict[str, CatalogueEntry]:
    """The artifact catalogue shipped with hostbuild (published upstream checksums)."""
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    entries = {}
    for name, entry in data.items():
        checksums = {
            arch: {str(v): str(d).removeprefix("sha256:") for v, d in versions.items() if d != "0"}
            for arch, versions in entry["checksums"].items()
        }
        entries[name] = CatalogueEntry(name, entry["url"], entry["kind"], checksums)
    return entries


@dataclass(frozen=True)
class Artifact:
    """One file to download: where from, and the digest it must have."""

    name: str
    version: str
    arch: str
    url: str
    sha256: str
    kind: str  # "file" or "tar.gz"

    @property
    def filename(self) -> str:
        return Path(urllib.parse.urlparse(self.url).path).name


@dataclass(frozen=True)
class Fetched:
    """A verified file in the cache."""

    artifact: Artifact
    path: Path
    size: int
    cache_hit: bool
    source: str


class ArtifactError(HostbuildError):
    """A download failed or a file does not have the pinned digest."""


def mirror_location(url: str, mirror: str) -> str:
    """Where `url` lives under a mirror: the same path below the mirror URL or directory."""
    path = urllib.parse.urlparse(url).path.lstrip("/")
    if "://" in mirror:
        return mirror.rstrip("/") + "/" + path
    return os.fspath(Path(mirror) / path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Cache:
    """Content-addressed store of verified artifacts."""

    def __init__(self, root: Path) -> None:
        self.root = root / "artifacts" / "sha256"

    def path(self, sha256: str) -> Path:
        return self.root / sha256

    def lookup(self, sha256: str) -> Path | None:
        """The cached file with this digest, re-verified; a corrupted entry is deleted."""
        path = self.path(sha256)
        if not path.exists():
            return None
        actual = sha256_file(path)
        if actual != sha256:
            logger.warning(
                "cached %s is corrupted (sha256 %s, expected %s): deleted, fetching again",
                path, actual, sha256,
            )  # fmt: skip
            path.unlink()
            return None
        return path

    @contextlib.contextmanager
    def incoming(self, sha256: str) -> Iterator[Path]:
        """A temporary file that becomes the cache entry only if the block succeeds."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{sha256}.{os.getpid()}.part"
        try:
            yield tmp
            tmp.replace(self.path(sha256))
        finally:
            tmp.unlink(missing_ok=True)


def fetch(artifact: Artifact, cache: Cache, mirror: str | None = None) -> Fetched:
    """Return the verified cached file of `artifact`, downloading it if needed."""
    if (hit := cache.lookup(artifact.sha256)) is not None:
        return Fetched(artifact, hit, hit.stat().st_size, True, "cache")
    source = mirror_location(artifact.url, mirror) if mirror else artifact.url
    with cache.incoming(artifact.sha256) as tmp:
        if "://" in source:
            size = _download(artifact, source, tmp)
        else:
            size = _copy(artifact, Path(source), tmp)
    return Fetched(artifact, cache.path(artifact.sha256), size, False, source)


def fetch_all(artifacts: Sequence[Artifact], cache: Cache, mirror: str | None) -> list[Fetched]:
    """Fetch every artifact; report all that failed together."""
    fetched: list[Fetched] = []
    failed: list[tuple[Artifact, ArtifactError]] = []
    for artifact in artifacts:
        try:
            fetched.append(fetch(artifact, cache, mirror))
        except ArtifactError as e:
            failed.append((artifact, e))
    if len(failed) == 1:
        raise failed[0][1]
    if failed:
        raise ArtifactError(
            "\n".join(e.message for _, e in failed),
            hint="download these on a connected machine, put each at MIRROR/<path of its URL> "
            "and pass --artifact-mirror MIRROR (a directory or an HTTP URL): "
            + " ".join(a.url for a, _ in failed),
        )
    return fetched


def _supply_hint(artifact: Artifact) -> str:
    path = urllib.parse.urlparse(artifact.url).path.lstrip("/")
    return (
        f"download {artifact.url} on a connected machine (sha256 {artifact.sha256}), "
        f"put it at MIRROR/{path} and pass --artifact-mirror MIRROR (a directory or an HTTP URL)"
    )


def _verify(artifact: Artifact, digest: str, tmp: Path, source: str) -> None:
    if digest != artifact.sha256:
        tmp.unlink(missing_ok=True)
        raise ArtifactError(
            f"{artifact.name} {artifact.version} ({artifact.arch}) from {source} has the wrong "
            f"checksum: expected sha256 {artifact.sha256}, got {digest}; the file was deleted",
            hint="the download was corrupted or the pinned checksum is wrong; "
            "check the profile against the upstream release's published checksum",
        )


def _copy(artifact: Artifact, source: Path, tmp: Path) -> int:
    if not source.is_file():
        raise ArtifactError(
            f"{artifact.name} {artifact.version} ({artifact.arch}) is not in the mirror: "
            f"{source} does not exist",
            hint=_supply_hint(artifact),
        )
    shutil.copyfile(source, tmp)
    _verify(artifact, sha256_file(tmp), tmp, os.fspath(source))
    return tmp.stat().st_size


def _download(artifact: Artifact, url: str, tmp: Path) -> int:
    last_error = ""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _download_once(artifact, url, tmp)
        except _Retryable as e:
            last_error = str(e)
            logger.warning("%s: %s (attempt %d of %d)", url, e, attempt, ATTEMPTS)
            if attempt < ATTEMPTS:
                time.sleep(BACKOFF * 2 ** (attempt - 1))
    raise ArtifactError(
        f"cannot download {artifact.name} {artifact.version} ({artifact.arch}) from {url}: "
        f"{last_error} (after {ATTEMPTS} attempts)",
        hint=_supply_hint(artifact),
    )


class _Retryable(Exception):
    pass


def _download_once(artifact: Artifact, url: str, tmp: Path) -> int:
    digest = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response, tmp.open("wb") as out:
            expected = response.headers.get("Content-Length")
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code == 429:
            raise _Retryable(f"HTTP {e.code} {e.reason}") from e
        raise ArtifactError(
            f"cannot download {artifact.name} {artifact.version} ({artifact.arch}) from {url}: "
            f"HTTP {e.code} {e.reason}",
            hint=_supply_hint(artifact),
        ) from e
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", e)
        raise _Retryable(f"{reason}") from e
    if expected is not None and size != int(expected):
        tmp.unlink(missing_ok=True)
        raise _Retryable(
            f"truncated body: got {size} of {expected} bytes (sha256 {digest.hexdigest()}, "
            f"expected {artifact.sha256}); the partial file was deleted"
        )
    _verify(artifact, digest.hexdigest(), tmp, url)
    logger.debug("downloaded %s (%d bytes, sha256 %s)", url, size, artifact.sha256)
    return size
