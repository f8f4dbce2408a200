"""`repo add`: the channel manifest and the rules a build must pass to go onto a channel."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from builder.errors import HostbuildError
from builder.update.channel import SUPPORTED_LAYOUTS, parse_channel
from builder.update.images import add_build, read_channel
from builder.update.keys import KeyStore
from builder.update.repository import open_repository
from tests.updaterepo import make_build, new_repository, roothash_of, tree


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, KeyStore]:
    return new_repository(tmp_path)


def channel_of(path: Path, name: str = "stable") -> dict[str, Any]:
    channel = read_channel(open_repository(path), name)
    assert channel is not None
    return channel.as_dict()


def test_add_writes_targets_and_the_channel_manifest(
    tmp_path: Path, repo: tuple[Path, KeyStore]
) -> None:
    path, keys = repo
    result = add_build(path, keys, make_build(tmp_path / "b1", upgrade_from="0.0.9"))
    assert result.changed
    assert result.signed == {"targets": 2, "snapshot": 2, "timestamp": 2}
    base = "worker-standin/0.1.0-1"
    assert result.targets == [
        f"{base}/root.erofs.zst",
        f"{base}/root.verity.zst",
        f"{base}/worker-standin-0.1.0-1.efi.zst",
        "channels/stable.json",
    ]
    payload_json = tmp_path / "b1" / "worker-standin-0.1.0-1.update" / "payload.json"
    payload = json.loads(payload_json.read_text())
    channel = channel_of(path)
    versions = channel.pop("versions")
    assert isinstance(versions, list)
    (version,) = versions
    assert channel == {"format": 1, "channel": "stable", "image_id": "worker-standin"}
    added = version.pop("added")
    assert added.endswith("+00:00")
    root = payload["files"]["root"]
    assert version == {
        "version": "0.1.0-1", "roothash": roothash_of("0.1.0-1"), "layout": 2,
        "kubelet_minor": "1.35", "upgrade_from": "0.0.9",
        "files": {
            role: {
                "target": f"{base}/{entry['file']}", "size": entry["size"],
                "sha256": entry["sha256"], "compressed_size": entry["compressed_size"],
                "compressed_sha256": entry["compressed_sha256"],
            }
            for role, entry in payload["files"].items()
        },
    }  # fmt: skip
    # consistent snapshot: stored under the sha256 of its content
    stored = path / "targets" / base / f"{root['compressed_sha256']}.root.erofs.zst"
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == root["compressed_sha256"]
    targets = open_repository(path).targets.signed.targets
    assert targets[f"{base}/root.erofs.zst"].length == root["compressed_size"]


def test_adding_the_same_build_twice_changes_nothing(
    tmp_path: Path, repo: tuple[Path, KeyStore]
) -> None:
    path, keys = repo
    build = make_build(tmp_path / "b1")
    add_build(path, keys, build)
    before = tree(path)
    result = add_build(path, keys, build)
    assert not result.changed and result.signed == {}
    assert tree(path) == before


def test_versions_are_kept_sorted_and_channels_share_targets(
    tmp_path: Path, repo: tuple[Path, KeyStore]
) -> None:
    path, keys = repo
    add_build(path, keys, make_build(tmp_path / "b1", "0.1.0-1"))
    add_build(path, keys, make_build(tmp_path / "b2", "0.1.0-2"))
    add_build(path, keys, make_build(tmp_path / "b10", "0.1.0-10"))
    versions = [v["version"] for v in channel_of(path)["versions"]]
    assert versions == ["0.1.0-1", "0.1.0-2", "0.1.0-10"]
    result = add_build(path, keys, make_build(tmp_path / "c2", "0.1.0-2"), "beta")
    assert result.targets == ["channels/beta.json"]  # the payload's files are there already


def _refused(
    path: Path, keys: KeyStore, build: Path, message: str, channel: str = "stable"
) -> None:
    before = tree(path)
    with pytest.raises(HostbuildError) as error:
        add_build(path, keys, build, channel)
    assert error.value.message == message
    assert error.value.hint
    assert tree(path) == before  # refused before anything is written


def test_a_layout_the_nodes_cannot_take_is_refused(
    tmp_path: Path, repo: tuple[Path, KeyStore]
) -> None:
    assert {2} == SUPPORTED_LAYOUTS
    build = make_build(tmp_path / "b1", layout=1)
    payload = build / "worker-standin-0.1.0-1.update" / "payload.json"
    _refused(*repo, build, f"{payload}: layout 1 is not one the nodes can install (supported: 2)")


def test_a_version_not_newer_than_the_channel_is_refused(
    tmp_path: Path, repo: tuple[Path, KeyStore]
) -> None:
    path, keys = repo
    add_build(path, keys, make_build(tmp_path / "b2", "0.1.0-2"))
    build = make_build(tmp_path / "b1", "0.1.0-1")
    payload = build / "worker-standin-0.1.0-1.update" / "payload.json"
    _refused(path, keys, build, f"{payload}: version 0.1.0-1 is not newer than 0.1.0-2, the "
             "newest on channel 'stable'")  # fmt: skip


def test_the_same_version_with_another_root_hash_is_refused(
    tmp_path: Path, repo: tuple[Path, KeyStore]
) -> None:
    path, keys = repo
    add_build(path, keys, make_build(tmp_path / "b1"))
    other = "ab" * 32
    build = make_build(tmp_path / "again", roothash=other)
    payload = build / "worker-standin-0.1.0-1.update" / "payload.json"
    _refused(path, keys, build, f"{payload}: version 0.1.0-1 is on channel 'stable' already "
             f"with root hash {roothash_of('0.1.0-1')}; this build's is {other}")  # fmt: skip
    # and on another channel, its files would name other bytes under the same target
    with pytest.raises(HostbuildError, match="target worker-standin/0.1.0-1/root.erofs.zst is in "
                       "the repository already with sha256"):  # fmt: skip
        add_build(path, keys, build, "beta")


def test_a_payload_file_that_does_not_match_payload_json_is_refused(
    tmp_path: Path, repo: tuple[Path, KeyStore]
) -> None:
    build = make_build(tmp_path / "b1")
    payload_dir = build / "worker-standin-0.1.0-1.update"
    verity = payload_dir / "root.verity.zst"
    verity.write_bytes(b"tampered")
    expected = json.loads((payload_dir / "payload.json").read_text())["files"]["verity"]
    path = repo[0]
    _refused(
        *repo, build,
        f"{verity} does not match {payload_dir / 'payload.json'}: it has 8 bytes, sha256 "
        f"{hashlib.sha256(b'tampered').hexdigest()}; payload.json says "
        f"{expected['compressed_size']} bytes, sha256 {expected['compressed_sha256']}",
    )  # fmt: skip
    assert not [p for p in (path / "targets").rglob("*") if p.is_file()]  # no temporary left


def test_kubelet_moves_one_minor_per_update(tmp_path: Path, repo: tuple[Path, KeyStore]) -> None:
    path, keys = repo
    add_build(path, keys, make_build(tmp_path / "b1", "0.1.0-1", kubelet="1.35"))
    build = make_build(tmp_path / "b2", "0.2.0-1", kubelet="1.37")
    _refused(path, keys, build, f"{build / 'manifest.json'}: kubelet 1.37 is more than 1 minor "
             "past 1.35 of 0.1.0-1, the newest on channel 'stable'")  # fmt: skip
    add_build(path, keys, make_build(tmp_path / "b3", "0.2.0-2", kubelet="1.36"))
    add_build(path, keys, make_build(tmp_path / "b4", "0.3.0-1", kubelet="1.37"))
    add_build(path, keys, make_build(tmp_path / "b5", "0.3.0-2", kubelet=None))


def test_a_profile_override_of_the_kubelet_rule_passes(
    tmp_path: Path, repo: tuple[Path, KeyStore]
) -> None:
    path, keys = repo
    add_build(path, keys, make_build(tmp_path / "b1", "0.1.0-1", kubelet="1.35"))
    build = make_build(tmp_path / "b2", "0.2.0-1", kubelet="1.37", overrides=("upgrade-one-minor",))
    assert add_build(path, keys, build).changed


def test_another_image_on_the_channel_is_refused(
    tmp_path: Path, repo: tuple[Path, KeyStore]
) -> None:
    path, keys = repo
    add_build(path, keys, make_build(tmp_path / "b1"))
    build = make_build(tmp_path / "w", "0.2.0-1", image="worker")
    _refused(path, keys, build, f"{build / 'manifest.json'}: image 'worker' cannot go onto "
             "channel 'stable', which carries 'worker-standin'")  # fmt: skip
    assert add_build(path, keys, build, "worker-stable").changed


def test_bad_channel_names_and_incomplete_builds(
    tmp_path: Path, repo: tuple[Path, KeyStore]
) -> None:
    path, keys = repo
    build = make_build(tmp_path / "b1")
    _refused(path, keys, build, "channel '../x' is not allowed", channel="../x")
    (build / "worker-standin-0.1.0-1.update" / "root.erofs.zst").unlink()
    with pytest.raises(HostbuildError, match="root.erofs.zst is missing; payload.json describes"):
        add_build(path, keys, build)
    with pytest.raises(HostbuildError, match="manifest.json is missing"):
        add_build(path, keys, tmp_path)


def test_parse_channel_reads_what_add_writes(tmp_path: Path, repo: tuple[Path, KeyStore]) -> None:
    path, keys = repo
    add_build(path, keys, make_build(tmp_path / "b1"))
    channel = read_channel(open_repository(path), "stable")
    assert channel is not None
    assert parse_channel(channel.to_bytes(), "x") == channel
    with pytest.raises(HostbuildError, match="x: not a channel manifest: format 2"):
        parse_channel(b'{"format": 2}', "x")
