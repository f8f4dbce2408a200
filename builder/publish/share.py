"""Launch permissions: share with accounts (snapshots first, then the AMI) or make an AMI public."""

from __future__ import annotations

import logging
from typing import Any

import botocore.exceptions

from builder.errors import HostbuildError
from builder.publish.clients import error_code

logger = logging.getLogger(__name__)

UNSUPPORTED = {"NotImplemented", "InvalidAction", "UnsupportedOperation", "InternalFailure"}


def share_with_accounts(ec2: Any, image_id: str, snapshots: list[str], accounts: list[str]) -> None:
    """Let `accounts` launch the AMI and create volumes from its snapshots (in that order)."""
    # Snapshots before the image: an account that can see the AMI can then always use it.
    for snapshot_id in snapshots:
        ec2.modify_snapshot_attribute(
            SnapshotId=snapshot_id, Attribute="createVolumePermission", OperationType="add",
            UserIds=accounts,
        )  # fmt: skip
    ec2.modify_image_attribute(
        ImageId=image_id, LaunchPermission={"Add": [{"UserId": a} for a in accounts]}
    )


def check_public_sharing(ec2: Any, region: str) -> None:
    """Fail clearly when the account's block public access for AMIs forbids public images."""
    try:
        state = ec2.get_image_block_public_access_state()["ImageBlockPublicAccessState"]
    except botocore.exceptions.ClientError as e:
        if error_code(e) not in UNSUPPORTED:
            raise
        # an AWS-compatible cloud (or a mock) without the call: ModifyImageAttribute will tell
        logger.warning("cannot read image block public access in %s (%s)", region, error_code(e))
        return
    if state != "unblocked":
        raise HostbuildError(
            f"block public access for AMIs is {state!r} in {region}: AWS refuses public AMIs there",
            hint="an administrator can turn it off with ec2:DisableImageBlockPublicAccess (aws ec2 "
            f"disable-image-block-public-access --region {region}); it can take minutes to show "
            "as 'unblocked'; then run the same command again",
        )


def make_public(ec2: Any, image_id: str, region: str) -> None:
    """Let every account launch the AMI (its snapshots stay private: launching needs no more)."""
    check_public_sharing(ec2, region)
    ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Add": [{"Group": "all"}]})
