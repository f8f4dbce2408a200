"""Concurrency across threads and coordinator replicas, canary order, pauses, the drain hook."""

from __future__ import annotations

import random
import threading
import time

import pytest

from builder.fleet.hooks import DrainError, NodeRef
from builder.fleet.policy import parse_policy, single_group
from builder.node.fleetlock import Client
from builder.node.fleetlock import Params as NodeParams
from tests.etcdcluster import max_holders_in_etcd
from tests.fleet.conftest import Fleet, admin, fleetlock

pytestmark = pytest.mark.fleet


def test_threads_and_replicas_never_exceed_the_slots(fleet: Fleet) -> None:
    slots, nodes = 3, 24
    policy = single_group("default", slots)
    replicas = [fleet.serve(policy, wait=w) for w in (0.0, 2.0, 2.0)]
    store = fleet.store()
    lock = threading.Lock()
    down: set[str] = set()
    seen = {"clients": 0, "etcd": 0}
    done: list[str] = []
    stop = threading.Event()

    def watch_etcd() -> None:
        while not stop.is_set():
            snap = store.snapshot("default")
            with lock:
                seen["etcd"] = max(seen["etcd"], len(snap.state.holders))

    def node(i: int) -> None:
        rng = random.Random(i)
        node_id = f"node-{i}"
        while True:
            port = rng.choice(replicas).port
            status, _ = fleetlock(port, "pre-reboot", node_id)
            if status == 200:
                break
            assert status == 409
            time.sleep(rng.uniform(0.0, 0.05))
        with lock:
            down.add(node_id)
            seen["clients"] = max(seen["clients"], len(down))
        time.sleep(rng.uniform(0.0, 0.05))  # "rebooting"
        with lock:
            down.discard(node_id)  # back up: it asks to release
        assert fleetlock(rng.choice(replicas).port, "steady-state", node_id)[0] == 200
        with lock:
            done.append(node_id)

    watcher = threading.Thread(target=watch_etcd)
    watcher.start()
    threads = [threading.Thread(target=node, args=(i,)) for i in range(nodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    watcher.join()
    assert sorted(done) == sorted(f"node-{i}" for i in range(nodes))
    assert 1 <= seen["clients"] <= slots
    assert 1 <= seen["etcd"] <= slots
    most, versions = max_holders_in_etcd(store, "default")  # every version of the group key
    assert 1 <= most <= slots and versions >= nodes
    final = store.snapshot("default")
    assert final.state.holders == {} and final.live == frozenset()


CANARY = {
    "version": "2.0",
    "groups": {
        "canary": {"slots": 1},
        "workers": {"slots": 2, "after": ["canary"]},
    },
}


def test_the_canary_goes_first_and_must_be_healthy_on_the_new_version(fleet: Fleet) -> None:
    s = fleet.serve(parse_policy(CANARY, "policy.yaml"))
    status, body = fleetlock(s.port, "pre-reboot", "w1", "workers")
    assert status == 409 and body and body["kind"] == "waiting_for_group"
    assert "0 node(s) healthy on 2.0" in body["value"]
    assert fleetlock(s.port, "pre-reboot", "c1", "canary")[0] == 200
    time.sleep(0.3)  # the gate reuses its view of the canary group for `refresh` (0.2 s)
    status, body = fleetlock(s.port, "pre-reboot", "w1", "workers")
    assert status == 409 and body and "still rebooting c1" in body["value"]
    # healthy, but still on the old version: not enough
    assert (
        fleetlock(s.port, "steady-state", "c1", "canary", version="1.0", health="healthy")[0] == 200
    )
    time.sleep(0.3)
    status, body = fleetlock(s.port, "pre-reboot", "w1", "workers")
    assert status == 409 and body and "0 node(s) healthy on 2.0" in body["value"]
    assert (
        fleetlock(s.port, "steady-state", "c1", "canary", version="2.0", health="healthy")[0] == 200
    )
    time.sleep(0.3)
    assert fleetlock(s.port, "pre-reboot", "w1", "workers") == (200, None)
    assert fleetlock(s.port, "pre-reboot", "w2", "workers") == (200, None)


def test_a_failed_health_gate_pauses_the_group_and_holds_back_the_next(fleet: Fleet) -> None:
    s = fleet.serve(parse_policy(CANARY, "policy.yaml"))
    assert fleetlock(s.port, "pre-reboot", "c1", "canary")[0] == 200
    report = {"version": "1.0", "health": "healthy", "failed_version": "2.0"}
    assert fleetlock(s.port, "steady-state", "c1", "canary", **report) == (200, None)
    _, body = admin(s.port, "status")
    assert body
    canary = body["groups"]["canary"]
    assert canary["holders"] == {}
    assert canary["paused"]["reason"] == "node 'c1' failed its health gate on 2.0"
    status, answer = fleetlock(s.port, "pre-reboot", "c2", "canary")
    assert status == 423 and answer and answer["kind"] == "group_paused"
    status, answer = fleetlock(s.port, "pre-reboot", "w1", "workers")
    assert status == 409 and answer and "group 'canary' is paused" in answer["value"]


class FakeDrainer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def drain(self, node: NodeRef) -> None:
        self.calls.append(("drain", node.id))
        if node.id.startswith("bad"):
            raise DrainError("pod web-0 is blocked by a PodDisruptionBudget")

    def uncordon(self, node: NodeRef) -> None:
        self.calls.append(("uncordon", node.id))


def test_a_failed_drain_refuses_the_reboot_and_frees_the_slot(fleet: Fleet) -> None:
    drainer = FakeDrainer()
    s = fleet.serve(single_group("default", 1), drainer)
    status, body = fleetlock(s.port, "pre-reboot", "bad-1", node_name="bad-1")
    assert status == 500 and body and body["kind"] == "drain_failed"
    assert "PodDisruptionBudget" in body["value"]
    assert drainer.calls == [("drain", "bad-1"), ("uncordon", "bad-1")]
    _, st = admin(s.port, "status")
    assert st and st["groups"]["default"]["holders"] == {}
    assert "drain of 'bad-1' failed" in st["groups"]["default"]["failures"][-1]["reason"]
    assert st["groups"]["default"]["paused"] is None
    assert fleetlock(s.port, "pre-reboot", "good-1") == (200, None)
    assert fleetlock(s.port, "pre-reboot", "good-1") == (200, None)  # drained once only
    assert fleetlock(s.port, "steady-state", "good-1", version="2.0", health="healthy")[0] == 200
    assert drainer.calls[2:] == [("drain", "good-1"), ("uncordon", "good-1")]


class SlowDrainer(FakeDrainer):
    def drain(self, node: NodeRef) -> None:
        super().drain(node)
        time.sleep(2.0)


def test_the_reboot_deadline_starts_once_the_node_is_drained(fleet: Fleet) -> None:
    # drain 2 s + reboot 2 s: past a 3 s deadline counted from the grant, not from the drain
    s = fleet.serve(single_group("default", 1, deadline=3), SlowDrainer())
    assert fleetlock(s.port, "pre-reboot", "n1") == (200, None)
    time.sleep(2.0)
    assert fleetlock(s.port, "steady-state", "n1", version="2.0", health="healthy")[0] == 200
    _, body = admin(s.port, "status")
    assert body and body["groups"]["default"]["paused"] is None
    assert body["groups"]["default"]["failures"] == []


def test_hostbuild_nodes_client_and_a_canary_without_a_policy_version(fleet: Fleet) -> None:
    """builder/node/fleetlock.py (what the nodes run) against the coordinator; without
    `version` in the policy the canary must be healthy on a version the asking node does not
    run (nodes send the version they run)."""
    policy = parse_policy(
        {"groups": {"canary": {}, "workers": {"slots": 2, "after": ["canary"]}}}, "p"
    )
    s = fleet.serve(policy)
    client = Client(f"{s.url}/")
    worker = NodeParams("a" * 32, "workers", "1.0", "healthy", None, "Worker-1")
    canary = NodeParams("c" * 32, "canary", "1.0", "healthy", None, "canary-1")
    answer = client.pre_reboot(worker)
    assert (answer.ok, answer.status, answer.kind) == (False, 409, "waiting_for_group")
    assert "0 node(s) healthy on a version other than 1.0" in answer.detail
    assert client.pre_reboot(canary).ok
    back = NodeParams(canary.id, "canary", "2.0", "healthy", None, "canary-1")
    assert client.steady_state(back).ok
    time.sleep(0.3)
    assert client.pre_reboot(worker).ok
    _, body = admin(s.port, "status")
    assert body and body["groups"]["canary"]["versions"] == {"2.0": 1}
    assert body["groups"]["workers"]["holders"][worker.id]["node_name"] == "Worker-1"
