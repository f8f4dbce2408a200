"""Compare two builds of one lock: the digests of every output, and what differs when they do.

`python -m tests.reproducible OUTPUT_A OUTPUT_B` prints the differing outputs and, for the root
slot and the ESP, the differing files, with diffoscope's account of the first few of them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.build.toolstree import ToolsTree
from builder.run import run

# What must be bit-identical: the root slot, its hash tree, the UKI, the ESP, both disk formats,
# the update payload (each compressed file and its description) and the SBOM. The manifest and
# build.log record the build itself (its time, duration and paths), so they are not compared.
OUTPUTS = ("erofs", "verity", "uki", "esp", "raw", "qcow2", "payload", "sbom")
DIFFOSCOPE_FILES = 5


@dataclass(frozen=True)
class BuiltImage:
    output: Path
    manifest: dict[str, Any]

    @property
    def raw(self) -> Path:
        return self.output / f"{self.manifest['name']}.raw"

    def partition(self, role: str) -> dict[str, Any]:
        parts: list[dict[str, Any]] = self.manifest["layout"]["partitions"]
        return next(p for p in parts if p["role"] == role)


def load_build(output: Path) -> BuiltImage:
    return BuiltImage(output, json.loads((output / "manifest.json").read_text()))


def _sha256_range(path: Path, start: int, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        f.seek(start)
        left = size
        while left:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    return _sha256_range(path, 0, path.stat().st_size)


def output_digests(build: BuiltImage) -> dict[str, str]:
    """sha256 of each output named in OUTPUTS (slot, verity and ESP as written into the raw)."""
    name = build.manifest["name"]
    slot = build.manifest["slot"]
    payload_dir = build.output / f"{name}.update"
    payload = hashlib.sha256()
    for path in sorted(payload_dir.iterdir()):
        payload.update(f"{path.name}\0{_sha256(path)}\n".encode())
    esp = build.partition("esp")
    return {
        "erofs": _sha256_range(build.raw, build.partition("root-a")["start"], slot["erofs_bytes"]),
        "verity": _sha256_range(
            build.raw, build.partition("root-a-verity")["start"], slot["verity_bytes"]
        ),
        "uki": build.manifest["uki"]["sha256"],
        "esp": _sha256_range(build.raw, esp["start"], esp["size"]),
        "raw": _sha256(build.raw),
        "qcow2": _sha256(build.output / f"{name}.qcow2"),
        "payload": payload.hexdigest(),
        "sbom": _sha256(build.output / f"{name}.spdx.json"),
    }


def differing_outputs(a: BuiltImage, b: BuiltImage) -> list[str]:
    da, db = output_digests(a), output_digests(b)
    return [key for key in OUTPUTS if da[key] != db[key]]


def extract_partition(build: BuiltImage, role: str, size: int, dest: Path) -> Path:
    start = build.partition(role)["start"]
    with build.raw.open("rb") as src, dest.open("wb") as dst:
        src.seek(start)
        left = size
        while left:
            chunk = src.read(min(left, 1 << 20))
            dst.write(chunk)
            left -= len(chunk)
    return dest


def extract_root(build: BuiltImage, tools: ToolsTree, work: Path) -> Path:
    """Root slot A's tree, unpacked with fsck.erofs --extract (owners, modes, xattrs kept)."""
    work.mkdir(parents=True, exist_ok=True)
    image = extract_partition(
        build, "root-a", build.manifest["slot"]["erofs_bytes"], work / "root.erofs"
    )
    root = work / "root"
    tools.run(["fsck.erofs", f"--extract={root}", image], binds=[work])
    image.unlink()
    return root


def extract_esp(build: BuiltImage, tools: ToolsTree, work: Path) -> Path:
    """The ESP's files, copied out with mtools (timestamps kept)."""
    work.mkdir(parents=True, exist_ok=True)
    image = extract_partition(build, "esp", build.partition("esp")["size"], work / "esp.img")
    root = work / "esp"
    root.mkdir()
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
    tools.run(["mcopy", "-s", "-m", "-i", image, "::/", root], binds=[work], env=env)
    return root


def describe_entry(path: Path) -> tuple[object, ...]:
    """What of one file decides the image's bytes: type, mode, owner, size, content or target."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        content: object = os.readlink(path)
    elif stat.S_ISREG(st.st_mode):
        content = _sha256(path)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        content = (os.major(st.st_rdev), os.minor(st.st_rdev))
    else:
        content = None
    xattrs = tuple(sorted((k, os.getxattr(path, k, follow_symlinks=False))
                          for k in os.listxattr(path, follow_symlinks=False)))  # fmt: skip
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, int(st.st_mtime), content, xattrs)


def listing(root: Path) -> dict[str, tuple[object, ...]]:
    entries = {"/": describe_entry(root)}
    for path in root.rglob("*"):
        entries["/" + path.relative_to(root).as_posix()] = describe_entry(path)
    return entries


def differing_files(a: Path, b: Path) -> list[str]:
    """Paths (inside the two trees) that exist in one only or differ in any described way.

    Below a directory that only one tree has, only that directory is named.
    """
    la, lb = listing(a), listing(b)
    differ = {p for p in la.keys() | lb.keys() if la.get(p) != lb.get(p)}
    only = {p for p in differ if (p in la) != (p in lb)}
    return sorted(p for p in differ if not any(parent in only for parent in _parents(p)))


def _parents(path: str) -> list[str]:
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def diffoscope(a: Path, b: Path, limit: int = 4000) -> str:
    """diffoscope's text account of two files (or why it could not give one)."""
    if shutil.which("diffoscope") is None:
        return "(diffoscope is not installed: apt-get install diffoscope-minimal)"
    result = run(
        ["diffoscope", "--text", "-", "--no-progress", "--exclude-directory-metadata=no", a, b],
        check=False,
    )
    return (result.stdout + result.stderr)[:limit]


def explain(a: BuiltImage, b: BuiltImage, tools: ToolsTree, work: Path) -> str:
    """Which outputs differ and, for the slot and the ESP, which files and how."""
    outputs = differing_outputs(a, b)
    if not outputs:
        return ""
    lines = [f"outputs differ: {', '.join(outputs)}"]
    trees = []
    if "erofs" in outputs:
        root_a, root_b = extract_root(a, tools, work / "a"), extract_root(b, tools, work / "b")
        trees.append(("root slot", root_a, root_b))
    if "esp" in outputs:
        trees.append(("ESP", extract_esp(a, tools, work / "a"), extract_esp(b, tools, work / "b")))
    for label, ta, tb in trees:
        files = differing_files(ta, tb)
        lines.append(f"{label}: {len(files)} differing file(s): {', '.join(files[:50])}")
        for path in files[:DIFFOSCOPE_FILES]:
            fa, fb = ta / path.lstrip("/"), tb / path.lstrip("/")
            if fa.is_file() and fb.is_file() and not fa.is_symlink() and not fb.is_symlink():
                lines.append(f"--- diffoscope {path}\n{diffoscope(fa, fb)}")
            else:
                da = describe_entry(fa) if fa.exists() or fa.is_symlink() else "absent"
                db = describe_entry(fb) if fb.exists() or fb.is_symlink() else "absent"
                lines.append(f"--- {path}: {da} / {db}")
    return "\n".join(lines)


def main() -> None:
    from builder.build.apt import host_mirrors
    from builder.build.toolstree import ensure_tools_tree, host_is_new_enough

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/hostbuild-reproducible"))
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "hostbuild")
    args = parser.parse_args()
    a, b = load_build(args.a), load_build(args.b)
    if host_is_new_enough():
        tools = ToolsTree(Path("/"))
    else:
        mirrors = host_mirrors()
        if mirrors is None:
            sys.exit("no Debian mirror in the host's apt sources for the tools tree")
        tools = ensure_tools_tree(args.cache, mirrors.main)
    shutil.rmtree(args.work, ignore_errors=True)
    report = explain(a, b, tools, args.work)
    print(report or "identical: " + ", ".join(OUTPUTS))
    sys.exit(1 if report else 0)


if __name__ == "__main__":
    main()
