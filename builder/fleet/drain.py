"""Drain before reboot: cordon the node a FleetLock id names and evict its pods, failing closed.

Pods owned by a DaemonSet, mirror pods and finished pods stay (kubectl drain skips them too);
every other pod goes through the Eviction API, so PodDisruptionBudgets hold: a 429 is retried
with backoff up to a per-pod deadline. A drain that does not end within its total timeout, or
any failed API call, uncordons the node and raises DrainError naming the pods that blocked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from builder.fleet.hooks import DrainError, NodeRef
from builder.fleet.kube import Eviction, KubeApi, KubeError, Node, Pod, load_api
from builder.node.fleetlock import app_specific_id

logger = logging.getLogger(__name__)

CORDON_OWNER = "hostbuild-fleet"
TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class DrainTimeouts:
    """Seconds: the whole drain, how long one pod's eviction may be refused, the poll interval
    and the backoff between refusals (doubling from `backoff` up to `backoff_max`)."""

    total: float = 600.0
    per_pod: float = 300.0
    poll: float = 1.0
    backoff: float = 1.0
    backoff_max: float = 30.0


@dataclass
class Pending:
    """One pod the drain evicts: when to ask next, since when it is refused, why."""

    pod: Pod
    next_try: float = 0.0
    backoff: float = 0.0
    refused_since: float | None = None
    refusal: str = ""
    evicted: bool = False


@dataclass
class Drainer:
    """The coordinator's drain hook (`builder.fleet.hooks.Drainer`) for one cluster. It keeps
    no state between calls, so one Drainer may drain several nodes from several threads."""

    api: KubeApi
    timeouts: DrainTimeouts = field(default_factory=DrainTimeouts)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def drain(self, node: NodeRef) -> None:
        """Cordon and empty the node, or uncordon it and raise DrainError saying why not."""
        found = self.find_node(node)
        if found.unschedulable and found.cordoned_by is None:
            logger.info("node %s was cordoned before the drain: it stays cordoned", found.name)
        cordoned = False
        try:
            if not found.unschedulable or found.cordoned_by is not None:
                self.api.set_cordon(found.name, True, CORDON_OWNER)
                cordoned = True
            logger.info("node %s (%s) cordoned, evicting its pods", found.name, node.id)
            self.evict_all(found.name)
        except (KubeError, DrainError) as error:
            reason = error.reason if isinstance(error, DrainError) else str(error)
            raise DrainError(self.fail_closed(found.name, node, reason, cordoned)) from None
        except Exception as error:  # a bug must not leave a node cordoned nor grant its lock
            logger.exception("drain of node %s failed unexpectedly", found.name)
            reason = f"unexpected error: {error!r}"
            raise DrainError(self.fail_closed(found.name, node, reason, cordoned)) from error
        logger.info("node %s drained", found.name)

    def uncordon(self, node: NodeRef) -> None:
        """Make the node schedulable again, unless someone other than the drain cordoned it."""
        found = self.find_node(node)
        if found.unschedulable and found.cordoned_by is None:
            logger.info("node %s stays cordoned: the drain did not cordon it", found.name)
            return
        try:
            self.api.set_cordon(found.name, False, CORDON_OWNER)
        except KubeError as error:
            raise DrainError(f"cannot uncordon node {found.name!r}: {error}") from None
        logger.info("node %s uncordoned", found.name)

    def find_node(self, node: NodeRef) -> Node:
        """The Node whose machineID gives the FleetLock id; `node_name` only if it is that one."""
        wanted = node.id.strip().replace("-", "").lower()
        try:
            if node.node_name is not None:
                named = self.api.read_node(node.node_name)
                if named is None:
                    raise DrainError(
                        f"node {node.id} names Kubernetes node {node.node_name!r}, which does not"
                        " exist"
                    )
                if fleetlock_id(named) != wanted:
                    raise DrainError(
                        f"node {node.id} may not drain Kubernetes node {node.node_name!r}: its"
                        f" machineID gives FleetLock id {fleetlock_id(named) or 'none'}, so it is"
                        " another node"
                    )
                return named
            matching = [n for n in self.api.list_nodes() if fleetlock_id(n) == wanted]
        except KubeError as error:
            raise DrainError(f"cannot find the Kubernetes node of {node.id}: {error}") from None
        if len(matching) != 1:
            names = ", ".join(sorted(n.name for n in matching)) or "none"
            raise DrainError(
                f"{len(matching)} Kubernetes nodes have a machineID that gives FleetLock id"
                f" {node.id} ({names}); exactly one is allowed"
            )
        return matching[0]

    def evict_all(self, node_name: str) -> None:
        """Evict every pod the drain moves and wait until they are gone, within the deadlines."""
        start = self.clock()
        pending = [Pending(pod) for pod in self.api.list_pods(node_name) if wants_eviction(pod)]
        logger.info(
            "node %s: evicting %s", node_name, ", ".join(str(p.pod) for p in pending) or "nothing"
        )
        while pending:
            now = self.clock()
            pending = [p for p in pending if not self.step(p, now)]
            if not pending:
                return
            now = self.clock()
            if now - start >= self.timeouts.total:
                raise DrainError(
                    f"the drain of node {node_name!r} did not finish within"
                    f" {self.timeouts.total:g} s: {describe(pending)}"
                )
            for item in pending:
                if (
                    item.refused_since is not None
                    and now - item.refused_since >= self.timeouts.per_pod
                ):
                    raise DrainError(
                        f"pod {item.pod} on node {node_name!r} could not be evicted within"
                        f" {self.timeouts.per_pod:g} s: {item.refusal}"
                    )
            wake = min([p.next_try for p in pending if not p.evicted] + [now + self.timeouts.poll])
            self.sleep(max(0.0, min(wake, start + self.timeouts.total) - now))

    def step(self, item: Pending, now: float) -> bool:
        """One look at one pod: evict it when due, or see whether it is gone. True: it is gone."""
        if item.evicted:
            current = self.api.read_pod(item.pod.namespace, item.pod.name)
            return current is None or current.uid != item.pod.uid
        if now < item.next_try:
            return False
        outcome, message = self.api.evict(item.pod)
        if outcome is Eviction.GONE:
            return True
        if outcome is Eviction.EVICTED:
            item.evicted = True
            return self.step(item, now)
        if item.refused_since is None:
            item.refused_since = now
        item.refusal = message
        item.backoff = min(max(item.backoff * 2, self.timeouts.backoff), self.timeouts.backoff_max)
        item.next_try = now + item.backoff
        logger.info(
            "eviction of %s refused (%s), next try in %g s", item.pod, message, item.backoff
        )
        return False

    def fail_closed(self, name: str, node: NodeRef, reason: str, cordoned: bool) -> str:
        """Undo the cordon; the reason the lock is refused, with the uncordon's own failure."""
        if not cordoned:
            return f"{reason}; node {name!r} was left as it was"
        try:
            self.api.set_cordon(name, False, CORDON_OWNER)
        except KubeError as error:
            return f"{reason}; and node {name!r} could not be uncordoned: {error}"
        logger.warning("drain of node %s (%s) failed, uncordoned it: %s", name, node.id, reason)
        return f"{reason}; node {name!r} uncordoned"


def load_drainer(
    kubeconfig: Path | None = None,
    context: str | None = None,
    timeouts: DrainTimeouts | None = None,
    request_timeout: float = 10.0,
) -> Drainer:
    """A Drainer for the cluster of `kubeconfig` (see `kube.load_api` for the fallbacks)."""
    api = load_api(kubeconfig, context, timeout=request_timeout)
    return Drainer(api, timeouts if timeouts is not None else DrainTimeouts())


def fleetlock_id(node: Node) -> str | None:
    """The FleetLock id of a Node, None when its machineID is missing or not an id128."""
    try:
        return app_specific_id(node.machine_id)
    except ValueError:
        return None


def wants_eviction(pod: Pod) -> bool:
    """kubectl drain's filter: DaemonSet pods come back at once, mirror pods are kubelet's,
    finished pods hold nothing."""
    return "DaemonSet" not in pod.owner_kinds and not pod.mirror and pod.phase not in TERMINAL


def describe(pending: list[Pending]) -> str:
    parts = [
        f"pod {p.pod} is still terminating" if p.evicted else f"pod {p.pod} blocked: {p.refusal}"
        for p in pending
    ]
    return "; ".join(parts)
