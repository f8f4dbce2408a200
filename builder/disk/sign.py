"""Secure Boot signing of PE files (systemd-boot, UKIs) with sbsign, and ukify's PCR options.

sbsign signs every PE file, so the boot loader and the UKIs go through one path (a db key in a
PKCS#11 token too, through sbsign's --engine); each result is checked with sbverify against
the profile's db certificate, which also catches an engine key that is not db's.
"""

from __future__ import annotations

import os
from pathlib import Path

from builder.build.toolstree import ToolsTree
from builder.disk.slot import Tools
from builder.errors import CommandError, HostbuildError
from builder.keys.secureboot import PHASES, Signer


def check_engine(tools: ToolsTree, signer: Signer) -> None:
    """The OpenSSL engine that holds the db key is installed where sbsign runs."""
    if signer.engine is None:
        return
    found = list(tools.path("/usr/lib").glob(f"*/engines-3/{signer.engine}.so"))
    if not found:
        package = {"pkcs11": " (package libengine-pkcs11-openssl)"}.get(signer.engine, "")
        raise HostbuildError(
            f"--signing-engine {signer.engine!r}: the tools tree has no such OpenSSL "
            f"engine{package}",
            hint="sign with a db key file for now, or add the engine's package to the tools "
            "tree's PACKAGES (builder/build/toolstree.py), which rebuilds the tree",
        )


def sign_pe(tools: Tools, signer: Signer, source: Path, output: Path) -> Path:
    """`output`: `source` signed with db (source may be the same file)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    signed = output.with_name(f".{output.name}.signed")
    engine = ["--engine", signer.engine] if signer.engine else []
    readonly = [p for p in {*signer.readonly(), source.parent} if p != output.parent]
    tools.run([
        "sbsign", *engine, "--key", signer.db_key, "--cert", signer.certificates.db,
        "--output", signed, source,
    ], binds=[output.parent], readonly=readonly)  # fmt: skip
    verify_pe(tools, signer.certificates.db, signed)
    os.replace(signed, output)
    return output


def verify_pe(tools: Tools, cert: Path, path: Path) -> None:
    """sbverify `path` against `cert`; HostbuildError if it is not signed by that certificate."""
    try:
        tools.run(["sbverify", "--cert", cert, path], binds=[path.parent], readonly=[cert.parent])
    except CommandError as e:
        said = e.output_tail[-1] if e.output_tail else f"exit code {e.returncode}"
        raise HostbuildError(
            f"{path.name} does not verify against {cert}: {said}",
            hint="the db key (--db-key, or the token behind --signing-engine) must be the "
            "private half of the profile's secure_boot.db certificate",
        ) from None


def ukify_pcr_options(signer: Signer | None) -> list[str]:
    """ukify build's options for signed PCR 11 predictions (.pcrsig) and the key (.pcrpkey)."""
    if signer is None or signer.pcr_key is None:
        return []
    public = signer.certificates.pcr_public_key
    assert public is not None  # prepare_signer requires it with a PCR key
    return [
        f"--pcr-private-key={signer.pcr_key}", f"--pcr-public-key={public}",
        f"--phases={' '.join(PHASES)}",
    ]  # fmt: skip
