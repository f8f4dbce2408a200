"""SSM parameters that name the AMI: `<prefix>/<version>/image_id` and the `latest` pointer.

With DataType aws:ec2:image the value is validated asynchronously, so a successful PutParameter
does not mean the value was stored: it is read back until it shows, or the publish fails.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import botocore.exceptions

from builder.errors import HostbuildError
from builder.publish.clients import error_code

logger = logging.getLogger(__name__)


def parameter_names(prefix: str, version: str, promote: bool) -> list[str]:
    names = [f"{prefix}/{version}/image_id"]
    return [*names, f"{prefix}/latest/image_id"] if promote else names


def get_value(ssm: Any, name: str) -> str | None:
    try:
        value: str = ssm.get_parameter(Name=name)["Parameter"]["Value"]
        return value
    except botocore.exceptions.ClientError as e:
        if error_code(e) == "ParameterNotFound":
            return None
        raise


def put_image_parameter(
    ssm: Any, name: str, image_id: str, region: str, *, timeout: float, poll: float
) -> bool:
    """Point `name` at `image_id` and confirm it by reading it back; False if already so."""
    current = get_value(ssm, name)
    if current == image_id:
        return False
    if current is not None:
        logger.warning("%s in %s pointed at %s; now %s", name, region, current, image_id)
    ssm.put_parameter(
        Name=name, Value=image_id, Type="String", DataType="aws:ec2:image", Overwrite=True,
        Description="AMI published by hostbuild",
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while (value := get_value(ssm, name)) != image_id:
        if time.monotonic() >= deadline:
            raise HostbuildError(
                f"SSM parameter {name} in {region} reads {value!r}, not {image_id!r}, "
                f"{timeout:.0f}s after PutParameter",
                hint="SSM validates aws:ec2:image values after accepting them: check that the "
                "AMI is available in that region; then run the same command again",
            )
        time.sleep(poll)
    return True
