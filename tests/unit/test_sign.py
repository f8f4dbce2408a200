"""Signing with the tools tree's sbsign, sbverify and ukify: systemd-boot, a UKI with signed
PCR 11 predictions, and a whole (tiny) assembly whose ESP and update payload carry them."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from builder.build.toolstree import SYSTEMD_BOOT_EFI, ToolsTree
from builder.disk.assemble import assemble_image
from builder.disk.esp import SD_BOOT
from builder.disk.sign import sign_pe, verify_pe
from builder.disk.uki import STUB, build_uki
from builder.errors import HostbuildError
from builder.keys.secureboot import Signer, prepare_signer
from builder.profile.load import load_profile
from tests.measured import uki_pcr11
from tests.secureboot import find_tools_tree, secure_profile, signing_keys
from tests.unit.sbkeys import keys, other_keys

__all__ = ["keys", "other_keys"]  # the fixtures

TREE = find_tools_tree()
pytestmark = pytest.mark.skipif(TREE is None, reason="no complete tools tree in the cache")
KVER = "6.12.0-test"


@pytest.fixture
def tools() -> ToolsTree:
    assert TREE is not None
    return TREE


def signer_for(keys: Path, tmp_path: Path, pcr: bool = True) -> Signer:
    profile = load_profile(str(secure_profile(tmp_path / "profile", keys, pcr=pcr)))
    signer = prepare_signer(profile, signing_keys(keys, pcr))
    assert signer is not None
    return signer


def sbverify(tools: ToolsTree, cert: Path, path: Path) -> int:
    result = tools.run(["sbverify", "--cert", cert, path], binds=[path.parent],
                       readonly=[cert.parent], check=False)  # fmt: skip
    return result.returncode


def test_signed_systemd_boot_verifies_only_against_db(
    tools: ToolsTree, keys: Path, other_keys: Path, tmp_path: Path
) -> None:
    source = tools.path(SYSTEMD_BOOT_EFI)
    with pytest.raises(HostbuildError, match="does not verify against"):
        verify_pe(tools, keys / "db.crt", source)  # as Debian ships it: unsigned
    signed = sign_pe(tools, signer_for(keys, tmp_path), source, tmp_path / "out" / "boot.efi")
    assert sbverify(tools, keys / "db.crt", signed) == 0
    assert sbverify(tools, other_keys / "db.crt", signed) != 0
    assert sorted(p.name for p in signed.parent.iterdir()) == ["boot.efi"]


def test_a_db_key_that_is_not_the_certificates_fails(
    tools: ToolsTree, keys: Path, other_keys: Path, tmp_path: Path
) -> None:
    # what an engine key of the wrong token would do: prepare_signer cannot see it
    wrong = Signer(signer_for(keys, tmp_path).certificates, str(other_keys / "db.key"))
    with pytest.raises(HostbuildError):
        sign_pe(tools, wrong, tools.path(SYSTEMD_BOOT_EFI), tmp_path / "out" / "boot.efi")
    assert not (tmp_path / "out" / "boot.efi").exists()


def fake_tree(tools: ToolsTree, root: Path) -> Path:
    """What a root tree needs for the assembler: a kernel, an initrd, the stub, systemd-boot."""
    for name in (STUB, SD_BOOT):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tools.path("/" + name), root / name)
    (root / "usr/lib/os-release").write_text('ID=debian\nIMAGE_ID=secure\nVERSION_ID="13"\n')
    (root / "boot").mkdir()
    (root / f"boot/vmlinuz-{KVER}").write_bytes(b"MZ not a real kernel " * 512)
    (root / f"boot/initrd.img-{KVER}").write_bytes(b"not a real initrd " * 512)
    (root / "usr/lib/modules" / KVER).mkdir(parents=True)
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("")
    return root


def test_uki_carries_signed_pcr_predictions_and_a_db_signature(
    tools: ToolsTree, keys: Path, tmp_path: Path
) -> None:
    tree = fake_tree(tools, tmp_path / "tree")
    signer = signer_for(keys, tmp_path)
    boot = tree / "boot"
    uki = build_uki(tools, tree, boot / f"vmlinuz-{KVER}", boot / f"initrd.img-{KVER}", KVER,
                    "ro quiet", tmp_path / "uki" / "secure.efi", signer)  # fmt: skip
    assert sbverify(tools, keys / "db.crt", uki) == 0
    sections = json.loads(tools.run(["ukify", "inspect", uki, "--json=short"],
                                    binds=[uki.parent]).stdout)  # fmt: skip
    assert sections[".pcrpkey"]["text"] == (keys / "pcr-public.pem").read_text()
    pcrsig = json.loads(sections[".pcrsig"]["text"])
    predictions = pcrsig["sha256"]
    assert [p["pcrs"] for p in predictions] == [[11]] * len(predictions)
    fingerprint = signer.record()["pcr_public_key"]["sha256"]
    assert {p["pkfp"] for p in predictions} == {fingerprint}
    # one policy per boot phase: the four differ
    assert len({p["pol"] for p in predictions}) == 4


def test_unsigned_uki_has_no_signature_or_pcr_sections(tools: ToolsTree, tmp_path: Path) -> None:
    tree = fake_tree(tools, tmp_path / "tree")
    boot = tree / "boot"
    uki = build_uki(tools, tree, boot / f"vmlinuz-{KVER}", boot / f"initrd.img-{KVER}", KVER,
                    "ro", tmp_path / "uki" / "plain.efi")  # fmt: skip
    sections = json.loads(tools.run(["ukify", "inspect", uki, "--json=short"],
                                    binds=[uki.parent]).stdout)  # fmt: skip
    assert ".pcrsig" not in sections and ".pcrpkey" not in sections
    listed = tools.run(["sbverify", "--list", uki], binds=[uki.parent], check=False)
    assert "No signature table present" in listed.stdout + listed.stderr


def rootfs_tar(tree: Path, out: Path) -> Path:
    with tarfile.open(out, "w") as tar:
        tar.add(tree, arcname=".")
    return out


def esp_file(tools: ToolsTree, esp: Path, name: str, out: Path) -> Path:
    tools.run(["mcopy", "-i", esp, f"::/{name}", out], binds=[esp.parent, out.parent])
    return out


def test_assembly_signs_the_boot_chain_and_the_payload_carries_the_signed_uki(
    tools: ToolsTree, keys: Path, tmp_path: Path
) -> None:
    profile = load_profile(str(secure_profile(tmp_path / "profile", keys)))
    signer = prepare_signer(profile, signing_keys(keys))
    tar = rootfs_tar(fake_tree(tools, tmp_path / "tree"), tmp_path / "rootfs.tar")
    work, staging = tmp_path / "work", tmp_path / "staging"
    staging.mkdir()
    name, version = "secure-0.1.0-1", "0.1.0-1"
    assembly = assemble_image(profile, name, version, tar, work, staging, tools, 0, signer)
    assert signer is not None
    record = assembly.record["secure_boot"]
    assert {k: v for k, v in record.items() if k != "pcr11"} == signer.record()
    esp = work / "esp.img"
    got = tmp_path / "got"
    got.mkdir()
    uki_name = assembly.record["uki"]["file"]
    boot_chain = (
        "EFI/BOOT/BOOTX64.EFI",
        "EFI/systemd/systemd-bootx64.efi",
        f"EFI/Linux/{uki_name}",
    )
    for inside in boot_chain:
        copy = esp_file(tools, esp, inside, got / Path(inside).name)
        assert sbverify(tools, keys / "db.crt", copy) == 0, inside
    payload = staging / f"{name}.update"
    entry = json.loads((payload / "payload.json").read_text())["files"]["uki"]
    tools.run(["zstd", "-q", "-d", payload / entry["file"], "-o", got / "payload-uki.efi"],
              binds=[payload, got])  # fmt: skip
    payload_uki = (got / "payload-uki.efi").read_bytes()
    assert payload_uki == (got / uki_name).read_bytes()
    assert assembly.record["uki"]["sha256"] == entry["sha256"]
    assert sbverify(tools, keys / "db.crt", got / "payload-uki.efi") == 0
    # the predicted PCR 11 values are those of the signed UKI the ESP and the payload carry
    assert record["pcr11"] == uki_pcr11(got / "payload-uki.efi")


def test_unsigned_assembly_is_unsigned(tools: ToolsTree, keys: Path, tmp_path: Path) -> None:
    profile = load_profile("worker")
    tar = rootfs_tar(fake_tree(tools, tmp_path / "tree"), tmp_path / "rootfs.tar")
    staging = tmp_path / "staging"
    staging.mkdir()
    assembly = assemble_image(profile, "worker-0.1.0-1", "0.1.0-1", tar, tmp_path / "work",
                              staging, tools, 0)  # fmt: skip
    assert assembly.record["secure_boot"]["signed"] is False
    uki_name = assembly.record["uki"]["file"]
    uki = esp_file(
        tools, tmp_path / "work" / "esp.img", f"EFI/Linux/{uki_name}", tmp_path / "u.efi"
    )
    assert assembly.record["secure_boot"]["pcr11"] == uki_pcr11(uki)
    got = esp_file(tools, tmp_path / "work" / "esp.img", "EFI/BOOT/BOOTX64.EFI", tmp_path / "b.efi")
    assert got.read_bytes() == tools.path(SYSTEMD_BOOT_EFI).read_bytes()
