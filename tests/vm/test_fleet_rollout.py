"""A fleet rolling update across three booted nodes, through the coordinator on a three-member etcd.

node1 is the `canary` group, node2 and node3 the `workers` group, one reboot slot each; workers
get slots only once the canary is healthy on a version they do not run. Each node speaks
FleetLock to the coordinator (in this process, `builder.fleet`) at http://10.0.2.101/ through a
QEMU guest forward, and takes its updates from a copy of the session repository at
http://10.0.2.100/ (channel `fleet`). The test stages versions with `update apply` and then asks
every node at once to `update reboot` (the step the update timer takes) until it runs the new
version, a refused node again as soon as another finished its reboot; after each reboot
`update check` frees the node's slot once its health gate passed.

v1 -> v2: never two nodes down at once (the nodes' journals and every revision of the groups in
etcd), the canary first, all on v2 and blessed. Then a v3 that fails its health gate: the canary
falls back to v2 by itself within its tries and never takes v3 again (the update tests' failed
version is this one), its report pauses the rollout, and the workers are refused and stay on v2.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from builder.build.toolstree import ToolsTree
from builder.fleet.coordinator import Coordinator
from builder.fleet.policy import parse_policy
from builder.fleet.server import FleetHttpServer, start_server
from builder.fleet.status import fleet_status
from builder.fleet.store import Store
from builder.vm.errors import VmError
from builder.vm.qemu import GuestForward
from tests.etcdcluster import EtcdCluster, etcd_cluster, etcd_missing, max_holders_in_etcd
from tests.vm.image import BuiltImage, Node, SshKey
from tests.vm.updatenode import (
    BOOT_TIMEOUT,
    entries,
    node_on,
    running,
    settle,
    update_json,
    wait_until,
)
from tests.vm.updaterepo import UpdateRepo
from tests.vm.versions import derive_version

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(etcd_missing() is not None, reason=str(etcd_missing())),
]

CHANNEL = "fleet"
V2, V3 = "0.3.0-1", "0.3.1-1"
LOCK_ADDR = "10.0.2.101"
GROUPS = {"node1": "canary", "node2": "workers", "node3": "workers"}
POLICY = {
    "groups": {
        "canary": {"slots": 1, "reboot_deadline": "30m"},
        "workers": {"slots": 1, "reboot_deadline": "30m", "after": ["canary"]},
    }
}
FAILING_PROBE = "#!/bin/sh\necho 'this version fails its health gate' >&2\nexit 1\n"


@dataclass
class Member:
    """One node of the fleet and what the test saw of it."""

    name: str
    node: Node
    profile: str
    answers: list[dict[str, Any]] = field(default_factory=list)

    def boots(self) -> list[dict[str, Any]]:
        """journalctl --list-boots: each boot's first and last entry (µs, realtime)."""
        found: list[dict[str, Any]] = json.loads(self.node.sh("journalctl --list-boots -o json"))
        return sorted(found, key=lambda b: int(b["first_entry"]))

    def boot_id(self) -> str | None:
        result = self.node.host.run("cat /proc/sys/kernel/random/boot_id")
        return result.stdout.strip() if result.rc == 0 else None


def downtimes(member: Member) -> list[tuple[int, int]]:
    """(last entry of a boot, first entry of the next): when the node was down."""
    boots = member.boots()
    return [
        (int(a["last_entry"]), int(b["first_entry"]))
        for a, b in zip(boots, boots[1:], strict=False)
    ]


def wait_rebooted(member: Member, before: str) -> None:
    """Until the node answers over SSH from a boot other than `before`, settled."""
    deadline = time.monotonic() + 4 * BOOT_TIMEOUT
    while True:
        assert time.monotonic() < deadline, f"{member.name} did not come back"
        time.sleep(5)
        try:
            member.node.vm.wait_for_ssh(BOOT_TIMEOUT)
        except VmError:  # the guest is between boots
            continue
        now = member.boot_id()
        if now is not None and now != before:
            settle(member.node)
            return


def wait_blessed_entry(node: Node, entry: str) -> None:
    esp = node.sh("bootctl --print-esp-path").strip()
    node.wait_for(f"test -e {esp}/EFI/Linux/{entry}", timeout=BOOT_TIMEOUT)


class Turns:
    """Tells the nodes waiting for a slot that another one finished its reboot (freed a slot),
    so they ask again at once instead of polling the coordinator from their guests' CPUs."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._round = 0

    def done(self) -> None:
        with self._changed:
            self._round += 1
            self._changed.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._round != seen, timeout)

    @property
    def round(self) -> int:
        return self._round


def roll(member: Member, want: str, profile: str, attempts: int, turns: Turns) -> None:
    """Ask `update reboot` until the node runs `want` (or `attempts` refusals in a row): after a
    refusal, again once another node finished a reboot (or after a minute, as a timer would)."""
    refused = 0
    while running(member.node)[0] != want:
        before = member.boot_id()
        assert before is not None
        seen = turns.round
        result = member.node.host.run("hostbuild-node update reboot --json")
        try:
            answer: dict[str, Any] = json.loads(result.stdout)
        except ValueError:  # the reboot cut the answer short
            answer = {"rebooting": True, "reason": result.stdout + result.stderr}
        member.answers.append(answer | {"time": time.time()})
        if not answer["rebooting"]:
            refused += 1
            if refused >= attempts:
                return
            turns.wait(seen, 60 if attempts > 3 else 10)
            continue
        refused = 0
        wait_rebooted(member, before)
        version = running(member.node)[0]
        wait_blessed_entry(member.node, f"{profile}_{version}.efi")
        # the health gate passed (or the node fell back): this frees the node's slot
        member.node.host.run("hostbuild-node update check --json")
        turns.done()


def each(members: list[Member], step: Callable[[Member], object]) -> None:
    """`step` on every member at once, in threads; the first failure is the test's."""
    errors: list[str] = []

    def run(member: Member) -> None:
        try:
            step(member)
        except Exception as e:  # reported below, with the node's name
            errors.append(f"{member.name}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=run, args=(m,), name=m.name) for m in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def roll_all(members: list[Member], want: str, profile: str, attempts: int = 10**6) -> None:
    turns = Turns()
    each(members, lambda m: roll(m, want, profile, attempts, turns))


def staged(member: Member, version: str) -> None:
    """`update apply` stages `version` on the member."""
    wait_blessed_entry(member.node, f"{member.profile}_{running(member.node)[0]}.efi")
    applied = update_json(member.node, "apply")
    assert (applied["result"], applied["version"]) == ("staged", version), applied


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    with etcd_cluster() as cluster:
        yield cluster


@pytest.mark.destructive
def test_a_rolling_update_takes_one_node_at_a_time_and_stops_at_a_failed_canary(
    image: BuiltImage, key: SshKey, tools_tree: ToolsTree, update_repo: UpdateRepo,
    etcd: EtcdCluster, tmp_path: Path,
) -> None:  # fmt: skip
    v1, profile = image.manifest["version"], image.manifest["profile"]
    served = tmp_path / "served"
    served.mkdir()
    repo = update_repo
    v2 = derive_version(image, tools_tree, tmp_path / "v2", V2, upgrade_from=v1)
    repo.add(v2.output, channel=CHANNEL, to=served)

    store = Store(etcd.urls, timeout=5.0, prefix=f"/hostbuild-vmtest/{uuid.uuid4().hex}/")
    coordinator = Coordinator(store, parse_policy(POLICY, "the test's policy"), refresh=0.5)
    server = FleetHttpServer(("127.0.0.1", 0), coordinator, admin_token="vm-test")
    start_server(server)
    lock = GuestForward(LOCK_ADDR, 80, int(server.server_address[1]))
    with ExitStack() as stack:
        members = []
        for name, group in GROUPS.items():
            node = stack.enter_context(node_on(
                image, tools_tree, tmp_path / name, tmp_path / f"{name}.qcow2", key, served,
                CHANNEL, updates={"fleetLock": {"url": f"http://{LOCK_ADDR}/", "group": group}},
                forwards=(lock,), cpus=1,
            ))  # fmt: skip
            members.append(Member(name, node, profile))
        each(members, lambda m: staged(m, V2))

        # v3 is made on the host while the nodes roll to v2 (a reboot keeps only one core busy)
        with ThreadPoolExecutor(1) as pool:
            making_v3 = pool.submit(
                derive_version, image, tools_tree, tmp_path / "v3", V3, upgrade_from=V2,
                extra_files={"/etc/hostbuild/health.d/50-fail": (FAILING_PROBE, 0o755)},
                extra_cmdline=("hostbuild.health_deadline=10",),
            )  # fmt: skip
            roll_all(members, V2, profile)
            v3 = making_v3.result()
        down = {m.name: downtimes(m) for m in members}
        spans = sorted((span, name) for name, spans in down.items() for span in spans)
        assert [name for _, name in spans][:1] == ["node1"], spans  # the canary first
        for (a, name_a), (b, name_b) in zip(spans, spans[1:], strict=False):
            assert a[1] <= b[0], f"{name_a} and {name_b} were down at once: {spans}"
        for group in ("canary", "workers"):
            assert max_holders_in_etcd(store, group)[0] <= 1
        for m in members:
            assert running(m.node)[0] == V2
            assert f"{profile}_{V2}.efi" in entries(m.node)
        refused = [a for m in members[1:] for a in m.answers if not a["rebooting"]]
        assert any("canary" in a["reason"] for a in refused), refused  # the workers waited

        # v3 fails its health gate: the canary comes back on v2 by itself within its tries,
        # records v3 as failed and never takes it again, and its report pauses the rollout
        repo.add(v3.output, channel=CHANNEL, to=served)
        canary, workers = members[0], members[1:]
        staged(canary, V3)
        boots = {m.name: len(m.boots()) for m in workers}
        answer = json.loads(canary.node.sh("hostbuild-node update reboot --json") or "{}")
        assert answer.get("rebooting", True), answer  # the canary has its slot
        # the workers stage v3 while the canary tries it
        each(workers, lambda m: staged(m, V3))
        wait_until(lambda: canary.node.vm.serial_text().count("hostbuild-health: UNHEALTHY") >= 3,
                   3 * BOOT_TIMEOUT, "three failed tries of v3")  # fmt: skip
        time.sleep(15)
        canary.node.vm.wait_for_ssh(BOOT_TIMEOUT)
        settle(canary.node)
        assert running(canary.node)[0] == V2  # back by itself
        # records v3 as failed and tells the lock: v3 is not taken again
        again = json.loads(canary.node.host.run("hostbuild-node update check --json").stdout)
        assert again.get("chosen") is None, again
        report = json.loads(canary.node.host.run("hostbuild-node update status --json").stdout)
        assert V3 in report["failed"], report
        status = fleet_status(coordinator)["groups"]
        assert status["canary"]["paused"], status
        roll_all(workers, V3, profile, attempts=3)  # refused, three times each
        for m in workers:
            assert running(m.node)[0] == V2
            assert len(m.boots()) == boots[m.name], f"{m.name} rebooted"
            assert all(not a["rebooting"] for a in m.answers[-3:]), m.answers[-3:]
            assert "paused" in m.answers[-1]["reason"], m.answers[-1]
    server.shutdown()
    server.server_close()
    coordinator.close()
