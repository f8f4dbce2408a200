"""The image's root of trust: a TUF root.json, refused with a clear reason when it is not one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from builder.build.trust import load_update_root, root_digest
from builder.errors import HostbuildError


def root(**changes: Any) -> dict[str, Any]:
    key = {"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": "ab" * 32}}
    signed: dict[str, Any] = {
        "_type": "root", "spec_version": "1.0.31", "version": 1, "consistent_snapshot": True,
        "expires": "2030-01-01T00:00:00Z", "keys": {"k1": key},
        "roles": {r: {"keyids": ["k1"], "threshold": 1}
                  for r in ("root", "targets", "snapshot", "timestamp")},
    }  # fmt: skip
    signed.update(changes)
    return {"signed": signed, "signatures": [{"keyid": "k1", "sig": "00" * 64}]}


def test_a_root_metadata_file_is_taken_as_is(tmp_path: Path) -> None:
    path = tmp_path / "root.json"
    path.write_text(json.dumps(root()))
    data = load_update_root(path)
    assert data == path.read_bytes()
    assert root_digest(data) != root_digest(data + b" ") and root_digest(None) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[]", "expected a mapping with 'signed' and 'signatures'"),
        (json.dumps(root(_type="targets")).encode(), "signed._type is 'targets', expected 'root'"),
        (json.dumps({**root(), "signatures": []}).encode(), "no signatures"),
        (json.dumps(root(roles={"root": {"keyids": ["k1"], "threshold": 1}})).encode(),
         "signed.roles must name exactly root, targets, snapshot, timestamp"),
        (json.dumps(root(keys={})).encode(), "signed.keys is empty"),
        (json.dumps(root(version=0)).encode(), "signed.version must be a positive integer"),
    ],
)  # fmt: skip
def test_what_is_not_root_metadata_is_refused_saying_why(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "root.json"
    path.write_bytes(content)
    with pytest.raises(HostbuildError, match="not TUF root metadata") as failed:
        load_update_root(path)
    assert message in failed.value.message and str(path) in failed.value.message
    assert failed.value.hint and "hostbuild repo init" in failed.value.hint


def test_a_threshold_above_the_keys_is_refused(tmp_path: Path) -> None:
    doc = root()
    doc["signed"]["roles"]["targets"]["threshold"] = 2
    path = tmp_path / "root.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(HostbuildError, match=r"signed\.roles\.targets\.threshold"):
        load_update_root(path)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HostbuildError, match="cannot read the update root"):
        load_update_root(tmp_path / "absent.json")
