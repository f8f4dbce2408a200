"""Newer versions of a built image for the update tests, made from its tree in about a minute.

A full `hostbuild image` per version would cost a diskimage-builder run each. A test version is
the built image's own root tree (unpacked from slot A), with its os-release naming the new
version and one file that tells versions apart, assembled again the way `hostbuild image`
assembles it: a new erofs slot and verity tree (lz4: fast, and the bytes need not match a real
build), a UKI with the image's kernel and initrd and the new root hash, and the update payload,
beside a manifest.json that carries what `hostbuild repo add` reads.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.build.toolstree import ToolsTree
from builder.disk.esp import uki_filename
from builder.disk.payload import build_payload
from builder.disk.slot import make_slot
from builder.disk.uki import build_uki, kernel_cmdline
from tests.reproducible import extract_root
from tests.vm.image import BuiltImage, uki_sections

MARKER = "/usr/lib/hostbuild/test-version"


@dataclass(frozen=True)
class DerivedVersion:
    output: Path
    manifest: dict[str, Any]


def set_version(tree: Path, image_id: str, version: str) -> None:
    release = tree / "usr/lib/os-release"
    text = release.read_text()
    os_version = version.rsplit("-", 1)[0]
    text = re.sub(r"^IMAGE_VERSION=.*$", f"IMAGE_VERSION={version}", text, flags=re.M)
    text = re.sub(r"^VERSION_ID=.*$", f"VERSION_ID={os_version}", text, flags=re.M)
    text = re.sub(r"^PRETTY_NAME=.*$", f'PRETTY_NAME="hostbuild {image_id} {version}"', text,
                  flags=re.M)  # fmt: skip
    release.write_text(text)
    (tree / MARKER.lstrip("/")).write_text(f"{version}\n")


def derive_version(
    image: BuiltImage, tools: ToolsTree, work: Path, version: str, *,
    upgrade_from: str | None = None, extra_files: dict[str, tuple[str, int]] | None = None,
    extra_cmdline: tuple[str, ...] = (),
) -> DerivedVersion:  # fmt: skip
    """Version `version` of `image`: its tree with the new os-release, MARKER and extra files
    (path: (content, mode)), its command line with `extra_cmdline` appended."""
    image_id = image.manifest["profile"]
    name = f"{image_id}-{version}"
    shutil.rmtree(work, ignore_errors=True)
    tree = extract_root(image, tools, work / "extract")
    set_version(tree, image_id, version)
    for path, (content, mode) in (extra_files or {}).items():
        target = tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        target.chmod(mode)
    epoch = int(image.manifest["source_date_epoch"])
    slot = make_slot(tree, work / "slot", tools, name=name, version=version, epoch=epoch,
                     compressor="lz4")  # fmt: skip
    kernel, initrd = uki_sections(image, tools, work / "uki-base", ".linux", ".initrd")
    # the profile's own arguments: what the image's command line has beyond hostbuild's
    ours = set(kernel_cmdline("0" * 64, ()).split())
    profile_args = tuple(
        a for a in image.manifest["kernel"]["cmdline"].split()
        if a not in ours and not a.startswith("roothash=")
    )  # fmt: skip
    cmdline = kernel_cmdline(slot.roothash, (*profile_args, *extra_cmdline))
    kver = image.manifest["kernel"]["release"]
    uki = build_uki(tools, tree, kernel, initrd, kver, cmdline, work / "uki" / f"{name}.efi")
    output = work / "output"
    output.mkdir()
    layout = image.manifest["layout"]["version"]
    files = {"root": slot.erofs, "verity": slot.verity, "uki": uki}
    payload = build_payload(tools, output / f"{name}.update", version, slot.roothash, layout, files)
    shutil.rmtree(tree)
    manifest = {
        **image.manifest,
        "name": name, "version": version, "os_version": version.rsplit("-", 1)[0],
        "build_number": int(version.rsplit("-", 1)[1]), "roothash": slot.roothash,
        "upgrade_from": upgrade_from, "payload": payload,
        "kernel": {"release": kver, "cmdline": cmdline},
        "uki": {"file": uki_filename(image_id, version),
                "sha256": payload["files"]["uki"]["sha256"]},
        "slot": {"erofs_bytes": slot.erofs.stat().st_size,
                 "verity_bytes": slot.verity.stat().st_size},
        "test_version": "derived from " + image.manifest["name"] + " by tests/vm/versions.py",
    }  # fmt: skip
    (output / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return DerivedVersion(output, manifest)
