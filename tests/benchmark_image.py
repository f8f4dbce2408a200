"""Image benchmark: `python -m tests.benchmark_image OUTPUT_DIR [--boots N]`.

Prints, for a built image: the root slot compressed with lz4hc, lz4, zstd and lzma (mkfs time,
size, and a full-read decompression time as the proxy for read cost at boot), then the boot time
under QEMU (TCG) of the image as built: QEMU start to SSH, and systemd-analyze's split.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from builder.apt import resolve_mirrors
from builder.profile import Debian
from builder.run import run
from builder.slot import COMPRESSORS, PCLUSTER
from builder.toolstree import ensure_tools_tree
from tests.vm.conftest import cache_dir
from tests.vm.image import booted, make_ssh_key, ssh_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output", type=Path)
    parser.add_argument("--boots", type=int, default=2)
    args = parser.parse_args()
    manifest = json.loads((args.output / "manifest.json").read_text())
    raw = args.output / f"{manifest['name']}.raw"
    tools = ensure_tools_tree(cache_dir(), resolve_mirrors(Debian(release="trixie")).main)
    work = Path(tempfile.mkdtemp(prefix="hostbuild-bench-image-"))
    try:
        part = next(p for p in manifest["layout"]["partitions"] if p["role"] == "root-a")
        erofs = work / "root.erofs"
        with raw.open("rb") as src, erofs.open("wb") as dst:
            src.seek(part["start"])
            dst.write(src.read(manifest["slot"]["erofs_bytes"]))
        tree = work / "tree"
        tools.run(["fsck.erofs", f"--extract={tree}", erofs], binds=[work])
        print(f"{'compressor':<10} {'mkfs s':>7} {'MiB':>7} {'read s':>7}")
        for name, option in COMPRESSORS.items():
            image = work / f"{name}.erofs"
            start = time.monotonic()
            tools.run(["mkfs.erofs", f"-z{option}", f"-C{PCLUSTER}", image, tree], binds=[work])
            mkfs = time.monotonic() - start
            out = work / f"read-{name}"
            start = time.monotonic()
            tools.run(["fsck.erofs", f"--extract={out}", image], binds=[work])
            read = time.monotonic() - start
            shutil.rmtree(out)
            print(f"{name:<10} {mkfs:>7.1f} {image.stat().st_size / 2**20:>7.1f} {read:>7.1f}")
            image.unlink()
        key = make_ssh_key(work)
        for n in range(args.boots):
            vm_dir = work / f"vm{n}"
            vm_dir.mkdir()
            start = time.monotonic()
            with booted(raw, tools, vm_dir, key) as vm:
                to_ssh = time.monotonic() - start
                config = ssh_config(vm_dir / "ssh_config", vm.ssh_port, key)
                analyze = run(["ssh", "-F", config, "vm", "systemd-analyze time"], check=False)
                split = analyze.stdout.strip().splitlines()[0] if analyze.stdout else "?"
                print(f"boot {n + 1}: QEMU start to SSH {to_ssh:.1f} s; {split}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
