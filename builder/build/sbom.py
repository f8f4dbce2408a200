"""The image's SPDX 2.3 (JSON) bill of materials: Debian packages and upstream files."""

from __future__ import annotations

import datetime
import re
from typing import Any

from builder import __version__


def _spdx_id(kind: str, name: str) -> str:
    return f"SPDXRef-{kind}-" + re.sub(r"[^A-Za-z0-9.-]", "-", name)


def build_sbom(manifest: dict[str, Any], epoch: int) -> dict[str, Any]:
    """SPDX document describing the image named in `manifest`."""
    name = manifest["name"]
    release = manifest["debian"]["release"]
    packages: list[dict[str, Any]] = []
    for p in manifest["packages"]:
        purl = (
            f"pkg:deb/debian/{p['package']}@{p['version']}?arch={p['arch']}&distro=debian-{release}"
        )
        packages.append({
            "SPDXID": _spdx_id("deb", f"{p['package']}-{p['arch']}"),
            "name": p["package"],
            "versionInfo": p["version"],
            "supplier": "Organization: Debian",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                "referenceLocator": purl,
            }],
        })  # fmt: skip
    for component, info in manifest["components"].items():
        if info["source"] != "upstream":
            continue
        packages.append({
            "SPDXID": _spdx_id("upstream", component),
            "name": component,
            "versionInfo": info["version"],
            "supplier": "NOASSERTION",
            "downloadLocation": info["url"],
            "filesAnalyzed": False,
            "checksums": [{"algorithm": "SHA256", "checksumValue": info["sha256"]}],
        })  # fmt: skip
    image_id = _spdx_id("image", name)
    created = datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": f"https://hostbuild.invalid/spdx/{name}/{manifest['inputs_digest']}",
        "creationInfo": {"created": created, "creators": [f"Tool: hostbuild-{__version__}"]},
        "packages": [
            {
                "SPDXID": image_id,
                "name": name,
                "versionInfo": manifest["version"],
                "supplier": "NOASSERTION",
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": False,
            },
            *packages,
        ],  # fmt: skip
        "relationships": [
            {
                "spdxElementId": "SPDXRef-DOCUMENT",
                "relationshipType": "DESCRIBES",
                "relatedSpdxElement": image_id,
            },
            *(
                {
                    "spdxElementId": image_id,
                    "relationshipType": "CONTAINS",
                    "relatedSpdxElement": p["SPDXID"],
                }
                for p in packages
            ),
        ],  # fmt: skip
    }
