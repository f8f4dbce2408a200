"""One thread per group and coordinator: takes the requests that arrived together, applies
them to the group's state and writes the result with one compare-and-swap transaction.

Requests that find every slot held may wait (`wait` seconds, a long poll): they are queued in
arrival order and tried again, as many as slots free up, whenever the state changes.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from . import state as rules
from .policy import GroupPolicy
from .protocol import ClientParams, FleetLockError
from .store import Store, StoreError

logger = logging.getLogger(__name__)

MAX_BATCH = 60  # etcd allows 128 operations a transaction (--max-txn-ops); a request writes 2
MAX_CONFLICTS = 50


@dataclass(eq=False)  # compared by identity: the queue removes this very request
class Op:
    kind: str  # lock | unlock | drained | drain_failed | pause | resume | reap
    params: ClientParams | None = None
    reason: str = ""
    until: float = 0.0  # monotonic: how long a lock may wait for a slot
    future: Future[Any] = field(default_factory=Future)
    last: Any = None


class GroupCommitter:
    def __init__(
        self,
        store: Store,
        policy: GroupPolicy,
        gate: Callable[[ClientParams], FleetLockError | None],
        *,
        drain: bool,
        refresh: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.policy = policy
        self.gate = gate
        self.drain = drain
        self.refresh = refresh
        self.clock = clock
        self.snap: rules.Snapshot | None = None
        self._ops: collections.deque[Op] = collections.deque()
        self._waiting: collections.deque[Op] = collections.deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"fleet-{policy.name}", daemon=True)
        self._thread.start()

    def submit(self, op: Op) -> Future[Any]:
        with self._cond:
            if self._stopped:
                op.future.set_exception(StoreError("the coordinator is stopping"))
            else:
                self._ops.append(op)
                self._cond.notify()
        return op.future

    def call(self, op: Op, timeout: float | None = None) -> Any:
        return self.submit(op).result(timeout)

    def waiting(self) -> list[str]:
        with self._cond:
            return [op.params.id for op in self._waiting if op.params]

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(10)

    # -- the loop ---------------------------------------------------------------------------

    def _take(self) -> list[Op]:
        """Wait for work; the batch to apply next (new requests, then waiters that may fit)."""
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                for op in [w for w in self._waiting if w.until <= now]:
                    self._waiting.remove(op)
                    op.future.set_result(op.last)
                stale = self.snap is None or now - self.snap.read_at >= self.refresh
                watch = bool(self._waiting) or bool(self.snap and self.snap.state.holders)
                fits = self.snap is not None and len(self.snap.state.holders) < self.policy.slots
                if self._ops or (stale and watch) or (self._waiting and fits):
                    break
                timeout = self.refresh if watch else None
                if self._waiting:
                    timeout = min(
                        timeout or self.refresh, max(0.0, min(w.until for w in self._waiting) - now)
                    )
                self._cond.wait(timeout)
            if self._stopped:
                for op in [*self._ops, *self._waiting]:
                    if not op.future.done():
                        op.future.set_exception(StoreError("the coordinator is stopping"))
                self._ops.clear()
                self._waiting.clear()
                return []
            batch = [self._ops.popleft() for _ in range(min(MAX_BATCH, len(self._ops)))]
            free = self.policy.slots - (len(self.snap.state.holders) if self.snap else 0)
            room = MAX_BATCH - len(batch)
            while self._waiting and free > 0 and room > 0:
                batch.append(self._waiting.popleft())
                free -= 1
                room -= 1
            return batch or [Op("reap")]

    def _run(self) -> None:
        while True:
            try:
                batch = self._take()
            except Exception:  # never leave the requests of a group without a thread
                logger.exception("group %s: unexpected error; going on", self.policy.name)
                time.sleep(self.refresh)
                continue
            if not batch:
                return
            try:
                results = self._apply(batch)
            except Exception as e:  # a store that cannot be reached fails this batch only
                logger.warning("group %s: %s", self.policy.name, e)
                error = (
                    e
                    if isinstance(e, StoreError)
                    else StoreError(f"unexpected {type(e).__name__}: {e}")
                )
                self.snap = None
                for op in batch:
                    if not op.future.done():
                        op.future.set_exception(error)
                continue
            with self._cond:
                for op, result in zip(batch, results, strict=True):
                    if op.kind == "reap":
                        continue
                    waits = isinstance(result, FleetLockError) and result.kind == "failed_lock"
                    if waits and op.until > time.monotonic():
                        op.last = result
                        self._waiting.append(op)
                    else:
                        op.future.set_result(result)

    def _apply(self, batch: list[Op]) -> list[Any]:
        for _ in range(MAX_CONFLICTS):
            fresh = self.snap is None or time.monotonic() - self.snap.read_at >= self.refresh
            if fresh:
                self.snap = self.store.snapshot(self.policy.name)
            snap = self.snap
            assert snap is not None
            state = snap.state.copy()
            changes = rules.Changes()
            now = self.clock()
            lost = rules.reap(state, snap.live, changes, now)
            results = [self._one(op, state, changes, now) for op in batch]
            self._hand_over(batch, results, state, changes, now)
            if not fresh and any(_unverified(op, r) for op, r in zip(batch, results, strict=True)):
                # "you hold no slot" from a cached state might be stale (another replica
                # granted it): only a fresh read may say so
                self.snap = None
                continue
            if state == snap.state and not changes:
                return results
            new = self.store.commit(self.policy.name, snap, state, changes)
            if new is not None:
                self.snap = new
                for node_id in lost:
                    logger.warning(
                        "group %s: node %s missed its reboot deadline; paused",
                        self.policy.name,
                        node_id,
                    )
                return results
            self.snap = None  # another replica wrote first: read again and redo the batch
        raise StoreError(f"group {self.policy.name!r}: {MAX_CONFLICTS} write conflicts in a row")

    def _hand_over(
        self,
        batch: list[Op],
        results: list[Any],
        state: rules.GroupState,
        changes: rules.Changes,
        now: float,
    ) -> None:
        """Slots this batch frees go to waiting requests in the same write (one commit per
        hand-over instead of two)."""
        while len(batch) < MAX_BATCH and len(state.holders) < self.policy.slots:
            with self._cond:
                if not self._waiting:
                    return
                op = self._waiting.popleft()
            batch.append(op)
            results.append(self._one(op, state, changes, now))

    def _one(self, op: Op, state: rules.GroupState, changes: rules.Changes, now: float) -> Any:
        p = op.params
        lease = lambda: self.store.lease(self.policy.reboot_deadline)  # noqa: E731
        if op.kind == "lock" and p:
            return rules.lock(state, p, self.policy, changes, now, lease, self.gate, self.drain)
        if op.kind == "unlock" and p:
            return rules.unlock(state, p, self.policy, changes, now)
        if op.kind == "drained" and p:
            return rules.mark_drained(state, p.id, self.policy, changes, now, lease)
        if op.kind == "drain_failed" and p:
            return rules.drain_failed(state, p.id, op.reason, changes, now)
        if op.kind == "pause":
            return rules.pause(state, op.reason, now)
        if op.kind == "resume":
            return rules.resume(state)
        return None


def _unverified(op: Op, result: Any) -> bool:
    """A result that writes nothing and that a stale state could have got wrong."""
    if op.kind == "unlock":
        return isinstance(result, rules.Released) and result.holder is None
    return op.kind in ("drained", "drain_failed") and not result
