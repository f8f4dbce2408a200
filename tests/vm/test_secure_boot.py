"""Secure Boot with the fleet's own keys, and TPM2 measured boot, on the session's signed image.

The machine boots OVMF's Secure Boot firmware with a variable store that holds the session's PK,
KEK and db (builder.firmware.varstore, virt-firmware) and a software TPM (swtpm). On it: Secure
Boot is on and enforcing the fleet's keys; three newer boot entries with one try each (a UKI
without a signature, one signed by another fleet's db, and the image's own signed UKI with one
byte of its command line, so of its root hash, changed) are each refused by the firmware, and
boot counting falls back to the good entry within the same reboot.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pefile
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from builder.build.toolstree import OVMF_VARS, ToolsTree
from builder.firmware.varstore import SecureBootKeys, write_variable_store
from builder.keys.secureboot import build_certificates
from builder.run import run
from builder.vm.qemu import VmConfig, boot_vm
from builder.vm.swtpm import SoftwareTpm
from tests.secureboot import make_keyset
from tests.vm.image import BuiltImage, Node, SshKey, build_uki_variant, ssh_config

pytestmark = pytest.mark.vm

EFI_GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
EFI_IMAGE_SECURITY = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"  # db, dbx
BOOT_TIMEOUT = 400.0


@pytest.fixture(scope="module")
def enrolled(image: BuiltImage, tools_tree: ToolsTree, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The firmware variable store: the session's PK, KEK and db, Secure Boot on."""
    certificates = build_certificates(image.output, image.manifest)
    assert certificates is not None, "the session's image is a signed build"
    store = tmp_path_factory.mktemp("secure-boot") / "vars.fd"
    keys = SecureBootKeys(certificates.pk, (certificates.kek,), (certificates.db,))
    write_variable_store(keys, tools_tree.path(OVMF_VARS), store)
    return store


@pytest.fixture(scope="module")
def node(
    image: BuiltImage, key: SshKey, tools_tree: ToolsTree, enrolled: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Node]:  # fmt: skip
    work = tmp_path_factory.mktemp("secure-vm")
    config = VmConfig(
        image=image.raw, credentials={"ssh.authorized_keys.root": key.public.encode()},
        serial_log=work / "serial.log", secure_boot_vars=enrolled, tpm=SoftwareTpm(),
    )  # fmt: skip
    with boot_vm(config, tools_tree, work) as vm:
        vm.wait_for_ssh(BOOT_TIMEOUT)
        node = Node(vm, ssh_config(work / "ssh_config", vm.ssh_port, key))
        node.wait_for("systemctl is-active multi-user.target")
        yield node


def efivar(node: Node, name: str) -> bytes:
    """An EFI variable's value (efivarfs puts 4 bytes of attributes first)."""
    data = bytes.fromhex(node.sh(f"od -An -v -tx1 /sys/firmware/efi/efivars/{name} | tr -d ' \\n'"))
    return data[4:]


def test_secure_boot_is_on_with_the_fleet_keys(node: Node, image: BuiltImage) -> None:
    assert re.search(r"Secure Boot: enabled \(user\)", node.sh("bootctl status --no-pager"))
    assert efivar(node, f"SecureBoot-{EFI_GLOBAL}") == b"\x01"
    assert efivar(node, f"SetupMode-{EFI_GLOBAL}") == b"\x00"
    certificates = build_certificates(image.output, image.manifest)
    assert certificates is not None
    # the firmware's db holds the session's db certificate (DER, inside an EFI signature list)
    db = x509.load_pem_x509_certificate(certificates.db.read_bytes())
    assert db.public_bytes(serialization.Encoding.DER) in efivar(node, f"db-{EFI_IMAGE_SECURITY}")
    report = json.loads(node.sh("hostbuild-node status --json"))
    assert report["secure_boot"]["enabled"] is True, report["secure_boot"]


def signed_uki(image: BuiltImage, out: Path) -> Path:
    """The image's UKI as signed (the update payload carries the ESP's signed file)."""
    name = image.manifest["name"]
    run(["zstd", "-q", "-d", "-f", image.output / f"{name}.update" / f"{name}.efi.zst", "-o", out])
    return out


def altered(uki: Path, out: Path) -> Path:
    """`uki` with one byte of its .cmdline changed: a digit of its root hash."""
    pe = pefile.PE(uki)
    [section] = [s for s in pe.sections if s.Name.rstrip(b"\0") == b".cmdline"]
    text = section.get_data()[: section.Misc_VirtualSize]
    at = text.index(b"roothash=") + len(b"roothash=")
    data = bytearray(uki.read_bytes())
    offset = section.PointerToRawData + at
    data[offset] = ord("0") if data[offset] != ord("0") else ord("1")
    out.write_bytes(data)
    return out


def test_unsigned_foreign_and_altered_ukis_are_refused_and_the_good_entry_boots(
    node: Node, image: BuiltImage, tools_tree: ToolsTree, tmp_path: Path
) -> None:
    profile, version = image.manifest["profile"], image.manifest["version"]
    cmdline = image.manifest["kernel"]["cmdline"]
    node.wait_for("systemctl is-active systemd-bless-boot.service")  # the good entry is blessed
    unsigned = build_uki_variant(image, tools_tree, tmp_path / "unsigned", "9.9.9-1", cmdline)
    other_keys = make_keyset(tmp_path / "other-fleet", "another fleet")
    foreign = build_uki_variant(image, tools_tree, tmp_path / "foreign", "9.9.9-2", cmdline)
    tools_tree.run([
        "sbsign", "--key", other_keys / "db.key", "--cert", other_keys / "db.crt",
        "--output", foreign, foreign,
    ], binds=[foreign.parent], readonly=[other_keys])  # fmt: skip
    changed = altered(signed_uki(image, tmp_path / "signed.efi"), tmp_path / "altered.efi")
    bad = {"9.9.9-1": unsigned, "9.9.9-2": foreign, "9.9.9-3": changed}
    linux = node.sh("bootctl --print-esp-path").strip() + "/EFI/Linux"
    for bad_version, uki in bad.items():
        run(["scp", "-F", node.config, "-q", uki, f"vm:{linux}/{profile}_{bad_version}+1.efi"])
    node.sh("sync")
    node.host.run("systemctl reboot")
    # systemd-boot takes them newest first, the firmware refuses each (LoadImage: Access denied)
    refused = re.compile(
        r"Error loading \\EFI\\Linux\\\S+_9\.9\.9-\d\+0-1\.efi: (Access denied|Security)", re.I
    )
    deadline = time.monotonic() + BOOT_TIMEOUT
    while len(refused.findall(node.vm.serial_text())) < len(bad):
        assert time.monotonic() < deadline, node.vm.serial_text()[-3000:]
        time.sleep(2)
    time.sleep(10)
    node.vm.wait_for_ssh(BOOT_TIMEOUT)
    node.wait_for("systemctl is-active multi-user.target")
    entries = sorted(node.sh(f"ls {linux}").split())
    assert entries == sorted(
        [f"{profile}_{version}.efi"] + [f"{profile}_{v}+0-1.efi" for v in bad]
    ), entries  # each tried once, refused, no tries left; the good entry as it was
    release = node.sh("cat /usr/lib/os-release")
    assert f"IMAGE_VERSION={version}" in release
