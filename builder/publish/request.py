"""What to publish and where: the build read from its manifest, and the validated options."""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.build.manifest import MANIFEST
from builder.errors import HostbuildError
from builder.firmware.varstore import (
    SecureBootKeys,
    read_certificates,
    read_uefi_data,
    write_variable_store,
)

GIB = 1024**3
# partition-region-number, e.g. eu-west-1, us-gov-west-1, ap-southeast-5
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}\Z")
ACCOUNT_RE = re.compile(r"^\d{12}\Z")
SSM_PREFIX_RE = re.compile(r"^(/[A-Za-z0-9_.\-]+)+\Z")
ARCHITECTURES = {"amd64": "x86_64"}
# manifest secure_boot.certificates key -> the UEFI variable that must hold that certificate
SIGNED_BY = {"pk": "PK", "kek": "KEK", "db": "db"}


@dataclass(frozen=True)
class Image:
    """The build being published: its raw disk and the manifest facts an AMI is made from."""

    directory: Path
    raw: Path
    name: str  # the build name, e.g. worker-0.1.0-7
    profile: str
    version: str
    raw_bytes: int
    sha256: str  # digest of the raw image: ClientTokens and tags derive from it
    architecture: str  # EC2 spelling
    secure_boot: bool = False  # the manifest's secure_boot.signed: its UKIs are signed with db
    # The manifest's secure_boot.certificates fingerprints: {"pk"|"kek"|"db": sha256 hex}
    certificates: Mapping[str, str] = field(default_factory=dict)

    @property
    def volume_gib(self) -> int:
        return max(1, math.ceil(self.raw_bytes / GIB))


@dataclass(frozen=True)
class Timeouts:
    """Every wait has a bound, so a publish never hangs (seconds unless named otherwise)."""

    connect: float = 10
    read: float = 20  # per request attempt
    attempts: int = 8  # botocore retries (throttling, 5xx, connection errors)
    upload: float = 3 * 3600  # the whole block upload
    snapshot: float = 3600  # CompleteSnapshot to `completed`
    image: float = 3600  # RegisterImage/CopyImage to `available`
    parameter: float = 120  # PutParameter to a confirmed read-back
    poll: float = 5  # between two Describe calls while waiting
    snapshot_expiry_minutes: int = 60  # StartSnapshot Timeout: AWS cancels a stalled upload


@dataclass(frozen=True)
class PublishRequest:
    """A validated `hostbuild publish ami`."""

    image: Image
    region: str
    copy_to: tuple[str, ...] = ()
    share: tuple[str, ...] = ()
    public: bool = False
    ssm_prefix: str | None = None
    promote: bool = False
    workers: int = 64
    endpoint_url: str | None = None
    dry_run: bool = False
    progress: bool = False
    timeouts: Timeouts = field(default_factory=Timeouts)
    # The AMI's UEFI variable store (base64, from `hostbuild firmware vars --aws-output`): EC2
    # instances then enforce Secure Boot with its PK, KEK and db; None for unsigned images
    uefi_data: str | None = None

    @property
    def regions(self) -> tuple[str, ...]:
        return (self.region, *self.copy_to)


def load_image(directory: Path) -> Image:
    """Read the build in `directory` (manifest.json and NAME.raw) without changing it."""
    path = directory / MANIFEST
    if not path.is_file():
        raise HostbuildError(
            f"no {MANIFEST} in {str(directory)!r}",
            hint="--image takes the output directory of 'hostbuild image' "
            "(it holds manifest.json and NAME.raw)",
        )
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
        name = str(manifest["name"])
        raw_entry = manifest["outputs"][f"{name}.raw"]
        raw_bytes, sha256 = int(raw_entry["bytes"]), str(raw_entry["sha256"])
        profile, version, arch = manifest["profile"], manifest["version"], manifest["arch"]
        record = manifest.get("secure_boot") or {}
        secure_boot = record.get("signed") is True
        certificates = {key: str(value["sha256"]) for key, value in
                        (record.get("certificates") or {}).items() if key in SIGNED_BY}  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise HostbuildError(
            f"{path}: not a manifest of 'hostbuild image' ({type(e).__name__}: {e})",
            hint="it needs name, profile, version, arch and outputs.NAME.raw.{bytes,sha256}",
        ) from e
    if arch not in ARCHITECTURES:
        allowed = ", ".join(ARCHITECTURES)
        raise HostbuildError(f"{path}: arch {arch!r} cannot be published yet; allowed: {allowed}")
    raw = directory / f"{name}.raw"
    if not raw.is_file():
        raise HostbuildError(f"{path} names {raw.name!r}, which is missing from {directory}")
    if raw.stat().st_size != raw_bytes:
        raise HostbuildError(
            f"{raw}: {raw.stat().st_size} bytes, but {path} records {raw_bytes}",
            hint="the raw image changed after the build; rebuild it",
        )
    return Image(directory, raw, name, str(profile), str(version), raw_bytes, sha256,
                 ARCHITECTURES[arch], secure_boot, certificates)  # fmt: skip


def split_list(values: tuple[str, ...]) -> list[str]:
    """Options given several times and/or comma-separated, in order, without repeats."""
    items = [v.strip() for value in values for v in value.split(",") if v.strip()]
    return list(dict.fromkeys(items))


def check_region(region: str, option: str) -> str:
    if not REGION_RE.match(region):
        raise HostbuildError(
            f"{option} {region!r} is not a region name",
            hint="region names look like eu-west-1 or us-east-2",
        )
    return region


def check_ssm_prefix(prefix: str) -> str:
    if not SSM_PREFIX_RE.match(prefix) or prefix.lower().startswith(("/aws", "/ssm")):
        raise HostbuildError(
            f"--ssm-prefix {prefix!r} is not a parameter path this account can write",
            hint="it starts with '/', has no trailing '/', uses letters, digits, '_', '.', '-', "
            "and does not begin with /aws or /ssm (reserved); e.g. /hostbuild/worker",
        )
    return prefix


def make_request(
    image: Image,
    region: str | None,
    *,
    copy_to: tuple[str, ...] = (),
    share: tuple[str, ...] = (),
    public: bool = False,
    ssm_prefix: str | None = None,
    promote: bool = False,
    workers: int = 64,
    endpoint_url: str | None = None,
    dry_run: bool = False,
    progress: bool = False,
    timeouts: Timeouts | None = None,
    uefi_data: Path | None = None,
) -> PublishRequest:
    """Validate the options of a publish; every problem is a HostbuildError naming the option."""
    if not region:
        raise HostbuildError(
            "no AWS region given",
            hint="pass --region, or set AWS_REGION or a region in the AWS config profile",
        )
    check_region(region, "--region")
    copies = [check_region(r, "--copy-to") for r in split_list(copy_to)]
    if region in copies:
        raise HostbuildError(f"--copy-to {region!r} is the source region (--region)")
    accounts = split_list(share)
    for account in accounts:
        if not ACCOUNT_RE.match(account):
            raise HostbuildError(
                f"--share {account!r} is not an AWS account id", hint="account ids are 12 digits"
            )
    if accounts and public:
        raise HostbuildError(
            "--share and --public exclude each other",
            hint="a public AMI can be launched by every account already",
        )
    if ssm_prefix is not None:
        check_ssm_prefix(ssm_prefix)
    if promote and ssm_prefix is None:
        raise HostbuildError("--promote moves <prefix>/latest/image_id: it needs --ssm-prefix")
    if not 1 <= workers <= 256:
        raise HostbuildError(f"--workers {workers}: allowed are 1 to 256")
    blob = check_uefi_data(image, uefi_data)
    return PublishRequest(
        image=image, region=region, copy_to=tuple(copies), share=tuple(accounts), public=public,
        ssm_prefix=ssm_prefix, promote=promote, workers=workers, endpoint_url=endpoint_url,
        dry_run=dry_run, progress=progress, timeouts=timeouts or Timeouts(), uefi_data=blob,
    )  # fmt: skip


def check_uefi_data(image: Image, path: Path | None) -> str | None:
    """The UefiData to register: required for a Secure Boot image, refused for an unsigned one."""
    manifest = image.directory / MANIFEST
    certs = image.directory / "secure-boot"  # where a signed build leaves its certificates
    if path is None:
        if not image.secure_boot:
            return None
        exported = [certs / name for name in ("PK.crt", "KEK.crt", "db.crt")]
        if not all(p.is_file() for p in exported):
            raise HostbuildError(
                f"{manifest} says the image is signed for Secure Boot, but no --uefi-data was "
                f"given and {certs}/ lacks the build's PK.crt, KEK.crt or db.crt: EC2 would "
                "boot it without the fleet's keys, enforcing nothing",
                hint="write the variable store from the fleet's certificates, "
                "'hostbuild firmware vars --pk PK.crt --kek KEK.crt --db db.crt "
                "--aws-output uefi-data.b64', and pass --uefi-data uefi-data.b64",
            )
        # the store of the build's own certificates (checked against the manifest below)
        with tempfile.TemporaryDirectory(prefix="hostbuild-uefi-data-") as work:
            path = Path(work) / "uefi-data.b64"
            keys = SecureBootKeys(exported[0], (exported[1],), (exported[2],))
            write_variable_store(keys, Path(work) / "no-template", aws_output=path)
            return _checked_uefi_data(image, path, manifest, certs)
    if not image.secure_boot:
        raise HostbuildError(
            f"--uefi-data enrols Secure Boot keys, but {manifest} has no secure_boot.signed: "
            "EC2 would refuse to boot its unsigned UKI",
            hint="build a Secure Boot image (the profile's secure_boot section), or publish "
            "this one without --uefi-data",
        )
    return _checked_uefi_data(image, path, manifest, certs)


def _checked_uefi_data(image: Image, path: Path, manifest: Path, certs: Path) -> str:
    """The UefiData in `path`, refused unless it enrols the certificates the build recorded."""
    blob = read_uefi_data(path)
    if image.certificates:
        held = read_certificates(path)
        for key, fingerprint in sorted(image.certificates.items()):
            variable = SIGNED_BY[key]
            if fingerprint not in held[variable]:
                raise HostbuildError(
                    f"--uefi-data {str(path)!r}: its {variable} does not hold the certificate "
                    f"the build recorded ({manifest}: secure_boot.certificates.{key}.sha256 "
                    f"{fingerprint})",
                    hint=f"an instance would not trust this build's UKIs; write the store from "
                    f"the build's own certificates in {certs}/",
                )
    return blob
