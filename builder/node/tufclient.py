"""The node's TUF client: python3-tuf's ngclient with a stdlib fetcher that resumes downloads.

Metadata is refreshed by `tuf.ngclient.Updater` (expiry, thresholds, rollback, mix-and-match,
root rotation). Targets are downloaded by this module straight into /var (ngclient's own
download goes through a temporary file, on a tmpfs /tmp that is memory) and each is checked
with `TargetFile.verify_length_and_hashes` before anything uses it.
"""

from __future__ import annotations

import errno
import functools
import http.client
import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from tuf.api import exceptions
from tuf.api.metadata import Metadata, Root, TargetFile
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

from .updatestate import UpdateError

logger = logging.getLogger(__name__)

# The repository's layout below its URL (the build side's publisher writes the same)
METADATA_PATH = "metadata/"
TARGETS_PATH = "targets/"
CHUNK = 1 << 20  # a resumed download fetches at most this much again
SYNC_EVERY = 16 << 20  # a power cut loses at most this much of a download
TIMEOUT = 30.0  # seconds without progress: a slow or silent repository fails the run
MAX_JSON = 1 << 20  # a channel manifest larger than this is refused before it is read
USER_AGENT = "hostbuild-node"


class Fetcher(FetcherInterface):
    """HTTP(S) with urllib: bounded waits, optional bandwidth limit, ranged requests."""

    def __init__(
        self, timeout: float = TIMEOUT, bandwidth: int | None = None,
        clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
    ) -> None:  # fmt: skip
        self.timeout = timeout
        self.bandwidth = bandwidth  # bytes per second, None: unlimited
        self.clock, self.sleep = clock, sleep

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self.chunks(self.open(url), url)

    def open(self, url: str, start: int = 0) -> http.client.HTTPResponse:
        """The response for `url`, from byte `start` on if the server honours ranges."""
        headers = {"User-Agent": USER_AGENT}
        if start:
            headers["Range"] = f"bytes={start}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            response: http.client.HTTPResponse = urllib.request.urlopen(
                request, timeout=self.timeout
            )
        except urllib.error.HTTPError as e:
            e.close()
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {e.code} {e.reason}", e.code) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            raise exceptions.DownloadError(f"{url}: {reason}") from None
        return response

    def chunks(self, response: http.client.HTTPResponse, url: str) -> Iterator[bytes]:
        began, received = self.clock(), 0
        # limited, reads of a quarter second's worth: no burst of a whole chunk, then a long
        # silence the server may take for a dead client
        size = min(CHUNK, max(self.bandwidth // 4, 4096)) if self.bandwidth else CHUNK
        with response:
            while True:
                try:
                    chunk = response.read(size)
                except (OSError, http.client.HTTPException) as e:
                    raise exceptions.DownloadError(f"{url}: {type(e).__name__}: {e}") from None
                if not chunk:
                    return
                received += len(chunk)
                if self.bandwidth:  # no faster than the limit, averaged over the response
                    ahead = received / self.bandwidth - (self.clock() - began)
                    if ahead > 0:
                        self.sleep(ahead)
                yield chunk


def download_resumable(
    fetcher: Fetcher, url: str, partial: Path, length: int,
    progress: Callable[[int, Callable[[], None]], None] | None = None,
) -> None:  # fmt: skip
    """Fill `partial` with the `length` bytes at `url`, continuing what an earlier run got.

    The last (possibly torn) chunk of an earlier run is fetched again; a server that ignores
    the range request sends the whole file, which then replaces the partial one. What arrived
    is synced every SYNC_EVERY bytes, so a power cut loses at most that much of it.
    `progress(received, sync)` is called after every chunk.
    """
    have = partial.stat().st_size if partial.exists() else 0
    if have > length:
        have = 0
    if have == length:
        return
    start = have - have % CHUNK
    with partial.open("r+b" if partial.exists() else "wb") as f:
        response = fetcher.open(url, start)
        if start and not _resumes_at(response, start):
            logger.info("%s: the server does not resume downloads; starting over", url)
            start = 0
        f.truncate(start)
        f.seek(start)
        if start:
            logger.info("%s: resuming at byte %d of %d", url, start, length)
        received = start
        for chunk in fetcher.chunks(response, url):
            received += len(chunk)
            if received > length:
                raise exceptions.DownloadLengthMismatchError(
                    f"{url}: more than the {length} bytes its signed metadata gives"
                )
            f.write(chunk)
            if received % SYNC_EVERY < len(chunk):
                _sync(f)
            if progress is not None:
                progress(received, functools.partial(_sync, f))
        _sync(f)
    if received < length:
        raise exceptions.DownloadError(f"{url}: truncated at {received} of {length} bytes")


def _sync(f: IO[bytes]) -> None:
    f.flush()
    os.fsync(f.fileno())


def _resumes_at(response: http.client.HTTPResponse, start: int) -> bool:
    content_range = response.headers.get("Content-Range", "")
    return response.status == 206 and content_range.startswith(f"bytes {start}-")


class Repository:
    """The update repository at `url` as this node trusts it (one instance per run)."""

    def __init__(self, url: str, metadata: Path, downloads: Path, baked_root: Path,
                 fetcher: Fetcher) -> None:  # fmt: skip
        self.url = url.rstrip("/") + "/"
        self.metadata = metadata
        self.downloads = downloads
        self.fetcher = fetcher
        seed_root(baked_root, metadata)
        downloads.mkdir(parents=True, exist_ok=True)
        with translated("the trusted root metadata"):
            self.updater = Updater(
                os.fspath(metadata), self.url + METADATA_PATH, os.fspath(downloads),
                self.url + TARGETS_PATH, fetcher=fetcher,
            )  # fmt: skip

    def refresh(self) -> None:
        with translated(f"the repository's metadata ({self.url}{METADATA_PATH})"):
            self.updater.refresh()

    def targetinfo(self, path: str) -> TargetFile:
        with translated(f"target {path!r}"):
            info = self.updater.get_targetinfo(path)
        if info is None:
            raise UpdateError("rejected", f"target {path!r} is not in the signed targets metadata")
        return info

    def fetch(
        self, info: TargetFile, progress: Callable[[int, Callable[[], None]], None] | None = None
    ) -> Path:
        """The verified local copy of target `info` below downloads/ (resumed, not re-read)."""
        final = self.downloads / urllib.parse.quote(info.path, safe="")
        # named after what it should become: a partial download of other bytes is never resumed
        digest = next(iter(info.hashes.values()))
        partial = final.with_name(f"{final.name}.{digest[:16]}.part")
        with translated(f"target {info.path!r}"):
            if final.exists():
                if _verified(final, info):
                    return final
                final.unlink()
            try:
                download_resumable(
                    self.fetcher, self._target_url(info), partial, info.length, progress
                )
            except exceptions.DownloadLengthMismatchError:
                partial.unlink()  # the server sends something else than what was signed
                raise
            if not _verified(partial, info):
                partial.unlink()
                raise exceptions.LengthOrHashMismatchError(
                    f"{info.path}: the download does not match its signed length and hashes"
                )
            os.replace(partial, final)
        return final

    def fetch_json(self, path: str) -> Any:
        info = self.targetinfo(path)
        if info.length > MAX_JSON:
            raise UpdateError(
                "rejected", f"target {path!r} is {info.length} bytes, over {MAX_JSON}"
            )
        local = self.fetch(info)
        try:
            return json.loads(local.read_bytes())
        except ValueError as e:
            raise UpdateError("rejected", f"target {path!r} is not JSON: {e}") from None

    def _target_url(self, info: TargetFile) -> str:
        # ngclient's download_target forms the URL the same way (consistent snapshots prefix
        # the file name with its hash)
        path = info.path
        if self._consistent_snapshot():
            directory, sep, name = path.rpartition("/")
            path = f"{directory}{sep}{next(iter(info.hashes.values()))}.{name}"
        return self.url + TARGETS_PATH + urllib.parse.quote(path)

    def _consistent_snapshot(self) -> bool:
        # the root ngclient verified and persisted in this run's refresh
        root = Metadata[Root].from_file(os.fspath(self.metadata / "root.json"))
        return bool(root.signed.consistent_snapshot)


def _verified(path: Path, info: TargetFile) -> bool:
    try:
        with path.open("rb") as f:
            info.verify_length_and_hashes(f)
    except exceptions.LengthOrHashMismatchError:
        return False
    return True


def seed_root(baked: Path, metadata: Path) -> None:
    """Start from the image's root.json, unless the kept one is as new (rotated since)."""
    metadata.mkdir(parents=True, exist_ok=True)
    kept = metadata / "root.json"
    if kept.exists() and _root_version(kept) >= _root_version(baked):
        return
    if not baked.exists():
        raise UpdateError("system", f"no trusted root metadata: {baked} is missing from the image")
    tmp = kept.with_name(".root.json.tmp")
    shutil.copyfile(baked, tmp)
    os.replace(tmp, kept)


def _root_version(path: Path) -> int:
    try:
        version = json.loads(path.read_bytes())["signed"]["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return -1
    return version if isinstance(version, int) else -1


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn what python-tuf and the OS raise into UpdateError, naming `what` failed."""
    try:
        yield
    except UpdateError:
        raise
    except Exception as e:
        error = describe(e, what)
        if error is None:
            raise
        raise error from e


def describe(e: BaseException, what: str) -> UpdateError | None:
    """The UpdateError for `e`, or None for what is a bug (left to propagate)."""
    if isinstance(e, exceptions.ExpiredMetadataError):
        return UpdateError("rejected", f"{what}: expired metadata, refused ({e})")
    if isinstance(e, exceptions.BadVersionNumberError):
        return UpdateError("rejected", f"{what}: a version rollback, refused ({e})")
    if isinstance(e, exceptions.UnsignedMetadataError):
        return UpdateError("rejected", f"{what}: not signed by enough trusted keys, refused ({e})")
    if isinstance(e, exceptions.LengthOrHashMismatchError | exceptions.DownloadLengthMismatchError):
        return UpdateError("rejected", f"{what}: does not match its signed length or hashes ({e})")
    if isinstance(e, exceptions.RepositoryError):
        return UpdateError("rejected", f"{what}: refused ({type(e).__name__}: {e})")
    if isinstance(e, exceptions.DownloadError):
        cause = e.__cause__
        detail = f"{e}" + (f" ({cause})" if cause and str(cause) not in str(e) else "")
        return UpdateError("unreachable", f"{what}: {detail}")
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return UpdateError("no-space", f"{what}: no space left on /var ({e})")
    if isinstance(e, OSError):
        return UpdateError("system", f"{what}: {e}")
    return None
