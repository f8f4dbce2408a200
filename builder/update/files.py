"""Files of an update repository: atomic writes, verified copies, changes applied in order or not.

A command stages every new file under a temporary name next to its final one, then renames them
into place in the order readers need (targets, root versions, targets, snapshot, timestamp last).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path
from types import TracebackType

from builder.errors import HostbuildError

logger = logging.getLogger(__name__)

CHUNK = 1024 * 1024


def temp_path(path: Path) -> Path:
    """A hidden name next to `path` (same file system, so the rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def is_temp(path: Path) -> bool:
    return path.name.startswith(".") and ".tmp-" in path.name


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` through a temporary file, fsync and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        _write_synced(tmp, data, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_synced(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, mode)  # the umask may have taken bits away


def copy_verified(source: Path, dest: Path, size: int, sha256: str, described_in: Path) -> None:
    """Copy `source` to `dest`, hashing while copying; refuse it unless size and sha256 match."""
    digest = hashlib.sha256()
    copied = 0
    try:
        with source.open("rb") as src, dest.open("wb") as out:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                copied += len(chunk)
            out.flush()
            os.fsync(out.fileno())
    except FileNotFoundError as e:
        dest.unlink(missing_ok=True)
        raise HostbuildError(
            f"{source} is missing; {described_in.name} describes it", hint="rebuild the image"
        ) from e
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    if copied != size or digest.hexdigest() != sha256:
        dest.unlink(missing_ok=True)
        raise HostbuildError(
            f"{source} does not match {described_in}: it has {copied} bytes, sha256 "
            f"{digest.hexdigest()}; {described_in.name} says {size} bytes, sha256 {sha256}",
            hint="the payload changed after the build wrote it; rebuild the image",
        )
    dest.chmod(0o644)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Changes:
    """The new files of one command: staged under temporary names, renamed in order on commit.

    Nothing is visible under a final name before `commit()`; leaving the block without it (an
    error) removes every staged file, so the repository stays as it was.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary, final), in commit order
        self._made: list[Path] = []  # directories made for staged files, removed on discard

    def __enter__(self) -> Changes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:  # fmt: skip
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged.clear()
        for directory in reversed(self._made):
            with contextlib.suppress(OSError):  # not empty: it holds a committed file
                directory.rmdir()
        self._made.clear()

    def _parent(self, path: Path) -> None:
        missing = [p for p in reversed(path.parents) if not p.exists()]
        path.parent.mkdir(parents=True, exist_ok=True)
        self._made.extend(missing)

    @property
    def paths(self) -> list[Path]:
        return [final for _, final in self._staged]

    def stage_data(self, path: Path, data: bytes, mode: int = 0o644) -> None:
        self._parent(path)
        tmp = temp_path(path)
        self._staged.append((tmp, path))
        _write_synced(tmp, data, mode)

    def stage_copy(
        self, source: Path, path: Path, size: int, sha256: str, described_in: Path
    ) -> None:
        self._parent(path)
        tmp = temp_path(path)
        self._staged.append((tmp, path))
        copy_verified(source, tmp, size, sha256, described_in)

    def commit(self) -> list[Path]:
        """Rename every staged file into place, in the order it was staged."""
        done = []
        for tmp, final in self._staged:
            os.replace(tmp, final)
            logger.debug("wrote %s", final)
            done.append(final)
        self._staged.clear()
        self._made.clear()
        return done
