"""Same lock, same caches, same bits: a second build elsewhere gives the very same image."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from builder.run import run
from tests.build.conftest import Built, build_tools, invoke
from tests.reproducible import OUTPUTS, explain, load_build, output_digests
from tests.standin import PROFILE

pytestmark = pytest.mark.build


def test_two_builds_of_one_lock_are_bit_identical(
    built: Built, mirror_url: str, build_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Another directory for everything: the cache (a copy of the first build's, so the same
    # bootstrap, packages and artifacts), the work directory below it, the output and the lock.
    # It runs minutes after the first build: every timestamp must come from SOURCE_DATE_EPOCH.
    other = tmp_path_factory.mktemp("rebuild")
    cache = other / "another-cache-dir"
    run(["cp", "-a", "--reflink=auto", build_cache, cache])
    for transient in ("work", "logs"):
        run(["rm", "-rf", cache / transient])
    output = other / "elsewhere" / "worker"
    lock = other / "rebuild.lock.json"  # empty: the same inputs must get the same build number
    result = invoke(
        cache, "image", "--profile", os.fspath(PROFILE), "--output", os.fspath(output),
        "--artifact-mirror", mirror_url, "--lock", os.fspath(lock),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    first, second = load_build(built.output), load_build(output)
    assert second.manifest["version"] == first.manifest["version"]
    assert second.manifest["inputs_digest"] == first.manifest["inputs_digest"]

    report = explain(first, second, build_tools(build_cache), other / "explain")
    assert not report, report
    assert set(output_digests(first)) == set(OUTPUTS)
    # Both locks record the same root hash for the build number (a rebuild that gave another
    # one would fail against the first lock: unit-tested in tests/unit/test_lock.py).
    [one] = json.loads(built.output.with_name("worker-standin.lock.json").read_text())["builds"]
    [two] = json.loads(lock.read_text())["builds"]
    assert one["roothash"] == two["roothash"] == first.manifest["roothash"]
