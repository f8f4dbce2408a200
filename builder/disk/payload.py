"""The update payload of a version: the slot content and the UKI, compressed, with digests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from builder.build.artifacts import sha256_file
from builder.disk.slot import Tools

PAYLOAD_VERSION = 1


def build_payload(
    tools: Tools, out: Path, version: str, roothash: str, layout_version: int,
    files: dict[str, Path],
) -> dict[str, Any]:  # fmt: skip
    """zstd-compress each file into `out` and write `payload.json` describing them."""
    out.mkdir(parents=True)
    entries = {}
    for role, source in files.items():
        target = out / f"{source.name}.zst"
        # --long=25: a 32 MiB match window finds repeats across lz4hc's 64 KiB pclusters (the
        # worker's erofs: 3 % smaller than zstd's default 8 MiB window; --long=27 would save
        # 1 % more and make the node's decompressor hold 128 MiB, where 32 MiB keeps the
        # updater's peak RSS under 100 MiB). The node refuses a larger window (slots.ZSTD).
        # The tools tree's zstd: its output does not depend on the number of threads (-T0).
        argv: list[str | os.PathLike[str]] = [
            "zstd",
            "-q",
            "-10",
            "--long=25",
            "-T0",
            "--no-progress",
            source,
            "-o",
            target,
        ]
        tools.run(argv, binds=[out], readonly=[source.parent])
        target.chmod(0o644)  # zstd copies the source's mode (veritysetup writes 0600)
        entries[role] = {
            "file": target.name,
            "size": source.stat().st_size,
            "sha256": sha256_file(source),
            "compressed_size": target.stat().st_size,
            "compressed_sha256": sha256_file(target),
        }
    record = {
        "payload": PAYLOAD_VERSION,
        "version": version,
        "layout": layout_version,
        "roothash": roothash,
        "files": entries,
    }
    (out / "payload.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
