"""The Kubernetes calls the drain makes, through the official client: nodes, pods, evictions.

Each call has a request timeout; every failure (unreachable server, refused credentials, an
unexpected status) becomes a `KubeError` naming the call, so the drain can fail closed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from builder.errors import HostbuildError

logger = logging.getLogger(__name__)

# Set on the Node with the cordon, so an uncordon only undoes a cordon the drain made.
CORDON_ANNOTATION = "fleet.hostbuild.dev/cordoned-by"
MIRROR = "kubernetes.io/config.mirror"
STRATEGIC_MERGE = "application/strategic-merge-patch+json"
T = TypeVar("T")


class KubeError(HostbuildError):
    """A Kubernetes API call failed: `status` is the HTTP status, None when none came back."""

    def __init__(self, message: str, status: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.status = status


@dataclass(frozen=True)
class Node:
    name: str
    machine_id: str
    unschedulable: bool
    cordoned_by: str | None  # the CORDON_ANNOTATION annotation


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    uid: str
    owner_kinds: tuple[str, ...]  # the kinds of its controlling owners
    mirror: bool  # a static pod's mirror: kubelet owns it, the API cannot evict it
    phase: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class Eviction(StrEnum):
    EVICTED = "evicted"  # 201: the API server is deleting the pod
    GONE = "gone"  # 404, or 409: the pod under that name is another one now
    BLOCKED = "blocked"  # 429: a PodDisruptionBudget forbids it for now


def load_api(
    kubeconfig: Path | None = None, context: str | None = None, timeout: float = 10.0
) -> KubeApi:
    """A client from `kubeconfig`, else in-cluster credentials inside a pod, else kubectl's
    default kubeconfig (KUBECONFIG or ~/.kube/config)."""
    configuration = client.Configuration()
    try:
        # the client's config loaders carry no annotations (its API and models do)
        if kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            path = os.fspath(kubeconfig) if kubeconfig is not None else None
            config.load_kube_config(path, context, client_configuration=configuration)  # type: ignore[no-untyped-call]
        return KubeApi(client.ApiClient(configuration), timeout)
    except (ConfigException, OSError, ValueError, yaml.YAMLError) as error:
        if kubeconfig is None:
            where = "the Kubernetes config"
            hint = "pass --kubeconfig FILE, set KUBECONFIG, or run in a pod with a service account"
        else:
            where = f"kubeconfig {os.fspath(kubeconfig)!r}"
            hint = (
                "--kubeconfig must name a readable kubeconfig: YAML with clusters, users and"
                " contexts (as `kubectl config view --raw` prints it), --kube-context one of them"
            )
        raise KubeError(f"cannot load {where}: {error}", hint=hint) from None


class KubeApi:
    """The drain's view of one cluster (CoreV1Api underneath)."""

    def __init__(self, api_client: client.ApiClient, timeout: float = 10.0) -> None:
        self.core = client.CoreV1Api(api_client)
        self.timeout = timeout

    def list_nodes(self) -> list[Node]:
        nodes = self._call("list nodes", lambda: self.core.list_node(_request_timeout=self.timeout))
        return [to_node(item) for item in nodes.items]

    def read_node(self, name: str) -> Node | None:
        what = f"read node {name!r}"
        node = self._call(what, lambda: self.core.read_node(name, _request_timeout=self.timeout))
        return None if node is None else to_node(node)

    def set_cordon(self, name: str, cordoned: bool, by: str) -> None:
        """Cordon (spec.unschedulable, and CORDON_ANNOTATION: `by`) or uncordon the node."""
        body = {
            "metadata": {"annotations": {CORDON_ANNOTATION: by if cordoned else None}},
            "spec": {"unschedulable": True if cordoned else None},
        }
        self._call(
            f"{'cordon' if cordoned else 'uncordon'} node {name!r}",
            lambda: self.core.patch_node(
                name, body, _content_type=STRATEGIC_MERGE, _request_timeout=self.timeout
            ),
            missing_ok=False,
        )

    def list_pods(self, node: str) -> list[Pod]:
        pods = self._call(
            f"list the pods on node {node!r}",
            lambda: self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node}", _request_timeout=self.timeout
            ),
        )
        return [to_pod(item) for item in pods.items]

    def read_pod(self, namespace: str, name: str) -> Pod | None:
        pod = self._call(
            f"read pod {namespace}/{name}",
            lambda: self.core.read_namespaced_pod(name, namespace, _request_timeout=self.timeout),
        )
        return None if pod is None else to_pod(pod)

    def evict(self, pod: Pod) -> tuple[Eviction, str]:
        """Ask the Eviction API to delete `pod` (this very uid); says what came of it and why."""
        body = client.V1Eviction(
            api_version="policy/v1",
            kind="Eviction",
            metadata=client.V1ObjectMeta(name=pod.name, namespace=pod.namespace),
            delete_options=client.V1DeleteOptions(
                preconditions=client.V1Preconditions(uid=pod.uid)
            ),
        )
        try:
            self.core.create_namespaced_pod_eviction(
                pod.name, pod.namespace, body, _request_timeout=self.timeout
            )
        except ApiException as error:
            if error.status in (404, 409):
                return Eviction.GONE, status_message(error)
            if error.status == 429:
                return Eviction.BLOCKED, status_message(error)
            raise api_error(f"evict pod {pod}", error) from None
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as error:
            raise transport_error(f"evict pod {pod}", error) from None
        return Eviction.EVICTED, "evicted"

    def _call(self, what: str, call: Callable[[], T], missing_ok: bool = True) -> T | Any:
        """`call()`, None for a 404 when `missing_ok`, else a KubeError naming `what`."""
        try:
            return call()
        except ApiException as error:
            if missing_ok and error.status == 404:
                return None
            raise api_error(what, error) from None
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as error:
            raise transport_error(what, error) from None


def to_node(node: client.V1Node) -> Node:
    metadata, spec, status = node.metadata, node.spec, node.status
    info = status.node_info if status is not None else None
    annotations = (metadata.annotations if metadata is not None else None) or {}
    return Node(
        name=metadata.name if metadata is not None and metadata.name else "",
        machine_id=info.machine_id if info is not None else "",
        unschedulable=bool(spec is not None and spec.unschedulable),
        cordoned_by=annotations.get(CORDON_ANNOTATION),
    )


def to_pod(pod: client.V1Pod) -> Pod:
    metadata = pod.metadata or client.V1ObjectMeta()
    owners = metadata.owner_references or []
    return Pod(
        namespace=metadata.namespace or "",
        name=metadata.name or "",
        uid=metadata.uid or "",
        owner_kinds=tuple(owner.kind for owner in owners if owner.controller),
        mirror=MIRROR in (metadata.annotations or {}),
        phase=(pod.status.phase if pod.status is not None else None) or "",
    )


def status_message(error: ApiException) -> str:
    """The message of the Status the server answered with, and its causes' messages."""
    try:
        status = json.loads(error.body or "")
    except ValueError:
        return f"HTTP {error.status} {error.reason}"
    if not isinstance(status, dict):
        return f"HTTP {error.status} {error.reason}"
    causes = (status.get("details") or {}).get("causes") or []
    parts = [str(status.get("message") or error.reason)]
    parts += [str(cause["message"]) for cause in causes if cause.get("message")]
    return ": ".join(parts)


def api_error(what: str, error: ApiException) -> KubeError:
    hint = None
    if error.status in (401, 403):
        hint = (
            "the drain needs get/list/patch on nodes, get/list on pods and create on pods/eviction"
        )
    return KubeError(
        f"cannot {what}: HTTP {error.status}: {status_message(error)}", error.status, hint
    )


def transport_error(what: str, error: Exception) -> KubeError:
    return KubeError(
        f"cannot {what}: the API server could not be reached: {error}",
        hint="check the kubeconfig's server address and CA, and that the API server is up",
    )
