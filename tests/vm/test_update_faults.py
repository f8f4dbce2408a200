"""Updates that must not happen, and updates cut short: a booted node keeps its running version.

Security: every bad repository state is refused with a clear status and the other slot's bytes
stay as they were (an older or equal version offered, tampered targets metadata, an expired
timestamp, a timestamp signed by a key the root does not trust, an old snapshot replayed, a
tampered payload). Crash safety: QEMU is killed (a power cut) at each failpoint of
`update apply` (builder/node/failpoints.py); every time the node boots its running version, and
a last `apply` completes and boots.

The node takes the channel `faults` of its own copy of the session repository, so the bad
states served here reach no other test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Timestamp

from builder.build.toolstree import ToolsTree
from builder.node import failpoints
from builder.update.keys import KeyStore
from tests.vm.image import BuiltImage, Node, SshKey
from tests.vm.updatenode import entries, node_on, reboot, running, update_json
from tests.vm.updaterepo import UpdateRepo
from tests.vm.versions import MARKER, DerivedVersion, derive_version

pytestmark = pytest.mark.vm

CHANNEL = "faults"
OLD, NEW = "0.0.9-1", "0.5.0-1"


@dataclass
class Faults:
    """The node's disk, its own served copy of the repository, and the versions on `faults`."""

    image: BuiltImage
    tools: ToolsTree
    key: SshKey
    repo: UpdateRepo
    work: Path
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    new: DerivedVersion | None = None
    boots: int = 0
    kept: tuple[ExitStack, Node] | None = None

    @property
    def disk(self) -> Path:
        return self.work / "node.qcow2"

    @property
    def served(self) -> Path:
        return self.work / "served"

    @property
    def timestamp(self) -> Path:
        return self.served / "metadata" / "timestamp.json"

    def publish(self) -> None:
        self.repo.hostbuild("publish", os.fspath(self.repo.path), "--to", os.fspath(self.served))

    def add(self, output: Path) -> None:
        self.repo.hostbuild("add", os.fspath(self.repo.path), "--keys", os.fspath(self.repo.keys),
                            "--image", os.fspath(output), "--channel", CHANNEL)  # fmt: skip

    def refresh(self) -> None:
        """New snapshot and timestamp versions, published: newer than anything served before."""
        self.repo.hostbuild("refresh", os.fspath(self.repo.path), "--keys",
                            os.fspath(self.repo.keys))  # fmt: skip
        self.publish()

    def offer_new(self) -> DerivedVersion:
        """NEW (from the running version on) on the channel, published."""
        if self.new is None:
            v1 = self.image.manifest["version"]
            self.new = derive_version(self.image, self.tools, self.work / "new", NEW,
                                      upgrade_from=v1)  # fmt: skip
            self.add(self.new.output)
            self.publish()
        return self.new

    @contextmanager
    def boot(self, keep: bool = False) -> Iterator[Node]:
        """The node: the one a `boot(keep=True)` left running, else the disk booted anew. With
        `keep` it stays up after the block (if the block did not fail) for the next `boot`."""
        if self.kept is None:
            self.boots += 1
            stack = ExitStack()
            node = stack.enter_context(node_on(
                self.image, self.tools, self.work / f"boot{self.boots}", self.disk, self.key,
                self.served, CHANNEL, self.requests,
            ))  # fmt: skip
        else:
            (stack, node), self.kept = self.kept, None
        with stack:
            yield node
            if keep:
                self.kept = (stack.pop_all(), node)

    def close(self) -> None:
        if self.kept is not None:
            self.kept[0].close()
            self.kept = None

    def sign_timestamp(self, signer: CryptoSigner | None = None, expired: bool = False) -> None:
        """Serve the next timestamp version, signed by `signer` (else the timestamp key)."""
        md = Metadata[Timestamp].from_bytes(self.timestamp.read_bytes())
        md.signed.version += 1
        if expired:
            md.signed.expires = md.signed.expires.replace(year=2020)
        if signer is None:
            root = json.loads((self.repo.path / "metadata" / "1.root.json").read_bytes())
            role = root["signed"]["roles"]["timestamp"]
            [signer] = KeyStore.for_repository(self.repo.path, [self.repo.keys]).signers(
                "timestamp", role["keyids"], 1
            )
        md.signatures.clear()
        md.sign(signer)
        self.timestamp.write_bytes(md.to_bytes())


@pytest.fixture(scope="module")
def faults(
    image: BuiltImage, tools_tree: ToolsTree, key: SshKey, update_repo: UpdateRepo,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Faults]:  # fmt: skip
    """The channel holds an older version and the running one; NEW comes with offer_new."""
    f = Faults(image, tools_tree, key, update_repo, tmp_path_factory.mktemp("faults"))
    f.served.mkdir()
    old = derive_version(image, tools_tree, f.work / "old", OLD)
    f.add(old.output)
    f.add(image.output)
    f.publish()
    yield f
    f.close()


def status(node: Node) -> dict[str, Any]:
    """`update status --json` (which exits 1 while the last check or apply is an error)."""
    report: dict[str, Any] = json.loads(node.host.run("hostbuild-node update status --json").stdout)
    return report


def other_slot(node: Node) -> dict[str, Any]:
    slots = status(node)["slots"]
    [other] = [s for s in slots.values() if not s["running"]]
    return dict(other)


def slot_digest(node: Node, slot: dict[str, Any]) -> str:
    return node.sh(f"sha256sum {slot['root']} {slot['verity']}")


def refused(node: Node, verb: str, needle: str) -> dict[str, Any]:
    """`update VERB` fails with kind `rejected`, its detail naming `needle`."""
    result = node.host.run(f"hostbuild-node update {verb} --json")
    assert result.rc == 1, f"rc={result.rc}\n{result.stdout}{result.stderr}"
    report: dict[str, Any] = json.loads(result.stdout)
    assert (report["result"], report["kind"]) == ("error", "rejected"), report
    assert needle in report["detail"], report
    return report


@contextmanager
def restored(path: Path) -> Iterator[Path]:
    """`path` as it was, whatever the block did to it."""
    saved = path.read_bytes()
    try:
        yield path
    finally:
        path.write_bytes(saved)


def served_target(faults: Faults, version: str, name: str) -> Path:
    [path] = faults.served.glob(f"targets/**/{version}/*{name}")
    return path


@pytest.mark.destructive
def test_bad_repository_states_are_refused_and_the_other_slot_is_untouched(
    faults: Faults,
) -> None:
    v1 = faults.image.manifest["version"]
    # the node stays up for the power cuts' first apply: this test leaves it as it found it
    with faults.boot(keep=True) as node:
        node.wait_for("systemctl is-active systemd-bless-boot.service")
        other = other_slot(node)
        before = slot_digest(node, other)

        # an older version and the running one: neither is an update
        check = update_json(node, "check")
        assert (check["chosen"], sorted(check["versions"])) == (None, sorted([OLD, v1])), check
        applied = update_json(node, "apply")
        assert applied["result"] == "nothing", applied

        # NEW's targets metadata tampered with before the node first sees it
        new = faults.offer_new()
        [targets] = sorted(
            (faults.served / "metadata").glob("*.targets.json"),
            key=lambda p: int(p.name.split(".")[0]),
        )[-1:]
        with restored(targets):
            data = json.loads(targets.read_bytes())
            for info in data["signed"]["targets"].values():
                info["hashes"]["sha256"] = "0" * 64
            targets.write_bytes(json.dumps(data).encode())
            refused(node, "check", "does not match its signed length or hashes")
        assert update_json(node, "check")["chosen"] == NEW

        # an expired timestamp, then one signed by a key the root does not trust
        with restored(faults.timestamp):
            faults.sign_timestamp(expired=True)
            refused(node, "check", "expired metadata")
        with restored(faults.timestamp):
            faults.sign_timestamp(CryptoSigner.generate_ed25519())
            refused(node, "check", "not signed by enough trusted keys")

        # an old snapshot and timestamp replayed once the node has seen newer ones
        old_metadata = {p.name: p.read_bytes() for p in (faults.served / "metadata").iterdir()}
        faults.refresh()
        assert update_json(node, "check")["chosen"] == NEW
        newer = {p.name: p.read_bytes() for p in (faults.served / "metadata").iterdir()}
        for name in newer.keys() - old_metadata.keys():
            (faults.served / "metadata" / name).unlink()
        for name, data in old_metadata.items():
            (faults.served / "metadata" / name).write_bytes(data)
        refused(node, "check", "rollback")
        faults.refresh()

        # NEW's root payload with one byte changed: downloaded, refused, never written
        payload = served_target(faults, NEW, "root.erofs.zst")
        with restored(payload), payload.open("r+b") as f:
            f.seek(payload.stat().st_size // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
            f.flush()
            refused(node, "apply", "does not match its signed length or hashes")
        assert not node.host.run("ls /var/lib/hostbuild/update/downloads/*.part").stdout.strip()

        assert slot_digest(node, other) == before
        report = status(node)
        assert report["last_apply"]["kind"] == "rejected", report
        assert report.get("staged") is None and not report.get("failed"), report
        assert other_slot(node)["label"] == "_empty"
        assert new.manifest["version"] == NEW


def wait_blessed(node: Node, entry: str) -> None:
    """Until the boot entry `entry` has no tries counter (blessed now or at an earlier boot)."""
    esp = node.sh("bootctl --print-esp-path").strip()
    node.wait_for(f"test -e {esp}/EFI/Linux/{entry}")


def kill(node: Node) -> None:
    """Pull the plug: SIGKILL to QEMU, nothing flushed by the guest."""
    pid = node.vm.qemu_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while node.vm.exit_code() is None and time.monotonic() < deadline:
        time.sleep(0.5)


@pytest.mark.destructive
def test_a_power_cut_at_any_point_of_apply_leaves_the_running_version_booting(
    faults: Faults,
) -> None:
    v1 = faults.image.manifest["version"]
    profile = faults.image.manifest["profile"]
    faults.offer_new()
    slot_a = ""
    for point in failpoints.POINTS:
        with faults.boot() as node:
            version, slot = running(node)
            slot_a = slot_a or slot
            assert (version, slot) == (v1, slot_a), f"after a power cut before {point}"
            assert not [e for e in entries(node) if e.startswith(f"{profile}_{NEW}")]
            wait_blessed(node, f"{profile}_{v1}.efi")  # apply waits for that
            del faults.requests[:]
            node.sh(f"systemd-run --unit=apply-{point} --setenv={failpoints.ENV}={point} "
                    "hostbuild-node update apply")  # fmt: skip
            node.wait_for(f"grep -qx {point} {failpoints.MARK}", timeout=900)
            if point == "uki-copy":  # a half-written UKI is on the ESP
                linux = node.sh("bootctl --print-esp-path").strip() + "/EFI/Linux"
                assert node.sh(f"ls -a {linux}").count(f".{profile}_{NEW}+3.efi") == 1
            kill(node)
        if point == "root-write":  # the download cut short before was resumed, not restarted
            ranges = [r for p, r in faults.requests if p.endswith("root.erofs.zst") and r]
            assert ranges and ranges[0] != "bytes=0-", faults.requests

    with faults.boot() as node:
        assert running(node) == (v1, slot_a)
        wait_blessed(node, f"{profile}_{v1}.efi")
        applied = update_json(node, "apply")
        assert (applied["result"], applied["version"]) == ("staged", NEW), applied
        assert any("was interrupted" in e for e in applied["events"]), applied
        reboot(node)
        version, slot = running(node)
        assert version == NEW and slot != slot_a
        assert node.sh(f"cat {MARKER}").strip() == NEW
        node.wait_for("systemctl is-active systemd-bless-boot.service")
        assert f"{profile}_{NEW}.efi" in entries(node)
    shutil.rmtree(faults.work / "new", ignore_errors=True)
