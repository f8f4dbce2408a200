"""Build tests: run diskimage-builder for real (root, loop devices, the Debian mirror)."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.build.doctor import check_host
from tests.conftest import skip_marked


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
