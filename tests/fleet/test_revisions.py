"""How many etcd revisions one node's update cycle writes: what sizes etcd's compaction
(README: "etcd's history"). Refusals, status reads and retries of a held slot write none.

etcd's revision is the whole cluster's, and the session's cluster is shared (an earlier test's
lease may expire meanwhile), so the coordinator's transactions are counted by the versions of
the group key, which every one of them writes once: one transaction is one revision.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from builder.fleet.policy import single_group
from builder.fleet.store import Store, from_b64, to_b64
from tests.etcdcluster import etcd_revision
from tests.fleet.conftest import Fleet, admin, fleetlock
from tests.fleet.test_rollout import FakeDrainer

pytestmark = pytest.mark.fleet

Step = Callable[[], tuple[int, Any]]


def group_version(store: Store, group: str = "default") -> int:
    """How many times the group key was written (0: never)."""
    kvs = store._call("/kv/range", {"key": to_b64(store.group_key(group))}).get("kvs", [])
    return int(kvs[0]["version"]) if kvs else 0


def transactions(store: Store, step: Step) -> int:
    """The coordinator's transactions (revisions) during `step`, which must succeed."""
    before, revision = group_version(store), etcd_revision(store)
    status, _ = step()
    assert status in (200, 409)
    written = group_version(store) - before
    assert etcd_revision(store) - revision >= written  # each is a revision of its own
    return written


def cycle(fleet: Fleet, port: int, node: str) -> list[int]:
    """The revisions each step of one node's cycle wrote: grant, its retry, a refusal of
    another node, a status read, the release with the node's report."""
    store = fleet.store()
    steps: list[Step] = [
        lambda: fleetlock(port, "pre-reboot", node, version="1.0"),
        lambda: fleetlock(port, "pre-reboot", node, version="1.0"),  # Zincati asks again
        lambda: fleetlock(port, "pre-reboot", "other", version="1.0"),  # the slot is taken
        lambda: admin(port, "status"),
        lambda: fleetlock(port, "steady-state", node, version="2.0", health="healthy"),
    ]
    return [transactions(store, step) for step in steps]


def test_one_update_cycle_writes_one_revision_to_take_and_one_to_free_a_slot(
    fleet: Fleet,
) -> None:
    s = fleet.serve(single_group("default", 1))
    written = cycle(fleet, s.port, "n1")
    print(f"revisions per update cycle without drain: {sum(written)} {written}")
    assert written == [1, 0, 0, 0, 1]
    assert cycle(fleet, s.port, "n2") == written  # the same for the next node


def test_a_drain_adds_one_revision_and_a_plain_boot_report_one(fleet: Fleet) -> None:
    s = fleet.serve(single_group("default", 1), FakeDrainer())
    written = cycle(fleet, s.port, "n1")
    print(f"revisions per update cycle with drain: {sum(written)} {written}")
    assert written == [2, 0, 0, 0, 1]  # the grant, then the drained node's new reboot deadline
    report = lambda: fleetlock(s.port, "steady-state", "n1", version="2.0", health="healthy")  # noqa: E731
    assert transactions(fleet.store(), report) == 1  # a boot without an update still reports


def test_what_else_writes_a_revision(fleet: Fleet) -> None:
    s = fleet.serve(single_group("default", 1, deadline=2))
    store = fleet.store()
    assert transactions(store, lambda: fleetlock(s.port, "pre-reboot", "a")) == 1
    assert transactions(store, lambda: fleetlock(s.port, "steady-state", "a")) == 1
    # Zincati's steady state at every start carries no report: nothing to write
    assert transactions(store, lambda: fleetlock(s.port, "steady-state", "z1")) == 0
    pause = lambda: admin(s.port, "pause", {"group": "default", "reason": "x"})  # noqa: E731
    assert transactions(store, pause) == 1
    assert transactions(store, lambda: admin(s.port, "resume", {"group": "default"})) == 1
    before = group_version(store)
    assert fleetlock(s.port, "pre-reboot", "lost")[0] == 200
    deadline = time.monotonic() + 15
    while store.snapshot("default").state.paused is None:
        assert time.monotonic() < deadline, "the lost holder was never reaped"
        time.sleep(0.1)
    # the grant and the reap, and between them etcd's own: the expired lease key deleted
    assert group_version(store) - before == 2 and store.snapshot("default").live == frozenset()
    value = store._call("/kv/range", {"key": to_b64(store.group_key("default"))})["kvs"][0]
    print(f"group key after one failure: {len(from_b64(value['value']))} bytes")
