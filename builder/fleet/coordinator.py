"""The FleetLock operations over etcd: lock and unlock with the rollout policy and the drain.

Drains fail closed: a node whose drain raises gets its slot back freed and an error, never a
200. A node released after a healthy (or plain, verdict-less) steady state is uncordoned.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .committer import GroupCommitter, Op
from .hooks import Drainer, DrainError, NodeRef
from .policy import FleetPolicy, GroupPolicy
from .protocol import ClientParams, FleetLockError
from .state import Granted, Released
from .store import Store, StoreError

logger = logging.getLogger(__name__)


class Coordinator:
    def __init__(
        self,
        store: Store,
        policy: FleetPolicy,
        drainer: Drainer | None = None,
        *,
        wait: float = 0.0,
        refresh: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.policy = policy
        self.drainer = drainer
        self.wait = wait
        self.clock = clock
        self.refresh = refresh  # also how long the canary gate reuses its view of a group
        self._gate_cache: dict[str, tuple[float, Any]] = {}
        self._gate_lock = threading.Lock()
        self.committers = {
            name: GroupCommitter(
                store, g, self._gate_for(g), drain=drainer is not None, refresh=refresh, clock=clock
            )
            for name, g in policy.groups.items()
        }

    def close(self) -> None:
        for c in self.committers.values():
            c.stop()

    def _committer(self, group: str) -> GroupCommitter:
        committer = self.committers.get(group)
        if committer is None:
            known = ", ".join(sorted(self.committers))
            raise FleetLockError(
                400, "unknown_group", f"unknown group {group!r}; this coordinator serves: {known}"
            )
        return committer

    def _call(self, group: str, op: Op) -> Any:
        try:
            return self._committer(group).call(op, timeout=self.wait + 60)
        except StoreError as e:
            raise FleetLockError(503, "store_unavailable", e.message) from None
        except TimeoutError:
            raise FleetLockError(503, "store_unavailable", "etcd did not answer in time") from None

    # -- the canary gate --------------------------------------------------------------------

    def _dependency(self, name: str) -> Any:
        with self._gate_lock:
            cached = self._gate_cache.get(name)
            if cached and time.monotonic() - cached[0] < self.refresh:
                return cached[1]
        view = (self.store.snapshot(name).state, self.store.reports(name))
        with self._gate_lock:
            self._gate_cache[name] = (time.monotonic(), view)
        return view

    def _gate_for(self, group: GroupPolicy) -> Callable[[ClientParams], FleetLockError | None]:
        def gate(params: ClientParams) -> FleetLockError | None:
            if not group.after:
                return None
            # the version rolled out: the policy's, else anything newer than the asking node
            # runs (hostbuild nodes send their running version); Zincati sends none
            target, running = self.policy.version, params.version
            if target is None and running is None:
                return FleetLockError(
                    409,
                    "waiting_for_group",
                    f"group {group.name!r} waits "
                    f"for {', '.join(group.after)} to be healthy on the new "
                    "version, and neither the policy nor the request says "
                    "which (client_params.version)",
                )
            wanted = target or f"a version other than {running}"
            for name in group.after:
                state, reports = self._dependency(name)
                healthy = [
                    r
                    for r in reports.values()
                    if r.get("health") == "healthy"
                    and r.get("version") is not None
                    and (r["version"] == target if target else r["version"] != running)
                ]
                why = None
                if state.paused is not None:
                    why = f"group {name!r} is paused ({state.paused.get('reason')})"
                elif state.holders:
                    why = f"group {name!r} is still rebooting {', '.join(sorted(state.holders))}"
                elif len(healthy) < group.after_healthy:
                    why = (
                        f"group {name!r} has {len(healthy)} node(s) healthy on {wanted}, "
                        f"{group.after_healthy} needed"
                    )
                if why:
                    return FleetLockError(
                        409,
                        "waiting_for_group",
                        f"group {group.name!r} waits for its canary: {why}",
                    )
            return None

        return gate

    # -- FleetLock ----------------------------------------------------------------------------

    def pre_reboot(self, params: ClientParams) -> None:
        """RecursiveLock; returns when the node may reboot, else raises FleetLockError."""
        op = Op("lock", params, until=time.monotonic() + self.wait)
        result = self._call(params.group, op)
        if isinstance(result, FleetLockError):
            raise result
        assert isinstance(result, Granted)
        if result.drained or self.drainer is None:
            return
        node = NodeRef(params.id, params.group, params.node_name)
        try:
            self.drainer.drain(node)
        except Exception as e:
            reason = (
                e.reason if isinstance(e, DrainError) else f"unexpected {type(e).__name__}: {e}"
            )
            logger.warning("drain of %s failed: %s; slot freed, reboot refused", params.id, reason)
            self._call(params.group, Op("drain_failed", params, reason=reason))
            self._uncordon(node)
            raise FleetLockError(
                500,
                "drain_failed",
                f"node {params.id!r} was not drained, so it may not reboot: {reason}",
            ) from None
        if not self._call(params.group, Op("drained", params)):
            raise FleetLockError(
                409,
                "failed_lock",
                f"node {params.id!r} lost its slot while "
                "it was drained (its reboot deadline passed); ask again",
            )

    def steady_state(self, params: ClientParams) -> None:
        """UnlockIfHeld (a 200 whether or not the node held a slot); uncordons a healthy one."""
        result = self._call(params.group, Op("unlock", params))
        assert isinstance(result, Released)
        if result.holder is not None and not result.failed:
            self._uncordon(
                NodeRef(params.id, params.group, params.node_name or result.holder.get("node_name"))
            )

    def _uncordon(self, node: NodeRef) -> None:
        if self.drainer is None:
            return
        try:
            self.drainer.uncordon(node)
        except Exception as e:  # the slot is settled already: report, do not fail the node
            logger.warning("uncordon of %s failed: %s", node.id, e)

    # -- administration -----------------------------------------------------------------------

    def pause(self, group: str, reason: str) -> None:
        self._call(group, Op("pause", reason=reason))

    def resume(self, group: str) -> None:
        self._call(group, Op("resume"))

    def waiting(self) -> dict[str, list[str]]:
        return {name: c.waiting() for name, c in self.committers.items()}
