"""Test support for publishing: sparse build directories and a moto server on 127.0.0.1.

moto marks an EBS-direct snapshot `completed` in EC2 from StartSnapshot on; AWS keeps it
`pending` until CompleteSnapshot. `aws_faithful_snapshots` makes moto behave like AWS there, so
the tests exercise the waits and the resume logic instead of passing thanks to moto's shortcut.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from moto.ebs.models import EBSBackend
from moto.server import ThreadedMotoServer

BLOCK = 512 * 1024
MIB = 1024 * 1024


def make_build(
    directory: Path,
    extents: Sequence[tuple[int, bytes]],
    *,
    size: int = 64 * MIB,
    name: str = "worker-0.1.0-7",
    version: str = "0.1.0-7",
) -> Path:
    """A build output directory: a sparse NAME.raw holding `extents` and its manifest.json."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / f"{name}.raw"
    with raw.open("wb") as f:
        f.truncate(size)
        for offset, data in extents:
            f.seek(offset)
            f.write(data)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    manifest = {
        "schema": 1, "name": name, "profile": "worker", "version": version, "arch": "amd64",
        "outputs": {raw.name: {"sha256": digest, "bytes": size}},
    }  # fmt: skip
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return directory


def nonzero_blocks(raw: Path) -> dict[int, bytes]:
    """Every block of `raw` that holds a non-zero byte, read plainly (no hole detection)."""
    blocks = {}
    with raw.open("rb") as f:
        index = 0
        while chunk := f.read(BLOCK):
            if chunk.strip(b"\0"):
                blocks[index] = chunk.ljust(BLOCK, b"\0")
            index += 1
    return blocks


def pattern(length: int, seed: int) -> bytes:
    """Incompressible, reproducible bytes."""
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:length])


@contextlib.contextmanager
def aws_faithful_snapshots() -> Iterator[None]:
    """EC2 shows an EBS-direct snapshot as pending until CompleteSnapshot, as AWS does."""
    start, complete = EBSBackend.start_snapshot, EBSBackend.complete_snapshot

    def start_snapshot(self: EBSBackend, *args: Any, **kwargs: Any) -> Any:
        snapshot = start(self, *args, **kwargs)
        self.ec2_backend.snapshots[snapshot.snapshot_id].status = "pending"
        return snapshot

    def complete_snapshot(self: EBSBackend, snapshot_id: str) -> str:
        self.ec2_backend.snapshots[snapshot_id].status = "completed"
        return complete(self, snapshot_id)

    EBSBackend.start_snapshot = start_snapshot  # type: ignore[method-assign]
    EBSBackend.complete_snapshot = complete_snapshot  # type: ignore[method-assign]
    try:
        yield
    finally:
        EBSBackend.start_snapshot = start  # type: ignore[method-assign]
        EBSBackend.complete_snapshot = complete  # type: ignore[method-assign]


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto server on 127.0.0.1 at a free port, in this process; yields its URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def reset_moto(url: str) -> None:
    request = urllib.request.Request(f"{url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def fake_credentials(environ: dict[str, str]) -> None:
    """Static test credentials, and no AWS config or instance metadata from this machine."""
    environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
        AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )  # fmt: skip
    environ.pop("AWS_PROFILE", None)
    environ.pop("AWS_SESSION_TOKEN", None)
