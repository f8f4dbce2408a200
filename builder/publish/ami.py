"""AMIs: register one from the snapshot, copy it to other regions, find existing ones by name.

AMI names are unique per account and region for RegisterImage (InvalidAMIName.Duplicate), but
CopyImage does not enforce it: copies are looked up by name before copying.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import botocore.exceptions

from builder.errors import HostbuildError
from builder.publish.clients import error_code
from builder.publish.request import Image, Timeouts
from builder.publish.snapshot import image_tags

__all__ = ["image_tags"]
from builder.publish.wait import wait_for_state

logger = logging.getLogger(__name__)

ROOT_DEVICE = "/dev/xvda"
FAILED = {"invalid", "deregistered", "failed", "error", "disabled"}


def ami_name(image: Image) -> str:
    return f"{image.profile}-{image.version}-{image.architecture}"


def ami_description(image: Image) -> str:
    return f"hostbuild {image.profile} {image.version} ({image.architecture}, UEFI)"


def register_params(image: Image, snapshot_id: str, uefi_data: str | None = None) -> dict[str, Any]:
    """RegisterImage's parameters: a UEFI, IMDSv2-only, NitroTPM, ENA node AMI on gp3; with
    `uefi_data` (a base64 variable store holding PK, KEK, db) instances enforce Secure Boot."""
    params: dict[str, Any] = {
        "Name": ami_name(image),
        "Description": ami_description(image),
        "Architecture": image.architecture,
        "VirtualizationType": "hvm",
        "BootMode": "uefi",
        "ImdsSupport": "v2.0",
        "TpmSupport": "v2.0",
        "EnaSupport": True,
        "SriovNetSupport": "simple",
        "RootDeviceName": ROOT_DEVICE,
        "BlockDeviceMappings": [
            {
                "DeviceName": ROOT_DEVICE,
                "Ebs": {
                    "SnapshotId": snapshot_id,
                    "VolumeSize": image.volume_gib,
                    "VolumeType": "gp3",
                    "DeleteOnTermination": True,
                },
            }
        ],
        "TagSpecifications": [{"ResourceType": "image", "Tags": image_tags(image)}],
    }
    # BootMode stays "uefi" (not uefi-preferred): a store of Secure Boot keys means nothing to
    # a legacy BIOS boot, and the image has no BIOS boot path anyway
    return params | ({"UefiData": uefi_data} if uefi_data is not None else {})


def find_image(ec2: Any, name: str, region: str) -> dict[str, Any] | None:
    """This account's AMI called `name` in the client's region, if any."""
    found = [
        i for i in ec2.describe_images(Owners=["self"], Filters=[
            {"Name": "name", "Values": [name]}])["Images"]
        if i.get("State") not in ("deregistered", "failed")
    ]  # fmt: skip
    if len(found) > 1:
        ids = ", ".join(sorted(i["ImageId"] for i in found))
        raise HostbuildError(
            f"{len(found)} AMIs are named {name!r} in {region}: {ids}",
            hint="two copies raced; deregister all but one and run again",
        )
    return found[0] if found else None


def describe_image(ec2: Any, image_id: str) -> dict[str, Any] | None:
    try:
        found = ec2.describe_images(ImageIds=[image_id])["Images"]
    except botocore.exceptions.ClientError as e:
        if error_code(e) in ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"):
            return None
        raise
    return found[0] if found else None


def register_image(
    ec2: Any, image: Image, snapshot_id: str, region: str, poll: float,
    uefi_data: str | None = None,
) -> str:  # fmt: skip
    """Register the AMI, or return the one another run registered under the same name."""
    try:
        params = register_params(image, snapshot_id, uefi_data)
        image_id: str = ec2.register_image(**params)["ImageId"]
        return image_id
    except botocore.exceptions.ClientError as e:
        if error_code(e) != "InvalidAMIName.Duplicate":
            raise
    # lost a race, or an earlier run's record was lost: the name may take a moment to show
    for _ in range(6):
        if existing := find_image(ec2, ami_name(image), region):
            logger.info("AMI %s already exists as %s", ami_name(image), existing["ImageId"])
            return str(existing["ImageId"])
        time.sleep(poll)
    raise HostbuildError(
        f"RegisterImage says an AMI named {ami_name(image)!r} exists in {region}, "
        "but DescribeImages does not show it",
        hint="it may be owned by another account or be deregistering; run again later",
    )


def copy_image(ec2: Any, image: Image, source_region: str, source_id: str) -> str:
    """Copy the source AMI into the client's region; the source id is the ClientToken."""
    tags = [*image_tags(image), {"Key": "hostbuild:source-image", "Value": source_id},
            {"Key": "hostbuild:source-region", "Value": source_region}]  # fmt: skip
    copied: str = ec2.copy_image(
        SourceRegion=source_region, SourceImageId=source_id, Name=ami_name(image),
        Description=ami_description(image), ClientToken=source_id,
        TagSpecifications=[{"ResourceType": "image", "Tags": tags},
                           {"ResourceType": "snapshot", "Tags": tags}],
    )["ImageId"]  # fmt: skip
    return copied


def wait_available(ec2: Any, image_id: str, region: str, timeouts: Timeouts) -> dict[str, Any]:
    """Wait until the AMI is `available`; return its description (with its snapshots)."""
    described: dict[str, Any] = {}

    def state() -> tuple[str, str]:
        nonlocal described
        described = describe_image(ec2, image_id) or {"State": "missing"}
        return described["State"], described.get("StateReason", {}).get("Message", "")

    wait_for_state(
        f"AMI {image_id} in {region}", state, ready="available", failed=FAILED | {"missing"},
        timeout=timeouts.image, interval=timeouts.poll, hint="run the same command again",
    )  # fmt: skip
    return described


def snapshot_ids(described: dict[str, Any]) -> list[str]:
    return [
        m["Ebs"]["SnapshotId"]
        for m in described.get("BlockDeviceMappings", [])
        if "Ebs" in m and m["Ebs"].get("SnapshotId")
    ]


def tag_copy(ec2: Any, image: Image, image_id: str, snapshots: list[str], source_id: str,
             source_region: str) -> None:  # fmt: skip
    """Re-apply the build's tags to a copy and its snapshots (copies carry no user tags)."""
    tags = [*image_tags(image), {"Key": "hostbuild:source-image", "Value": source_id},
            {"Key": "hostbuild:source-region", "Value": source_region}]  # fmt: skip
    ec2.create_tags(Resources=[image_id, *snapshots], Tags=tags)
