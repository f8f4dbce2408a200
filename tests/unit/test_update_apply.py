"""The updater end to end: a TUF repository on 127.0.0.1, a fake node (devices, sysfs, ESP)."""

from __future__ import annotations

import datetime
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.node import agent, updatecli, updater
from builder.node.updatestate import UpdateError, load_state
from tests.unit.tufrepo import Faults, TufRepo, serve
from tests.unit.updatefakes import IMAGE, FakeNode, Image, MiB, make_image

NEW = f"{IMAGE}_0.1.0-3"


class Setup:
    def __init__(self, tmp: Path, url: str, repo: TufRepo, faults: Faults) -> None:
        self.fake = FakeNode(tmp)
        self.repo, self.faults = repo, faults
        baked = self.fake.root / updater.BAKED_ROOT
        baked.parent.mkdir(parents=True)
        baked.write_bytes(repo.root_json)
        self.fake.updates(url)

    def publish(self, *images: Image, entries: dict[str, dict[str, Any]] | None = None) -> None:
        """A channel offering the running 0.1.0-2 and `images`."""
        versions = [make_image("0.1.0-2").entry()]
        for image in images:
            self.fake.images[image.roothash] = image
            for role, data in image.files().items():
                self.repo.add_target(f"{IMAGE}/{image.version}/{role}.zst", data)
            versions.append(image.entry(**(entries or {}).get(image.version, {})))
        manifest = {"format": 1, "channel": "stable", "image_id": IMAGE, "versions": versions}
        self.repo.add_target("channels/stable.json", json.dumps(manifest).encode())
        self.repo.publish()

    def apply(self) -> dict[str, Any]:
        return updater.apply(self.fake.node)

    def refused(self, kind: str) -> str:
        with pytest.raises(UpdateError) as e:
            self.apply()
        assert e.value.kind == kind, e.value
        return str(e.value)

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.fake.node.state_file.read_text())
        return result

    def reboot_into(self, version: str, slot: str, boot_id: str = "boot-2") -> None:
        self.fake.os_release(version)
        self.fake.running_slot(slot)
        self.fake.boot(boot_id)

    def spend_tries(self, name: str, to: str) -> None:
        linux = self.fake.esp / "EFI/Linux"
        (linux / name).rename(linux / to)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    repo = TufRepo(tmp_path / "repo")
    with serve(repo.base) as (url, faults):
        yield Setup(tmp_path, url, repo, faults)


def test_apply_writes_the_other_slot_in_an_order_that_keeps_the_node_bootable(setup: Setup) -> None:
    fake, image = setup.fake, make_image("0.1.0-3")
    setup.publish(image)
    seen: dict[str, tuple[list[str], str, str]] = {}

    def look(argv: list[str]) -> None:
        what = Path(argv[-1]).name if argv[0] == "zstd" else argv[0]
        seen[what] = (fake.ukis(), fake.partition(4)["name"], fake.partition(5)["name"])

    fake.hooks["zstd"] = fake.hooks["veritysetup"] = look
    result = setup.apply()
    assert result["result"] == "staged" and result["detail"] == "staged 0.1.0-3; reboot to boot it"
    root_name = f"{IMAGE}%2F0.1.0-3%2Froot.zst"
    before_write = (["other_1.0.0-1.efi", f"{IMAGE}_0.1.0-2.efi"], "_empty", "_empty")
    # the other version's UKI was gone and the slot `_empty` before the write, and no new UKI
    # existed while it was verified
    assert seen[root_name] == before_write
    assert seen["veritysetup"] == before_write
    assert seen[f"{IMAGE}%2F0.1.0-3%2Fuki.zst"][1:] == (NEW, f"{NEW}_verity")
    root_uuid, verity_uuid = uuid.UUID(image.roothash[:32]), uuid.UUID(image.roothash[32:])
    writes = [c for c in fake.commands() if not c.startswith(("sfdisk --json", "bootctl"))]
    assert writes == [
        "sfdisk --part-label vda 4 _empty",
        "sfdisk --part-label vda 5 _empty",
        f"zstd {root_name}",
        f"zstd {IMAGE}%2F0.1.0-3%2Fverity.zst",
        "veritysetup verify",
        f"sfdisk --part-uuid vda 4 {root_uuid}",
        f"sfdisk --part-label vda 4 {NEW}",
        f"sfdisk --part-uuid vda 5 {verity_uuid}",
        f"sfdisk --part-label vda 5 {NEW}_verity",
        f"zstd {IMAGE}%2F0.1.0-3%2Fuki.zst",
    ]
    assert fake.ukis() == ["other_1.0.0-1.efi", f"{IMAGE}_0.1.0-2.efi", f"{NEW}+3.efi"]
    assert (fake.esp / f"EFI/Linux/{NEW}+3.efi").read_bytes() == image.uki
    assert (fake.dev / "vda4").read_bytes()[: len(image.root)] == image.root
    assert fake.partition(2)["name"] == f"{IMAGE}_0.1.0-2"  # the running slot is untouched
    staged = setup.state()["staged"]
    assert (staged["version"], staged["from"], staged["boot_id"], staged["slot"]) == (
        "0.1.0-3", "0.1.0-2", "boot-1", "b",
    )  # fmt: skip
    assert staged["roothash"] == image.roothash and setup.state()["writing"] is None
    # the payload is gone from /var once written
    assert sorted(p.name for p in fake.node.downloads.iterdir()) == ["channels%2Fstable.json"]
    calls = len(fake.calls)
    assert setup.apply()["detail"] == "0.1.0-3 is staged already; reboot to boot it"
    assert not [c for c in fake.calls[calls:] if c[0] in ("zstd", "veritysetup")]


def test_reboot_needs_something_staged_and_an_open_window(setup: Setup) -> None:
    fake = setup.fake
    assert updater.reboot(fake.node)["reason"] == "nothing is staged"
    setup.publish(make_image("0.1.0-3"))
    setup.apply()
    window = {"days": ["Sat"], "start": "02:00", "durationMinutes": 240}
    fake.updates(setup.fake.node.root.as_uri(), maintenanceWindows=[window])
    node = fake.node
    node.clock = lambda: datetime.datetime(2026, 1, 2, 12, 0, tzinfo=datetime.UTC)  # a Friday
    report = updater.reboot(node)
    assert report == {
        "rebooting": False, "version": "0.1.0-3",
        "reason": "0.1.0-3 is staged; outside the maintenance windows (the next opens "
        "Sat 2026-01-03 02:00 UTC)",
    }  # fmt: skip
    assert fake.rebooted == 0
    assert updater.reboot(node, ignore_window=True)["rebooting"] is True
    node.clock = lambda: datetime.datetime(2026, 1, 3, 5, 59, tzinfo=datetime.UTC)
    assert updater.reboot(node) == {"rebooting": True, "version": "0.1.0-3",
                                    "reason": "rebooting into 0.1.0-3"}  # fmt: skip
    assert fake.rebooted == 2


def test_booting_the_staged_version_is_a_success(setup: Setup) -> None:
    setup.publish(make_image("0.1.0-3"))
    setup.apply()
    setup.reboot_into("0.1.0-3", "b")
    setup.spend_tries(f"{NEW}+3.efi", f"{NEW}+2-1.efi")
    status = updater.status(setup.fake.node)
    assert status["events"] == [
        "booted into the staged version 0.1.0-3 (its entry is not blessed yet)"
    ]
    assert status["slots"]["b"]["running"] and status["slots"]["a"]["version"] == "0.1.0-2"
    assert setup.apply()["detail"] == "nothing newer to install (running 0.1.0-3)"
    state = setup.state()
    assert state["staged"] is None and state["booted"]["version"] == "0.1.0-3"
    assert state["failed"] == {}


def test_a_version_boot_counting_fell_back_from_is_failed_and_never_taken_again(
    setup: Setup,
) -> None:
    fake = setup.fake
    setup.publish(make_image("0.1.0-3"))
    setup.apply()
    setup.reboot_into("0.1.0-2", "a")  # three tries, the health gate failed each: back on a
    setup.spend_tries(f"{NEW}+3.efi", f"{NEW}+0-3.efi")
    calls = len(fake.calls)
    result = setup.apply()
    assert result["events"] == [
        "0.1.0-3 failed: after a reboot the node runs 0.1.0-2, not 0.1.0-3: boot counting fell "
        f"back (entry {NEW}+0-3.efi: no tries left)"
    ]
    assert result["result"] == "nothing"
    assert result["skipped"] == [{
        "version": "0.1.0-3",
        "reason": "it failed on this node before (see 'hostbuild-node update status')",
    }]  # fmt: skip
    assert not [c for c in fake.calls[calls:] if c[0] in ("zstd", "sfdisk") and c[1] != "--json"]
    failure = setup.state()["failed"]["0.1.0-3"]
    assert failure["digest"] == f"sha256:{make_image('0.1.0-3').entry()['files']['root']['sha256']}"
    # a newer version is taken, into the same slot; the bad entry goes with the old UKIs
    setup.publish(make_image("0.1.0-3"), make_image("0.1.0-4"))
    assert setup.apply()["detail"] == "staged 0.1.0-4; reboot to boot it"
    assert fake.ukis() == ["other_1.0.0-1.efi", f"{IMAGE}_0.1.0-2.efi", f"{IMAGE}_0.1.0-4+3.efi"]
    assert fake.partition(4)["name"] == f"{IMAGE}_0.1.0-4"


def test_a_slot_that_does_not_verify_is_left_empty_and_the_version_failed(setup: Setup) -> None:
    fake, image = setup.fake, make_image("0.1.0-3")
    setup.publish(image, entries={"0.1.0-3": {"roothash": "0" * 64}})
    message = setup.refused("verify")
    assert message.startswith(f"slot b does not verify against {'0' * 64}")
    assert (fake.partition(4)["name"], fake.partition(5)["name"]) == ("_empty", "_empty")
    assert fake.ukis() == ["other_1.0.0-1.efi", f"{IMAGE}_0.1.0-2.efi"]
    state = setup.state()
    assert state["writing"] is None and state["staged"] is None
    assert state["last_apply"]["kind"] == "verify"
    assert state["failed"]["0.1.0-3"]["roothash"] == "0" * 64
    assert setup.apply()["result"] == "nothing"


def test_a_payload_larger_than_the_slot_writes_nothing(setup: Setup) -> None:
    fake = setup.fake
    setup.publish(make_image("0.1.0-3", root_size=8 * MiB + 1))
    message = setup.refused("too-large")
    assert message.endswith(f"is 8388609 bytes, {fake.dev / 'vda4'} only 8388608")
    assert not [c for c in fake.calls if c[0] == "zstd" or c[1] != "--json" and c[0] == "sfdisk"]
    assert fake.partition(4)["name"] == f"{IMAGE}_0.1.0-1"  # nor was anything removed
    assert f"{IMAGE}_0.1.0-1.efi" in fake.ukis()
    assert setup.state()["last_apply"]["kind"] == "too-large"


def test_a_full_var_downloads_and_writes_nothing(setup: Setup, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:  # fmt: skip
    class Full:
        f_bavail, f_frsize = 10, 4096

    setup.publish(make_image("0.1.0-3"))
    real = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda p: Full() if "downloads" in str(p) else real(p))
    assert "MiB more on /var for its download" in setup.refused("no-space")
    assert not [p for p, _ in setup.faults.log if p.startswith(f"/targets/{IMAGE}/")]
    assert not [c for c in setup.fake.calls if c[0] == "zstd"]


def test_a_tampered_payload_is_rejected_before_anything_is_written(setup: Setup) -> None:
    image = make_image("0.1.0-3")
    setup.publish(image)
    setup.repo.target_file(f"{IMAGE}/0.1.0-3/verity.zst").write_bytes(image.verity[:-1] + b"!")
    assert "does not match its signed length or hashes" in setup.refused("rejected")
    assert not [c for c in setup.fake.calls if c[0] in ("zstd", "veritysetup")]
    assert setup.fake.partition(4)["name"] == f"{IMAGE}_0.1.0-1"
    assert setup.state()["last_check"]["result"] == "ok"  # the check was fine, the payload not


def test_a_failed_write_leaves_the_slot_empty_and_no_new_uki(setup: Setup) -> None:
    fake = setup.fake
    setup.publish(make_image("0.1.0-3"))

    def broken(argv: list[str]) -> None:
        if "uki" in argv[-1]:
            raise OSError(5, "Input/output error")

    fake.hooks["zstd"] = broken
    assert setup.refused("write").endswith(f"{NEW}+3.efi: [Errno 5] Input/output error")
    assert (fake.partition(4)["name"], fake.partition(5)["name"]) == ("_empty", "_empty")
    assert fake.ukis() == ["other_1.0.0-1.efi", f"{IMAGE}_0.1.0-2.efi"]
    assert setup.state()["writing"] is None and setup.state()["failed"] == {}


def test_an_interrupted_write_is_cleared_at_the_next_run(setup: Setup) -> None:
    fake = setup.fake
    setup.publish()  # nothing newer: only the recovery happens
    node = fake.node
    node.state_dir.mkdir(parents=True)
    writing = {"version": "0.1.0-3", "slot": "b", "time": "2026-01-01T00:00:00+00:00"}
    node.state_file.write_text(json.dumps({"format": 1, "writing": writing}))
    fake.partition(4)["name"] = NEW  # power lost after the labels, before the UKI
    (fake.esp / f"EFI/Linux/.{NEW}+3.efi.tmp").write_bytes(b"half")
    result = setup.apply()
    assert result["events"] == [
        "writing 0.1.0-3 into slot b was interrupted (started 2026-01-01T00:00:00+00:00): "
        "the slot was cleared"
    ]
    assert (fake.partition(4)["name"], fake.partition(5)["name"]) == ("_empty", "_empty")
    assert fake.ukis() == ["other_1.0.0-1.efi", f"{IMAGE}_0.1.0-2.efi"]
    assert load_state(node.state_file).writing is None


def test_a_repository_that_is_down_is_a_status_not_a_crash(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    setup.fake.updates("http://127.0.0.1:9")
    assert updatecli.main(["apply"], setup.fake.node) == 1
    err = capsys.readouterr().err
    assert err.startswith("hostbuild-node update apply: unreachable: the repository's metadata")
    assert updatecli.main(["status"], setup.fake.node) == 1
    out = capsys.readouterr().out
    assert "last check: " in out and "error (unreachable)" in out
    assert not [c for c in setup.fake.calls if c[0] == "zstd"]


def test_without_an_updates_section_there_is_nothing_to_do(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    (setup.fake.root / updater.UPDATES_JSON).unlink()
    assert updatecli.main(["apply", "--json"], setup.fake.node) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["kind"] == "not-configured"
    assert "no updates section in the NodeConfig" in captured.err
    assert updatecli.main(["status"], setup.fake.node) == 0


def test_the_command_line(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    node = setup.fake.node
    setup.publish(make_image("0.1.0-3"), make_image("0.2.0-1"),
                  entries={"0.2.0-1": {"upgrade_from": "0.1.0-3"}})  # fmt: skip
    assert updatecli.main(["check"], node) == 0
    assert capsys.readouterr().out.splitlines()[2:] == [
        "update:   0.1.0-3 would be installed",
        "skipped:",
        "  0.2.0-1: it updates only from 0.1.0-3 or later (this node runs 0.1.0-2)",
    ]
    assert updatecli.main(["apply"], node) == 0
    assert capsys.readouterr().out.splitlines()[0] == "staged 0.1.0-3; reboot to boot it"
    assert updatecli.main(["status"], node) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == [
        f"running:    {IMAGE} 0.1.0-2",
        f"slot a:     running, {setup.fake.dev / 'vda2'}: {IMAGE}_0.1.0-2 ({IMAGE}_0.1.0-2.efi)",
        f"slot b:     other, {setup.fake.dev / 'vda4'}: {NEW} ({NEW}+3.efi)",
        f"staged:     0.1.0-3 ({setup.state()['staged']['time']}); reboot to boot it",
    ]
    assert updatecli.main(["status", "--json"], node) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["staged"]["version"] == "0.1.0-3" and status["slots"]["b"]["version"] == "0.1.0-3"
    assert updatecli.main(["reboot", "--json"], node) == 0
    assert json.loads(capsys.readouterr().out)["rebooting"] is True


def test_the_agent_hands_update_to_its_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        agent.main(["update", "--help"])
    assert e.value.code == 0
    assert "check,apply,reboot,status" in capsys.readouterr().out


def test_downloads_of_other_versions_make_room(setup: Setup) -> None:
    setup.publish(make_image("0.1.0-3"))
    downloads = setup.fake.node.downloads
    downloads.mkdir(parents=True)
    (downloads / f"{IMAGE}%2F0.0.9-1%2Froot.zst.0123456789abcdef.part").write_bytes(b"old")
    (downloads / f"{IMAGE}%2F0.0.9-1%2Fuki.zst").write_bytes(b"old")
    setup.apply()
    assert sorted(p.name for p in downloads.iterdir()) == ["channels%2Fstable.json"]


def test_the_other_slot_is_kept_while_this_boot_is_not_blessed(setup: Setup) -> None:
    fake = setup.fake
    setup.publish(make_image("0.1.0-3"))
    setup.spend_tries(f"{IMAGE}_0.1.0-2.efi", f"{IMAGE}_0.1.0-2+2-1.efi")
    result = setup.apply()
    assert result["result"] == "nothing"
    assert result["detail"] == (
        f"not writing the other slot yet: this boot of 0.1.0-2 is not blessed "
        f"({IMAGE}_0.1.0-2+2-1.efi), and the other slot is its fallback"
    )
    assert not [c for c in fake.calls if c[0] == "zstd" or c[0] == "sfdisk" and c[1] != "--json"]
    assert f"{IMAGE}_0.1.0-1.efi" in fake.ukis()


def test_a_version_that_fails_after_the_updater_saw_it_boot_keeps_its_digest(setup: Setup) -> None:
    image = make_image("0.1.0-3")
    setup.publish(image)
    setup.apply()
    setup.reboot_into("0.1.0-3", "b")  # a long health deadline: the timer runs before the verdict
    setup.spend_tries(f"{NEW}+3.efi", f"{NEW}+1-2.efi")
    setup.apply()
    assert setup.state()["booted"]["blessed"] is False
    setup.reboot_into("0.1.0-2", "a", "boot-3")
    setup.spend_tries(f"{NEW}+1-2.efi", f"{NEW}+0-3.efi")
    setup.apply()
    failure = setup.state()["failed"]["0.1.0-3"]
    assert failure["roothash"] == image.roothash
    assert (
        failure["reason"]
        == f"boot entry {NEW}+0-3.efi has no tries left: it never reached a good boot"
    )
