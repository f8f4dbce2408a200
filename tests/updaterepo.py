"""Test support for the update repository: fake builds, an HTTP server, a TUF client."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuf.ngclient import Updater

from builder.update.keys import KeyStore
from builder.update.repository import init_repository
from builder.update.settings import DEFAULT_EXPIRY

IMAGE = "worker-standin"
ROLES = ("root", "targets", "snapshot", "timestamp")


def roothash_of(version: str, image: str = IMAGE) -> str:
    return hashlib.sha256(f"{image} {version}".encode()).hexdigest()


def make_build(
    directory: Path, version: str = "0.1.0-1", *, image: str = IMAGE, roothash: str | None = None,
    layout: int = 2, kubelet: str | None = "1.35", upgrade_from: str | None = None,
    overrides: tuple[str, ...] = (),
) -> Path:  # fmt: skip
    """A build output directory: manifest.json and NAME.update/ with tiny "compressed" files."""
    name = f"{image}-{version}"
    payload_dir = directory / f"{name}.update"
    payload_dir.mkdir(parents=True)
    roothash = roothash or roothash_of(version, image)
    sources = {"root": "root.erofs", "verity": "root.verity", "uki": f"{name}.efi"}
    files = {}
    for role, source in sources.items():
        content = f"{role} of {name} {roothash}".encode() * 3
        uncompressed = content * 2  # what zstd would give back; never checked by repo add
        (payload_dir / f"{source}.zst").write_bytes(content)
        files[role] = {
            "file": f"{source}.zst",
            "size": len(uncompressed),
            "sha256": hashlib.sha256(uncompressed).hexdigest(),
            "compressed_size": len(content),
            "compressed_sha256": hashlib.sha256(content).hexdigest(),
        }
    payload = {"payload": 1, "version": version, "layout": layout, "roothash": roothash,
               "files": files}  # fmt: skip
    (payload_dir / "payload.json").write_text(json.dumps(payload, indent=2) + "\n")
    manifest: dict[str, Any] = {
        "schema": 1, "name": name, "profile": image, "version": version,
        "os_version": version.split("-")[0], "build_number": int(version.split("-")[1]),
        "roothash": roothash, "layout": {"version": layout, "partitions": []},
        "skew": {"kubernetes": kubelet, "api_servers_supported": [],
                 "overrides": [{"rule": r, "reason": "test"} for r in overrides]},
        "upgrade_from": upgrade_from,
        "uki": {"file": f"{image}_{version}.efi", "sha256": "0" * 64},
        "payload": payload,
    }  # fmt: skip
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return directory


def new_repository(tmp_path: Path, **thresholds: int) -> tuple[Path, KeyStore]:
    """An initialised repository `tmp_path/repo` with its keys in `tmp_path/keys`."""
    path = tmp_path / "repo"
    keys = KeyStore.for_repository(path)
    levels = {r: thresholds.get(r, 1) for r in ROLES}
    init_repository(path, keys, expiry=DEFAULT_EXPIRY, thresholds=levels, key_counts=levels)
    return path, keys


def tree(directory: Path) -> dict[str, bytes]:
    """Every file below `directory` and its content (to show a command changed nothing)."""
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """A static HTTP server for `directory` on 127.0.0.1 at a free port; yields its URL."""
    handler = functools.partial(_QuietHandler, directory=os.fspath(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def client(cache: Path, url: str, trusted_root: bytes) -> Updater:
    """A node's TUF client: trusts `trusted_root`, caches metadata and targets under `cache`."""
    (cache / "metadata").mkdir(parents=True, exist_ok=True)
    (cache / "targets").mkdir(exist_ok=True)
    (cache / "metadata" / "root.json").write_bytes(trusted_root)
    return Updater(
        os.fspath(cache / "metadata"), f"{url}/metadata/",
        os.fspath(cache / "targets"), f"{url}/targets/",
    )  # fmt: skip


def fetch(updater: Updater, target: str) -> bytes:
    """Download `target` through the client (verified) and return its bytes."""
    info = updater.get_targetinfo(target)
    assert info is not None, target
    return Path(updater.download_target(info)).read_bytes()
