"""The drain before reboot, against the TEST STAND-IN API server (tests/standin/kubeapi.py).

The drain runs the official client's real code path (kubeconfig, HTTP, the client's models);
only the server is a stand-in. Time is a fake clock whose sleep can change the cluster, so a
budget that gives way "during" the drain or a drain that runs out of time is deterministic.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from builder.fleet.drain import Drainer, DrainTimeouts, load_drainer
from builder.fleet.hooks import DrainError, NodeRef
from builder.fleet.kube import CORDON_ANNOTATION, Eviction, KubeApi, KubeError, load_api
from builder.node.fleetlock import app_specific_id
from tests.standin.kubeapi import StandinServer, serve
from tests.standin.kubecluster import Cluster

pytestmark = pytest.mark.fleet

MACHINES = {name: uuid.uuid4().hex for name in ("node-a", "node-b", "node-c")}


def ref(node: str, node_name: str | None = None) -> NodeRef:
    return NodeRef(id=app_specific_id(MACHINES[node]), group="workers", node_name=node_name)


class FakeClock:
    """Monotonic time that only `sleep` moves; `at_sleep[n]` runs at the n-th sleep (from 1)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps = 0
        self.at_sleep: dict[int, Callable[[], None]] = {}

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps += 1
        self.now += seconds
        hook = self.at_sleep.get(self.sleeps)
        if hook is not None:
            hook()
        assert self.sleeps < 10_000, "the drain loops without end"


@pytest.fixture
def cluster() -> Cluster:
    cluster = Cluster()
    for name, machine_id in MACHINES.items():
        cluster.add_node(name, machine_id)
    return cluster


@pytest.fixture
def server(cluster: Cluster) -> Iterator[StandinServer]:
    with serve(cluster) as server:
        yield server


@pytest.fixture
def api(server: StandinServer, tmp_path: Path) -> KubeApi:
    return load_api(server.write_kubeconfig(tmp_path / "kubeconfig"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def drainer(api: KubeApi, clock: FakeClock, total: float = 600, per_pod: float = 120) -> Drainer:
    timeouts = DrainTimeouts(total=total, per_pod=per_pod, poll=1, backoff=1, backoff_max=8)
    return Drainer(api, timeouts, clock=clock, sleep=clock.sleep)


def cordoned(cluster: Cluster, node: str) -> bool:
    return bool(cluster.nodes[node]["spec"].get("unschedulable"))


def pods_on(cluster: Cluster, node: str) -> list[str]:
    return sorted(
        f"{ns}/{name}"
        for (ns, name), pod in cluster.pods.items()
        if pod["spec"]["nodeName"] == node
    )


def test_node_found_by_app_specific_id(api: KubeApi, clock: FakeClock) -> None:
    for node in MACHINES:
        assert drainer(api, clock).find_node(ref(node)).name == node


def test_unknown_id_is_refused(api: KubeApi, clock: FakeClock, cluster: Cluster) -> None:
    stranger = NodeRef(id=app_specific_id(uuid.uuid4().hex), group="workers", node_name=None)
    with pytest.raises(DrainError, match=r"0 Kubernetes nodes have a machineID .*exactly one"):
        drainer(api, clock).drain(stranger)
    assert not any(cordoned(cluster, node) for node in MACHINES)


def test_drain_evicts_normal_pods_and_skips_daemonset_mirror_and_finished_pods(
    api: KubeApi, clock: FakeClock, cluster: Cluster
) -> None:
    cluster.add_pod("default", "web-1", "node-a", labels={"app": "web"})
    cluster.add_pod("default", "bare", "node-a", owner=None)
    cluster.add_pod("kube-system", "proxy-a", "node-a", owner="DaemonSet")
    cluster.add_pod("kube-system", "etcd-node-a", "node-a", mirror=True)
    cluster.add_pod("batch", "job-done", "node-a", owner="Job", phase="Succeeded")
    cluster.add_pod("default", "web-2", "node-b", labels={"app": "web"})

    drainer(api, clock).drain(ref("node-a", "node-a"))

    assert sorted(cluster.evictions()) == ["default/bare", "default/web-1"]
    assert pods_on(cluster, "node-a") == [
        "batch/job-done",
        "kube-system/etcd-node-a",
        "kube-system/proxy-a",
    ]
    assert pods_on(cluster, "node-b") == ["default/web-2"]
    assert cordoned(cluster, "node-a")
    assert cluster.nodes["node-a"]["metadata"]["annotations"] == {
        CORDON_ANNOTATION: "hostbuild-fleet"
    }
    assert not cordoned(cluster, "node-b")


def test_uncordon_after_the_drain(api: KubeApi, clock: FakeClock, cluster: Cluster) -> None:
    cluster.add_pod("default", "web-1", "node-a")
    drain = drainer(api, clock)
    drain.drain(ref("node-a"))
    assert cordoned(cluster, "node-a")

    drain.uncordon(ref("node-a"))

    assert cluster.nodes["node-a"]["spec"] == {}
    assert cluster.nodes["node-a"]["metadata"]["annotations"] == {}


@pytest.mark.parametrize("change", ["replica-ready", "budget-lowered"])
def test_pdb_blocks_then_allows(
    api: KubeApi, clock: FakeClock, cluster: Cluster, change: str
) -> None:
    cluster.add_pod("shop", "web-a", "node-a", labels={"app": "web"})
    cluster.add_pod("shop", "web-b", "node-b", labels={"app": "web"}, ready=False)
    cluster.add_budget("shop", "web", {"app": "web"}, min_available=1)
    if change == "replica-ready":
        clock.at_sleep[3] = lambda: cluster.set_ready("shop", "web-b")
    else:
        cluster.set_ready("shop", "web-b")
        cluster.budgets[0].min_available = 2
        clock.at_sleep[3] = lambda: setattr(cluster.budgets[0], "min_available", 1)

    drainer(api, clock).drain(ref("node-a"))

    evictions = cluster.evictions()
    assert len(evictions) >= 2, "the budget refused no eviction"
    assert set(evictions) == {"shop/web-a"}
    assert pods_on(cluster, "node-a") == []
    assert cordoned(cluster, "node-a")


def test_drain_refused_by_pdb_times_out_names_the_pod_and_uncordons(
    api: KubeApi, clock: FakeClock, cluster: Cluster
) -> None:
    cluster.add_pod("shop", "web-a", "node-a", labels={"app": "web"})
    cluster.add_pod("shop", "cart", "node-a")
    cluster.add_budget("shop", "web", {"app": "web"}, min_available=1)

    with pytest.raises(DrainError) as caught:
        drainer(api, clock, per_pod=60).drain(ref("node-a"))

    assert str(caught.value) == (
        "pod shop/web-a on node 'node-a' could not be evicted within 60 s: Cannot evict pod as it"
        " would violate the pod's disruption budget.: The disruption budget web needs 1 healthy"
        " pods and has 1 currently; node 'node-a' uncordoned"
    )
    assert len(cluster.evictions()) > 2, "the refused eviction was not retried"
    assert pods_on(cluster, "node-a") == ["shop/web-a"]
    assert cluster.nodes["node-a"]["spec"] == {}
    assert cluster.nodes["node-a"]["metadata"]["annotations"] == {}


def test_drain_past_its_total_timeout_names_the_pods_and_uncordons(
    api: KubeApi, clock: FakeClock, cluster: Cluster
) -> None:
    cluster.grace = 3600  # evicted pods stay Terminating far longer than the drain may take
    cluster.add_pod("shop", "slow", "node-a")
    cluster.add_pod("shop", "web-a", "node-a", labels={"app": "web"})
    cluster.add_budget("shop", "web", {"app": "web"}, min_available=1)

    with pytest.raises(DrainError) as caught:
        drainer(api, clock, total=30, per_pod=300).drain(ref("node-a"))

    assert str(caught.value).startswith("the drain of node 'node-a' did not finish within 30 s: ")
    assert "pod shop/slow is still terminating" in str(caught.value)
    assert "pod shop/web-a blocked: Cannot evict pod" in str(caught.value)
    assert str(caught.value).endswith("; node 'node-a' uncordoned")
    assert not cordoned(cluster, "node-a")


def test_drain_waits_until_evicted_pods_are_gone(
    api: KubeApi, clock: FakeClock, cluster: Cluster
) -> None:
    cluster.grace = 3600
    cluster.add_pod("shop", "slow", "node-a")
    finish = cluster.pods[("shop", "slow")]["metadata"]["uid"]
    clock.at_sleep[4] = lambda: cluster._remove(("shop", "slow"), finish)

    drainer(api, clock).drain(ref("node-a"))

    assert clock.sleeps == 4, "the drain ended before the pod was gone"
    assert pods_on(cluster, "node-a") == []


def test_a_pod_replaced_under_its_name_counts_as_gone(
    api: KubeApi, clock: FakeClock, cluster: Cluster
) -> None:
    cluster.grace = 3600
    cluster.add_pod("db", "db-0", "node-a")
    cluster.add_pod("shop", "web-a", "node-a", labels={"app": "web"})
    budget = cluster.add_budget("shop", "web", {"app": "web"}, min_available=1)

    def replace_both() -> None:  # a StatefulSet recreates db-0 and web-a elsewhere
        cluster.recreate("db", "db-0", "node-b")
        cluster.recreate("shop", "web-a", "node-c")
        budget.min_available = 0

    clock.at_sleep[1] = replace_both

    drainer(api, clock).drain(ref("node-a"))

    # the retried eviction carried web-a's old uid: 409, never an eviction of the new pod
    assert pods_on(cluster, "node-b") == ["db/db-0"]
    assert pods_on(cluster, "node-c") == ["shop/web-a"]


def test_node_name_of_another_node_is_refused(
    api: KubeApi, clock: FakeClock, cluster: Cluster
) -> None:
    cluster.add_pod("default", "web-b", "node-b")
    with pytest.raises(DrainError) as caught:
        drainer(api, clock).drain(ref("node-a", node_name="node-b"))
    other = app_specific_id(MACHINES["node-b"])
    assert str(caught.value) == (
        f"node {ref('node-a').id} may not drain Kubernetes node 'node-b': its machineID gives"
        f" FleetLock id {other}, so it is another node"
    )
    assert not cordoned(cluster, "node-b")
    assert cluster.evictions() == []
    with pytest.raises(DrainError, match="may not drain"):
        drainer(api, clock).uncordon(ref("node-a", node_name="node-b"))


def test_node_name_that_does_not_exist_is_refused(api: KubeApi, clock: FakeClock) -> None:
    with pytest.raises(DrainError, match=r"names Kubernetes node 'node-x', which does not exist"):
        drainer(api, clock).drain(ref("node-a", node_name="node-x"))


def test_a_cordon_made_by_someone_else_is_kept(
    api: KubeApi, clock: FakeClock, cluster: Cluster
) -> None:
    cluster.nodes["node-a"]["spec"]["unschedulable"] = True  # an administrator's cordon
    cluster.add_pod("shop", "web-a", "node-a", labels={"app": "web"})
    cluster.add_budget("shop", "web", {"app": "web"}, min_available=1)
    drain = drainer(api, clock, per_pod=10)

    with pytest.raises(DrainError, match="node 'node-a' was left as it was$"):
        drain.drain(ref("node-a"))
    assert cordoned(cluster, "node-a")
    drain.uncordon(ref("node-a"))
    assert cordoned(cluster, "node-a")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_api_server_unreachable_fails_closed(
    server: StandinServer, tmp_path: Path, clock: FakeClock
) -> None:
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    kubeconfig.write_text(
        kubeconfig.read_text().replace(server.url, f"http://127.0.0.1:{free_port()}")
    )
    with pytest.raises(DrainError) as caught:
        drainer(load_api(kubeconfig, timeout=2), clock).drain(ref("node-a"))
    assert str(caught.value).startswith(
        f"cannot find the Kubernetes node of {ref('node-a').id}: cannot list nodes: the API"
        " server could not be reached: "
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/pods"),
        ("POST", "/api/v1/namespaces/shop/pods/web-a/eviction"),
        ("GET", "/api/v1/namespaces/shop/pods/web-a"),
    ],
)
def test_a_failed_api_call_during_the_drain_uncordons(
    api: KubeApi, clock: FakeClock, cluster: Cluster, method: str, path: str
) -> None:
    cluster.grace = 3600
    cluster.add_pod("shop", "web-a", "node-a")
    cluster.faults[(method, path)] = 500
    with pytest.raises(
        DrainError, match=r"HTTP 500: stand-in fault injected: 500; node 'node-a' uncordoned$"
    ):
        drainer(api, clock).drain(ref("node-a"))
    assert not cordoned(cluster, "node-a")


def test_the_uncordon_failing_too_is_reported(
    api: KubeApi, clock: FakeClock, cluster: Cluster
) -> None:
    cluster.grace = 3600
    cluster.add_pod("shop", "web-a", "node-a")
    faults = {
        ("GET", "/api/v1/namespaces/shop/pods/web-a"): 500,
        ("PATCH", "/api/v1/nodes/node-a"): 503,
    }
    clock.at_sleep[1] = lambda: cluster.faults.update(faults)

    with pytest.raises(DrainError) as caught:
        drainer(api, clock).drain(ref("node-a"))

    assert str(caught.value).startswith("cannot read pod shop/web-a: HTTP 500: ")
    assert str(caught.value).endswith(
        "; and node 'node-a' could not be uncordoned: cannot uncordon node 'node-a': HTTP 503:"
        " stand-in fault injected: 503"
    )
    assert cordoned(cluster, "node-a")


def test_an_unexpected_error_uncordons_too(
    api: KubeApi, clock: FakeClock, cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(node: str) -> None:
        raise RuntimeError(f"a bug listing the pods of {node}")

    monkeypatch.setattr(api, "list_pods", broken)
    with pytest.raises(DrainError) as caught:
        drainer(api, clock).drain(ref("node-a"))
    assert str(caught.value) == (
        "unexpected error: RuntimeError('a bug listing the pods of node-a');"
        " node 'node-a' uncordoned"
    )
    assert not cordoned(cluster, "node-a")


def test_wrong_credentials_are_an_api_error(server: StandinServer, tmp_path: Path) -> None:
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig", token="not-the-token")
    with pytest.raises(DrainError, match=r"cannot list nodes: HTTP 401: Unauthorized$"):
        load_drainer(kubeconfig).drain(ref("node-a"))


def test_a_client_certificate_is_credentials_too(
    server: StandinServer, cluster: Cluster, tmp_path: Path
) -> None:
    cluster.add_pod("shop", "web-a", "node-a")
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig", token=None, client_cert=True)
    load_drainer(kubeconfig).drain(ref("node-a"))
    assert cluster.evictions() == ["shop/web-a"]


def test_a_server_certificate_from_another_ca_is_refused(
    server: StandinServer, cluster: Cluster, tmp_path: Path
) -> None:
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    config = yaml.safe_load(kubeconfig.read_text())
    del config["clusters"][0]["cluster"]["certificate-authority-data"]  # the system's CAs only
    kubeconfig.write_text(yaml.safe_dump(config))
    with pytest.raises(DrainError, match=r"could not be reached: .*CERTIFICATE_VERIFY_FAILED"):
        load_drainer(kubeconfig, request_timeout=2).drain(ref("node-a"))
    assert not cordoned(cluster, "node-a")


def test_a_missing_kubeconfig_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(KubeError) as caught:
        load_api(tmp_path / "nowhere")
    assert str(caught.value).startswith(f"cannot load kubeconfig '{tmp_path / 'nowhere'}': ")
    assert caught.value.hint is not None and "--kubeconfig" in caught.value.hint


def test_the_stand_in_answers_as_an_api_server(api: KubeApi, cluster: Cluster) -> None:
    """The stand-in's own codes and Status bodies, through the client (the drain relies on them)."""
    pod = cluster.add_pod("shop", "web-a", "node-a")
    version = client.VersionApi(api.core.api_client).get_code()
    assert version.git_version.endswith("-hostbuild-test-standin")

    with pytest.raises(ApiException) as caught:
        api.core.patch_node("node-a", [{"op": "add"}], _content_type="application/json-patch+json")
    assert caught.value.status == 415
    assert json.loads(caught.value.body or "")["reason"] == "UnsupportedMediaType"

    listed = api.read_pod("shop", "web-a")
    assert listed is not None and listed.uid == pod["metadata"]["uid"]
    stale = replace(listed, uid=str(uuid.uuid4()))
    assert api.evict(stale)[0] is Eviction.GONE  # 409: the uid precondition failed
    assert ("shop", "web-a") in cluster.pods
    missing = replace(stale, name="nowhere")
    assert api.evict(missing) == (Eviction.GONE, 'pods "nowhere" not found')

    assert api.read_pod("shop", "nowhere") is None
    assert [p.name for p in api.list_pods("node-a")] == ["web-a"]
    assert api.list_pods("node-b") == []
