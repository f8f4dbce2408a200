"""Artifact downloads against a local HTTP server on 127.0.0.1: every failure mode, the cache."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.build import artifacts
from builder.build.artifacts import (
    Artifact,
    ArtifactError,
    Cache,
    fetch,
    fetch_all,
    mirror_location,
)

BODY = b"kubelet test stand-in\n" * 1000
DIGEST = hashlib.sha256(BODY).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves /good, /truncated, /flaky (503 once), anything else 404; counts requests."""

    hits: dict[str, int] = {}

    def do_GET(self) -> None:
        Handler.hits[self.path] = Handler.hits.get(self.path, 0) + 1
        if self.path.endswith("/good") or self.path.startswith("/mirror/"):
            self._send(BODY)
        elif self.path == "/truncated":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY[:100])
            self.close_connection = True
        elif self.path == "/flaky" and Handler.hits[self.path] == 1:
            self.send_error(503)
        elif self.path == "/flaky":
            self._send(BODY)
        else:
            self.send_error(404)

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Handler.hits = {}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifacts, "BACKOFF", 0.0)


def artifact(url: str, sha256: str = DIGEST) -> Artifact:
    return Artifact("kubelet", "1.35.8", "amd64", url, sha256, "file")


def test_good_download_lands_in_the_cache(server: str, tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    got = fetch(artifact(f"{server}/good"), cache)
    assert not got.cache_hit
    assert got.path == tmp_path / "artifacts" / "sha256" / DIGEST
    assert got.path.read_bytes() == BODY
    assert got.size == len(BODY)
    assert [p.name for p in got.path.parent.iterdir()] == [DIGEST]  # no temporary file left


def test_second_fetch_is_a_cache_hit_without_network(server: str, tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    fetch(artifact(f"{server}/good"), cache)
    again = fetch(artifact(f"{server}/good"), cache)
    assert again.cache_hit
    assert Handler.hits == {"/good": 1}


def test_wrong_checksum_is_deleted_and_reported(server: str, tmp_path: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(ArtifactError) as caught:
        fetch(artifact(f"{server}/good", wrong), Cache(tmp_path))
    assert caught.value.message == (
        f"kubelet 1.35.8 (amd64) from {server}/good has the wrong checksum: "
        f"expected sha256 {wrong}, got {DIGEST}; the file was deleted"
    )
    assert not any((tmp_path / "artifacts" / "sha256").iterdir())


def test_truncated_body_is_retried_then_reported(server: str, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as caught:
        fetch(artifact(f"{server}/truncated"), Cache(tmp_path))
    message = caught.value.message
    assert message.startswith(f"cannot download kubelet 1.35.8 (amd64) from {server}/truncated: ")
    assert f"got 100 of {len(BODY)} bytes" in message
    assert hashlib.sha256(BODY[:100]).hexdigest() in message and DIGEST in message
    assert message.endswith("(after 3 attempts)")
    assert Handler.hits["/truncated"] == 3
    assert not any((tmp_path / "artifacts" / "sha256").iterdir())


def test_not_found_is_not_retried(server: str, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as caught:
        fetch(artifact(f"{server}/missing"), Cache(tmp_path))
    assert caught.value.message == (
        f"cannot download kubelet 1.35.8 (amd64) from {server}/missing: HTTP 404 Not Found"
    )
    assert caught.value.hint is not None and "--artifact-mirror" in caught.value.hint
    assert Handler.hits["/missing"] == 1


def test_server_error_is_retried(server: str, tmp_path: Path) -> None:
    got = fetch(artifact(f"{server}/flaky"), Cache(tmp_path))
    assert got.path.read_bytes() == BODY
    assert Handler.hits["/flaky"] == 2


def test_server_down_names_artifact_url_and_remedy(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"http://127.0.0.1:{port}/release/v1.35.8/bin/linux/amd64/kubelet"
    with pytest.raises(ArtifactError) as caught:
        fetch(artifact(url), Cache(tmp_path))
    assert caught.value.message.startswith(f"cannot download kubelet 1.35.8 (amd64) from {url}: ")
    assert "Connection refused" in caught.value.message
    assert caught.value.hint == (
        f"download {url} on a connected machine (sha256 {DIGEST}), put it at "
        "MIRROR/release/v1.35.8/bin/linux/amd64/kubelet and pass --artifact-mirror MIRROR "
        "(a directory or an HTTP URL)"
    )


def test_corrupted_cache_entry_is_detected_and_fetched_again(server: str, tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    first = fetch(artifact(f"{server}/good"), cache)
    first.path.write_bytes(b"bit rot")
    again = fetch(artifact(f"{server}/good"), cache)
    assert not again.cache_hit
    assert again.path.read_bytes() == BODY
    assert Handler.hits["/good"] == 2


def test_http_mirror_keeps_upstream_paths(server: str, tmp_path: Path) -> None:
    upstream = "https://downloads.example.test/release/v1.35.8/kubelet"
    got = fetch(artifact(upstream), Cache(tmp_path), mirror=f"{server}/mirror")
    assert got.source == f"{server}/mirror/release/v1.35.8/kubelet"
    assert Handler.hits == {"/mirror/release/v1.35.8/kubelet": 1}


def test_directory_mirror(tmp_path: Path) -> None:
    upstream = "https://downloads.example.test/release/v1.35.8/kubelet"
    mirror = tmp_path / "mirror"
    (mirror / "release/v1.35.8").mkdir(parents=True)
    (mirror / "release/v1.35.8/kubelet").write_bytes(BODY)
    got = fetch(artifact(upstream), Cache(tmp_path / "cache"), mirror=str(mirror))
    assert got.path.read_bytes() == BODY


def test_directory_mirror_missing_file(tmp_path: Path) -> None:
    upstream = "https://downloads.example.test/release/v1.35.8/kubelet"
    with pytest.raises(ArtifactError, match="is not in the mirror: .*/release/v1.35.8/kubelet"):
        fetch(artifact(upstream), Cache(tmp_path), mirror=str(tmp_path / "empty"))


def test_fetch_all_reports_every_failure(server: str, tmp_path: Path) -> None:
    a = artifact(f"{server}/missing-a")
    b = Artifact("crictl", "1.35.0", "amd64", f"{server}/missing-b", DIGEST, "tar.gz")
    with pytest.raises(ArtifactError) as caught:
        fetch_all([a, b], Cache(tmp_path), None)
    assert "kubelet 1.35.8" in caught.value.message and "crictl 1.35.0" in caught.value.message


def test_mirror_location() -> None:
    url = "https://host.example.test/a/b/file.tgz"
    assert (
        mirror_location(url, "http://m.example.test/x/") == "http://m.example.test/x/a/b/file.tgz"
    )
    assert mirror_location(url, "/srv/mirror") == "/srv/mirror/a/b/file.tgz"
