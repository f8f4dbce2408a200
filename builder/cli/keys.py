"""`hostbuild keys`: the Secure Boot key set's click group, added to the top-level group."""

from __future__ import annotations

from pathlib import Path

import click

from builder.keys.keyset import DEFAULT_DAYS, README, describe_files, init_keyset


@click.group()
def keys() -> None:
    """Secure Boot keys (PK, KEK, db) and the TPM2 PCR signing key."""


@keys.command("init")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--organisation", "--org", default="hostbuild fleet", show_default=True,
    help="Names the certificates' subjects ('ORG PK', 'ORG KEK', 'ORG db').",
)  # fmt: skip
@click.option(
    "--days", type=click.IntRange(1, 36500), default=DEFAULT_DAYS, show_default=True,
    help="Validity of new certificates (firmware does not check it; tools may).",
)  # fmt: skip
@click.option(
    "--from-existing", "existing", metavar="SRC",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Take the files SRC holds (PK.crt, PK.key, KEK.crt, ..., pcr-public.pem; private keys "
    "may be left out), each key checked against its certificate; make only what is missing.",
)  # fmt: skip
def keys_init(directory: Path, organisation: str, days: int, existing: Path | None) -> None:
    """Make a key set in DIR: PK, KEK, db (certificate + key each) and a PCR key pair.

    DIR/README.txt says where each file belongs: PK and KEK private keys offline, db and the
    PCR key on the build host, the public ones in the profile's secure_boot section.
    Refuses to overwrite an existing key set.
    """
    made = init_keyset(directory, organisation, days, existing)
    click.echo(f"{directory}: Secure Boot key set")
    for line in describe_files(directory, made.written):
        origin = " imported" if line.split()[0] in made.imported else ""
        click.echo(line + origin)
    click.echo(f"read {directory / README}: keep PK.key and KEK.key offline, never commit a key")
