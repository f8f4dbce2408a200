"""`hostbuild repo`: the update repository's click group, added to the top-level group.

Each command parses options and makes one library call; errors reach HostbuildGroup.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from builder.update.images import add_build
from builder.update.keys import OFFLINE_ROLES, ROLES, KeyStore
from builder.update.publish import destination_for, publish_repository
from builder.update.repository import init_repository, refresh_repository, rotate_key
from builder.update.settings import (
    DEFAULT_EXPIRY,
    DEFAULT_THRESHOLD,
    format_duration,
    parse_duration,
)
from builder.update.status import format_status, repository_status
from builder.update.waves import load_schedule

F = TypeVar("F", bound=Callable[..., Any])


def _duration(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A callback: `12h`, `7d` (or None) to a timedelta; a bad one is a usage error (exit 2)."""
    if value is None or isinstance(value, datetime.timedelta):
        return value
    try:
        return parse_duration(str(value))
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from e


repository_argument = click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
keys_option = click.option(
    "--keys", "key_dirs", multiple=True, metavar="KEYDIR", envvar="HOSTBUILD_REPO_KEYS",
    type=click.Path(file_okay=False, path_type=Path),
    help="A directory holding private keys (repeatable: offline media, the online keys); new "
    "keys go into the first [env: HOSTBUILD_REPO_KEYS, ':'-separated; default: DIR/../keys].",
)  # fmt: skip
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def _store(directory: Path, key_dirs: tuple[Path, ...]) -> KeyStore:
    return KeyStore.for_repository(directory.absolute(), key_dirs)


def _emit(result: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for line in lines:
        click.echo(line)


def _role_options(command: F) -> F:
    """--expiry-ROLE, --threshold-ROLE and --key-count-ROLE for each role."""
    for role in reversed(ROLES):
        command = click.option(
            f"--key-count-{role}", type=click.IntRange(1, 16), metavar="N",
            help=f"Keys made for {role} [default: its threshold].",
        )(command)  # fmt: skip
        command = click.option(
            f"--threshold-{role}", type=click.IntRange(1, 16), default=DEFAULT_THRESHOLD,
            show_default=True, metavar="N", help=f"Signatures {role} metadata needs.",
        )(command)  # fmt: skip
        command = click.option(
            f"--expiry-{role}", callback=_duration, default=format_duration(DEFAULT_EXPIRY[role]),
            metavar="DURATION",
            show_default=True, help=f"How long a {role} version stays valid (s, m, h, d, w).",
        )(command)  # fmt: skip
    return command


@click.group()
def repo() -> None:
    """The update repository: signed TUF metadata, channels of builds, publishing."""


@repo.command("init")
@repository_argument
@keys_option
@_role_options
@json_option
def init(directory: Path, key_dirs: tuple[Path, ...], as_json: bool, **roles: Any) -> None:
    """Create an empty repository in DIR (new or empty) and its ed25519 keys."""
    expiry = {r: roles[f"expiry_{r}"] for r in ROLES}
    thresholds = {r: roles[f"threshold_{r}"] for r in ROLES}
    counts = {r: roles[f"key_count_{r}"] or thresholds[r] for r in ROLES}
    result = init_repository(
        directory.absolute(), _store(directory, key_dirs), expiry=expiry,
        thresholds=thresholds, key_counts=counts,
    )  # fmt: skip
    lines = [f"created {result.path}"]
    for role, paths in result.keys.items():
        where = "offline: move them off this machine" if role in OFFLINE_ROLES else "online"
        lines.append(f"{role} ({result.expiry[role]}, threshold {result.thresholds[role]}, "
                     f"{where}): {', '.join(paths)}")  # fmt: skip
    _emit(result.as_dict(), as_json, lines)


@repo.command("rotate-key")
@repository_argument
@click.argument("role", type=click.Choice(ROLES))
@click.option(
    "--keyid", metavar="ID", help="The key to replace (a prefix will do) when ROLE has several."
)
@keys_option
@json_option
def rotate(
    directory: Path, role: str, keyid: str | None, key_dirs: tuple[Path, ...], as_json: bool
) -> None:
    """Replace a key of ROLE: a new root version (signed by the old and new root keys)."""
    result = rotate_key(directory.absolute(), _store(directory, key_dirs), role, keyid)
    lines = [f"{role}: key {result.old_keyid[:16]} replaced by {result.new_keyid[:16]} "
             f"({result.new_key})"]  # fmt: skip
    if result.retired:
        lines.append(f"the old key is trusted no more: destroy {result.retired}")
    lines.append("signed: " + ", ".join(f"{r} v{v}" for r, v in result.signed.items()))
    _emit(result.as_dict(), as_json, lines)


@repo.command("refresh")
@repository_argument
@click.option(
    "--role", "roles", multiple=True, type=click.Choice(ROLES),
    help="Re-sign this role (repeatable) [default: snapshot and timestamp, the cron job's; "
    "targets and root need their offline keys].",
)  # fmt: skip
@click.option(
    "--if-expiring-within", "within", callback=_duration, metavar="DURATION",
    help="Only re-sign the roles that expire sooner than this (e.g. 12h).",
)  # fmt: skip
@keys_option
@json_option
def refresh(
    directory: Path, roles: tuple[str, ...], within: datetime.timedelta | None,
    key_dirs: tuple[Path, ...], as_json: bool,
) -> None:  # fmt: skip
    """Sign new versions of snapshot and timestamp (new expiries); meant for cron."""
    result = refresh_repository(
        directory.absolute(), _store(directory, key_dirs), roles or ("snapshot", "timestamp"),
        within=within,
    )  # fmt: skip
    signed = ", ".join(f"{r} v{v}" for r, v in result.signed.items()) or "nothing was due"
    _emit(result.as_dict(), as_json, [f"signed: {signed}"])


@repo.command("status")
@repository_argument
@keys_option
@json_option
def status(directory: Path, key_dirs: tuple[Path, ...], as_json: bool) -> None:
    """Versions, expiries and keys of each role, the channels, and what expires soon."""
    result = repository_status(directory.absolute(), _store(directory, key_dirs))
    _emit(result, as_json, format_status(result))


@repo.command("add")
@repository_argument
@click.option(
    "--image", "output", required=True, metavar="OUTPUT_DIR",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The output directory of hostbuild image (manifest.json, NAME.update/).",
)  # fmt: skip
@click.option("--channel", default="stable", show_default=True, help="The channel to add it to.")
@click.option(
    "--waves", "waves", metavar="FILE|default|none",
    help="Spread the version over the fleet by the nodes' seeds: a waves file (TOML), "
    "'default' (Bottlerocket's: 1 % after 1 h ... all after 6 days) or 'none'; delays count "
    "from when the version was first added [default: keep the entry's waves; a new one has none].",
)  # fmt: skip
@keys_option
@json_option
def add(
    directory: Path, output: Path, channel: str, waves: str | None, key_dirs: tuple[Path, ...],
    as_json: bool,
) -> None:  # fmt: skip
    """Add a build's update payload to a channel (the same build again changes nothing)."""
    schedule = load_schedule(waves) if waves is not None else None
    result = add_build(
        directory.absolute(), _store(directory, key_dirs), output.absolute(), channel,
        waves=schedule,
    )  # fmt: skip
    if result.rewaved:
        line = (
            f"{result.image_id} {result.version} on channel {channel!r}: waves now "
            f"{result.rollout}: " + ", ".join(f"{r} v{v}" for r, v in result.signed.items())
        )
    elif result.changed:
        spread = f" in {result.rollout}" if result.waves else ""
        line = (f"added {result.image_id} {result.version} to channel {channel!r}{spread}: "
                + ", ".join(f"{r} v{v}" for r, v in result.signed.items()))  # fmt: skip
    else:
        line = f"{result.image_id} {result.version} is on channel {channel!r} already: unchanged"
    _emit(result.as_dict(), as_json, [line])


@repo.command("publish")
@repository_argument
@click.option(
    "--to", "dest", required=True, metavar="DEST",
    help="A directory, or s3://BUCKET/PREFIX.",
)  # fmt: skip
@click.option("--region", metavar="REGION", help="The bucket's region [default: the boto3 chain].")
@click.option(
    "--endpoint-url", metavar="URL", envvar="HOSTBUILD_AWS_ENDPOINT_URL",
    help="Send S3 calls to this endpoint (a test server, an S3-compatible store) "
    "[env: HOSTBUILD_AWS_ENDPOINT_URL].",
)  # fmt: skip
@json_option
def publish(
    directory: Path, dest: str, region: str | None, endpoint_url: str | None, as_json: bool
) -> None:
    """Copy the repository's static files to DEST: targets, metadata, timestamp.json last."""
    path = directory.absolute()
    destination = destination_for(dest, path, region=region, endpoint_url=endpoint_url)
    result = publish_repository(path, destination)
    lines = [f"{result.destination}: {len(result.copied)} file(s) copied, "
             f"{len(result.skipped)} already there"]  # fmt: skip
    _emit(result.as_dict(), as_json, lines)
