"""TEST STAND-IN (with `kubeapi`) for a Kubernetes API server's objects: NOT Kubernetes.

Nodes, pods and the stand-in's own simple PodDisruptionBudget model (minAvailable healthy pods
over a label selector), kept in memory, plus the selectors, merge patches and discovery answers
that `kubeapi` serves over HTTP. Tests change the objects between or during requests.
"""

from __future__ import annotations

import copy
import itertools
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]


class ApiStatus(Exception):
    """An error answer: a metav1.Status with its code, reason and message."""

    def __init__(self, code: int, reason: str, message: str, details: Json | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def body(self) -> Json:
        status: Json = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            status["details"] = self.details
        return status


@dataclass
class Budget:
    """A PodDisruptionBudget as the stand-in models it: minAvailable healthy pods of a selector."""

    namespace: str
    name: str
    selector: dict[str, str]
    min_available: int


@dataclass
class Cluster:
    """The stand-in's objects; tests change them between (or during) requests under `lock`."""

    nodes: dict[str, Json] = field(default_factory=dict)
    pods: dict[tuple[str, str], Json] = field(default_factory=dict)
    budgets: list[Budget] = field(default_factory=list)
    grace: float = 0.0  # seconds an evicted pod stays Terminating before it is gone
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) received
    faults: dict[tuple[str, str], int] = field(default_factory=dict)  # (method, path) -> code
    lock: threading.RLock = field(default_factory=threading.RLock)
    _timers: list[threading.Timer] = field(default_factory=list)
    _versions: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def add_node(self, name: str, machine_id: str, unschedulable: bool = False) -> Json:
        node: Json = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "uid": str(uuid.uuid4()), "labels": {}},
            "spec": {"unschedulable": True} if unschedulable else {},
            "status": {"nodeInfo": node_info(machine_id)},
        }
        with self.lock:
            self.nodes[name] = self._stamp(node)
        return node

    def add_pod(
        self,
        namespace: str,
        name: str,
        node: str,
        labels: dict[str, str] | None = None,
        owner: str | None = "ReplicaSet",
        mirror: bool = False,
        phase: str = "Running",
        ready: bool = True,
    ) -> Json:
        """A pod on `node`, owned by a controller of kind `owner` (None: a bare pod)."""
        metadata: Json = {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "labels": dict(labels or {}),
            "annotations": {"kubernetes.io/config.mirror": "standin"} if mirror else {},
        }
        if owner is not None:
            kind = "Node" if mirror else owner
            reference = {"apiVersion": "apps/v1", "kind": kind, "name": f"{name}-owner"}
            metadata["ownerReferences"] = [{**reference, "uid": "owner", "controller": True}]
        condition = {"type": "Ready", "status": "True" if ready else "False"}
        pod: Json = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "standin"}]},
            "status": {"phase": phase, "conditions": [condition]},
        }
        with self.lock:
            self.pods[(namespace, name)] = self._stamp(pod)
        return pod

    def add_budget(
        self, namespace: str, name: str, selector: dict[str, str], min_available: int
    ) -> Budget:
        budget = Budget(namespace, name, dict(selector), min_available)
        with self.lock:
            self.budgets.append(budget)
        return budget

    def set_ready(self, namespace: str, name: str, ready: bool = True) -> None:
        with self.lock:
            pod = self.pods[(namespace, name)]
            pod["status"]["conditions"] = [{"type": "Ready", "status": str(ready)}]
            self._stamp(pod)

    def recreate(self, namespace: str, name: str, node: str) -> Json:
        """What a StatefulSet does: a new pod (new uid) under the old name, maybe elsewhere."""
        with self.lock:
            old = self.pods.pop((namespace, name), None)
            labels = old["metadata"]["labels"] if old else {}
            return self.add_pod(namespace, name, node, labels=labels, owner="StatefulSet")

    def evictions(self) -> list[str]:
        """`namespace/name` of every eviction request received, in order."""
        with self.lock:
            return [
                "/".join(path.split("/")[4:7:2])
                for method, path in self.requests
                if method == "POST" and path.endswith("/eviction")
            ]

    def evict(self, namespace: str, name: str, eviction: Json) -> None:
        """policy/v1 Eviction: delete the pod unless its budget forbids it (429), as the real
        eviction subresource decides with the default unhealthyPodEvictionPolicy."""
        with self.lock:
            pod = self.pods.get((namespace, name))
            if pod is None:
                raise not_found("pods", name)
            if (eviction.get("metadata") or {}).get("name") != name:
                message = "name in URL does not match name in Eviction object"
                raise ApiStatus(400, "BadRequest", message)
            options = eviction.get("deleteOptions") or {}
            wanted = (options.get("preconditions") or {}).get("uid")
            if wanted and wanted != pod["metadata"]["uid"]:
                message = (
                    f'Operation cannot be fulfilled on pods "{name}": the UID in the precondition'
                    f" ({wanted}) does not match the UID in record ({pod['metadata']['uid']})."
                    " The object might have been deleted and then recreated"
                )
                raise ApiStatus(409, "Conflict", message)
            if not terminating(pod) and pod["status"].get("phase") not in TERMINAL:
                self._check_budget(pod)
            self._delete(pod)

    def _check_budget(self, pod: Json) -> None:
        namespace = pod["metadata"]["namespace"]
        budgets = [b for b in self.budgets if b.namespace == namespace and matches(pod, b.selector)]
        if len(budgets) > 1:
            message = (
                "This pod has more than one PodDisruptionBudget, which the eviction subresource"
                " does not support."
            )
            raise ApiStatus(500, "InternalError", message)
        for budget in budgets:
            healthy = len(self.healthy(namespace, budget.selector))
            needed = budget.min_available + (1 if is_healthy(pod) else 0)
            if healthy < needed:
                cause = (
                    f"The disruption budget {budget.name} needs {budget.min_available} healthy"
                    f" pods and has {healthy} currently"
                )
                message = "Cannot evict pod as it would violate the pod's disruption budget."
                details = {"causes": [{"reason": "DisruptionBudget", "message": cause}]}
                raise ApiStatus(429, "TooManyRequests", message, details)

    def _delete(self, pod: Json) -> None:
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        uid = pod["metadata"]["uid"]
        if self.grace <= 0:
            del self.pods[key]
            return
        if not terminating(pod):
            pod["metadata"]["deletionTimestamp"] = "1970-01-01T00:00:00Z"
            pod["metadata"]["deletionGracePeriodSeconds"] = int(self.grace)
            self._stamp(pod)
            timer = threading.Timer(self.grace, self._remove, (key, uid))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()

    def close(self) -> None:
        """Cancel the grace timers still running (pods stay Terminating)."""
        with self.lock:
            for timer in self._timers:
                timer.cancel()

    def _remove(self, key: tuple[str, str], uid: str) -> None:
        with self.lock:
            if key in self.pods and self.pods[key]["metadata"]["uid"] == uid:
                del self.pods[key]

    def _stamp(self, obj: Json) -> Json:
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        return obj

    def healthy(self, namespace: str, selector: dict[str, str]) -> list[Json]:
        return [
            pod
            for (ns, _), pod in self.pods.items()
            if ns == namespace and is_healthy(pod) and matches(pod, selector)
        ]


TERMINAL = ("Succeeded", "Failed")


def node_info(machine_id: str) -> Json:
    """A Node's status.nodeInfo as kubelet reports it (every field is required)."""
    return {
        "machineID": machine_id,
        "systemUUID": str(uuid.uuid4()),
        "bootID": str(uuid.uuid4()),
        "kernelVersion": "6.12.0-standin",
        "osImage": "hostbuild worker (TEST STAND-IN)",
        "containerRuntimeVersion": "containerd://1.7.24",
        "kubeletVersion": "v1.35.8",
        "kubeProxyVersion": "",
        "operatingSystem": "linux",
        "architecture": "amd64",
    }


def not_found(resource: str, name: str) -> ApiStatus:
    details = {"name": name, "kind": resource}
    return ApiStatus(404, "NotFound", f'{resource} "{name}" not found', details)


def matches(obj: Json, selector: dict[str, str]) -> bool:
    labels = obj["metadata"].get("labels") or {}
    return all(labels.get(key) == value for key, value in selector.items())


def is_healthy(pod: Json) -> bool:
    conditions = pod["status"].get("conditions") or []
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    return pod["status"].get("phase") == "Running" and ready and not terminating(pod)


def terminating(pod: Json) -> bool:
    return "deletionTimestamp" in pod["metadata"]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (for the scalar fields the drain patches, strategic merge is the
    same: null deletes a key, objects merge, anything else replaces)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def parse_selector(query: dict[str, list[str]], name: str) -> dict[str, str]:
    """`a=b,c=d` (also `==`); the stand-in does not model set-based selectors or `!=`."""
    selector: dict[str, str] = {}
    for text in query.get(name, []):
        for term in filter(None, text.split(",")):
            key, sep, value = term.replace("==", "=").partition("=")
            if not sep or "!" in key:
                raise ApiStatus(400, "BadRequest", f"unable to parse requirement: {term!r}")
            selector[key] = value
    return selector


def field_value(obj: Json, path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def select(objects: list[Json], query: dict[str, list[str]], kind: str) -> Json:
    fields = parse_selector(query, "fieldSelector")
    allowed = {"metadata.name", "metadata.namespace", "spec.nodeName", "status.phase"}
    for key in fields:
        if key not in allowed:
            message = f'"{key}" is not a known field selector: only "{", ".join(sorted(allowed))}"'
            raise ApiStatus(400, "BadRequest", message)
    labels = parse_selector(query, "labelSelector")
    items = [
        copy.deepcopy(obj)
        for obj in objects
        if matches(obj, labels) and all(field_value(obj, k) == v for k, v in fields.items())
    ]
    return {"kind": f"{kind}List", "apiVersion": "v1", "metadata": {}, "items": items}


def discovery(path: str) -> Json | None:
    """Just enough discovery for a client that asks (the typed client does not)."""
    path = path.rstrip("/") or "/"  # VersionApi asks for /version/
    if path == "/version":
        return {
            "major": "1",
            "minor": "35",
            "gitVersion": "v1.35.0-hostbuild-test-standin",
            "gitCommit": "0" * 40,
            "gitTreeState": "clean",
            "buildDate": "1970-01-01T00:00:00Z",
            "goVersion": "none",
            "compiler": "none",
            "platform": "linux/amd64",
        }
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if path == "/apis":
        version = {"groupVersion": "policy/v1", "version": "v1"}
        group = {"name": "policy", "versions": [version], "preferredVersion": version}
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}
    resources = {
        "/api/v1": [
            ("nodes", "Node", False), ("pods", "Pod", True), ("pods/eviction", "Eviction", True)
        ],
        "/apis/policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    }  # fmt: skip
    if path in resources:
        group_version = path.removeprefix("/api/").removeprefix("/apis/")
        listed = [
            {"name": name, "kind": kind, "namespaced": namespaced, "verbs": ["get", "list"]}
            for name, kind, namespaced in resources[path]
        ]
        return {"kind": "APIResourceList", "groupVersion": group_version, "resources": listed}
    return None
