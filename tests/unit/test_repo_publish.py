"""`repo publish`: to a directory and to S3 (a moto server), targets first, timestamp last."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from builder.errors import HostbuildError
from builder.update.images import add_build
from builder.update.keys import KeyStore
from builder.update.publish import (
    DirectoryDestination,
    Item,
    S3Destination,
    destination_for,
    publish_repository,
    s3_client,
)
from builder.update.repository import refresh_repository, root_metadata
from tests.awsmock import fake_credentials, moto_server, reset_moto
from tests.conftest import Cli
from tests.updaterepo import client, fetch, make_build, new_repository, serve, tree


class Recording(DirectoryDestination):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.puts: list[str] = []

    def put(self, item: Item) -> None:
        assert not (self.root / item.name).exists() or item.data is not None
        super().put(item)
        self.puts.append(item.name)


def _rank(name: str) -> int:
    if name.startswith("targets/"):
        return 0
    order = {"root": 1, "targets": 2, "snapshot": 3, "timestamp": 4}
    return order[name.removeprefix("metadata/").removesuffix(".json").split(".")[-1]]


def _check_order(names: list[str]) -> None:
    """Targets, root versions, targets, snapshot, then timestamp.json last."""
    assert names[-1] == "metadata/timestamp.json"
    ranks = [_rank(n) for n in names]
    assert ranks == sorted(ranks), names


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path, keys = new_repository(tmp_path)
    add_build(path, keys, make_build(tmp_path / "b1", "0.1.0-1"))
    return path


def test_publish_to_a_directory_targets_first_timestamp_last(tmp_path: Path, repo: Path) -> None:
    dest = Recording(tmp_path / "www")
    result = publish_repository(repo, dest)
    assert result.copied == dest.puts
    _check_order(dest.puts)
    assert sum(n.startswith("targets/") for n in dest.puts) == 4  # 3 payload files, 1 channel
    assert tree(tmp_path / "www") == {
        k: v for k, v in tree(repo).items() if k.startswith(("metadata/", "targets/"))
    }
    # a node reads the published copy
    with serve(tmp_path / "www") as url:
        updater = client(tmp_path / "node", url, root_metadata(repo))
        updater.refresh()
        channel = json.loads(fetch(updater, "channels/stable.json"))
        fetch(updater, channel["versions"][0]["files"]["root"]["target"])


def test_publish_again_copies_only_what_changed(tmp_path: Path, repo: Path) -> None:
    publish_repository(repo, DirectoryDestination(tmp_path / "www"))
    refresh_repository(repo, KeyStore.for_repository(repo))
    dest = Recording(tmp_path / "www")
    result = publish_repository(repo, dest)
    assert dest.puts == ["metadata/3.snapshot.json", "metadata/timestamp.json"]
    assert "metadata/1.root.json" in result.skipped
    assert not [p for p in (tmp_path / "www").rglob(".*") if p.is_file()]  # no temporaries
    assert publish_repository(repo, Recording(tmp_path / "www")).copied == []


def test_publish_never_rolls_the_timestamp_back(tmp_path: Path, repo: Path) -> None:
    www = tmp_path / "www"
    publish_repository(repo, DirectoryDestination(www))
    stamp = json.loads((www / "metadata" / "timestamp.json").read_text())
    stamp["signed"]["version"] = 99
    (www / "metadata" / "timestamp.json").write_text(json.dumps(stamp))
    with pytest.raises(HostbuildError, match="has timestamp v99, newer than this repository's v2"):
        publish_repository(repo, DirectoryDestination(www))


def test_destinations(tmp_path: Path, repo: Path) -> None:
    assert isinstance(destination_for(str(tmp_path / "www"), repo), DirectoryDestination)
    with pytest.raises(HostbuildError, match="is the repository itself"):
        destination_for(str(repo), repo)
    with pytest.raises(HostbuildError, match="unknown scheme"):
        destination_for("https://example.test/repo", repo)
    with pytest.raises(HostbuildError, match="names no bucket"):
        destination_for("s3://", repo)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def s3(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    reset_moto(moto_url)
    environ: dict[str, str] = {}
    fake_credentials(environ)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    raw = boto3.client("s3", region_name="us-east-1", endpoint_url=moto_url)
    raw.create_bucket(Bucket="updates")
    # what a public update bucket carries (nodes read it anonymously, over HTTP)
    statement = {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                 "Resource": "arn:aws:s3:::updates/*"}  # fmt: skip
    policy = {"Version": "2012-10-17", "Statement": [statement]}
    raw.put_bucket_policy(Bucket="updates", Policy=json.dumps(policy))
    return moto_url


class RecordingS3(S3Destination):
    puts: list[str]

    def put(self, item: Item) -> None:
        super().put(item)
        self.puts.append(item.name)


def test_publish_to_s3(tmp_path: Path, repo: Path, s3: str) -> None:
    dest = RecordingS3(s3_client("us-east-1", s3), "updates", "fleet/prod")
    dest.puts = []
    result = publish_repository(repo, dest)
    assert result.destination == "s3://updates/fleet/prod"
    _check_order(dest.puts)
    raw = boto3.client("s3", region_name="us-east-1", endpoint_url=s3)
    keys = {o["Key"] for o in raw.list_objects_v2(Bucket="updates")["Contents"]}
    assert keys == {f"fleet/prod/{n}" for n in dest.puts}
    head = raw.head_object(Bucket="updates", Key="fleet/prod/metadata/timestamp.json")
    assert head["CacheControl"] == "no-cache"
    assert head["ContentType"] == "application/json"
    assert len(head["Metadata"]["sha256"]) == 64
    again = RecordingS3(s3_client("us-east-1", s3), "updates", "fleet/prod")
    again.puts = []
    assert publish_repository(repo, again).copied == []
    # a node reads the repository from the bucket
    updater = client(tmp_path / "node", f"{s3}/updates/fleet/prod", root_metadata(repo))
    updater.refresh()
    assert json.loads(fetch(updater, "channels/stable.json"))["image_id"] == "worker-standin"


def test_publish_to_a_missing_bucket(repo: Path, s3: str) -> None:
    dest = S3Destination(s3_client("us-east-1", s3), "nope", "")
    with pytest.raises(HostbuildError, match="S3 ListObjectsV2 on s3://nope: NoSuchBucket") as e:
        publish_repository(repo, dest)
    assert e.value.hint == "create the bucket 'nope' first"


def test_publish_to_s3_from_the_cli(repo: Path, s3: str, run_cli: Cli) -> None:
    argv = ["-q", "repo", "publish", os.fspath(repo), "--to", "s3://updates/r", "--json"]
    result = run_cli(*argv, "--endpoint-url", s3, "--region", "us-east-1")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["destination"] == "s3://updates/r"
    assert record["copied"][-1] == "metadata/timestamp.json"
    assert record["skipped"] == []
    result = run_cli(*argv, "--endpoint-url", s3, "--region", "us-east-1")
    assert json.loads(result.stdout)["copied"] == []
