"""Build benchmark: `python -m tests.benchmark` prints cold and warm build times and tree sizes.

hostbuild's stand-in worker profile (the real worker's upstream kubelet cannot be downloaded on
hostbuild's build hosts) next to a plain `disk-image-create debian-minimal` tar built from the same
mirror in the same run. Each side starts from its own empty cache (cold), then rebuilds with
nothing changed (warm). Needs root; takes a few minutes.
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from builder.build.apt import resolve_mirrors
from builder.build.dib import dib_command
from builder.profile.load import load_profile
from builder.run import base_environment, stream
from tests.standin import PROFILE, make_mirror


def tree_bytes(tar_path: Path) -> int:
    with tarfile.open(tar_path) as tar:
        return sum(m.size for m in tar.getmembers() if m.isfile())


def timed(build: Callable[[int], Path], n: int) -> tuple[float, Path]:
    start = time.monotonic()
    result = build(n)
    return time.monotonic() - start, result


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="hostbuild-bench-", dir=os.environ.get("TMPDIR")))
    mirror = make_mirror(work / "mirror")
    mirrors = resolve_mirrors(load_profile(os.fspath(PROFILE)).debian)
    hostbuild = Path(sys.executable).parent / "hostbuild"

    def build_hostbuild(n: int) -> Path:
        out = work / f"hostbuild-{n}"
        stream([hostbuild, "-q", "--cache-dir", work / "hb-cache", "image", "--profile", PROFILE,
                "--artifact-mirror", mirror, "--output", out])  # fmt: skip
        return out / "worker-standin-0.1.0.rootfs.tar"

    def build_plain(n: int) -> Path:
        out = work / f"plain-{n}" / "debian-minimal"
        env = base_environment()
        env.update(PATH=f"{dib_command().parent}:{env['PATH']}", DIB_RELEASE="trixie",
                   DIB_DISTRIBUTION_MIRROR=mirrors.main, TMPDIR=os.fspath(work))  # fmt: skip
        if mirrors.security:
            env["DIB_DEBIAN_SECURITY_MIRROR"] = mirrors.security
        stream([dib_command(), "-a", "amd64", "-t", "tar", "--image-cache", work / "plain-cache",
                "-o", out, "debian-minimal"], env=env)  # fmt: skip
        return out.with_name("debian-minimal.tar")

    rows = []
    try:
        for name, build in (("hostbuild worker (stand-in)", build_hostbuild),
                            ("plain DIB debian-minimal", build_plain)):  # fmt: skip
            cold, tar = timed(build, 1)
            warm, tar = timed(build, 2)
            rows.append((name, cold, warm, tree_bytes(tar)))
            print(f"  measured {name}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'build':<30} {'cold s':>8} {'warm s':>8} {'tree MiB':>9}")
    for name, cold, warm, size in rows:
        print(f"{name:<30} {cold:>8.1f} {warm:>8.1f} {size / 2**20:>9.1f}")
    ratio = rows[0][2] / rows[1][2]
    print(f"warm rebuild ratio hostbuild / plain DIB: {ratio:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
