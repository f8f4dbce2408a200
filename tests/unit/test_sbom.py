"""The SPDX document lists every Debian package and upstream artifact of the image."""

from __future__ import annotations

from builder.build.sbom import build_sbom

MANIFEST = {
    "name": "worker-1.0.0-1",
    "version": "1.0.0-1",
    "inputs_digest": "f" * 64,
    "debian": {"release": "trixie"},
    "packages": [{"package": "containerd", "version": "1.7.24~ds1-6+deb13u1", "arch": "amd64"}],
    "components": {
        "containerd": {"source": "debian", "version": "1.7.24~ds1-6+deb13u1"},
        "kubelet": {"source": "upstream", "version": "1.35.8", "url": "https://x.test/kubelet",
                    "sha256": "a" * 64},
    },
}  # fmt: skip


def test_spdx_document() -> None:
    doc = build_sbom(MANIFEST, epoch=0)
    assert doc["spdxVersion"] == "SPDX-2.3"
    assert doc["creationInfo"]["created"] == "1970-01-01T00:00:00Z"
    names = {p["name"]: p for p in doc["packages"]}
    assert set(names) == {"worker-1.0.0-1", "containerd", "kubelet"}
    purl = names["containerd"]["externalRefs"][0]["referenceLocator"]
    assert purl == "pkg:deb/debian/containerd@1.7.24~ds1-6+deb13u1?arch=amd64&distro=debian-trixie"
    assert names["kubelet"]["checksums"] == [{"algorithm": "SHA256", "checksumValue": "a" * 64}]
    contains = [r for r in doc["relationships"] if r["relationshipType"] == "CONTAINS"]
    assert len(contains) == 2
