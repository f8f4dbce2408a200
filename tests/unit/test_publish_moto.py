"""`hostbuild publish ami` end to end against a moto server on 127.0.0.1.

What moto does not do, and how these tests deal with it:
- EC2 shows an EBS-direct snapshot as `completed` from StartSnapshot on: `aws_faithful_snapshots`
  keeps it `pending` until CompleteSnapshot, as AWS does.
- StartSnapshot reports BlockSize 512 (AWS: 524288): the uploader ignores the field, and the
  round-trip check below would catch block indices computed from it.
- ClientToken (StartSnapshot, CopyImage), checksums and ChangedBlocksCount are ignored, and
  RegisterImage keeps only Name and Description (its BootMode, ImdsSupport, TpmSupport, block
  device mappings and tags are checked with Stubber in test_publish_stub.py); the AMI's block
  device mapping points at a snapshot moto invents. UefiData is dropped too (DescribeImages
  shows none, DescribeImageAttribute uefiData fails inside moto): the Secure Boot test checks
  the request the server received.
- GetImageBlockPublicAccessState is missing (an HTML 500): the --public test answers it locally.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.awsrequest import AWSResponse, HTTPHeaders

from builder.errors import HostbuildError
from builder.publish.aws import PublishResult, publish_ami
from builder.publish.clients import Clients
from builder.publish.request import Timeouts, load_image, make_request
from tests.awsmock import (
    BLOCK,
    MIB,
    aws_faithful_snapshots,
    fake_credentials,
    make_build,
    moto_server,
    nonzero_blocks,
    pattern,
    reset_moto,
)
from tests.conftest import Cli
from tests.secureboot import make_keys, make_uefi_data, mark_signed

SOURCE, COPIES = "eu-west-1", ("us-east-1", "eu-central-1")
ACCOUNT = "111122223333"
FAST = Timeouts(connect=2, read=10, attempts=3, upload=60, snapshot=10, image=10, parameter=5,
                poll=0.05)  # fmt: skip


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with aws_faithful_snapshots(), moto_server() as url:
        yield url


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    reset_moto(moto_url)
    environ: dict[str, str] = {}
    fake_credentials(environ)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    return moto_url


@pytest.fixture
def build(tmp_path: Path) -> Path:
    """64 MiB: data at 1 MiB (with a partial block), allocated zeros, data near the end."""
    return make_build(tmp_path / "out", [
        (1 * MIB, pattern(3 * BLOCK + 4096, 1)),
        (8 * MIB, bytes(2 * MIB)),  # allocated, all zeros: read, not sent
        (20 * MIB + 100, pattern(5000, 2)),  # straddles nothing, starts mid-block
        (64 * MIB - BLOCK, pattern(BLOCK, 3)),  # the last block
    ])  # fmt: skip


class Counter:
    """Counts the API calls of every client of a Clients (and can hook one operation)."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    def clients(self, url: str, timeouts: Timeouts = FAST, workers: int = 8) -> Clients:
        counter = self

        class Counted(Clients):
            def client(self, service: str, region: str) -> Any:
                new = (service, region) not in self._clients
                client = super().client(service, region)
                if new:
                    client.meta.events.register("before-call.*.*", counter.count)
                return client

        return Counted(timeouts, workers=workers, endpoint_url=url)

    def count(self, model: Any, **kwargs: Any) -> None:
        with self.lock:
            self.calls[model.name] += 1


def publish(build: Path, url: str, clients: Clients | None = None, **options: Any) -> PublishResult:
    options.setdefault("workers", 8)
    request = make_request(load_image(build), SOURCE, endpoint_url=url, timeouts=FAST, **options)
    return publish_ami(request, clients)


def client(service: str, region: str, url: str) -> Any:
    return boto3.client(service, region_name=region, endpoint_url=url)  # type: ignore[call-overload]


def snapshot_contents(url: str, snapshot_id: str) -> dict[int, bytes]:
    ebs = client("ebs", SOURCE, url)
    listed = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)["Blocks"]
    return {
        b["BlockIndex"]: ebs.get_snapshot_block(
            SnapshotId=snapshot_id, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"]
        )["BlockData"].read()
        for b in listed
    }


def linear_checksum(blocks: dict[int, bytes]) -> str:
    import base64

    digests = b"".join(hashlib.sha256(blocks[i]).digest() for i in sorted(blocks))
    return base64.b64encode(hashlib.sha256(digests).digest()).decode()


def test_publish_round_trips_copies_shares_writes_ssm_and_reruns_as_a_no_op(
    aws: str, build: Path
) -> None:
    expected = nonzero_blocks(build / "worker-0.1.0-7.raw")
    assert sorted(expected) == [2, 3, 4, 5, 40, 127]  # what the fixture wrote

    result = publish(build, aws, copy_to=COPIES, share=(ACCOUNT,), ssm_prefix="/hostbuild/worker",
                     promote=True)  # fmt: skip

    # the snapshot holds exactly the non-zero blocks, byte for byte
    assert snapshot_contents(aws, result.snapshot_id) == expected
    stats = result.upload
    assert (stats.blocks_sent, stats.bytes_sent) == (len(expected), len(expected) * BLOCK)
    assert stats.blocks_zero == 4  # the 2 MiB of allocated zeros
    assert stats.blocks_total == 128 and stats.blocks_hole == 128 - stats.blocks_data
    ec2 = client("ec2", SOURCE, aws)
    snapshot = ec2.describe_snapshots(SnapshotIds=[result.snapshot_id])["Snapshots"][0]
    tags = {t["Key"]: t["Value"] for t in snapshot["Tags"]}
    assert snapshot["State"] == "completed"
    assert tags["hostbuild:checksum"] == linear_checksum(expected)
    assert tags["hostbuild:image-sha256"] == load_image(build).sha256
    assert (tags["hostbuild:profile"], tags["hostbuild:version"]) == ("worker", "0.1.0-7")

    # one AMI per region, each shared, each named in SSM
    assert list(result.images) == [SOURCE, *COPIES]
    for region, image_id in result.images.items():
        ec2 = client("ec2", region, aws)
        named = ec2.describe_images(
            Owners=["self"], Filters=[{"Name": "name", "Values": ["worker-0.1.0-7-x86_64"]}]
        )["Images"]
        assert [i["ImageId"] for i in named] == [image_id]
        launch = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")
        assert launch["LaunchPermissions"] == [{"UserId": ACCOUNT}]
        ssm = client("ssm", region, aws)
        for name in ("/hostbuild/worker/0.1.0-7/image_id", "/hostbuild/worker/latest/image_id"):
            parameter = ssm.get_parameter(Name=name)["Parameter"]
            assert (parameter["Value"], parameter["DataType"]) == (image_id, "aws:ec2:image")
    for region in COPIES:  # copies carry no user tags: publish tags them
        ec2 = client("ec2", region, aws)
        image = ec2.describe_images(ImageIds=[result.images[region]])["Images"][0]
        tags = {t["Key"]: t["Value"] for t in image["Tags"]}
        assert tags["hostbuild:source-image"] == result.images[SOURCE]
    permission = client("ec2", SOURCE, aws).describe_snapshot_attribute(
        SnapshotId=result.snapshot_id, Attribute="createVolumePermission"
    )["CreateVolumePermissions"]
    assert permission == [{"UserId": ACCOUNT}]

    # the manifest records every result
    record = json.loads((build / "manifest.json").read_text())["publish"]["aws"]
    assert record["snapshot"]["snapshot_id"] == result.snapshot_id
    assert record["snapshot"]["status"] == "completed"
    assert {r: i["image_id"] for r, i in record["images"].items()} == result.images
    assert record["ssm"][SOURCE]["/hostbuild/worker/latest/image_id"] == result.images[SOURCE]

    # the same publish again: found, nothing uploaded, registered, copied or written
    counter = Counter()
    again = publish(build, aws, counter.clients(aws), copy_to=COPIES, share=(ACCOUNT,),
                    ssm_prefix="/hostbuild/worker", promote=True)  # fmt: skip
    assert (again.snapshot_id, again.images) == (result.snapshot_id, result.images)
    assert again.upload.bytes_sent == 0 and again.upload.bytes_read == 0
    for operation in ("StartSnapshot", "PutSnapshotBlock", "CompleteSnapshot", "RegisterImage",
                      "CopyImage", "PutParameter"):  # fmt: skip
        assert counter.calls[operation] == 0, operation
    assert counter.calls["DescribeImages"] >= 3  # it did look


def test_lost_record_is_found_again_by_tags_and_names(aws: str, build: Path) -> None:
    first = publish(build, aws, copy_to=COPIES[:1])
    manifest = json.loads((build / "manifest.json").read_text())
    del manifest["publish"]
    (build / "manifest.json").write_text(json.dumps(manifest))

    counter = Counter()
    again = publish(build, aws, counter.clients(aws), copy_to=COPIES[:1])
    assert (again.snapshot_id, again.images) == (first.snapshot_id, first.images)
    assert counter.calls["StartSnapshot"] + counter.calls["PutSnapshotBlock"] == 0
    assert counter.calls["RegisterImage"] + counter.calls["CopyImage"] == 0


def test_interrupted_upload_resumes_into_the_same_snapshot(aws: str, tmp_path: Path) -> None:
    build = make_build(tmp_path / "big", [(0, pattern(48 * BLOCK, 7))], size=64 * MIB)
    expected = nonzero_blocks(build / "worker-0.1.0-7.raw")
    counter = Counter()
    clients = counter.clients(aws, workers=2)
    sent = 0

    def fail_after_ten(**kwargs: Any) -> None:
        nonlocal sent
        with counter.lock:
            sent += 1
            if sent > 10:
                raise botocore.exceptions.ConnectionClosedError(endpoint_url=aws)

    clients.ebs(SOURCE).meta.events.register("before-call.ebs.PutSnapshotBlock", fail_after_ten)
    with pytest.raises(HostbuildError) as failed:
        publish(build, aws, clients, workers=2)
    assert "run the same command again to resume" in str(failed.value.hint)
    record = json.loads((build / "manifest.json").read_text())["publish"]["aws"]["snapshot"]
    assert record["status"] == "uploading"
    assert 0 < record["resume_below"] <= 10  # only blocks known to be written
    assert "images" not in json.loads((build / "manifest.json").read_text())["publish"]["aws"]

    second = publish(build, aws, workers=4)
    assert second.snapshot_id == record["snapshot_id"]
    assert second.upload.blocks_resumed == record["resume_below"]
    assert second.upload.blocks_sent == len(expected) - record["resume_below"]
    assert snapshot_contents(aws, second.snapshot_id) == expected
    assert list(second.images) == [SOURCE]


def test_denied_registration_names_the_action_and_the_rerun_resumes(aws: str, build: Path) -> None:
    counter = Counter()
    clients = counter.clients(aws)

    def deny(**kwargs: Any) -> None:
        error: Any = {
            "Error": {"Code": "UnauthorizedOperation", "Message": "You are not authorized"}
        }
        raise botocore.exceptions.ClientError(error, "RegisterImage")

    clients.ec2(SOURCE).meta.events.register("before-call.ec2.RegisterImage", deny)
    with pytest.raises(HostbuildError) as denied:
        publish(build, aws, clients)
    assert (
        denied.value.message == "AWS denied ec2:RegisterImage in eu-west-1: You are not authorized"
    )
    assert "README.md" in str(denied.value.hint) and "resume" in str(denied.value.hint)
    snapshot = json.loads((build / "manifest.json").read_text())["publish"]["aws"]["snapshot"]
    assert snapshot["status"] == "completed"

    counter = Counter()
    result = publish(build, aws, counter.clients(aws))
    assert result.snapshot_id == snapshot["snapshot_id"]
    assert counter.calls["PutSnapshotBlock"] == 0 and counter.calls["RegisterImage"] == 1


def test_throttled_blocks_are_retried_until_they_go_through(aws: str, build: Path) -> None:
    counter = Counter()
    clients = counter.clients(aws, Timeouts(**{**FAST.__dict__, "attempts": 5}))
    throttled = 0

    def throttle_first_three(request: Any, **kwargs: Any) -> AWSResponse | None:
        # an HTTP answer in place of the server's: botocore's retry handler sees it
        nonlocal throttled
        if "/blocks/" not in request.url:
            return None
        with counter.lock:
            throttled += 1
            if throttled > 3:
                return None
        body = b'{"message": "slow down"}'
        headers = HTTPHeaders()
        headers["x-amzn-ErrorType"] = "ThrottlingException"
        headers["Content-Type"] = "application/json"
        return AWSResponse(request.url, 429, headers, _Raw(body))

    clients.ebs(SOURCE).meta.events.register(
        "before-send.ebs.PutSnapshotBlock", throttle_first_three
    )
    result = publish(build, aws, clients)
    expected = nonzero_blocks(build / "worker-0.1.0-7.raw")
    assert throttled == len(expected) + 3  # three extra attempts, then all went through
    assert snapshot_contents(aws, result.snapshot_id) == expected


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        yield self.body


def test_public_ami(aws: str, build: Path) -> None:
    counter = Counter()
    clients = counter.clients(aws)

    def unblocked(**kwargs: Any) -> tuple[AWSResponse, dict[str, Any]]:
        # moto lacks GetImageBlockPublicAccessState: answer it as an account that allows sharing
        return AWSResponse("", 200, HTTPHeaders(), None), {
            "ImageBlockPublicAccessState": "unblocked"
        }

    clients.ec2(SOURCE).meta.events.register(
        "before-call.ec2.GetImageBlockPublicAccessState", unblocked
    )
    result = publish(build, aws, clients, public=True)
    launch = client("ec2", SOURCE, aws).describe_image_attribute(
        ImageId=result.images[SOURCE], Attribute="launchPermission"
    )["LaunchPermissions"]
    assert launch == [{"Group": "all"}]
    assert counter.calls["GetImageBlockPublicAccessState"] == 1


def test_cli_json_against_moto(
    aws: str, build: Path, run_cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOSTBUILD_AWS_ENDPOINT_URL", aws)
    monkeypatch.setenv("AWS_REGION", SOURCE)
    result = run_cli("publish", "ami", "--image", os.fspath(build), "--json", "--workers", "4")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["source_region"] == SOURCE
    assert printed["images"][SOURCE].startswith("ami-")
    assert printed["upload"]["blocks_sent"] == len(nonzero_blocks(build / "worker-0.1.0-7.raw"))
    assert "\r" not in result.output  # no progress line in --json mode


def test_a_secure_boot_image_is_registered_with_its_variable_store(
    aws: str, build: Path, tmp_path: Path
) -> None:
    """The whole flow with --uefi-data: the RegisterImage that reaches the server carries the
    store and BootMode uefi. moto drops UefiData (it keeps only Name and Description), so what
    the server was sent is checked, not what it describes afterwards."""
    keys = make_keys(tmp_path / "keys")
    uefi_data = make_uefi_data(tmp_path / "sb", keys)
    counter = Counter()
    clients = counter.clients(aws)
    sent: list[dict[str, list[str]]] = []

    def record(request: Any, **kwargs: Any) -> None:
        body = request.body
        sent.append(urllib.parse.parse_qs(body.decode() if isinstance(body, bytes) else body))

    clients.ec2(SOURCE).meta.events.register("before-send.ec2.RegisterImage", record)
    result = publish(mark_signed(build, keys), aws, clients, uefi_data=uefi_data)
    [params] = sent
    assert params["UefiData"] == [uefi_data.read_text().strip()]
    assert (params["BootMode"], params["TpmSupport"]) == (["uefi"], ["v2.0"])
    described = client("ec2", SOURCE, aws).describe_images(ImageIds=[result.images[SOURCE]])
    assert described["Images"][0]["State"] == "available"
    counter = Counter()
    publish(build, aws, counter.clients(aws), uefi_data=uefi_data)
    assert counter.calls["RegisterImage"] == 0, "a rerun finds the AMI it registered"
