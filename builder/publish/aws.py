"""`hostbuild publish ami`: snapshot, AMI, copies, launch permissions and SSM, each step resumable.

Every step first looks for what an earlier run made (the manifest's `publish.aws` record, then
tags and names in the account) and records its result in the manifest before the next step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from builder.build.manifest import MANIFEST
from builder.log import step
from builder.publish import ami, share, ssm
from builder.publish.clients import Clients, aws_errors, check_known_region
from builder.publish.dryrun import Recorder
from builder.publish.request import PublishRequest
from builder.publish.snapshot import ensure_snapshot
from builder.publish.state import PublishState
from builder.publish.upload import UploadStats

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishResult:
    name: str
    source_region: str
    snapshot_id: str
    images: dict[str, str]  # region -> AMI id
    upload: UploadStats
    shared_with: list[str] = field(default_factory=list)
    public: bool = False
    parameters: dict[str, dict[str, str]] = field(default_factory=dict)  # region -> name -> id
    calls: list[dict[str, Any]] | None = None  # --dry-run: the calls a real run would make

    def as_dict(self) -> dict[str, Any]:
        result = {
            "name": self.name, "source_region": self.source_region,
            "snapshot_id": self.snapshot_id, "images": self.images,
            "upload": self.upload.as_dict(), "shared_with": self.shared_with,
            "public": self.public, "parameters": self.parameters,
        }  # fmt: skip
        return result if self.calls is None else {**result, "dry_run_calls": self.calls}


def publish_ami(request: PublishRequest, clients: Clients | None = None) -> PublishResult:
    """Publish the build as AMIs; a second run with the same request changes nothing."""
    if request.endpoint_url is None:
        check_known_region(request.region, "--region")
        for region in request.copy_to:
            check_known_region(region, "--copy-to")
    recorder = Recorder() if request.dry_run else None
    clients = clients or Clients(request.timeouts, workers=request.workers,
                                 endpoint_url=request.endpoint_url, recorder=recorder)  # fmt: skip
    state = PublishState(request.image.directory, dry_run=request.dry_run)
    hint = (f"what is done is recorded in {request.image.directory / MANIFEST}; "
            "run the same command again to resume")  # fmt: skip
    image, source = request.image, request.region
    name = ami.ami_name(image)

    with step(f"Snapshot of {image.raw.name} in {source}"), aws_errors(source, hint):
        snapshot = ensure_snapshot(clients, request, state)
    with step(f"AMI {name} in {source}"), aws_errors(source, hint):
        source_id = ensure_source_image(clients, request, state, snapshot.snapshot_id)
    for region in request.copy_to:
        with step(f"Copy of {source_id} to {region}"), aws_errors(region, hint):
            start_copy(clients, request, state, region, source_id)
    for region in request.copy_to:
        with step(f"Copy in {region} available"), aws_errors(region, hint):
            finish_copy(clients, request, state, region, source_id)
    if request.share or request.public:
        for region in request.regions:
            whom = "everyone" if request.public else ", ".join(request.share)
            with step(f"Launch permission in {region} for {whom}"), aws_errors(region, hint):
                grant(clients, request, state, region)
    parameters: dict[str, dict[str, str]] = {}
    if request.ssm_prefix:
        names = ssm.parameter_names(request.ssm_prefix, image.version, request.promote)
        for region in request.regions:
            with step(f"SSM parameters in {region}"), aws_errors(region, hint):
                parameters[region] = write_parameters(clients, request, state, region, names)
    images = {region: state.images()[region]["image_id"] for region in request.regions}
    return PublishResult(
        name=name, source_region=source, snapshot_id=snapshot.snapshot_id, images=images,
        upload=snapshot.stats, shared_with=list(request.share), public=request.public,
        parameters=parameters, calls=recorder.describe() if recorder else None,
    )  # fmt: skip


def recorded_image(clients: Clients, state: PublishState, region: str) -> str | None:
    """The recorded AMI of `region` if it still exists; a stale record is dropped."""
    record = state.images().get(region)
    if not record:
        return None
    described = ami.describe_image(clients.ec2(region), record["image_id"])
    if described and described.get("State") not in ami.FAILED:
        return str(record["image_id"])
    logger.info("recorded AMI %s in %s is gone; looking again", record["image_id"], region)
    state.forget_image(region)
    return None


def ensure_source_image(
    clients: Clients, request: PublishRequest, state: PublishState, snapshot_id: str
) -> str:
    region, image = request.region, request.image
    ec2 = clients.ec2(region)
    image_id = recorded_image(clients, state, region)
    if image_id is None:
        existing = ami.find_image(ec2, ami.ami_name(image), region)
        if existing:
            image_id = str(existing["ImageId"])
            logger.info("found AMI %s named %s", image_id, ami.ami_name(image))
            # an earlier run may have stopped before tagging: tag again (as creation would)
            ec2.create_tags(Resources=[image_id], Tags=ami.image_tags(image))
        else:
            image_id = ami.register_image(ec2, image, snapshot_id, region, request.timeouts.poll,
                                          request.uefi_data)  # fmt: skip
        state.set_image(region, image_id=image_id, snapshot_ids=[snapshot_id], state="pending")
    if state.images()[region].get("state") != "available":
        ami.wait_available(ec2, image_id, region, request.timeouts)
        state.set_image(region, image_id=image_id, snapshot_ids=[snapshot_id], state="available")
    return image_id


def start_copy(
    clients: Clients, request: PublishRequest, state: PublishState, region: str, source_id: str
) -> None:
    """Start CopyImage unless the region already has the AMI (by record or by name)."""
    if recorded_image(clients, state, region):
        return
    ec2 = clients.ec2(region)
    existing = ami.find_image(ec2, ami.ami_name(request.image), region)
    if existing:
        image_id = str(existing["ImageId"])
        logger.info("found AMI %s in %s", image_id, region)
    else:
        image_id = ami.copy_image(ec2, request.image, request.region, source_id)
    state.set_image(region, image_id=image_id, copied_from=source_id, state="pending")


def finish_copy(
    clients: Clients, request: PublishRequest, state: PublishState, region: str, source_id: str
) -> None:
    """Wait for the copy, tag it and its snapshots, and check that no twin appeared."""
    record = state.images()[region]
    if record.get("state") == "available":
        return
    ec2 = clients.ec2(region)
    described = ami.wait_available(ec2, record["image_id"], region, request.timeouts)
    snapshots = ami.snapshot_ids(described)
    ami.tag_copy(ec2, request.image, record["image_id"], snapshots, source_id, request.region)
    ami.find_image(ec2, ami.ami_name(request.image), region)  # raises if a race made two
    state.set_image(region, image_id=record["image_id"], copied_from=source_id,
                    snapshot_ids=snapshots, state="available")  # fmt: skip


def grant(clients: Clients, request: PublishRequest, state: PublishState, region: str) -> None:
    record = state.images()[region]
    ec2 = clients.ec2(region)
    if request.share:
        share.share_with_accounts(ec2, record["image_id"], record.get("snapshot_ids", []),
                                  list(request.share))  # fmt: skip
        record["shared_with"] = sorted({*record.get("shared_with", []), *request.share})
    if request.public:
        share.make_public(ec2, record["image_id"], region)
        record["public"] = True
    state.save()


def write_parameters(
    clients: Clients, request: PublishRequest, state: PublishState, region: str,
    names: list[str],
) -> dict[str, str]:  # fmt: skip
    image_id = state.images()[region]["image_id"]
    written = state.aws.setdefault("ssm", {}).setdefault(region, {})
    for name in names:
        changed = ssm.put_image_parameter(
            clients.ssm(region), name, image_id, region,
            timeout=request.timeouts.parameter, poll=request.timeouts.poll,
        )  # fmt: skip
        logger.info("%s = %s%s", name, image_id, "" if changed else " (already)")
        written[name] = image_id
        state.save()
    return {name: image_id for name in names}
