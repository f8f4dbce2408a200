"""Secure Boot for the VM tests: the session's keys enrolled in a firmware variable store, UKIs
signed with a key set's db, and the bad UKIs the firmware must refuse."""

from __future__ import annotations

from pathlib import Path

from builder.build.toolstree import OVMF_VARS, ToolsTree
from builder.firmware.varstore import SecureBootKeys, write_variable_store
from builder.keys.secureboot import build_certificates
from builder.run import run
from tests.measured import pe_section_table
from tests.vm.image import BuiltImage, Node

EFI_GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"  # SecureBoot, SetupMode
EFI_IMAGE_SECURITY = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"  # db, dbx


def enrolled_store(image: BuiltImage, tools: ToolsTree, out: Path) -> Path:
    """A variable store holding the PK, KEK and db the image was signed for, Secure Boot on."""
    certificates = build_certificates(image.output, image.manifest)
    assert certificates is not None, "the session's image is a signed build"
    keys = SecureBootKeys(certificates.pk, (certificates.kek,), (certificates.db,))
    write_variable_store(keys, tools.path(OVMF_VARS), out)
    return out


def signed(tools: ToolsTree, keys: Path, uki: Path) -> Path:
    """`uki` signed in place with the db key of the key set `keys` (hostbuild keys init)."""
    tools.run([
        "sbsign", "--key", keys / "db.key", "--cert", keys / "db.crt", "--output", uki, uki,
    ], binds=[uki.parent], readonly=[keys])  # fmt: skip
    return uki


def signed_uki(image: BuiltImage, out: Path) -> Path:
    """The image's UKI as signed (the update payload carries the ESP's signed file)."""
    name = image.manifest["name"]
    run(["zstd", "-q", "-d", "-f", image.output / f"{name}.update" / f"{name}.efi.zst", "-o", out])
    return out


def altered(uki: Path, out: Path) -> Path:
    """`uki` with one byte of its .cmdline changed: a digit of its root hash."""
    data = bytearray(uki.read_bytes())
    start, size, _ = pe_section_table(bytes(data))[".cmdline"]
    offset = start + data[start : start + size].index(b"roothash=") + len(b"roothash=")
    data[offset] = ord("0") if data[offset] != ord("0") else ord("1")
    out.write_bytes(data)
    return out


def efivar(node: Node, name: str) -> bytes:
    """An EFI variable's value (efivarfs puts 4 bytes of attributes first)."""
    data = node.sh(f"od -An -v -tx1 /sys/firmware/efi/efivars/{name} | tr -d ' \\n'")
    return bytes.fromhex(data)[4:]
