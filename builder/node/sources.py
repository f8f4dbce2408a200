"""Where the NodeConfig comes from, in order: EC2 IMDSv2, systemd credentials, a config partition.

The first source that has a NodeConfig wins. Whether this is EC2 is decided from DMI before any
network request, so other platforms never wait for the instance metadata service.
"""

from __future__ import annotations

import logging
import os
import re
import time
import urllib.error
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import command

# urllib.request (http, ssl) and email are imported where used: the agent runs on every boot
# before containerd, and most boots need neither (no IMDS, no MIME)
if TYPE_CHECKING:
    import urllib.request

logger = logging.getLogger(__name__)

IMDS_URL = "http://169.254.169.254"
CREDENTIAL = "hostbuild.nodeconfig"
SYSTEM_CREDENTIALS = Path("/run/credentials/@system")
PARTITION_LABEL = "HBCONFIG"
PARTITION_FILE = "nodeconfig.yaml"
SETTLE_TIMEOUT = 30.0  # seconds: udev handles the whole coldplug in a few, even emulated
MEDIA_TYPE = "application/node.hostbuild.dev"
API_MARKER = b"hostbuild.dev/"
# user-data as delivered: EC2 takes at most 16 KiB, systemd at most 1 MiB per credential, so
# 1 MiB refuses nothing a platform can pass; it bounds what a config partition's file costs
MAX_SIZE = 1 << 20
# what all of the user-data's gzip may expand to together: what could be given uncompressed
# (a NodeConfig is a few KiB; one with a CA bundle a few hundred), while a 1 MiB gzip bomb of
# zeros would expand to 1 GiB in memory at every boot
MAX_EXPANDED = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
# cloud-init's user-data has one multipart section; the email parser recurses into each, and a
# few hundred nested ones end in RecursionError
MAX_MULTIPARTS = 20
MULTIPART = re.compile(rb"^content-type:\s*multipart/", re.IGNORECASE | re.MULTILINE)
EC2_VENDOR = "Amazon EC2"


class SourceError(Exception):
    """A source exists but could not be read (unreachable, refused, undecodable)."""


@dataclass(frozen=True)
class Platform:
    """What the platform says about this node: its default name and provider ID."""

    name: str | None = None
    provider_id: str | None = None


@dataclass(frozen=True)
class Found:
    source: str  # imds, credential, partition
    detail: str  # where exactly
    data: bytes


@dataclass
class Discovery:
    """The outcome of looking through every source."""

    found: Found | None = None
    platform: Platform = Platform()
    tried: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def is_ec2(dmi: Path = Path("/sys/class/dmi/id")) -> bool:
    """DMI says EC2: the vendor strings of Nitro instances, or Xen ones' product UUID."""
    for name in ("sys_vendor", "board_vendor", "bios_vendor"):
        if _read(dmi / name).strip() == EC2_VENDOR:
            return True
    return _read(dmi / "product_uuid").strip().lower().startswith("ec2")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


class Imds:
    """An IMDSv2 client: a session token from PUT, bounded retries and timeouts.

    The agent runs on the host, so the default PUT response hop limit of 1 reaches it; a token
    that cannot be had (IMDSv2 disabled, or refused) is an error, never a fallback to IMDSv1.
    """

    TOKEN_TTL = 21600

    def __init__(
        self, base: str = IMDS_URL, timeout: float = 2.0, deadline: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:  # fmt: skip
        self.base = base.rstrip("/")
        self.timeout = timeout
        self.deadline = deadline
        self.sleep = sleep
        self.token: str | None = None

    def _open(self, request: urllib.request.Request) -> bytes:
        """One request, retried on connection errors, timeouts and 5xx until the deadline."""
        import urllib.request

        end = time.monotonic() + self.deadline
        delay = 0.25
        while True:
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    data: bytes = response.read(MAX_SIZE + 1)
                    return data
            except urllib.error.HTTPError as e:
                if e.code < 500:
                    raise
                problem = f"HTTP {e.code}"
            except (OSError, TimeoutError) as e:
                problem = str(getattr(e, "reason", e))
            if time.monotonic() + delay >= end:
                raise SourceError(f"{request.full_url}: {problem} (gave up after {self.deadline}s)")
            logger.debug("IMDS %s: %s; retrying in %.2fs", request.full_url, problem, delay)
            self.sleep(delay)
            delay = min(delay * 2, 2.0)

    def fetch_token(self) -> str:
        import urllib.request

        request = urllib.request.Request(
            f"{self.base}/latest/api/token", method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(self.TOKEN_TTL)},
        )  # fmt: skip
        try:
            self.token = self._open(request).decode().strip()
        except urllib.error.HTTPError as e:
            raise SourceError(f"IMDSv2 token refused: HTTP {e.code}") from None
        return self.token

    def get(self, path: str) -> bytes | None:
        """The document at `path` (None for 404); an expired token is fetched again once."""
        import urllib.request

        for attempt in range(2):
            token = self.token or self.fetch_token()
            request = urllib.request.Request(
                f"{self.base}/{path}", headers={"X-aws-ec2-metadata-token": token}
            )
            try:
                return self._open(request)
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    return None
                if e.code == 401 and attempt == 0:
                    self.token = None
                    continue
                raise SourceError(f"{request.full_url}: HTTP {e.code}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def platform(self) -> Platform:
        """The EC2 private DNS name and the provider ID kubelet's cloud provider would set."""
        name = self.get("latest/meta-data/local-hostname")
        zone = self.get("latest/meta-data/placement/availability-zone")
        instance = self.get("latest/meta-data/instance-id")
        provider_id = None
        if zone and instance:
            provider_id = f"aws:///{zone.decode().strip()}/{instance.decode().strip()}"
        hostname = name.decode().split()[0].strip() if name and name.strip() else None
        return Platform(hostname, provider_id)


def extract_nodeconfig(data: bytes) -> bytes | None:
    """The NodeConfig in user-data: plain, gzip, or one part of MIME multi-part user-data.

    Raises SourceError for user-data over MAX_SIZE, or whose gzip (the whole and its parts
    together) expands to over MAX_EXPANDED: decompression stops there, memory stays bounded.
    """
    import email.parser
    import email.policy

    if len(data) > MAX_SIZE:
        raise SourceError(
            f"user-data is over {MAX_SIZE >> 20} MiB; at most {MAX_SIZE >> 20} MiB is allowed "
            "(a NodeConfig is a few KiB; EC2 itself takes at most 16 KiB)"
        )
    budget = MAX_EXPANDED

    def expand(blob: bytes, what: str) -> bytes:
        nonlocal budget
        if blob[:2] != GZIP_MAGIC:
            return blob
        blob = gunzip(blob, budget, what)
        budget -= len(blob)
        return blob

    data = expand(data, "user-data")
    head = data.lstrip()[:200].lower()
    if not (head.startswith(b"content-type:") or head.startswith(b"mime-version:")):
        return data
    if len(MULTIPART.findall(data)) > MAX_MULTIPARTS:
        raise SourceError(f"user-data has more than {MAX_MULTIPARTS} MIME multi-part sections")
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(data)
    if not message.is_multipart():
        raise SourceError("user-data is MIME but not multi-part")
    fallback = None
    for number, part in enumerate(message.walk()):
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        payload = expand(payload, f"MIME part {number} ({part.get_content_type()})")
        if part.get_content_type() == MEDIA_TYPE:
            return payload
        if fallback is None and _names_our_api(payload):
            fallback = payload
    return fallback


def gunzip(data: bytes, limit: int, what: str = "user-data") -> bytes:
    """Every gzip member of `data`, decompressed in steps that stop past `limit` bytes."""
    out = bytearray()
    rest = data
    while rest.strip(b"\0"):  # gzip(1) allows zero padding after the last member
        inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out += inflate.decompress(rest, limit + 1 - len(out))
        except zlib.error as e:
            raise SourceError(f"{what} is gzip but does not decompress: {e}") from None
        if len(out) > limit:
            raise SourceError(
                f"{what} is gzip that expands to over {MAX_EXPANDED >> 20} MiB; decompressed "
                f"user-data may be at most {MAX_EXPANDED >> 20} MiB (all its gzip together)"
            )
        if not inflate.eof:
            raise SourceError(f"{what} is gzip but does not decompress: it is truncated")
        rest = inflate.unused_data
    return bytes(out)


def read_capped(path: Path) -> bytes:
    """A file's bytes, but no more than one past MAX_SIZE (extract_nodeconfig refuses those)."""
    with path.open("rb") as f:
        return f.read(MAX_SIZE + 1)


def _names_our_api(payload: bytes) -> bool:
    for line in payload.splitlines()[:50]:
        key, _, value = line.partition(b":")
        if key.strip() == b"apiVersion" and value.strip().strip(b"'\"").startswith(API_MARKER):
            return True
    return False


@dataclass
class Sources:
    """Where to look; every path and action can be replaced for tests."""

    dmi: Path = Path("/sys/class/dmi/id")
    imds: Imds = field(default_factory=Imds)
    credential_dirs: Sequence[Path] = ()
    by_label: Path = Path("/dev/disk/by-label") / PARTITION_LABEL
    mountpoint: Path = Path("/run/hostbuild/.config-partition")
    mount: Callable[[Path, Path], None] = field(default=lambda dev, mnt: command.mount_ro(dev, mnt))
    umount: Callable[[Path], None] = field(default=lambda mnt: command.umount(mnt))
    # the agent runs while udev's coldplug still goes on: a partition on a disk whose driver
    # loads late (a CD-ROM on SATA, say) shows up only once udev has handled its events
    settle: Callable[[], None] = field(default=lambda: command.settle(SETTLE_TIMEOUT))

    @classmethod
    def from_environment(cls, environ: dict[str, str]) -> Sources:
        dirs = (
            [Path(environ["CREDENTIALS_DIRECTORY"])] if environ.get("CREDENTIALS_DIRECTORY") else []
        )
        return cls(credential_dirs=[*dirs, SYSTEM_CREDENTIALS])


def discover(sources: Sources) -> Discovery:
    """Look through the sources in order; errors are collected, never raised."""
    found = Discovery()
    if is_ec2(sources.dmi):
        found.tried.append("imds")
        try:
            found.platform = sources.imds.platform()
            data = sources.imds.get("latest/user-data")
            if data is None:
                logger.info("IMDS: no user-data")
            elif (config := _checked(data, "IMDS user-data")) is not None:
                found.found = Found("imds", f"{sources.imds.base}/latest/user-data", config)
                return found
        except SourceError as e:
            found.errors.append(f"IMDS: {e}")
    else:
        logger.info("not EC2 (DMI): instance metadata not queried")
    found.tried.append("credential")
    for directory in sources.credential_dirs:
        path = directory / CREDENTIAL
        if path.is_file():
            try:
                if (config := _checked(read_capped(path), f"credential {path}")) is not None:
                    found.found = Found("credential", os.fspath(path), config)
                    return found
            except (OSError, SourceError) as e:
                found.errors.append(f"credential {path}: {e}")
            break  # the unit's own copy shadows the system one
    found.tried.append("partition")
    if not sources.by_label.exists():
        try:
            sources.settle()
        except command.CommandFailed as e:
            logger.warning("waiting for udev to find the disks: %s", e)
    if sources.by_label.exists():
        try:
            data = read_partition(sources)
            if data is not None and (config := _checked(data, "config partition")) is not None:
                detail = f"{sources.by_label}:{PARTITION_FILE}"
                found.found = Found("partition", detail, config)
        except (OSError, SourceError, command.CommandFailed) as e:
            found.errors.append(f"config partition {sources.by_label}: {e}")
    return found


def _checked(data: bytes, what: str) -> bytes | None:
    config = extract_nodeconfig(data)
    if config is None:
        logger.info("%s has no NodeConfig part", what)
    return config


def read_partition(sources: Sources) -> bytes | None:
    """Mount the labelled partition read-only, read the file, unmount."""
    mnt = sources.mountpoint
    mnt.mkdir(parents=True, exist_ok=True)
    sources.mount(sources.by_label.resolve(), mnt)
    try:
        path = mnt / PARTITION_FILE
        if not path.is_file():
            logger.info("config partition %s has no %s", sources.by_label, PARTITION_FILE)
            return None
        return read_capped(path)
    finally:
        sources.umount(mnt)
