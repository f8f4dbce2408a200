"""Publishing into a real AWS account (marker `aws`, never in CI): what no mock can check.

Set HOSTBUILD_AWS_TEST_REGION and credentials. It publishes a tiny image, checks the attributes
AWS recorded (moto keeps none of them), publishes again to see nothing uploaded, and cleans up.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import boto3
import pytest

from builder.publish.aws import publish_ami
from builder.publish.request import load_image, make_request
from tests.awsmock import BLOCK, MIB, make_build, pattern

REGION = os.environ.get("HOSTBUILD_AWS_TEST_REGION", "")
pytestmark = [
    pytest.mark.aws,
    pytest.mark.skipif(not REGION, reason="HOSTBUILD_AWS_TEST_REGION is not set"),
]


def test_real_publish_records_uefi_imds_tpm_and_reruns_as_a_no_op(tmp_path: Path) -> None:
    version = f"0.0.0-{uuid.uuid4().hex[:8]}"  # a fresh AMI name on every run
    build = make_build(tmp_path / "out", [(MIB, pattern(2 * BLOCK, 1))], size=1024 * MIB,
                       name=f"worker-{version}", version=version)  # fmt: skip
    ec2 = boto3.client("ec2", region_name=REGION)
    result = None
    try:
        result = publish_ami(make_request(load_image(build), REGION, workers=8))
        image_id = result.images[REGION]
        for attribute, expected in [("bootMode", "uefi"), ("imdsSupport", "v2.0"),
                                    ("tpmSupport", "v2.0")]:  # fmt: skip
            answer = ec2.describe_image_attribute(ImageId=image_id, Attribute=attribute)
            key = attribute[0].upper() + attribute[1:]
            assert answer[key]["Value"] == expected, attribute
        image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
        ebs = image["BlockDeviceMappings"][0]["Ebs"]
        assert (ebs["SnapshotId"], ebs["VolumeType"], ebs["VolumeSize"]) == (
            result.snapshot_id, "gp3", 1,
        )  # fmt: skip
        again = publish_ami(make_request(load_image(build), REGION, workers=8))
        assert again.images == result.images and again.upload.bytes_sent == 0
    finally:
        if result is not None:
            ec2.deregister_image(ImageId=result.images[REGION])
            ec2.delete_snapshot(SnapshotId=result.snapshot_id)
