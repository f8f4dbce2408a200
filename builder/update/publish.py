"""`hostbuild repo publish`: the repository's static files to a directory or an S3 prefix.

Order: targets first, then root versions, targets and snapshot metadata, `timestamp.json`
last, so a reader never sees metadata naming a file that is not there yet. A file already at
the destination with the same content is skipped; nothing is ever deleted (a reader may be
half-way through an older snapshot).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from builder import __version__
from builder.errors import HostbuildError
from builder.log import step
from builder.update.files import CHUNK, atomic_write, is_temp
from builder.update.repository import METADATA, TARGETS

logger = logging.getLogger(__name__)

_STORED = re.compile(r"^[0-9a-f]{64}\.")  # targets are stored under their sha256
_ROLE_ORDER = {"root": 0, "targets": 1, "snapshot": 2}
TIMESTAMP = f"{METADATA}/timestamp.json"


@dataclass(frozen=True)
class Item:
    """One file to publish: its path below the repository, and its bytes if it is metadata."""

    name: str
    path: Path
    data: bytes | None = None  # metadata: read at the start, so timestamp.json is the one read


class Destination(Protocol):
    def describe(self) -> str: ...

    def read(self, name: str) -> bytes | None: ...

    def unchanged(self, item: Item) -> bool: ...

    def put(self, item: Item) -> None: ...


def publish_items(repository: Path) -> list[Item]:
    """What to publish, in order. timestamp.json is read first: every file it leads to was
    renamed into place before it, so the listing that follows holds them all."""
    timestamp = repository / TIMESTAMP
    if not timestamp.is_file():
        raise HostbuildError(
            f"{repository} has no {TIMESTAMP}",
            hint="create the repository with hostbuild repo init",
        )
    stamp = timestamp.read_bytes()
    targets = sorted(
        (p for p in (repository / TARGETS).rglob("*") if p.is_file() and not is_temp(p)),
        key=lambda p: p.relative_to(repository).as_posix(),
    )
    items = [Item(p.relative_to(repository).as_posix(), p) for p in targets]
    metadata = []
    for p in (repository / METADATA).iterdir():
        parts = p.name.split(".")
        if (
            len(parts) == 3
            and parts[0].isdigit()
            and parts[1] in _ROLE_ORDER
            and parts[2] == "json"
        ):
            metadata.append(((_ROLE_ORDER[parts[1]], int(parts[0])), p))
    for _, p in sorted(metadata):
        items.append(Item(p.relative_to(repository).as_posix(), p, p.read_bytes()))
    items.append(Item(TIMESTAMP, timestamp, stamp))
    return items


@dataclass(frozen=True)
class PublishResult:
    destination: str
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"destination": self.destination, "copied": self.copied, "skipped": self.skipped}


def publish_repository(repository: Path, destination: Destination) -> PublishResult:
    """Copy the repository's `metadata/` and `targets/` to `destination`, timestamp last."""
    items = publish_items(repository)
    result = PublishResult(destination.describe())
    _check_no_rollback(items[-1], destination)
    with step(f"Publish {repository} to {destination.describe()}"):
        for item in items:
            if destination.unchanged(item):
                result.skipped.append(item.name)
                continue
            destination.put(item)
            logger.debug("published %s", item.name)
            result.copied.append(item.name)
        logger.info("  %d file(s) copied, %d already there", len(result.copied),
                    len(result.skipped))  # fmt: skip
    return result


def _check_no_rollback(timestamp: Item, destination: Destination) -> None:
    """Never publish a timestamp older than the one there: nodes would refuse every update."""
    there = destination.read(TIMESTAMP)
    if there is None:
        return
    assert timestamp.data is not None
    try:
        theirs = int(json.loads(there)["signed"]["version"])
    except (ValueError, KeyError, TypeError):
        return  # not TUF metadata: replaced
    ours = int(json.loads(timestamp.data)["signed"]["version"])
    if theirs > ours:
        raise HostbuildError(
            f"{destination.describe()} has timestamp v{theirs}, newer than this repository's "
            f"v{ours}",
            hint="publish from the repository that signed it (or refresh this one past it)",
        )


def _sha256(item: Item) -> str:
    if item.data is not None:
        return hashlib.sha256(item.data).hexdigest()
    match = _STORED.match(item.path.name)
    if match:
        return item.path.name[:64]
    digest = hashlib.sha256()
    with item.path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class DirectoryDestination:
    """A local directory (a web server's root, a mounted share); every write is atomic."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return os.fspath(self.root)

    def read(self, name: str) -> bytes | None:
        path = self.root / name
        return path.read_bytes() if path.is_file() else None

    def unchanged(self, item: Item) -> bool:
        path = self.root / item.name
        if not path.is_file():
            return False
        if item.data is not None:
            return path.read_bytes() == item.data
        return bool(_STORED.match(path.name)) and path.stat().st_size == item.path.stat().st_size

    def put(self, item: Item) -> None:
        if item.data is not None:
            atomic_write(self.root / item.name, item.data)
            return
        dest = self.root / item.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        try:
            with item.path.open("rb") as src, tmp.open("wb") as out:
                while chunk := src.read(CHUNK):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            tmp.chmod(0o644)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


class S3Destination:
    """An S3 bucket and prefix; objects carry their sha256 as `x-amz-meta-sha256`."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")
        self._existing: dict[str, tuple[int, str]] | None = None

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _objects(self) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = f"{self.prefix}/" if self.prefix else ""
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def existing(self) -> dict[str, tuple[int, str]]:
        if self._existing is None:
            with s3_errors(self):
                self._existing = {
                    o["Key"]: (int(o["Size"]), str(o["ETag"]).strip('"')) for o in self._objects()
                }
        return self._existing

    def read(self, name: str) -> bytes | None:
        if self.key(name) not in self.existing():
            return None
        with s3_errors(self):
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"]
            return cast(bytes, body.read())

    def unchanged(self, item: Item) -> bool:
        there = self.existing().get(self.key(item.name))
        if there is None:
            return False
        size, etag = there
        if item.data is not None:  # put in one part: the ETag is the MD5 of the content
            return size == len(item.data) and etag == hashlib.md5(item.data).hexdigest()
        if not _STORED.match(item.path.name) or size != item.path.stat().st_size:
            return False
        with s3_errors(self):
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(item.name))
        return bool(head.get("Metadata", {}).get("sha256") == _sha256(item))

    def put(self, item: Item) -> None:
        extra: dict[str, Any] = {
            "ContentType": "application/json" if item.name.endswith(".json") else
            "application/octet-stream",
            "Metadata": {"sha256": _sha256(item)},
        }  # fmt: skip
        if item.name == TIMESTAMP:
            extra["CacheControl"] = "no-cache"  # the one file that changes under its name
        with s3_errors(self):
            if item.data is not None:
                self.client.put_object(Bucket=self.bucket, Key=self.key(item.name),
                                       Body=item.data, **extra)  # fmt: skip
            else:
                self.client.upload_file(os.fspath(item.path), self.bucket, self.key(item.name),
                                        ExtraArgs=extra)  # fmt: skip


@contextlib.contextmanager
def s3_errors(destination: S3Destination) -> Iterator[None]:
    """Turn boto3's exceptions raised in the block into HostbuildErrors naming the destination."""
    import boto3.exceptions
    import botocore.exceptions

    where = destination.describe()
    hint = "publishing again copies only what is missing (timestamp.json goes last)"
    try:
        yield
    except botocore.exceptions.NoCredentialsError as e:
        raise HostbuildError(
            "no AWS credentials found",
            hint="the standard boto3 chain is searched: AWS_PROFILE, AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, SSO, an instance or task role",
        ) from e
    except botocore.exceptions.ClientError as e:
        error = e.response.get("Error", {})
        code, message = error.get("Code", ""), error.get("Message", "")
        if code == "NoSuchBucket":
            hint = f"create the bucket {destination.bucket!r} first"
        elif code in {"AccessDenied", "403"}:
            hint = "s3:ListBucket, s3:GetObject and s3:PutObject on the bucket are needed"
        raise HostbuildError(f"S3 {e.operation_name} on {where}: {code}: {message}",
                             hint=hint) from e  # fmt: skip
    except (boto3.exceptions.S3UploadFailedError, botocore.exceptions.BotoCoreError) as e:
        raise HostbuildError(f"S3 upload to {where} failed: {e}", hint=hint) from e


def s3_client(region: str | None, endpoint_url: str | None) -> Any:
    """An S3 client with bounded retries; path-style addressing for a test or other endpoint."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=10, read_timeout=60, retries={"mode": "standard", "max_attempts": 5},
        user_agent_extra=f"hostbuild/{__version__}",
        s3={"addressing_style": "path"} if endpoint_url else None,
    )  # fmt: skip
    kwargs: dict[str, Any] = {"region_name": region, "config": config}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    return cast(Any, boto3.session.Session()).client("s3", **kwargs)


def destination_for(
    text: str, repository: Path, *, region: str | None = None, endpoint_url: str | None = None
) -> Destination:
    """`s3://BUCKET/PREFIX` or a directory (not the repository itself)."""
    if text.startswith("s3://"):
        bucket, _, prefix = text.removeprefix("s3://").partition("/")
        if not bucket:
            raise HostbuildError(f"--to {text!r} names no bucket", hint="s3://BUCKET/PREFIX")
        return S3Destination(s3_client(region, endpoint_url), bucket, prefix)
    if "://" in text:
        raise HostbuildError(
            f"--to {text!r}: unknown scheme", hint="a directory or s3://BUCKET/PREFIX"
        )
    root = Path(text).absolute()
    if root.resolve() == repository.absolute().resolve():
        raise HostbuildError(
            f"--to {text!r} is the repository itself", hint="name another directory"
        )
    return DirectoryDestination(root)
