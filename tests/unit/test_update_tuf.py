"""The node's TUF client against a real repository served on 127.0.0.1, and what it refuses."""

from __future__ import annotations

import datetime
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner

from builder.node import tufclient
from builder.node.tufclient import Fetcher, Repository
from builder.node.updatestate import UpdateError
from tests.unit.tufrepo import Faults, TufRepo, serve

PAYLOAD = bytes(range(251)) * 10_000  # 2.4 MiB: three chunks
PATH = "worker-standin/0.1.0-3/root.erofs.zst"


@dataclass
class Client:
    tmp: Path
    repo: TufRepo
    url: str
    faults: Faults

    def __post_init__(self) -> None:
        self.baked = self.tmp / "image" / "root.json"
        self.baked.parent.mkdir(exist_ok=True)
        self.baked.write_bytes(self.repo.root_json)

    @property
    def metadata(self) -> Path:
        return self.tmp / "var" / "metadata"

    @property
    def downloads(self) -> Path:
        return self.tmp / "var" / "downloads"

    def open(self, timeout: float = 5.0, bandwidth: int | None = None) -> Repository:
        fetcher = Fetcher(timeout, bandwidth)
        repo = Repository(self.url, self.metadata, self.downloads, self.baked, fetcher)
        repo.refresh()
        return repo


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    repo = TufRepo(tmp_path / "repo")
    repo.add_target("channels/stable.json", json.dumps({"format": 1}).encode())
    repo.add_target(PATH, PAYLOAD)
    repo.publish()
    with serve(repo.base) as (url, faults):
        yield Client(tmp_path, repo, url, faults)


def refused(client: Client, kind: str, timeout: float = 5.0) -> str:
    with pytest.raises(UpdateError) as e:
        repo = client.open(timeout)
        repo.fetch(repo.targetinfo(PATH))
    assert e.value.kind == kind, e.value
    return str(e.value)


def test_metadata_and_targets_are_fetched_and_verified(client: Client) -> None:
    repo = client.open()
    assert repo.fetch_json("channels/stable.json") == {"format": 1}
    local = repo.fetch(repo.targetinfo(PATH))
    assert local == client.downloads / "worker-standin%2F0.1.0-3%2Froot.erofs.zst"
    assert local.read_bytes() == PAYLOAD
    assert (client.metadata / "root.json").read_bytes() == client.repo.root_json
    # fetched again: the verified copy is used, nothing downloaded
    before = len(client.faults.log)
    assert client.open().fetch(repo.targetinfo(PATH)) == local
    assert not [p for p, _ in client.faults.log[before:] if p.startswith("/targets/")]


def test_consistent_snapshots_fetch_hash_prefixed_targets(tmp_path: Path) -> None:
    repo = TufRepo(tmp_path / "repo", consistent_snapshot=True)
    repo.add_target(PATH, PAYLOAD)
    repo.publish()
    with serve(repo.base) as (url, faults):
        client = Client(tmp_path, repo, url, faults)
        tuf = client.open()
        assert tuf.fetch(tuf.targetinfo(PATH)).read_bytes() == PAYLOAD
    digest = repo.targets.signed.targets[PATH].hashes["sha256"]
    assert (f"/targets/worker-standin/0.1.0-3/{digest}.root.erofs.zst", None) in faults.log


def test_a_tampered_target_is_rejected_and_not_kept(client: Client) -> None:
    client.repo.target_file(PATH).write_bytes(PAYLOAD[:-1] + b"\x00")
    message = refused(client, "rejected")
    assert message.startswith(f"target {PATH!r}: does not match its signed length or hashes")
    assert list(client.downloads.iterdir()) == []


def test_a_longer_target_is_rejected(client: Client) -> None:
    client.repo.target_file(PATH).write_bytes(PAYLOAD + b"more")
    assert "more than the" in refused(client, "rejected")
    assert list(client.downloads.iterdir()) == []


def test_expired_timestamp_is_rejected(client: Client) -> None:
    past = datetime.datetime.now(datetime.UTC).replace(microsecond=0) - datetime.timedelta(hours=1)
    client.repo.publish(timestamp_expires=past)
    message = refused(client, "rejected")
    assert "expired metadata, refused" in message and "timestamp" in message


def test_rolled_back_snapshot_is_rejected(client: Client) -> None:
    client.open()  # the node has seen the current snapshot
    client.repo.roll_back_snapshot()
    message = refused(client, "rejected")
    assert "a version rollback, refused" in message and "snapshot" in message


def test_a_timestamp_signed_by_an_untrusted_key_is_rejected(client: Client) -> None:
    client.repo.publish(timestamp_signer=CryptoSigner.generate_ed25519())
    message = refused(client, "rejected")
    assert "not signed by enough trusted keys, refused" in message


def test_a_target_not_in_the_metadata_is_rejected(client: Client) -> None:
    with pytest.raises(UpdateError, match="is not in the signed targets metadata") as e:
        client.open().targetinfo("worker-standin/9.9.9-1/root.erofs.zst")
    assert e.value.kind == "rejected"


def test_a_repository_that_is_down_is_unreachable(client: Client) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    client.url = f"http://127.0.0.1:{port}"
    message = refused(client, "unreachable")
    assert message.startswith("the repository's metadata") and "refused" in message.lower()


def test_a_slow_repository_times_out(client: Client) -> None:
    client.faults.stall = 1.0
    message = refused(client, "unreachable", timeout=0.2)
    assert "timed out" in message


def test_a_truncated_download_is_resumed_from_the_last_whole_chunk(client: Client) -> None:
    url_path = f"/targets/{PATH}"
    cut = tufclient.CHUNK + 1000
    client.faults.truncate[url_path] = cut
    message = refused(client, "unreachable")
    assert f"target {PATH!r}" in message
    [partial] = client.downloads.glob("*.part")
    assert partial.name.startswith("worker-standin%2F0.1.0-3%2Froot.erofs.zst.")
    assert partial.stat().st_size == cut
    repo = client.open()
    assert repo.fetch(repo.targetinfo(PATH)).read_bytes() == PAYLOAD
    assert client.faults.log[-1] == (url_path, f"bytes={tufclient.CHUNK}-")
    assert not partial.exists()


def test_a_server_without_ranges_starts_over(client: Client) -> None:
    client.faults.truncate[f"/targets/{PATH}"] = tufclient.CHUNK + 10
    refused(client, "unreachable")
    client.faults.ranges = False
    repo = client.open()
    assert repo.fetch(repo.targetinfo(PATH)).read_bytes() == PAYLOAD


def test_a_tampered_partial_download_is_dropped(client: Client) -> None:
    client.faults.truncate[f"/targets/{PATH}"] = tufclient.CHUNK + 10
    refused(client, "unreachable")
    [partial] = client.downloads.glob("*.part")
    with partial.open("r+b") as f:
        f.write(b"evil")  # bytes before the resume point are not fetched again
    assert "does not match its signed length or hashes" in refused(client, "rejected")
    assert not partial.exists()
    repo = client.open()
    assert repo.fetch(repo.targetinfo(PATH)).read_bytes() == PAYLOAD


class FakeTime:
    """A clock that only sleeping moves: the network counts as instant."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.mark.parametrize("bandwidth", [64 << 10, 1 << 20, 10 << 20])
def test_bandwidth_is_limited(client: Client, bandwidth: int) -> None:
    repo = client.open()
    fake = FakeTime()
    repo.fetcher = Fetcher(5.0, bandwidth, clock=fake.clock, sleep=fake.sleep)
    assert repo.fetch(repo.targetinfo(PATH)).read_bytes() == PAYLOAD
    # as long as the limit says, in waits of at most a quarter of a second each
    assert sum(fake.sleeps) == pytest.approx(len(PAYLOAD) / bandwidth)
    assert max(fake.sleeps) <= 0.25 + 1e-9
    assert len(fake.sleeps) >= len(PAYLOAD) // max(bandwidth // 4, 1) - 1


def test_a_slow_network_is_not_slowed_further(client: Client) -> None:
    repo = client.open()
    fake = FakeTime()

    def slow_clock() -> float:  # every look at the clock: a second has passed
        fake.now += 1.0
        return fake.now

    repo.fetcher = Fetcher(5.0, 10 << 20, clock=slow_clock, sleep=fake.sleep)
    assert repo.fetch(repo.targetinfo(PATH)).read_bytes() == PAYLOAD
    assert fake.sleeps == []


def test_without_a_limit_nothing_waits(client: Client) -> None:
    repo = client.open()
    fake = FakeTime()
    repo.fetcher = Fetcher(5.0, None, clock=fake.clock, sleep=fake.sleep)
    assert repo.fetch(repo.targetinfo(PATH)).read_bytes() == PAYLOAD
    assert fake.sleeps == []


def test_the_baked_root_seeds_the_metadata_and_a_rotated_one_is_kept(client: Client) -> None:
    client.open()
    kept = client.metadata / "root.json"
    newer = json.loads(kept.read_bytes())
    newer["signed"]["version"] = 2
    kept.write_text(json.dumps(newer))  # as if the repository rotated its root since
    tufclient.seed_root(client.baked, client.metadata)
    assert json.loads(kept.read_bytes())["signed"]["version"] == 2
    kept.unlink()
    client.baked.unlink()
    with pytest.raises(UpdateError, match="no trusted root metadata: .* is missing") as e:
        client.open()
    assert e.value.kind == "system"


def test_a_partial_download_of_other_bytes_is_never_resumed(client: Client) -> None:
    client.faults.truncate[f"/targets/{PATH}"] = tufclient.CHUNK + 10
    refused(client, "unreachable")
    [old] = client.downloads.glob("*.part")
    changed = PAYLOAD[::-1]
    client.repo.add_target(PATH, changed)  # re-published under the same path
    client.repo.publish()
    repo = client.open()
    assert repo.fetch(repo.targetinfo(PATH)).read_bytes() == changed
    assert client.faults.log[-1] == (f"/targets/{PATH}", None)  # from the start
    assert old.exists()  # the updater's download() clears what no version needs
