"""The update repository's TUF metadata: init, refresh, key rotation, read by a TUF client."""

from __future__ import annotations

import datetime
import json
import stat
from pathlib import Path

import pytest
from tuf.api.exceptions import ExpiredMetadataError, UnsignedMetadataError
from tuf.api.metadata import Metadata, Root

from builder.errors import HostbuildError
from builder.update.images import add_build
from builder.update.keys import KeyStore
from builder.update.repository import (
    init_repository,
    open_repository,
    refresh_repository,
    root_metadata,
    rotate_key,
)
from builder.update.settings import DEFAULT_EXPIRY, format_duration, parse_duration
from tests.updaterepo import ROLES, client, fetch, make_build, new_repository, serve, tree

ONE = dict.fromkeys(ROLES, 1)


def test_init_writes_version_1_of_every_role_and_private_keys_0600(tmp_path: Path) -> None:
    path, keys = new_repository(tmp_path)
    assert sorted(tree(path)) == [
        ".hostbuild-repo.lock", "hostbuild-repo.json",
        "metadata/1.root.json", "metadata/1.snapshot.json", "metadata/1.targets.json",
        "metadata/timestamp.json",
    ]  # fmt: skip
    assert keys.dirs == (tmp_path / "keys",)  # the default: DIR/../keys
    pems = sorted(p.name.split("-")[0] for p in (tmp_path / "keys").glob("*.pem"))
    assert pems == sorted(ROLES)
    for pem in (tmp_path / "keys").glob("*.pem"):
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600
        assert pem.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    root: Metadata[Root] = Metadata.from_bytes(root_metadata(path))
    assert root.signed.consistent_snapshot is True
    assert root.signed.version == 1
    assert {r: root.signed.roles[r].threshold for r in ROLES} == ONE
    settings = json.loads((path / "hostbuild-repo.json").read_text())
    assert settings == {"format": 1, "expiry": {"root": "365d", "targets": "90d",
                                                "snapshot": "7d", "timestamp": "1d"}}  # fmt: skip


def test_init_refuses_an_existing_repository_and_keys_inside_it(tmp_path: Path) -> None:
    path, keys = new_repository(tmp_path)
    before = tree(path)
    with pytest.raises(HostbuildError, match="exists and is not empty; hostbuild repo init never"):
        init_repository(path, keys, expiry=DEFAULT_EXPIRY, thresholds=ONE, key_counts=ONE)
    assert tree(path) == before
    with pytest.raises(HostbuildError, match="is inside the repository"):
        KeyStore.for_repository(tmp_path / "other", [tmp_path / "other" / "keys"])


def test_init_with_thresholds_and_key_counts(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    keys = KeyStore.for_repository(path, [tmp_path / "offline"])
    counts = {**ONE, "root": 3}
    init_repository(path, keys, expiry=DEFAULT_EXPIRY, thresholds={**ONE, "root": 2},
                    key_counts=counts)  # fmt: skip
    root = open_repository(path).root
    assert root.signed.roles["root"].threshold == 2
    assert len(root.signed.roles["root"].keyids) == 3
    assert len(root.signatures) == 3
    assert len(list((tmp_path / "offline").glob("root-*.pem"))) == 3
    with pytest.raises(HostbuildError, match="root: 1 key\\(s\\) cannot meet a threshold of 2"):
        init_repository(tmp_path / "again", keys, expiry=DEFAULT_EXPIRY,
                        thresholds={**ONE, "root": 2}, key_counts=ONE)  # fmt: skip


def test_durations() -> None:
    assert parse_duration("365d") == datetime.timedelta(days=365)
    assert parse_duration("12h") == datetime.timedelta(hours=12)
    assert parse_duration("2w") == datetime.timedelta(days=14)
    assert format_duration(datetime.timedelta(hours=36)) == "36h"
    with pytest.raises(ValueError, match="'12 hours' is not a duration"):
        parse_duration("12 hours")


def test_a_node_client_reads_the_repository_over_http(tmp_path: Path) -> None:
    path, keys = new_repository(tmp_path)
    add_build(path, keys, make_build(tmp_path / "out"))
    with serve(path) as url:
        updater = client(tmp_path / "node", url, (path / "metadata" / "1.root.json").read_bytes())
        updater.refresh()
        channel = json.loads(fetch(updater, "channels/stable.json"))
        assert [v["version"] for v in channel["versions"]] == ["0.1.0-1"]
        uki = channel["versions"][0]["files"]["uki"]
        data = fetch(updater, uki["target"])
    assert len(data) == uki["compressed_size"]
    assert data == (tmp_path / "out" / "worker-standin-0.1.0-1.update" /
                    "worker-standin-0.1.0-1.efi.zst").read_bytes()  # fmt: skip


def test_refresh_bumps_snapshot_and_timestamp(tmp_path: Path) -> None:
    path, keys = new_repository(tmp_path)
    result = refresh_repository(path, keys)
    assert result.signed == {"snapshot": 2, "timestamp": 2}
    repo = open_repository(path)
    assert (repo.snapshot.signed.version, repo.timestamp.signed.version) == (2, 2)
    assert repo.timestamp.signed.snapshot_meta.version == 2
    assert repo.targets.signed.version == 1
    assert (path / "metadata" / "2.snapshot.json").is_file()


def test_refresh_if_expiring_within_signs_only_what_is_due(tmp_path: Path) -> None:
    path, keys = new_repository(tmp_path)
    before = tree(path)
    assert refresh_repository(path, keys, within=parse_duration("12h")).signed == {}
    assert tree(path) == before
    # a day later the timestamp is due, the snapshot (7 days) is not
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=13)
    result = refresh_repository(path, keys, within=parse_duration("12h"), now=later)
    assert result.signed == {"timestamp": 2}


def test_refresh_without_the_online_keys_fails_and_changes_nothing(tmp_path: Path) -> None:
    path, keys = new_repository(tmp_path)
    before = tree(path)
    for pem in (tmp_path / "keys").glob("timestamp-*.pem"):
        pem.rename(tmp_path / pem.name)
    with pytest.raises(HostbuildError, match="signing timestamp needs 1 of its keys; found 0"):
        refresh_repository(path, keys)
    assert tree(path) == before


def test_refresh_needs_only_the_online_keys(tmp_path: Path) -> None:
    path, keys = new_repository(tmp_path)
    offline = tmp_path / "offline"
    offline.mkdir()
    for pem in [*(tmp_path / "keys").glob("root-*"), *(tmp_path / "keys").glob("targets-*")]:
        pem.rename(offline / pem.name)
    assert refresh_repository(path, keys).signed == {"snapshot": 2, "timestamp": 2}
    with pytest.raises(HostbuildError, match="signing targets needs 1 of its keys"):
        refresh_repository(path, keys, ["targets"])
    both = KeyStore.for_repository(path, [offline, tmp_path / "keys"])
    assert refresh_repository(path, both, ["targets"]).signed == {
        "targets": 2, "snapshot": 3, "timestamp": 3,
    }  # fmt: skip


def test_rotated_root_key_a_client_of_the_old_root_follows_the_chain(tmp_path: Path) -> None:
    path, keys = new_repository(tmp_path)
    old_root = root_metadata(path)
    old_keyid = open_repository(path).root.signed.roles["root"].keyids[0]
    result = rotate_key(path, keys, "root")
    assert result.signed == {"root": 2}
    assert result.retired is not None and result.retired.name.endswith(".pem.retired")
    new = Metadata[Root].from_bytes(root_metadata(path))
    assert new.signed.version == 2
    assert new.signed.roles["root"].keyids == [result.new_keyid]
    assert set(new.signatures) == {old_keyid, result.new_keyid}  # the old and the new key
    with serve(path) as url:
        updater = client(tmp_path / "node", url, old_root)
        updater.refresh()
    trusted = Metadata[Root].from_file(str(tmp_path / "node" / "metadata" / "root.json"))
    assert trusted.signed.version == 2


@pytest.mark.parametrize("role", ["targets", "snapshot", "timestamp"])
def test_rotating_a_role_key_re_signs_it_and_clients_accept_it(tmp_path: Path, role: str) -> None:
    path, keys = new_repository(tmp_path)
    old_root = root_metadata(path)
    with serve(path) as url:
        client(tmp_path / "before", url, old_root).refresh()
        result = rotate_key(path, keys, role)
        assert "root" in result.signed and role in result.signed
        repo = open_repository(path)
        assert list(repo.role(role).signatures) == [result.new_keyid]
        # a node with the old metadata cached, and a new one
        client(tmp_path / "before", url, old_root).refresh()
        client(tmp_path / "fresh", url, old_root).refresh()


def test_rotate_key_of_several_needs_keyid(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    keys = KeyStore.for_repository(path)
    init_repository(path, keys, expiry=DEFAULT_EXPIRY, thresholds={**ONE, "root": 2},
                    key_counts={**ONE, "root": 3})  # fmt: skip
    with pytest.raises(HostbuildError, match="root has 3 keys in .*: say which to replace"):
        rotate_key(path, keys, "root")
    keyids = open_repository(path).root.signed.roles["root"].keyids
    result = rotate_key(path, keys, "root", keyids[1][:10])
    assert result.old_keyid == keyids[1]
    root = open_repository(path).root.signed
    assert root.roles["root"].keyids == [keyids[0], keyids[2], result.new_keyid]
    with serve(path) as url:
        client(tmp_path / "node", url, (path / "metadata" / "1.root.json").read_bytes()).refresh()


def test_a_tampered_timestamp_is_refused(tmp_path: Path) -> None:
    path, _ = new_repository(tmp_path)
    timestamp = path / "metadata" / "timestamp.json"
    record = json.loads(timestamp.read_text())
    record["signed"]["expires"] = "2099-01-01T00:00:00Z"
    timestamp.write_text(json.dumps(record))
    with serve(path) as url, pytest.raises(UnsignedMetadataError):
        client(tmp_path / "node", url, root_metadata(path)).refresh()


def test_an_expired_timestamp_is_refused(tmp_path: Path) -> None:
    path, keys = new_repository(tmp_path)
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
    refresh_repository(path, keys, ["timestamp"], now=past)
    with serve(path) as url, pytest.raises(ExpiredMetadataError):
        client(tmp_path / "node", url, root_metadata(path)).refresh()


def test_root_metadata_is_the_newest_root(tmp_path: Path) -> None:
    path, keys = new_repository(tmp_path)
    rotate_key(path, keys, "timestamp")
    assert root_metadata(path) == (path / "metadata" / "2.root.json").read_bytes()
    with pytest.raises(HostbuildError, match="has no root metadata"):
        root_metadata(tmp_path / "nothing")


def test_commands_on_a_directory_that_is_no_repository(tmp_path: Path) -> None:
    with pytest.raises(HostbuildError, match="is not a hostbuild update repository"):
        refresh_repository(tmp_path, KeyStore((tmp_path / "keys",)))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(HostbuildError, match="is not a hostbuild update repository"):
        refresh_repository(tmp_path / "missing", KeyStore((tmp_path / "keys",)))


def test_a_failed_init_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "repo"
    keys = KeyStore.for_repository(path)

    def fail(*args: object, **kwargs: object) -> dict[str, int]:
        raise HostbuildError("signing failed")

    monkeypatch.setattr("builder.update.repository.sign_roles", fail)
    with pytest.raises(HostbuildError, match="signing failed"):
        init_repository(path, keys, expiry=DEFAULT_EXPIRY, thresholds=ONE, key_counts=ONE)
    assert not path.exists()
    assert list((tmp_path / "keys").iterdir()) == []


def test_refresh_root_extends_its_expiry_in_a_new_version(tmp_path: Path) -> None:
    path, keys = new_repository(tmp_path)
    old_root = root_metadata(path)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=300)
    assert refresh_repository(path, keys, ["root"], now=later).signed == {"root": 2}
    assert (
        open_repository(path).root.signed.expires
        == later.replace(microsecond=0) + (DEFAULT_EXPIRY["root"])
    )
    with serve(path) as url:
        client(tmp_path / "node", url, old_root).refresh()
