"""Publish benchmark: `python -m tests.benchmark_publish [IMAGE_DIR]`.

Builds an 8 GiB sparse raw image holding the data extents of IMAGE_DIR's raw image at their
offsets (or about 200 MiB of synthetic data if no directory is given), then publishes it to a
moto server on 127.0.0.1 (a separate process, so it does not share this one's GIL) with 1, 8 and
64 workers, and once more with nothing to do. Prints bytes read, bytes sent, blocks sent and
skipped, and upload throughput. Figures only: nothing here asserts timings.

The benchmark's manifest carries a digest of the data extents rather than of all 8 GiB (only
ClientTokens and tags use it; hashing 8 GiB of zeros would take longer than the upload).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from builder.publish.aws import publish_ami
from builder.publish.blocks import BLOCK_SIZE, data_extents
from builder.publish.request import load_image, make_request
from builder.run import spawn
from tests.awsmock import fake_credentials, pattern, reset_moto

GIB = 1024**3
MIB = 1024**2
SIZE = 8 * GIB
PAGE = 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def copy_extents(source: Path | None, target: Path) -> hashlib._Hash:
    """Write the data of `source` (or synthetic data) into a sparse SIZE-byte `target`."""
    digest = hashlib.sha256()
    with target.open("wb") as out:
        out.truncate(SIZE)
        if source is None:
            # an ESP, a compressed root, its verity tree, and allocated zeros in between
            layout = [(MIB, 24 * MIB, 1), (257 * MIB, 170 * MIB, 2), (1281 * MIB, 2 * MIB, 3)]
            for offset, length, seed in layout:
                out.seek(offset)
                for start in range(0, length, 8 * MIB):
                    chunk = pattern(min(8 * MIB, length - start), seed * 1000 + start)
                    out.write(chunk)
                    digest.update(chunk)
            out.seek(600 * MIB)
            out.write(bytes(16 * MIB))
            return digest
        with source.open("rb") as src:
            for start, end in data_extents(src.fileno(), source.stat().st_size):
                src.seek(start)
                out.seek(start)
                for pos in range(start, end, 8 * MIB):
                    chunk = src.read(min(8 * MIB, end - pos))
                    out.write(chunk)
                    digest.update(pos.to_bytes(8, "little") + chunk)
    return digest


def nonzero_bytes(raw: Path) -> tuple[int, int]:
    """Bytes in non-zero 4 KiB pages and in non-zero 512 KiB blocks (holes are not read)."""
    pages = blocks = 0
    with raw.open("rb") as f:
        for start, end in data_extents(f.fileno(), raw.stat().st_size):
            first = start // BLOCK_SIZE * BLOCK_SIZE
            for offset in range(first, end, BLOCK_SIZE):
                data = os.pread(f.fileno(), BLOCK_SIZE, offset)
                if data.count(0) != len(data):
                    blocks += 1
                    pages += sum(
                        1 for p in range(0, len(data), PAGE) if data[p : p + PAGE].strip(b"\0")
                    )
    return pages * PAGE, blocks * BLOCK_SIZE


def make_build(work: Path, image_dir: Path | None) -> Path:
    source = None
    name = "bench-0.1.0-1"
    if image_dir is not None:
        manifest = json.loads((image_dir / "manifest.json").read_text())
        source = image_dir / f"{manifest['name']}.raw"
    build = work / "build"
    build.mkdir()
    raw = build / f"{name}.raw"
    digest = copy_extents(source, raw)
    manifest = {
        "schema": 1, "name": name, "profile": "bench", "version": "0.1.0-1", "arch": "amd64",
        "outputs": {raw.name: {"sha256": digest.hexdigest(), "bytes": SIZE}},
    }  # fmt: skip
    (build / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return build


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=2) as response:
                response.read()
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("image_dir", type=Path, nargs="?")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    fake_credentials(os.environ)  # type: ignore[arg-type]
    work = Path(tempfile.mkdtemp(prefix="hostbuild-bench-publish-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = spawn([Path(sys.executable).parent / "moto_server", "-H", "127.0.0.1", "-p",
                    str(port)], output=work / "moto.log")  # fmt: skip
    try:
        wait_ready(url)
        build = make_build(work, args.image_dir)
        raw = next(build.glob("*.raw"))
        page_bytes, block_bytes = nonzero_bytes(raw)
        origin = args.image_dir or "synthetic data"
        print(f"image: {SIZE / GIB:.0f} GiB sparse, data from {origin}")
        print(
            f"  allocated: {raw.stat().st_blocks * 512 / MIB:.1f} MiB; non-zero 4 KiB pages: "
            f"{page_bytes / MIB:.1f} MiB; non-zero 512 KiB blocks: {block_bytes / MIB:.1f} MiB"
        )
        print(f"{'workers':>8} {'read MiB':>9} {'sent MiB':>9} {'sent/nz':>8} {'sent':>6} "
              f"{'zero':>6} {'holes':>7} {'seconds':>8} {'MiB/s':>7} {'blocks/s':>9}")  # fmt: skip
        for workers in (1, 8, 64, 0):
            rerun = workers == 0
            if not rerun:
                reset_moto(url)
                manifest = json.loads((build / "manifest.json").read_text())
                manifest.pop("publish", None)
                (build / "manifest.json").write_text(json.dumps(manifest))
            request = make_request(load_image(build), "eu-west-1", endpoint_url=url,
                                   workers=workers or 64)  # fmt: skip
            stats = publish_ami(request).upload
            seconds = max(stats.seconds, 1e-9)
            label = "re-run" if rerun else str(workers)
            print(
                f"{label:>8} {stats.bytes_read / MIB:9.1f} {stats.bytes_sent / MIB:9.1f} "
                f"{stats.bytes_sent / page_bytes:8.3f} {stats.blocks_sent:6d} "
                f"{stats.blocks_zero:6d} {stats.blocks_hole:7d} {stats.seconds:8.2f} "
                f"{stats.bytes_sent / MIB / seconds:7.1f} {stats.blocks_sent / seconds:9.0f}"
            )
    finally:
        server.terminate()
        if server.wait(10) is None:
            server.kill()
            server.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
