"""A small TUF repository for tests, served over HTTP on 127.0.0.1, with faults on demand.

Built with python-tuf's metadata API and securesystemslib's ed25519 CryptoSigner, one key per
top-level role. The server honours `Range: bytes=N-`, can cut a response short, stall, or
serve something else than what was signed, and logs what it was asked for.
"""

from __future__ import annotations

import datetime
import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

ROLES = (Root.type, Timestamp.type, Snapshot.type, Targets.type)


def _in(days: float) -> datetime.datetime:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    return now + datetime.timedelta(days=days)


class TufRepo:
    """Metadata under `base/metadata`, targets under `base/targets` (the node's layout)."""

    def __init__(self, base: Path, consistent_snapshot: bool = False) -> None:
        self.base = base
        self.metadata_dir = base / "metadata"
        self.targets_dir = base / "targets"
        self.metadata_dir.mkdir(parents=True)
        self.targets_dir.mkdir()
        self.signers = {role: CryptoSigner.generate_ed25519() for role in ROLES}
        root = Root(expires=_in(365), consistent_snapshot=consistent_snapshot)
        for role, signer in self.signers.items():
            root.add_key(signer.public_key, role)
        self.root: Metadata[Root] = Metadata(root)
        self.targets: Metadata[Targets] = Metadata(Targets(expires=_in(30)))
        self.snapshot: Metadata[Snapshot] = Metadata(Snapshot(expires=_in(7)))
        self.timestamp: Metadata[Timestamp] = Metadata(Timestamp(expires=_in(1)))
        self._write(self.root, Root.type, self.signers[Root.type])
        self.targets.signed.version = 0
        self.snapshot.signed.version = 0
        self.timestamp.signed.version = 0
        self.publish()

    @property
    def root_json(self) -> bytes:
        """The trusted root to bake into an image: version 1, as the repository started."""
        return (self.metadata_dir / "1.root.json").read_bytes()

    def add_target(self, path: str, data: bytes) -> TargetFile:
        info = TargetFile.from_data(path, data, ["sha256"])
        self.targets.signed.targets[path] = info
        name = path
        if self.root.signed.consistent_snapshot:
            directory, sep, base = path.rpartition("/")
            name = f"{directory}{sep}{info.hashes['sha256']}.{base}"
        dest = self.targets_dir / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        return info

    def target_file(self, path: str) -> Path:
        info = self.targets.signed.targets[path]
        if self.root.signed.consistent_snapshot:
            directory, sep, base = path.rpartition("/")
            path = f"{directory}{sep}{info.hashes['sha256']}.{base}"
        return self.targets_dir / path

    def publish(self, timestamp_expires: datetime.datetime | None = None,
                timestamp_signer: CryptoSigner | None = None) -> None:  # fmt: skip
        """New versions of targets, snapshot and timestamp, each signed by its role's key."""
        self.targets.signed.version += 1
        self._write(self.targets, Targets.type, self.signers[Targets.type])
        self.snapshot.signed.version += 1
        self.snapshot.signed.meta["targets.json"] = MetaFile(self.targets.signed.version)
        self._write(self.snapshot, Snapshot.type, self.signers[Snapshot.type])
        self.timestamp.signed.version += 1
        self.timestamp.signed.snapshot_meta = MetaFile(self.snapshot.signed.version)
        self.timestamp.signed.expires = timestamp_expires or _in(1)
        self._write(self.timestamp, Timestamp.type, timestamp_signer or self.signers["timestamp"])

    def roll_back_snapshot(self) -> None:
        """A fresh timestamp that names the snapshot of one version back (a rollback attack)."""
        older = Metadata(Snapshot(version=self.snapshot.signed.version - 1, expires=_in(7),
                                  meta=dict(self.snapshot.signed.meta)))  # fmt: skip
        self._write(older, Snapshot.type, self.signers[Snapshot.type])
        self.timestamp.signed.version += 1
        self.timestamp.signed.snapshot_meta = MetaFile(older.signed.version)
        self._write(self.timestamp, Timestamp.type, self.signers[Timestamp.type])

    def _write(self, md: Metadata[Any], role: str, signer: CryptoSigner) -> None:
        md.signatures.clear()
        md.sign(signer)
        data = md.to_bytes()
        signed: Signed = md.signed
        if role == Root.type or (self.root.signed.consistent_snapshot and role != Timestamp.type):
            (self.metadata_dir / f"{signed.version}.{role}.json").write_bytes(data)
        if role != Root.type:
            (self.metadata_dir / f"{role}.json").write_bytes(data)


@dataclass
class Faults:
    """What the server does wrong: per URL path, stop after N bytes; stall every answer."""

    truncate: dict[str, int] = field(default_factory=dict)
    stall: float = 0.0
    ranges: bool = True
    log: list[tuple[str, str | None]] = field(default_factory=list)


def _handler(root: Path, faults: Faults) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            faults.log.append((path, self.headers.get("Range")))
            if faults.stall:
                time.sleep(faults.stall)
            file = root / path.lstrip("/")
            if ".." in path.split("/") or not file.is_file():
                self.send_error(404)
                return
            data = file.read_bytes()
            start = 0
            wanted = self.headers.get("Range", "")
            if faults.ranges and wanted.startswith("bytes=") and wanted.endswith("-"):
                start = int(wanted[len("bytes=") : -1])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            body = data[start:]
            cut = faults.truncate.pop(path, None)
            if cut is not None:
                self.wfile.write(body[: max(cut - start, 0)])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that gave up (a timeout test) leaves the handler a broken pipe: expected
        return


@contextmanager
def serve(root: Path, faults: Faults | None = None) -> Iterator[tuple[str, Faults]]:
    """Serve `root` on 127.0.0.1; yields the base URL (no trailing slash) and the faults."""
    faults = faults or Faults()
    server = _Server(("127.0.0.1", 0), _handler(root, faults))
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", faults
    finally:
        server.shutdown()
        server.server_close()
