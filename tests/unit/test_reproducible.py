"""The reproducibility report names what differs between two trees, and nothing else."""

from __future__ import annotations

import os
from pathlib import Path

from tests.reproducible import differing_files


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        os.utime(path, (1_700_000_000, 1_700_000_000))
    for directory in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        os.utime(directory, (1_700_000_000, 1_700_000_000))
    os.utime(root, (1_700_000_000, 1_700_000_000))
    return root


def test_identical_trees_have_no_differences(tmp_path: Path) -> None:
    files = {"etc/a": "1", "usr/b": "2"}
    assert differing_files(tree(tmp_path / "x", files), tree(tmp_path / "y", files)) == []


def test_content_mode_time_and_extra_directories_are_named(tmp_path: Path) -> None:
    x = tree(tmp_path / "x", {"etc/a": "1", "etc/b": "2", "usr/c": "3", "usr/d": "4"})
    y = tree(tmp_path / "y", {"etc/a": "changed", "etc/b": "2", "usr/c": "3", "usr/d": "4",
                              "dev/cpu/0/cpuid": "", "dev/kvm": ""})  # fmt: skip
    (y / "usr/c").chmod(0o600)
    os.utime(y / "usr/d", (1_800_000_000, 1_800_000_000))
    os.utime(y, (1_700_000_000, 1_700_000_000))
    # the root's /dev only in y: named once, not each node below it
    assert differing_files(x, y) == ["/dev", "/etc/a", "/usr/c", "/usr/d"]
