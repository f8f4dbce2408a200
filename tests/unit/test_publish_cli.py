"""`hostbuild publish ami` input checks and --dry-run, through click's runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.awsmock import BLOCK, MIB, make_build, pattern
from tests.conftest import Cli
from tests.secureboot import make_keys, make_uefi_data, mark_signed


@pytest.fixture
def build(tmp_path: Path) -> Path:
    return make_build(tmp_path / "out", [(MIB, pattern(2 * BLOCK, 1)), (3 * MIB, bytes(BLOCK))],
                      size=8 * MIB)  # fmt: skip


@pytest.fixture(autouse=True)
def no_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials, config or region from this machine: nothing may reach AWS."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_REGION", "AWS_DEFAULT_REGION", "HOSTBUILD_AWS_ENDPOINT_URL"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def publish(run_cli: Cli, build: Path, *args: str) -> tuple[int, str]:
    result = run_cli("publish", "ami", "--image", os.fspath(build), *args)
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--region", "eu-west"],
         "Error: --region 'eu-west' is not a region name\n"
         "(region names look like eu-west-1 or us-east-2)\n"),
        (["--region", "eu-west-1", "--copy-to", "us-east-1,eu-west-1"],
         "Error: --copy-to 'eu-west-1' is the source region (--region)\n"),
        (["--region", "eu-west-1", "--share", "12345"],
         "Error: --share '12345' is not an AWS account id\n(account ids are 12 digits)\n"),
        (["--region", "eu-west-1", "--share", "123456789012", "--public"],
         "Error: --share and --public exclude each other\n"
         "(a public AMI can be launched by every account already)\n"),
        (["--region", "eu-west-1", "--promote"],
         "Error: --promote moves <prefix>/latest/image_id: it needs --ssm-prefix\n"),
        (["--region", "eu-west-1", "--workers", "0"],
         "Error: --workers 0: allowed are 1 to 256\n"),
        ([], "Error: no AWS region given\n"
             "(pass --region, or set AWS_REGION or a region in the AWS config profile)\n"),
    ],
)  # fmt: skip
def test_bad_options(run_cli: Cli, build: Path, args: list[str], message: str) -> None:
    assert publish(run_cli, build, *args) == (1, message)


def test_misspelt_region_gets_suggestions(run_cli: Cli, build: Path) -> None:
    code, output = publish(run_cli, build, "--region", "eu-wst-1")
    assert code == 1
    assert output.startswith(
        "Error: --region 'eu-wst-1' is not a region this boto3 knows; did you mean eu-west-1"
    )
    assert output.endswith("(a region newer than the installed boto3 needs a boto3 upgrade; an "
                           "AWS-compatible cloud needs --endpoint-url)\n")  # fmt: skip


def test_reserved_ssm_prefix(run_cli: Cli, build: Path) -> None:
    code, output = publish(run_cli, build, "--region", "eu-west-1", "--ssm-prefix", "/aws/x")
    assert code == 1
    assert output.startswith("Error: --ssm-prefix '/aws/x' is not a parameter path this account")


def test_directory_without_manifest(run_cli: Cli, tmp_path: Path) -> None:
    code, output = publish(run_cli, tmp_path, "--region", "eu-west-1")
    assert (code, output) == (1, f"Error: no manifest.json in {str(tmp_path)!r}\n(--image takes "
                              "the output directory of 'hostbuild image' (it holds manifest.json "
                              "and NAME.raw))\n")  # fmt: skip


def test_missing_raw_image(run_cli: Cli, build: Path) -> None:
    (build / "worker-0.1.0-7.raw").unlink()
    code, output = publish(run_cli, build, "--region", "eu-west-1")
    assert (code, output) == (1, f"Error: {build}/manifest.json names 'worker-0.1.0-7.raw', "
                              f"which is missing from {build}\n")  # fmt: skip


def test_raw_image_of_another_size(run_cli: Cli, build: Path) -> None:
    os.truncate(build / "worker-0.1.0-7.raw", 4 * MIB)
    code, output = publish(run_cli, build, "--region", "eu-west-1")
    assert code == 1
    assert output.startswith(f"Error: {build}/worker-0.1.0-7.raw: 4194304 bytes, but ")


def test_dry_run_prints_every_call_without_credentials_or_changes(
    run_cli: Cli, build: Path
) -> None:
    before = (build / "manifest.json").read_bytes()
    code, output = publish(run_cli, build, "--region", "eu-west-1", "--copy-to", "us-east-1",
                           "--share", "123456789012", "--ssm-prefix", "/hostbuild/worker",
                           "--dry-run")  # fmt: skip
    assert code == 0, output
    assert (build / "manifest.json").read_bytes() == before
    operations = [
        line.split(" ")[2] for line in output.splitlines() if line.startswith(("ec2 ", "ebs "))
    ]
    assert operations == [
        "DescribeSnapshots", "StartSnapshot", "PutSnapshotBlock", "CompleteSnapshot",
        "DescribeSnapshots", "CreateTags", "DescribeImages", "RegisterImage", "DescribeImages",
        "DescribeImages", "CopyImage", "DescribeImages", "CreateTags", "DescribeImages",
        "ModifySnapshotAttribute", "ModifyImageAttribute", "ModifySnapshotAttribute",
        "ModifyImageAttribute",
    ]  # fmt: skip
    # two data blocks are sent; the allocated zero block and the holes are not
    assert "ebs eu-west-1 PutSnapshotBlock x2 SnapshotId=snap-dry-run-eu-west-1 blocks 2..3 " in (
        output
    )
    register = next(line for line in output.splitlines() if " RegisterImage " in line)
    for fragment in ('"BootMode": "uefi"', '"ImdsSupport": "v2.0"', '"TpmSupport": "v2.0"',
                     '"VolumeType": "gp3"'):  # fmt: skip
        assert fragment in register
    assert "ssm us-east-1 PutParameter" in output
    assert "latest/image_id" not in output  # not without --promote


def test_dry_run_of_a_secure_boot_image_registers_its_uefi_data(
    run_cli: Cli, build: Path, tmp_path: Path
) -> None:
    uefi_data = make_uefi_data(tmp_path / "sb")
    mark_signed(build)
    code, output = publish(run_cli, build, "--region", "eu-west-1", "--dry-run")
    assert code == 1
    assert "Error: " in output and "but no --uefi-data was given" in output
    code, output = publish(run_cli, build, "--region", "eu-west-1", "--dry-run",
                           "--uefi-data", os.fspath(uefi_data))  # fmt: skip
    assert code == 0, output
    register = next(line for line in output.splitlines() if " RegisterImage " in line)
    size = len(uefi_data.read_text().strip())
    assert f'"UefiData": "<{size} base64 characters>"' in register
    assert '"BootMode": "uefi"' in register


def test_a_signed_build_s_own_certificates_become_its_uefi_data(
    run_cli: Cli, build: Path, tmp_path: Path
) -> None:
    """Without --uefi-data, the store of the certificates the build exported (secure-boot/),
    checked against the manifest's fingerprints like a given one."""
    keys = make_keys(tmp_path / "keys")
    mark_signed(build, keys)
    (build / "secure-boot").mkdir()
    for name, cert in (("PK.crt", keys.pk), ("KEK.crt", keys.kek[0]), ("db.crt", keys.db[0])):
        (build / "secure-boot" / name).write_bytes(cert.read_bytes())
    expected = make_uefi_data(tmp_path / "sb", keys).read_text().strip()
    code, output = publish(run_cli, build, "--region", "eu-west-1", "--dry-run")
    assert code == 0, output
    register = next(line for line in output.splitlines() if " RegisterImage " in line)
    assert f'"UefiData": "<{len(expected)} base64 characters>"' in register
    # another fleet's db in its place: refused, the build's fingerprint named
    make_keys(tmp_path / "other")
    (build / "secure-boot" / "db.crt").write_bytes((tmp_path / "other" / "db0.crt").read_bytes())
    code, output = publish(run_cli, build, "--region", "eu-west-1", "--dry-run")
    assert code == 1 and "does not hold the certificate the build recorded" in output, output
