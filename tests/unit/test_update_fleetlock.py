"""The updater and its fleet lock: pre-reboot before rebooting into a staged version, steady-state
once this boot's health gate passed or the version was rolled back."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.node import tick, updatecli, updater
from builder.node.fleetlock import app_specific_id
from tests.unit.lockserver import LockServer, lock_server
from tests.unit.test_update_apply import NEW, Setup
from tests.unit.tufrepo import TufRepo, serve
from tests.unit.updatefakes import make_image

MACHINE_ID = "3d1219c7c4c5404aaa1f6d2a48adfda4"
NODE_ID = app_specific_id(MACHINE_ID)
T0 = datetime.datetime(2026, 3, 2, 12, 0, tzinfo=datetime.UTC)


class Node:
    """A fake node with an update repository and a lock server, at a clock the test sets."""

    def __init__(self, setup: Setup, lock: LockServer) -> None:
        self.setup, self.lock, self.now = setup, lock, T0
        root = setup.fake.root
        (root / "etc/machine-id").write_text(MACHINE_ID + "\n")
        (root / "proc/sys/kernel/hostname").write_text("worker-1\n")
        url = json.loads((root / updater.UPDATES_JSON).read_text())["repository"]
        setup.fake.updates(url, fleetLock={"url": lock.url, "group": "workers"})

    @property
    def node(self) -> updater.Node:
        node = self.setup.fake.node
        node.clock = lambda: self.now
        return node

    def healthy(self, verdict: bool = True) -> None:
        path = self.setup.fake.root / "run/hostbuild/health.json"
        path.write_text(json.dumps({"healthy": verdict, "checks": {}}))

    def stage(self) -> None:
        self.setup.publish(make_image("0.1.0-3"))
        assert self.setup.apply()["result"] == "staged"
        self.lock.requests.clear()

    def reboot(self) -> dict[str, object]:
        return updater.reboot(self.node, backoff=True)

    def lock_state(self) -> dict[str, object]:
        state: dict[str, object] = self.setup.state()["fleet_lock"]
        return state


@pytest.fixture
def n(tmp_path: Path) -> Iterator[Node]:
    repo = TufRepo(tmp_path / "repo")
    with serve(repo.base) as (url, faults), lock_server() as lock:
        yield Node(Setup(tmp_path, url, repo, faults), lock)


def test_nothing_staged_asks_no_lock(n: Node) -> None:
    assert n.reboot()["reason"] == "nothing is staged"
    assert n.lock.paths() == []


def test_the_node_reboots_only_holding_the_lock(n: Node) -> None:
    n.stage()
    assert n.reboot() == {"rebooting": True, "version": "0.1.0-3",
                          "reason": "rebooting into 0.1.0-3"}  # fmt: skip
    assert n.setup.fake.rebooted == 1
    (request,) = n.lock.requests
    assert request.path == "/v1/pre-reboot"
    assert request.params() == {"id": NODE_ID, "group": "workers", "version": "0.1.0-2",
                                "health": "healthy", "node_name": "worker-1"}  # fmt: skip
    lock = n.lock_state()
    assert (lock["held"], lock["version"], lock["boot_id"]) == (True, "0.1.0-3", "boot-1")


def test_outside_the_window_the_lock_is_not_asked(n: Node) -> None:
    root = n.setup.fake.root
    data = json.loads((root / updater.UPDATES_JSON).read_text())
    data["maintenanceWindows"] = [{"days": ["Sat"], "start": "02:00", "durationMinutes": 60}]
    (root / updater.UPDATES_JSON).write_text(json.dumps(data))
    n.stage()
    assert "outside the maintenance windows" in str(n.reboot()["reason"])  # T0 is a Monday
    assert n.lock.paths() == [] and n.setup.fake.rebooted == 0


def test_a_refusal_means_no_reboot_and_backoff_before_asking_again(n: Node) -> None:
    n.stage()
    n.lock.answer("/v1/pre-reboot", 409, {"kind": "failed_lock_semaphore_full",
                                          "value": "all slots are locked"})  # fmt: skip
    report = n.reboot()
    assert report["rebooting"] is False and n.setup.fake.rebooted == 0
    assert report["reason"] == (
        "0.1.0-3 is staged; not rebooting: the fleet lock ('workers') refused the slot (refused, "
        "HTTP 409 failed_lock_semaphore_full: all slots are locked); asking again at "
        "2026-03-02T12:05:00+00:00"
    )
    n.now += datetime.timedelta(minutes=4)
    assert "asking again at 2026-03-02T12:05:00+00:00" in str(n.reboot()["reason"])
    assert n.lock.paths() == ["/v1/pre-reboot"]  # not asked during the backoff
    n.now += datetime.timedelta(minutes=1)
    assert "asking again at 2026-03-02T12:15:00+00:00" in str(n.reboot()["reason"])
    assert n.lock_state()["failures"] == 2
    # asked by hand, the backoff does not hold; granted, the node reboots
    n.lock.answer("/v1/pre-reboot", 200)
    assert updater.reboot(n.node)["rebooting"] is True and n.setup.fake.rebooted == 1
    assert (n.lock_state()["failures"], n.lock_state()["next"]) == (0, None)


def test_an_unreachable_lock_server_means_no_reboot(n: Node, tmp_path: Path) -> None:
    root = n.setup.fake.root
    data = json.loads((root / updater.UPDATES_JSON).read_text())
    data["fleetLock"]["url"] = "http://127.0.0.1:9/"
    (root / updater.UPDATES_JSON).write_text(json.dumps(data))
    n.stage()
    report = n.reboot()
    assert report["rebooting"] is False and n.setup.fake.rebooted == 0
    assert "the fleet lock ('workers') did not answer (no answer (http://127.0.0.1:9/v1/" in str(
        report["reason"]
    )
    assert n.lock_state()["last"]["result"] == "unreachable"  # type: ignore[index]


def test_status_says_what_the_lock_did(n: Node, capsys: pytest.CaptureFixture[str]) -> None:
    n.stage()
    n.lock.answer("/v1/pre-reboot", 409, {"kind": "full", "value": "no slot"})
    n.reboot()
    assert updatecli.main(["status"], n.node) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "fleet lock" in line]
    assert lines == [
        "fleet lock: not held; last pre-reboot at 2026-03-02T12:00:00+00:00: refused, HTTP 409 "
        "full: no slot; asking again at 2026-03-02T12:05:00+00:00"
    ]


def reboot_into_new(n: Node, blessed: bool) -> None:
    n.stage()
    assert n.reboot()["rebooting"] is True
    n.setup.reboot_into("0.1.0-3", "b")
    if blessed:
        n.setup.spend_tries(f"{NEW}+3.efi", f"{NEW}.efi")
    n.lock.requests.clear()


def test_the_lock_is_freed_once_the_new_version_passed_its_gate(n: Node) -> None:
    reboot_into_new(n, blessed=False)
    n.healthy()
    updater.status(n.node)  # a run that saves nothing asks nothing
    updater.check(n.node)  # not blessed yet: the slot is kept
    assert n.lock.paths() == []
    n.setup.spend_tries(f"{NEW}+3.efi", f"{NEW}.efi")
    result = updater.check(n.node)
    assert result["events"] == ["fleet lock freed (steady-state, 'workers'): 0.1.0-3 is healthy"]
    (request,) = n.lock.requests
    assert request.path == "/v1/steady-state"
    assert request.params() == {"id": NODE_ID, "group": "workers", "version": "0.1.0-3",
                                "health": "healthy", "node_name": "worker-1"}  # fmt: skip
    assert (n.lock_state()["held"], n.lock_state()["released_boot"]) == (False, "boot-2")
    updater.check(n.node)
    assert n.lock.paths() == ["/v1/steady-state"]  # once a boot


def test_no_release_before_the_health_gate_passed(n: Node) -> None:
    reboot_into_new(n, blessed=True)
    updater.check(n.node)  # no verdict yet
    n.healthy(False)
    updater.check(n.node)
    assert n.lock.paths() == [] and n.lock_state()["held"] is True


def test_after_a_rollback_the_lock_is_freed_reporting_the_failed_version(n: Node) -> None:
    n.stage()
    assert n.reboot()["rebooting"] is True
    n.setup.reboot_into("0.1.0-2", "a")  # the new version failed its gate three times
    n.setup.spend_tries(f"{NEW}+3.efi", f"{NEW}+0-3.efi")
    n.lock.requests.clear()
    result = updater.check(n.node)  # no health verdict of this boot needed
    assert result["events"][-1] == (
        "fleet lock freed (steady-state, 'workers'): 0.1.0-3 failed, running 0.1.0-2"
    )
    (request,) = n.lock.requests
    assert request.params() == {"id": NODE_ID, "group": "workers", "version": "0.1.0-2",
                                "health": "failed", "failed_version": "0.1.0-3",
                                "node_name": "worker-1"}  # fmt: skip


def test_a_node_that_lost_its_record_frees_the_lock_at_start(n: Node) -> None:
    n.setup.publish()
    n.healthy()
    updater.check(n.node)
    assert n.lock.paths() == ["/v1/steady-state"]
    assert n.lock.requests[0].params()["health"] == "healthy"


def test_a_failed_release_is_asked_again_at_the_next_run(n: Node) -> None:
    reboot_into_new(n, blessed=True)
    n.healthy()
    n.lock.answer("/v1/steady-state", 503, b"")
    updater.check(n.node)
    assert n.lock_state()["held"] is True
    assert n.lock_state()["last"]["detail"] == (  # type: ignore[index]
        "refused, HTTP 503 generic_http_503: (unknown/generic server error)"
    )
    n.lock.answer("/v1/steady-state", 200)
    updater.check(n.node)
    assert n.lock.paths() == ["/v1/steady-state", "/v1/steady-state"]
    assert n.lock_state()["held"] is False


def test_the_lock_taken_for_a_reboot_is_not_freed_before_it(n: Node) -> None:
    n.healthy()
    n.stage()  # freed here, at the start of apply
    node = n.node
    node.reboot = lambda: None  # the reboot did not happen (yet)
    assert updater.reboot(node)["rebooting"] is True
    updater.check(n.node)
    assert n.lock.paths() == ["/v1/pre-reboot"] and n.lock_state()["held"] is True


def test_the_tick_asks_the_lock_with_backoff(n: Node) -> None:
    (n.setup.fake.root / "proc/stat").write_text(f"btime {int(T0.timestamp()) - 3600}\n")
    n.setup.publish(make_image("0.1.0-3"))
    n.lock.answer("/v1/pre-reboot", 409, {"kind": "full", "value": "no slot"})
    report = tick.tick(n.node)
    assert report["apply"]["result"] == "staged"
    assert report["reboot"]["rebooting"] is False
    n.now += datetime.timedelta(minutes=1)
    tick.tick(n.node)
    assert n.lock.paths() == ["/v1/pre-reboot"]


def test_the_tick_frees_the_lock_as_soon_as_the_gate_passed(n: Node) -> None:
    (n.setup.fake.root / "proc/stat").write_text(f"btime {int(T0.timestamp()) - 600}\n")
    reboot_into_new(n, blessed=True)
    n.setup.publish(make_image("0.1.0-3"))
    n.now = T0 + datetime.timedelta(hours=1)  # the first check of the boot is done
    assert tick.tick(n.node)["checked"] is True
    assert n.lock.paths() == []  # the gate is still running
    n.healthy()
    n.now += datetime.timedelta(minutes=5)
    report = tick.tick(n.node)
    assert report["checked"] is False  # no check due, yet the lock is freed at this tick
    assert report["events"] == ["fleet lock freed (steady-state, 'workers'): 0.1.0-3 is healthy"]
    n.now += datetime.timedelta(minutes=5)
    tick.tick(n.node)
    assert n.lock.paths() == ["/v1/steady-state"]
