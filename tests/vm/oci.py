"""A minimal OCI image archive built locally (no registry): one layer holding a static busybox."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

IMAGE_NAME = "localhost/hostbuild-test/busybox:1"


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def _blob(tar: tarfile.TarFile, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    _add(tar, f"blobs/sha256/{digest}", data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def build_oci_archive(busybox: Path, out: Path) -> Path:
    """Write an OCI image layout tarball that `ctr image import` accepts."""
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w") as layer:
        _add(layer, "bin/busybox", busybox.read_bytes(), 0o755)
        link = tarfile.TarInfo("bin/sh")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        layer.addfile(link)
    layer_bytes = layer_buf.getvalue()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/busybox", "echo", "hello from hostbuild"]},
        "rootfs": {
            "type": "layers",
            "diff_ids": [f"sha256:{hashlib.sha256(layer_bytes).hexdigest()}"],
        },
    }
    with tarfile.open(out, "w") as tar:
        layer_ref = _blob(tar, layer_bytes)
        config_ref = _blob(tar, json.dumps(config).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_ref},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer_ref}],
        }
        manifest_ref = _blob(tar, json.dumps(manifest).encode())
        index = {
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest_ref,
                "annotations": {"io.containerd.image.name": IMAGE_NAME,
                                "org.opencontainers.image.ref.name": "1"},
            }],
        }  # fmt: skip
        _add(tar, "index.json", json.dumps(index).encode())
        _add(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
    return out
