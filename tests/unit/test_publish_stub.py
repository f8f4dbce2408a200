"""Exact AWS requests and error paths of publishing, with botocore's Stubber (no server).

Stubber answers before botocore's retry handler runs, so throttling is tested against moto
(test_publish_moto.py) instead, where a before-send hook lets the real retries happen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import ANY, Stubber

from builder.errors import HostbuildError
from builder.firmware.varstore import SecureBootKeys
from builder.publish import ami, share, ssm
from builder.publish.aws import publish_ami
from builder.publish.clients import Clients, aws_errors
from builder.publish.request import Image, Timeouts, load_image, make_request
from builder.publish.snapshot import ensure_snapshot
from builder.publish.state import PublishState
from tests.awsmock import BLOCK, MIB, fake_credentials, make_build, pattern
from tests.secureboot import fingerprint, make_keys, make_uefi_data, mark_signed

REGION = "eu-west-1"
FAST = Timeouts(snapshot=0.2, image=0.2, parameter=0.2, poll=0.05)
HINT = "run the same command again to resume"


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    environ: dict[str, str] = {}
    fake_credentials(environ)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def build(tmp_path: Path) -> Path:
    return make_build(tmp_path / "out", [(2 * MIB, pattern(BLOCK, 1))], size=4 * MIB)


@pytest.fixture
def image(build: Path) -> Image:
    return load_image(build)


class Stubbed:
    """Clients whose ec2, ebs and ssm clients in REGION answer from Stubbers."""

    def __init__(self) -> None:
        # nothing listens on port 9 (discard): a request that escaped a stub would fail
        self.clients = Clients(FAST, workers=1, endpoint_url="http://127.0.0.1:9")
        self.stubs = {s: Stubber(self.clients.client(s, REGION)) for s in ("ec2", "ebs", "ssm")}
        for stub in self.stubs.values():
            stub.activate()

    def __getitem__(self, service: str) -> Stubber:
        return self.stubs[service]

    def client(self, service: str) -> Any:
        return self.clients.client(service, REGION)

    def assert_done(self) -> None:
        for stub in self.stubs.values():
            stub.assert_no_pending_responses()


@pytest.fixture
def aws() -> Iterator[Stubbed]:
    stubbed = Stubbed()
    yield stubbed
    for stub in stubbed.stubs.values():
        stub.deactivate()


def test_register_image_parameters(aws: Stubbed, image: Image) -> None:
    tags = [
        {"Key": "Name", "Value": "worker-0.1.0-7"},
        {"Key": "hostbuild:profile", "Value": "worker"},
        {"Key": "hostbuild:version", "Value": "0.1.0-7"},
        {"Key": "hostbuild:image-sha256", "Value": image.sha256},
    ]
    aws["ec2"].add_response("register_image", {"ImageId": "ami-0123456789abcdef0"}, {
        "Name": "worker-0.1.0-7-x86_64",
        "Description": "hostbuild worker 0.1.0-7 (x86_64, UEFI)",
        "Architecture": "x86_64",
        "VirtualizationType": "hvm",
        "BootMode": "uefi",
        "ImdsSupport": "v2.0",
        "TpmSupport": "v2.0",
        "EnaSupport": True,
        "SriovNetSupport": "simple",
        "RootDeviceName": "/dev/xvda",
        "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {
            "SnapshotId": "snap-0aaa", "VolumeSize": 1, "VolumeType": "gp3",
            "DeleteOnTermination": True}}],
        "TagSpecifications": [{"ResourceType": "image", "Tags": tags}],
    })  # fmt: skip
    assert ami.register_image(aws.client("ec2"), image, "snap-0aaa", REGION, 0) == (
        "ami-0123456789abcdef0"
    )
    aws.assert_done()


@pytest.mark.parametrize(("raw_bytes", "gib"), [(3 * 1024 * MIB, 3), (3 * 1024 * MIB + BLOCK, 4)])
def test_volume_size_is_the_raw_image_in_whole_gib(image: Image, raw_bytes: int, gib: int) -> None:
    params = ami.register_params(dataclasses.replace(image, raw_bytes=raw_bytes), "snap-0aaa")
    assert params["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == gib


def test_duplicate_name_returns_the_ami_that_has_it(aws: Stubbed, image: Image) -> None:
    aws["ec2"].add_client_error("register_image", "InvalidAMIName.Duplicate", "exists")
    aws["ec2"].add_response(
        "describe_images", {"Images": [{"ImageId": "ami-0ffff", "State": "available"}]},
        {"Owners": ["self"], "Filters": [{"Name": "name", "Values": ["worker-0.1.0-7-x86_64"]}]},
    )  # fmt: skip
    assert ami.register_image(aws.client("ec2"), image, "snap-0aaa", REGION, 0) == "ami-0ffff"
    aws.assert_done()


def test_copy_uses_the_source_ami_as_client_token(aws: Stubbed, image: Image) -> None:
    aws["ec2"].add_response(
        "copy_image", {"ImageId": "ami-0c0c"},
        {"SourceRegion": "us-east-1", "SourceImageId": "ami-0src", "ClientToken": "ami-0src",
         "Name": "worker-0.1.0-7-x86_64", "Description": ANY, "TagSpecifications": ANY},
    )  # fmt: skip
    assert ami.copy_image(aws.client("ec2"), image, "us-east-1", "ami-0src") == "ami-0c0c"


def record_snapshot(build: Path, **fields: Any) -> PublishState:
    state = PublishState(build)
    state.set_snapshot(region=REGION, snapshot_id="snap-0aaa", attempt=0, **fields)
    return state


def request_for(build: Path, **options: Any) -> Any:
    return make_request(load_image(build), REGION, endpoint_url="http://127.0.0.1:9",
                        timeouts=FAST, workers=1, **options)  # fmt: skip


def snapshot_record(build: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((build / "manifest.json").read_text())["publish"]["aws"]
    return record["snapshot"]  # type: ignore[no-any-return]


def test_snapshot_in_error_state_fails_clearly_and_the_next_run_starts_anew(
    aws: Stubbed, build: Path
) -> None:
    state = record_snapshot(build, status="completing", checksum="x", changed_blocks=1)
    failed = {"SnapshotId": "snap-0aaa", "State": "error", "StateMessage": "checksum mismatch"}
    pending = {**failed, "State": "pending", "StateMessage": ""}
    aws["ec2"].add_response("describe_snapshots", {"Snapshots": [pending]})  # the record check
    aws["ebs"].add_response("complete_snapshot", {"Status": "pending"})  # sent again
    for answer in (failed, failed):  # the wait, the verdict
        aws["ec2"].add_response("describe_snapshots", {"Snapshots": [answer]})
    with pytest.raises(HostbuildError) as error, aws_errors(REGION, HINT):
        ensure_snapshot(aws.clients, request_for(build), state)
    assert error.value.message == "snapshot snap-0aaa in eu-west-1 is 'error': checksum mismatch"
    assert snapshot_record(build)["status"] == "failed"

    # the next run sees the failed record and starts a new snapshot with another token
    tokens: list[str] = []
    aws.client("ebs").meta.events.register(
        "before-parameter-build.ebs.StartSnapshot",
        lambda params, **kw: tokens.append(params["ClientToken"]),
    )
    aws["ec2"].add_response("describe_snapshots", {"Snapshots": [failed]})
    aws["ebs"].add_client_error("start_snapshot", "AccessDeniedException", "no", 403)
    with pytest.raises(HostbuildError) as error, aws_errors(REGION, HINT):
        ensure_snapshot(aws.clients, request_for(build), PublishState(build))
    assert error.value.message == "AWS denied ebs:StartSnapshot in eu-west-1: no"
    first = hashlib.sha256(f"hostbuild:{load_image(build).sha256}:{REGION}:0".encode())
    assert len(tokens) == 1 and tokens[0] != first.hexdigest()


def test_snapshot_still_pending_times_out_and_stays_resumable(aws: Stubbed, build: Path) -> None:
    state = record_snapshot(build, status="completing", checksum="x", changed_blocks=1)
    pending = {"Snapshots": [{"SnapshotId": "snap-0aaa", "State": "pending"}]}
    aws["ec2"].add_response("describe_snapshots", pending)
    aws["ebs"].add_client_error("complete_snapshot", "ValidationException", "not pending", 400)
    for _ in range(40):
        aws["ec2"].add_response("describe_snapshots", pending)
    with pytest.raises(HostbuildError) as error, aws_errors(REGION, HINT):
        ensure_snapshot(aws.clients, request_for(build), state)
    assert error.value.message == "snapshot snap-0aaa in eu-west-1 is still 'pending' after 0s"
    assert "run the same command again" in str(error.value.hint)
    assert snapshot_record(build)["status"] == "completing"  # the next run waits again


def test_denied_block_upload_names_the_action_and_keeps_the_snapshot(
    aws: Stubbed, build: Path
) -> None:
    aws["ec2"].add_response("describe_snapshots", {"Snapshots": []})
    aws["ebs"].add_response("start_snapshot", {"SnapshotId": "snap-0bbb", "Status": "pending",
                                               "BlockSize": 524288})  # fmt: skip
    aws["ebs"].add_client_error("put_snapshot_block", "AccessDeniedException", "denied", 403)
    with pytest.raises(HostbuildError) as error:
        publish_ami(request_for(build), aws.clients)
    assert error.value.message == "AWS denied ebs:PutSnapshotBlock in eu-west-1: denied"
    assert "README.md" in str(error.value.hint)
    record = snapshot_record(build)
    assert (record["snapshot_id"], record["status"]) == ("snap-0bbb", "uploading")


def test_block_public_access_is_named(aws: Stubbed) -> None:
    aws["ec2"].add_response("get_image_block_public_access_state",
                            {"ImageBlockPublicAccessState": "block-new-sharing"})  # fmt: skip
    with pytest.raises(HostbuildError) as error:
        share.make_public(aws.client("ec2"), "ami-0aaa", REGION)
    assert error.value.message == (
        "block public access for AMIs is 'block-new-sharing' in eu-west-1: "
        "AWS refuses public AMIs there"
    )
    assert "disable-image-block-public-access --region eu-west-1" in str(error.value.hint)


def test_parameter_that_does_not_read_back_fails(aws: Stubbed) -> None:
    name = "/hostbuild/worker/0.1.0-7/image_id"
    aws["ssm"].add_client_error("get_parameter", "ParameterNotFound", "", 400)
    aws["ssm"].add_response("put_parameter", {"Version": 1}, {
        "Name": name, "Value": "ami-0aaa", "Type": "String", "DataType": "aws:ec2:image",
        "Overwrite": True, "Description": ANY})  # fmt: skip
    for _ in range(20):  # the asynchronous aws:ec2:image validation rejected it
        aws["ssm"].add_client_error("get_parameter", "ParameterNotFound", "", 400)
    with pytest.raises(HostbuildError) as error:
        ssm.put_image_parameter(aws.client("ssm"), name, "ami-0aaa", REGION, timeout=0.1,
                                poll=0.02)  # fmt: skip
    assert error.value.message.startswith(
        f"SSM parameter {name} in eu-west-1 reads None, not 'ami-0aaa'"
    )


def test_missing_credentials(build: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    with pytest.raises(HostbuildError) as error:
        publish_ami(request_for(build))
    assert error.value.message == "no AWS credentials found"
    assert "--dry-run needs none" in str(error.value.hint)
    assert "publish" not in json.loads((build / "manifest.json").read_text())
    assert os.environ.get("AWS_EC2_METADATA_DISABLED") == "true"  # no instance metadata probe


def test_interrupted_completion_is_sent_again_then_awaited(aws: Stubbed, build: Path) -> None:
    state = record_snapshot(build, status="completing", checksum="Y2hlY2tzdW0=", changed_blocks=3)
    snapshot = {"SnapshotId": "snap-0aaa", "State": "pending"}
    aws["ec2"].add_response("describe_snapshots", {"Snapshots": [snapshot]})
    aws["ebs"].add_client_error("complete_snapshot", "ConflictException", "sealing", 409, {
        "SnapshotId": "snap-0aaa", "ChangedBlocksCount": 3, "Checksum": "Y2hlY2tzdW0=",
        "ChecksumAlgorithm": "SHA256", "ChecksumAggregationMethod": "LINEAR"})  # fmt: skip
    aws["ec2"].add_response("describe_snapshots", {"Snapshots": [snapshot]})
    aws["ec2"].add_response("describe_snapshots",
                            {"Snapshots": [{**snapshot, "State": "completed"}]})  # fmt: skip
    aws["ec2"].add_response("create_tags", {}, {
        "Resources": ["snap-0aaa"], "Tags": [{"Key": "hostbuild:checksum", "Value": "Y2hlY2tzdW0="}]
    })  # fmt: skip
    result = ensure_snapshot(aws.clients, request_for(build), state)
    assert (result.snapshot_id, result.stats.bytes_sent) == ("snap-0aaa", 0)
    assert snapshot_record(build)["status"] == "completed"
    aws.assert_done()


def test_a_secure_boot_image_registers_with_its_uefi_data(
    aws: Stubbed, build: Path, tmp_path: Path
) -> None:
    keys = make_keys(tmp_path / "keys")
    uefi_data = make_uefi_data(tmp_path / "sb", keys)
    request = make_request(load_image(mark_signed(build, keys)), REGION, uefi_data=uefi_data)
    blob = uefi_data.read_text().strip()
    assert request.uefi_data == blob
    image = request.image
    tags = [
        {"Key": "Name", "Value": "worker-0.1.0-7"},
        {"Key": "hostbuild:profile", "Value": "worker"},
        {"Key": "hostbuild:version", "Value": "0.1.0-7"},
        {"Key": "hostbuild:image-sha256", "Value": image.sha256},
    ]
    aws["ec2"].add_response("register_image", {"ImageId": "ami-0123456789abcdef0"}, {
        "Name": "worker-0.1.0-7-x86_64",
        "Description": "hostbuild worker 0.1.0-7 (x86_64, UEFI)",
        "Architecture": "x86_64",
        "VirtualizationType": "hvm",
        "BootMode": "uefi",
        "ImdsSupport": "v2.0",
        "TpmSupport": "v2.0",
        "EnaSupport": True,
        "SriovNetSupport": "simple",
        "RootDeviceName": "/dev/xvda",
        "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {
            "SnapshotId": "snap-0aaa", "VolumeSize": 1, "VolumeType": "gp3",
            "DeleteOnTermination": True}}],
        "TagSpecifications": [{"ResourceType": "image", "Tags": tags}],
        "UefiData": blob,
    })  # fmt: skip
    assert (
        ami.register_image(aws.client("ec2"), image, "snap-0aaa", REGION, 0, request.uefi_data)
        == "ami-0123456789abcdef0"
    )
    aws.assert_done()


def test_a_signed_image_needs_uefi_data(build: Path) -> None:
    """Without --uefi-data and without the certificates a signed build exports."""
    with pytest.raises(HostbuildError, match="signed for Secure Boot, but no --uefi-data") as e:
        make_request(load_image(mark_signed(build)), REGION)
    assert f"{build}/secure-boot/ lacks the build's PK.crt, KEK.crt or db.crt" in str(e.value)
    assert e.value.hint is not None and "--aws-output uefi-data.b64" in e.value.hint


def test_an_unsigned_image_takes_no_uefi_data(build: Path, tmp_path: Path) -> None:
    uefi_data = make_uefi_data(tmp_path / "sb")
    with pytest.raises(HostbuildError, match="has no secure_boot.signed: EC2 would refuse"):
        make_request(load_image(build), REGION, uefi_data=uefi_data)


def test_uefi_data_must_hold_the_certificates_the_build_was_signed_for(
    build: Path, tmp_path: Path
) -> None:
    ours, theirs = make_keys(tmp_path / "ours"), make_keys(tmp_path / "theirs")
    other = make_uefi_data(tmp_path / "other", theirs)
    image = load_image(mark_signed(build, ours))
    assert image.certificates == {"pk": fingerprint(ours.pk), "kek": fingerprint(ours.kek[0]),
                                  "db": fingerprint(ours.db[0])}  # fmt: skip
    with pytest.raises(HostbuildError) as e:
        make_request(image, REGION, uefi_data=other)
    assert e.value.message == (
        f"--uefi-data {str(other)!r}: its db does not hold the certificate the build recorded "
        f"({build}/manifest.json: secure_boot.certificates.db.sha256 {fingerprint(ours.db[0])})"
    )
    # the same PK and KEK, another db: still refused, by db
    mixed = SecureBootKeys(ours.pk, ours.kek, theirs.db)
    with pytest.raises(HostbuildError, match="its db does not hold"):
        make_request(image, REGION, uefi_data=make_uefi_data(tmp_path / "mixed", mixed))
    assert make_request(image, REGION, uefi_data=make_uefi_data(tmp_path / "ok", ours)).uefi_data


def test_uefi_data_must_be_an_aws_store(build: Path, tmp_path: Path) -> None:
    edk2 = tmp_path / "vars.fd"
    edk2.write_bytes(b"\x00" * 64 + b"_FVH")
    with pytest.raises(HostbuildError, match=r"vars\.fd' is not an AWS UEFI variable store"):
        make_request(load_image(mark_signed(build)), REGION, uefi_data=edk2)
