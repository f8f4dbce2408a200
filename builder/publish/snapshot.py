"""The snapshot of the raw image, uploaded with the EBS direct APIs; found or resumed if it exists.

Resume rule (EBS cannot list the blocks of a pending snapshot): the manifest records the
snapshot id and a watermark below which every block was written. If that snapshot is still
`pending`, the upload continues into it from the watermark; if it is gone, in `error`, or
completed by someone else, a new snapshot is started with the next ClientToken.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from builder.errors import HostbuildError
from builder.publish.blocks import aggregate_checksum
from builder.publish.clients import Clients, error_code
from builder.publish.progress import ProgressLine
from builder.publish.request import Image, PublishRequest
from builder.publish.state import PublishState
from builder.publish.upload import Upload, UploadStats
from builder.publish.wait import wait_for_state

logger = logging.getLogger(__name__)

COMPLETE_TAG = "hostbuild:checksum"  # set only once the snapshot is completed
DIGEST_TAG = "hostbuild:image-sha256"
MAX_STARTS = 3


@dataclass(frozen=True)
class SnapshotResult:
    snapshot_id: str
    stats: UploadStats  # all zeros when nothing had to be uploaded


def image_tags(image: Image) -> list[dict[str, str]]:
    """The tags of every snapshot and AMI of a build."""
    return [
        {"Key": "Name", "Value": image.name},
        {"Key": "hostbuild:profile", "Value": image.profile},
        {"Key": "hostbuild:version", "Value": image.version},
        {"Key": DIGEST_TAG, "Value": image.sha256},
    ]


def client_token(image: Image, region: str, attempt: int) -> str:
    """The same image, region and attempt always give the same StartSnapshot token."""
    return hashlib.sha256(f"hostbuild:{image.sha256}:{region}:{attempt}".encode()).hexdigest()


def describe_snapshot(ec2: Any, snapshot_id: str) -> dict[str, Any] | None:
    try:
        found = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    except botocore.exceptions.ClientError as e:
        if error_code(e) == "InvalidSnapshot.NotFound":
            return None
        raise
    return found[0] if found else None


def find_completed_snapshot(ec2: Any, image: Image) -> str | None:
    """A completed snapshot of this image from an earlier run (one whose record was lost)."""
    found = ec2.describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": f"tag:{DIGEST_TAG}", "Values": [image.sha256]},
        {"Name": "tag-key", "Values": [COMPLETE_TAG]},
        {"Name": "status", "Values": ["completed"]},
    ])["Snapshots"]  # fmt: skip
    ids = sorted(s["SnapshotId"] for s in found)
    return ids[0] if ids else None


def ensure_snapshot(
    clients: Clients, request: PublishRequest, state: PublishState
) -> SnapshotResult:
    """The id of a completed snapshot of the image in the source region, uploading if needed."""
    image, region = request.image, request.region
    ec2, ebs = clients.ec2(region), clients.ebs(region)
    record = state.snapshot if (state.snapshot or {}).get("region") == region else None
    attempt = 0
    if record:
        attempt = int(record.get("attempt", 0))
        existing = describe_snapshot(ec2, record["snapshot_id"])
        status = existing["State"] if existing else "missing"
        logger.info("recorded snapshot %s (%s) is %s", record["snapshot_id"], record["status"],
                    status)  # fmt: skip
        if record["status"] == "completed" and status == "completed":
            return SnapshotResult(record["snapshot_id"], UploadStats())
        if record["status"] == "completing" and status in ("pending", "completed"):
            if status == "pending":  # CompleteSnapshot may never have reached AWS: send it again
                complete(ebs, record, again=True)
            return SnapshotResult(finish(ec2, request, state, record), UploadStats())
        if record["status"] == "uploading" and status == "pending":
            return SnapshotResult(*upload(clients, request, state, record))
        attempt += 1  # gone, failed, or not ours to trust: start a new snapshot
    elif found := find_completed_snapshot(ec2, image):
        logger.info("found completed snapshot %s of this image", found)
        state.set_snapshot(region=region, snapshot_id=found, status="completed", attempt=0,
                           image_sha256=image.sha256)  # fmt: skip
        return SnapshotResult(found, UploadStats())
    for _ in range(MAX_STARTS):
        token = client_token(image, region, attempt)
        started = ebs.start_snapshot(
            VolumeSize=image.volume_gib, Tags=image_tags(image), ClientToken=token,
            Description=f"hostbuild {image.name} raw image (sha256 {image.sha256[:16]})",
            Timeout=request.timeouts.snapshot_expiry_minutes,
        )  # fmt: skip
        snapshot_id, status = started["SnapshotId"], started["Status"]
        # AWS says 512 KiB; moto says 512 bytes. The block size is fixed by the API: ignore it.
        logger.debug("StartSnapshot: %s %s (BlockSize %s)", snapshot_id, status,
                     started.get("BlockSize"))  # fmt: skip
        record = state.set_snapshot(
            region=region, snapshot_id=snapshot_id, status="uploading", attempt=attempt,
            client_token=token, resume_below=0, image_sha256=image.sha256,
        )  # fmt: skip
        if status == "completed":  # the token's snapshot was completed by an earlier run
            state.update_snapshot(status="completing")
            return SnapshotResult(finish(ec2, request, state, record), UploadStats())
        if status == "pending":
            return SnapshotResult(*upload(clients, request, state, record))
        attempt += 1
    raise HostbuildError(f"StartSnapshot in {region} gave no usable snapshot after "
                         f"{MAX_STARTS} tries")  # fmt: skip


def upload(
    clients: Clients, request: PublishRequest, state: PublishState, record: dict[str, Any]
) -> tuple[str, UploadStats]:
    """Send the blocks (from the recorded watermark), then CompleteSnapshot and wait."""
    snapshot_id, region = record["snapshot_id"], request.region
    resume_below = int(record.get("resume_below", 0))
    if resume_below:
        logger.info("resuming the upload into %s from block %d", snapshot_id, resume_below)
    progress = ProgressLine(request.progress)
    job = Upload(
        clients.ebs(region), snapshot_id, request.image.raw, workers=request.workers,
        deadline=request.timeouts.upload, resume_below=resume_below, on_progress=progress.update,
        on_checkpoint=lambda mark: state.update_snapshot(resume_below=max(mark, resume_below)),
    )  # fmt: skip
    try:
        result = job.run()
    finally:
        progress.close(job.stats)
    stats = result.stats
    logger.info(
        "sent %d blocks (%d bytes) in %.1fs; skipped %d holes, %d zero blocks, %d already sent",
        stats.blocks_sent, stats.bytes_sent, stats.seconds, stats.blocks_hole, stats.blocks_zero,
        stats.blocks_resumed,
    )  # fmt: skip
    if not result.digests:
        raise HostbuildError(f"{request.image.raw} holds only zeros: there is nothing to publish")
    checksum = aggregate_checksum(result.digests[i] for i in sorted(result.digests))
    state.update_snapshot(status="completing", resume_below=result.watermark, checksum=checksum,
                          changed_blocks=len(result.digests))  # fmt: skip
    record = state.snapshot or record
    complete(clients.ebs(region), record)
    return finish(clients.ec2(region), request, state, record), stats


def complete(ebs: Any, record: dict[str, Any], again: bool = False) -> None:
    """CompleteSnapshot with the recorded block count and LINEAR checksum."""
    try:
        ebs.complete_snapshot(
            SnapshotId=record["snapshot_id"], ChangedBlocksCount=record["changed_blocks"],
            Checksum=record["checksum"], ChecksumAlgorithm="SHA256",
            ChecksumAggregationMethod="LINEAR",
        )  # fmt: skip
    except botocore.exceptions.ClientError as e:
        if not again or error_code(e) not in ("ValidationException", "ConflictException"):
            raise
        logger.debug("CompleteSnapshot again: %s (it was already sealing)", error_code(e))


def finish(ec2: Any, request: PublishRequest, state: PublishState, record: dict[str, Any]) -> str:
    """Wait for the snapshot to be completed, mark it with the completion tag, record it."""
    snapshot_id = record["snapshot_id"]

    def status() -> tuple[str, str]:
        found = describe_snapshot(ec2, snapshot_id)
        return (found["State"], found.get("StateMessage", "")) if found else ("missing", "")

    try:
        wait_for_state(
            f"snapshot {snapshot_id} in {request.region}", status, ready="completed",
            failed={"error", "recoverable", "missing"}, timeout=request.timeouts.snapshot,
            interval=request.timeouts.poll, hint="run the same command again",
        )  # fmt: skip
    except HostbuildError:
        current, _ = status()
        if current != "pending":  # the next run starts a new snapshot
            state.update_snapshot(status="failed")
        raise
    checksum = record.get("checksum") or "unknown"
    ec2.create_tags(Resources=[snapshot_id], Tags=[{"Key": COMPLETE_TAG, "Value": checksum}])
    state.update_snapshot(status="completed")
    return str(snapshot_id)
