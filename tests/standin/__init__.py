"""TEST STAND-INS for the upstream artifacts that cannot be downloaded on hostbuild's build hosts.

`make_mirror(DIR)` writes an artifact mirror holding a stand-in kubelet and a stand-in crictl
(small shell scripts, not Kubernetes) at the paths of their upstream URLs. The files are
byte-for-byte deterministic, so `worker-standin.yaml` can pin their sha256. Never referenced from
profiles/: images built with them are labelled `worker-standin` and cannot join a cluster.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

PROFILE = Path(__file__).parent / "worker-standin.yaml"
KUBELET_VERSION = "1.35.8"
CRICTL_VERSION = "1.35.0"

KUBELET = f"""#!/bin/sh
# hostbuild TEST STAND-IN for kubelet {KUBELET_VERSION}: NOT Kubernetes. It records the arguments
# it was started with and answers healthz as kubelet does, so node tests see how it was run.
case "$1" in --version) echo "Kubernetes v{KUBELET_VERSION}-hostbuild-test-standin"; exit 0;; esac
echo "kubelet test stand-in: not a real kubelet" >&2
mkdir -p /run/kubelet-standin
printf '%s\\n' "$@" > /run/kubelet-standin/args
exec python3 -c '
import http.server
class Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/healthz"
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b"ok" if ok else b"")
http.server.HTTPServer(("127.0.0.1", 10248), Healthz).serve_forever()
'
""".encode()

CRICTL = f"""#!/bin/sh
# hostbuild TEST STAND-IN for crictl {CRICTL_VERSION}: NOT cri-tools.
case "$1" in --version) echo "crictl version v{CRICTL_VERSION}-hostbuild-test-standin";; esac
""".encode()

PATHS = {
    "kubelet": f"release/v{KUBELET_VERSION}/bin/linux/amd64/kubelet",
    "crictl": f"kubernetes-sigs/cri-tools/releases/download/v{CRICTL_VERSION}/"
    f"crictl-v{CRICTL_VERSION}-linux-amd64.tar.gz",
}


def _tar_gz(name: str, data: bytes) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o755, 0
        tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def artifacts() -> dict[str, bytes]:
    """Stand-in name -> file content, exactly as the mirror serves it."""
    return {"kubelet": KUBELET, "crictl": _tar_gz("crictl", CRICTL)}


def digests() -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in artifacts().items()}


def make_mirror(root: Path) -> Path:
    """Write the stand-in artifact mirror under `root`; return it."""
    for name, data in artifacts().items():
        target = root / PATHS[name]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root
