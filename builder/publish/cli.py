"""`hostbuild publish`: its click group, added to the top-level group by builder.cli.

It parses options and makes one library call; errors reach HostbuildGroup, which prints them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from builder.publish.aws import publish_ami
from builder.publish.clients import default_region
from builder.publish.dryrun import format_calls
from builder.publish.request import load_image, make_request


@click.group()
def publish() -> None:
    """Publish a built image to a cloud."""


@publish.command("ami")
@click.option(
    "--image", "output", required=True, metavar="DIR",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The output directory of hostbuild image (manifest.json and NAME.raw).",
)  # fmt: skip
@click.option(
    "--region", metavar="REGION",
    help="Source region [default: the boto3 chain: AWS_REGION, AWS_DEFAULT_REGION, AWS config].",
)  # fmt: skip
@click.option(
    "--copy-to", multiple=True, metavar="R1,R2",
    help="Copy the AMI to these regions (comma-separated or repeated).",
)  # fmt: skip
@click.option(
    "--share", multiple=True, metavar="ACCOUNT",
    help="Share the AMI and its snapshots with these 12-digit account ids (repeatable).",
)  # fmt: skip
@click.option("--public", is_flag=True, help="Let every account launch the AMI.")
@click.option(
    "--ssm-prefix", metavar="PATH",
    help="Write PATH/VERSION/image_id in each region (e.g. /hostbuild/worker).",
)  # fmt: skip
@click.option("--promote", is_flag=True, help="Also point PATH/latest/image_id at this AMI.")
@click.option(
    "--workers", type=int, default=64, show_default=True, help="Parallel block uploads (1-256)."
)
@click.option(
    "--endpoint-url", metavar="URL", envvar="HOSTBUILD_AWS_ENDPOINT_URL",
    help="Send every AWS call to this endpoint (a test server, a compatible cloud) "
    "[env: HOSTBUILD_AWS_ENDPOINT_URL].",
)  # fmt: skip
@click.option(
    "--dry-run", is_flag=True,
    help="Print every AWS call it would make; needs no credentials and changes nothing.",
)  # fmt: skip
@click.option(
    "--uefi-data", metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The AMI's UEFI variable store with the fleet's Secure Boot keys (hostbuild firmware "
    "vars --aws-output FILE), for an image signed for Secure Boot only [default: the store of "
    "the certificates the build exported, OUTPUT/secure-boot/].",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result on stdout.")
def ami(
    output: Path, region: str | None, copy_to: tuple[str, ...], share: tuple[str, ...],
    public: bool, ssm_prefix: str | None, promote: bool, workers: int, endpoint_url: str | None,
    dry_run: bool, uefi_data: Path | None, as_json: bool,
) -> None:  # fmt: skip
    """Upload a build's raw image as an EBS snapshot and register it as an AMI (resumable)."""
    request = make_request(
        load_image(output.absolute()), region or default_region(), copy_to=copy_to, share=share,
        public=public, ssm_prefix=ssm_prefix, promote=promote, workers=workers,
        endpoint_url=endpoint_url, dry_run=dry_run, progress=not as_json and sys.stderr.isatty(),
        uefi_data=uefi_data,
    )  # fmt: skip
    result = publish_ami(request).as_dict()
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for line in format_calls(result.get("dry_run_calls", [])):
        click.echo(line)
    for where, image_id in result["images"].items():
        click.echo(f"{where}: {image_id} {result['name']}")
