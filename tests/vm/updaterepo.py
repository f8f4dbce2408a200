"""An update repository for the VM tests: made with `hostbuild repo`, served on 127.0.0.1.

The guest reaches it at http://10.0.2.100/ through a QEMU guest forward; nothing else is
reachable from the guest.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from builder.cli import cli
from builder.vm.qemu import GuestForward

GUEST_ADDR = "10.0.2.100"
GUEST_URL = f"http://{GUEST_ADDR}"


@dataclass(frozen=True)
class UpdateRepo:
    """The signing side (a repository and its keys) and the published copy a server serves."""

    path: Path
    keys: Path
    served: Path

    @property
    def root(self) -> Path:
        return self.path / "metadata" / "1.root.json"

    def hostbuild(self, *args: str) -> str:
        result = CliRunner().invoke(cli, ["repo", *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    def add(self, output: Path, channel: str = "stable", to: Path | None = None) -> None:
        """`repo add` a build's output, then publish the repository to what the server serves
        (or to `to`)."""
        self.hostbuild("add", os.fspath(self.path), "--keys", os.fspath(self.keys),
                       "--image", os.fspath(output), "--channel", channel)  # fmt: skip
        self.hostbuild("publish", os.fspath(self.path), "--to", os.fspath(to or self.served))


def make_repo(work: Path) -> UpdateRepo:
    repo = UpdateRepo(work / "repo", work / "keys", work / "served")
    repo.served.mkdir(parents=True)
    repo.hostbuild("init", os.fspath(repo.path), "--keys", os.fspath(repo.keys))
    repo.hostbuild("publish", os.fspath(repo.path), "--to", os.fspath(repo.served))
    return repo


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static files, with `Range: bytes=N-` honoured (a resumed download gets the rest)."""

    requests: list[tuple[str, str | None]] | None = None

    def send_head(self) -> Any:
        wanted = self.headers.get("Range")
        if self.requests is not None:
            self.requests.append((self.path, wanted))
        m = re.fullmatch(r"bytes=([0-9]+)-", wanted or "")
        path = Path(self.translate_path(self.path))
        if m is None or not path.is_file():
            return super().send_head()
        start, size = int(m.group(1)), path.stat().st_size
        if start >= size:
            self.send_error(416, "Range Not Satisfiable")
            return None
        f = path.open("rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(os.fspath(path)))
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        return f

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving(
    directory: Path, requests: list[tuple[str, str | None]] | None = None
) -> Iterator[GuestForward]:
    """Serve `directory` on 127.0.0.1; the guest forward that reaches it from the guest.

    Each request's path and Range header is appended to `requests`.
    """
    handler = functools.partial(
        type("Handler", (_QuietHandler,), {"requests": requests}), directory=os.fspath(directory)
    )
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield GuestForward(GUEST_ADDR, 80, httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()
