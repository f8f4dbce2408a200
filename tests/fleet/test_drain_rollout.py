"""The drain in the rollout, end to end: the real Coordinator with the real Kubernetes Drainer
(`load_drainer` on a kubeconfig) against the TEST STAND-IN API server (tests/standin/kubeapi.py)
and the three-member etcd, the nodes being the nodes' own FleetLock client
(builder/node/fleetlock.py) sending the app-specific ids of the stand-in Nodes' machineIDs.

Real time here (the drain's unit tests in test_drain.py use a fake clock): short drain timeouts
and a pod grace period, so a 200 given before the drain finished would show.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from builder.fleet.drain import DrainTimeouts, load_drainer
from builder.fleet.kube import CORDON_ANNOTATION
from builder.fleet.policy import single_group
from builder.node.fleetlock import Answer, Client, Params, app_specific_id
from tests.fleet.conftest import Fleet, Served, admin
from tests.fleetserve import fleet_serve
from tests.standin.kubeapi import StandinServer, serve
from tests.standin.kubecluster import Cluster

pytestmark = pytest.mark.fleet

GROUP = "workers"
NODES = ("node-a", "node-b", "node-c")


@dataclass
class Kube:
    """The stand-in cluster, its API server and a kubeconfig for it; machine ids by node."""

    cluster: Cluster
    server: StandinServer
    kubeconfig: Path
    machines: dict[str, str]

    def params(self, node: str, named: bool = True, **extra: Any) -> Params:
        """What the node's FleetLock client sends; `named`: with node_name, as hostbuild nodes
        send it (Zincati sends none)."""
        node_id = app_specific_id(self.machines[node])
        return Params(node_id, GROUP, node_name=node if named else None, **extra)

    def cordoned(self, node: str) -> bool:
        return bool(self.cluster.nodes[node]["spec"].get("unschedulable"))

    def untouched(self, node: str) -> bool:
        """Schedulable, with no cordon annotation left behind."""
        n = self.cluster.nodes[node]
        return n["spec"] == {} and CORDON_ANNOTATION not in n["metadata"].get("annotations", {})

    def pods_on(self, node: str) -> list[str]:
        with self.cluster.lock:
            return sorted(
                f"{ns}/{name}"
                for (ns, name), pod in self.cluster.pods.items()
                if pod["spec"]["nodeName"] == node
            )


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[Kube]:
    cluster = Cluster()
    machines = {name: uuid.uuid4().hex for name in NODES}
    for name, machine_id in machines.items():
        cluster.add_node(name, machine_id)
    with serve(cluster) as server:
        yield Kube(cluster, server, server.write_kubeconfig(tmp_path / "kubeconfig"), machines)


def drained(fleet: Fleet, kube: Kube, total: float = 20.0) -> Served:
    """A coordinator (one slot) draining through the real Drainer from the kubeconfig."""
    timeouts = DrainTimeouts(total=total, per_pod=total, poll=0.05, backoff=0.05, backoff_max=0.2)
    drainer = load_drainer(kube.kubeconfig, timeouts=timeouts, request_timeout=5)
    return fleet.serve(single_group(GROUP, 1), drainer)


def client(url: str) -> Client:
    return Client(url, connect_timeout=5, response_timeout=60)


def status(s: Served) -> dict[str, Any]:
    code, body = admin(s.port, "status")
    assert code == 200 and body is not None
    group: dict[str, Any] = body["groups"][GROUP]
    return group


def wait_for(what: str, done: Callable[[], bool], seconds: float = 20) -> None:
    """A guard, not a measure: fail with `what` if `done()` never holds."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def test_a_grant_cordons_and_evicts_before_the_200_and_a_healthy_node_is_uncordoned(
    fleet: Fleet, kube: Kube
) -> None:
    kube.cluster.grace = 0.5  # evicted pods stay Terminating a while: the drain waits for them
    kube.cluster.add_pod("shop", "web-1", "node-a", labels={"app": "web"})
    kube.cluster.add_pod("shop", "bare", "node-a", owner=None)
    kube.cluster.add_pod("kube-system", "proxy-a", "node-a", owner="DaemonSet")
    kube.cluster.add_pod("shop", "web-2", "node-b", labels={"app": "web"})
    s = drained(fleet, kube)
    nodes = client(s.url)

    answer = nodes.pre_reboot(kube.params("node-a", version="1"))

    # what the cluster is at the moment the 200 came back
    pods_a, cordoned_a = kube.pods_on("node-a"), kube.cordoned("node-a")
    assert answer == Answer(True, 200)
    assert pods_a == ["kube-system/proxy-a"], "the 200 came before the node was empty"
    assert cordoned_a
    assert sorted(kube.cluster.evictions()) == ["shop/bare", "shop/web-1"]
    assert kube.pods_on("node-b") == ["shop/web-2"] and kube.untouched("node-b")
    assert list(status(s)["holders"]) == [kube.params("node-a").id]

    healthy = kube.params("node-a", version="2", health="healthy")
    assert nodes.steady_state(healthy).ok
    assert kube.untouched("node-a")
    assert status(s)["holders"] == {}

    # a Zincati node sends no node_name: its Node is found by the app-specific id alone
    assert nodes.pre_reboot(kube.params("node-b", named=False)).ok
    assert kube.cordoned("node-b") and kube.pods_on("node-b") == []
    assert nodes.steady_state(kube.params("node-b", named=False)).ok
    assert kube.untouched("node-b")


def test_a_budget_that_blocks_holds_the_grant_until_another_replica_is_ready(
    fleet: Fleet, kube: Kube
) -> None:
    kube.cluster.add_pod("shop", "web-a", "node-a", labels={"app": "web"})
    kube.cluster.add_pod("shop", "web-b", "node-b", labels={"app": "web"}, ready=False)
    kube.cluster.add_budget("shop", "web", {"app": "web"}, min_available=1)
    s = drained(fleet, kube)
    nodes = client(s.url)
    answers: list[Answer] = []
    asking = threading.Thread(
        target=lambda: answers.append(nodes.pre_reboot(kube.params("node-a")))
    )

    asking.start()
    try:
        wait_for("two refused evictions", lambda: len(kube.cluster.evictions()) >= 2)
        # blocked: no answer yet, the node cordoned with its pod, the slot its
        assert answers == [] and kube.cordoned("node-a")
        assert kube.pods_on("node-a") == ["shop/web-a"]
        assert list(status(s)["holders"]) == [kube.params("node-a").id]
        other = nodes.pre_reboot(kube.params("node-c"))
        assert not other.ok and other.status == 409, other.describe()
        assert kube.untouched("node-c")

        kube.cluster.set_ready("shop", "web-b")  # the budget allows one eviction now
    finally:
        asking.join(60)

    assert answers == [Answer(True, 200)]
    assert kube.pods_on("node-a") == [] and kube.cordoned("node-a")
    assert set(kube.cluster.evictions()) == {"shop/web-a"}
    assert status(s)["failures"] == []


def test_a_drain_that_times_out_refuses_frees_the_slot_uncordons_and_says_why(
    fleet: Fleet, kube: Kube
) -> None:
    kube.cluster.add_pod("shop", "web-a", "node-a", labels={"app": "web"})
    kube.cluster.add_budget("shop", "web", {"app": "web"}, min_available=1)  # never gives way
    kube.cluster.add_pod("shop", "cart", "node-b")
    s = drained(fleet, kube, total=1.0)
    nodes = client(s.url)
    node_a = kube.params("node-a")

    answer = nodes.pre_reboot(node_a)

    assert (answer.ok, answer.status, answer.kind) == (False, 500, "drain_failed")
    assert answer.detail.startswith(f"node '{node_a.id}' was not drained, so it may not reboot: ")
    # the client keeps the first 200 characters of the reason
    assert (
        "the drain of node 'node-a' did not finish within 1 s: pod shop/web-a blocked: Cannot"
        " evict pod" in answer.detail
    )
    assert kube.untouched("node-a") and kube.pods_on("node-a") == ["shop/web-a"]
    group = status(s)
    assert group["holders"] == {} and group["paused"] is None
    (failure,) = group["failures"]
    assert failure["id"] == node_a.id
    assert failure["reason"].startswith(
        f"drain of {node_a.id!r} failed: the drain of node 'node-a' did not finish within 1 s:"
        " pod shop/web-a blocked: "
    )
    assert "The disruption budget web needs 1 healthy pods and has 1" in failure["reason"]
    assert failure["reason"].endswith("; node 'node-a' uncordoned")

    # the slot is free: another node gets it (and is drained)
    assert nodes.pre_reboot(kube.params("node-b")) == Answer(True, 200)
    assert kube.cordoned("node-b") and kube.pods_on("node-b") == []
    assert kube.untouched("node-a")


def test_fleet_serve_drain_as_a_process(fleet: Fleet, kube: Kube, tmp_path: Path) -> None:
    kube.cluster.add_pod("shop", "web-1", "node-a")
    kube.cluster.add_pod("kube-system", "proxy-a", "node-a", owner="DaemonSet")
    options = [
        "--group", GROUP, "--drain", "--kubeconfig", os.fspath(kube.kubeconfig),
        "--kube-context", "standin", "--drain-timeout", "20",
    ]  # fmt: skip
    log = tmp_path / "serve.log"
    with fleet_serve(fleet.etcd.urls, fleet.prefix, options, log) as (port, _):
        nodes = client(f"http://127.0.0.1:{port}")
        assert nodes.pre_reboot(kube.params("node-a")) == Answer(True, 200), log.read_text()
        assert kube.cordoned("node-a")
        assert kube.pods_on("node-a") == ["kube-system/proxy-a"]
        assert kube.cluster.evictions() == ["shop/web-1"]
        assert nodes.steady_state(kube.params("node-a", version="2", health="healthy")).ok
        assert kube.untouched("node-a")
