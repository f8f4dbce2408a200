"""Build tests: run diskimage-builder for real (root, loop devices, the Debian mirror)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from builder.build.apt import resolve_mirrors
from builder.build.doctor import check_host
from builder.build.toolstree import ToolsTree, ensure_tools_tree
from builder.cli import cli
from builder.profile.load import load_profile
from tests.conftest import skip_marked
from tests.standin import PROFILE


def _probe() -> str | None:
    if os.geteuid() != 0:
        return "build tests need root (diskimage-builder chroots and mounts)"
    missing = [c.name for c in check_host(Path("/tmp")) if not c.ok]
    return f"build host lacks: {', '.join(missing)} (run hostbuild doctor)" if missing else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip_marked(items, "build", _probe())


@pytest.fixture(scope="session")
def mirror_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The stand-in artifact mirror, served over HTTP on 127.0.0.1 for the whole session."""
    from tests.standin import make_mirror

    root = make_mirror(tmp_path_factory.mktemp("mirror"))
    handler = functools.partial(_QuietHandler, directory=os.fspath(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def build_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One cache for the session's builds: starts empty, so the first build is cold."""
    path = tmp_path_factory.mktemp("cache")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Built:
    """A finished build: its output directory, manifest, and root slot A extracted from the raw."""

    output: Path
    manifest: dict[str, Any]
    root: Path

    def resolve(self, path: str) -> Path:
        """`path` inside the image, following symlinks as the image would (not the host's)."""
        parts = [p for p in path.split("/") if p]
        current = self.root
        for _ in range(40):
            if not parts:
                return current
            candidate = current / parts.pop(0)
            if candidate.is_symlink():
                target = os.readlink(candidate)
                base = self.root if target.startswith("/") else current
                parts = [p for p in target.split("/") if p] + parts
                current = base
                continue
            current = candidate
        raise AssertionError(f"symlink loop at {path}")

    def read(self, path: str) -> bytes:
        return self.resolve(path).read_bytes()

    def names(self) -> set[str]:
        return {"/" + p.relative_to(self.root).as_posix() for p in self.root.rglob("*")}


def build_tools(cache: Path) -> ToolsTree:
    """The tools tree of the builds in `cache` (the same one `hostbuild image` used)."""
    return ensure_tools_tree(cache, resolve_mirrors(load_profile(os.fspath(PROFILE)).debian).main)


def invoke(cache: Path, *args: str) -> Any:
    runner = CliRunner()
    return runner.invoke(cli, ["--cache-dir", os.fspath(cache), *args], catch_exceptions=False)


def extract_slot_a(raw: Path, layout: dict[str, Any], work: Path, cache: Path) -> Path:
    """Copy root slot A out of the raw disk and unpack its erofs with fsck.erofs --extract."""
    part = next(p for p in layout["partitions"] if p["role"] == "root-a")
    erofs = work / "root-a.erofs"
    with raw.open("rb") as src, erofs.open("wb") as dst:
        src.seek(part["start"])
        dst.write(src.read(part["size"]))
    tools = build_tools(cache)
    root = work / "root"
    tools.run(["fsck.erofs", f"--extract={root}", erofs], binds=[work])
    return root


@pytest.fixture(scope="session")
def built(
    mirror_url: str, build_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Built]:
    output = tmp_path_factory.mktemp("out") / "worker"
    lock = output.with_name("worker-standin.lock.json")
    result = invoke(
        build_cache, "image", "--profile", os.fspath(PROFILE), "--output", os.fspath(output),
        "--artifact-mirror", mirror_url, "--lock", os.fspath(lock), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    manifest = json.loads((output / "manifest.json").read_text())
    raw = Path(summary["outputs"][f"{manifest['name']}.raw"])
    work = tmp_path_factory.mktemp("slot")
    yield Built(output, manifest, extract_slot_a(raw, manifest["layout"], work, build_cache))
