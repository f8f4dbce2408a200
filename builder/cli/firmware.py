"""`hostbuild firmware vars`: the fleet's Secure Boot keys as UEFI variable stores.

It parses options and makes one library call; errors reach HostbuildGroup, which prints them.
"""

from __future__ import annotations

from pathlib import Path

import click

from builder.build.apt import resolve_mirrors
from builder.build.toolstree import OVMF_VARS, ensure_tools_tree
from builder.firmware.varstore import SecureBootKeys, write_variable_store
from builder.profile.model import Debian

certificate = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group()
def firmware() -> None:
    """UEFI firmware data for Secure Boot: variable stores with the fleet's keys."""


@firmware.command("vars")
@click.option("--pk", required=True, type=certificate, metavar="CERT",
              help="The platform key's certificate (PEM or DER).")  # fmt: skip
@click.option("--kek", required=True, multiple=True, type=certificate, metavar="CERT",
              help="A key exchange key's certificate (repeatable).")  # fmt: skip
@click.option("--db", required=True, multiple=True, type=certificate, metavar="CERT",
              help="A certificate of the signature database, which signs boot loaders and "
              "UKIs (repeatable).")  # fmt: skip
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
    help="Write the edk2 variable store QEMU boots (hostbuild boot --secure-boot-vars FILE).",
)  # fmt: skip
@click.option(
    "--aws-output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
    help="Write the AWS UefiData (base64) an AMI carries (hostbuild publish ami --uefi-data).",
)  # fmt: skip
@click.option(
    "--template", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="FILE",
    help=f"The empty edk2 store to start from [default: the tools tree's {OVMF_VARS}].",
)  # fmt: skip
@click.pass_context
def firmware_vars(
    ctx: click.Context, pk: Path, kek: tuple[Path, ...], db: tuple[Path, ...],
    output: Path | None, aws_output: Path | None, template: Path | None,
) -> None:  # fmt: skip
    """Enrol PK, KEK and db with Secure Boot on, for QEMU and/or EC2 (no private key needed)."""
    if output is None and aws_output is None:
        raise click.UsageError("give --output, --aws-output or both")
    if output is not None and template is None:
        cache: Path = ctx.find_root().obj.cache  # the top-level group's State
        tools = ensure_tools_tree(cache, resolve_mirrors(Debian(release="trixie")).main)
        template = tools.path(OVMF_VARS)
    write_variable_store(SecureBootKeys(pk, kek, db), template or Path(OVMF_VARS), output,
                         aws_output)  # fmt: skip
    for path in (output, aws_output):
        if path is not None:
            click.echo(path)
