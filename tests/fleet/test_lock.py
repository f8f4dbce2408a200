"""Lock semantics, lease expiry, restarts and etcd failures, against the three-member etcd."""

from __future__ import annotations

import time

import pytest

from builder.fleet.policy import single_group
from tests.fleet.conftest import Fleet, admin, fleetlock

pytestmark = pytest.mark.fleet


def holders(port: int, group: str = "default") -> set[str]:
    status, body = admin(port, "status")
    assert status == 200 and body
    return set(body["groups"][group]["holders"])


def test_slots_are_counted_reentrant_and_owned(fleet: Fleet) -> None:
    s = fleet.serve(single_group("default", 2))
    assert fleetlock(s.port, "pre-reboot", "a") == (200, None)
    assert fleetlock(s.port, "pre-reboot", "b") == (200, None)
    status, body = fleetlock(s.port, "pre-reboot", "c")
    assert status == 409 and body and body["kind"] == "failed_lock"
    assert "all 2 slot(s)" in body["value"] and "a, b" in body["value"]
    assert fleetlock(s.port, "pre-reboot", "a") == (200, None)  # re-entrant
    assert fleetlock(s.port, "steady-state", "c") == (200, None)  # not holding: a no-op
    assert holders(s.port) == {"a", "b"}
    assert fleetlock(s.port, "steady-state", "a") == (200, None)
    assert holders(s.port) == {"b"}
    assert fleetlock(s.port, "pre-reboot", "c") == (200, None)
    assert holders(s.port) == {"b", "c"}


def wait_for(predicate: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_holder_that_never_comes_back_frees_its_slot_and_pauses_the_group(fleet: Fleet) -> None:
    s = fleet.serve(single_group("default", 1, deadline=2))
    assert fleetlock(s.port, "pre-reboot", "lost")[0] == 200
    wait_for(lambda: not holders(s.port))
    _, body = admin(s.port, "status")
    assert body
    group = body["groups"]["default"]
    assert group["paused"]["by"] == "auto" and group["paused"]["node"] == "lost"
    assert "did not report steady state by its reboot deadline" in group["paused"]["reason"]
    assert group["failures"][-1]["id"] == "lost"
    status, answer = fleetlock(s.port, "pre-reboot", "next")
    assert status == 423 and answer and answer["kind"] == "group_paused"
    assert "hostbuild fleet resume --group default" in answer["value"]
    # the lost node returning late changes nothing; after a resume the rollout goes on
    assert fleetlock(s.port, "steady-state", "lost") == (200, None)
    assert admin(s.port, "resume", {"group": "default"})[0] == 200
    assert fleetlock(s.port, "pre-reboot", "next") == (200, None)


def test_a_restarted_coordinator_loses_and_leaks_no_slot(fleet: Fleet) -> None:
    first = fleet.serve(single_group("default", 2))
    assert fleetlock(first.port, "pre-reboot", "a")[0] == 200
    assert fleetlock(first.port, "pre-reboot", "b")[0] == 200
    first.close()
    fleet.served.remove(first)
    second = fleet.serve(single_group("default", 2))
    assert holders(second.port) == {"a", "b"}
    assert fleetlock(second.port, "pre-reboot", "c")[0] == 409
    assert fleetlock(second.port, "pre-reboot", "a")[0] == 200  # still its slot
    assert fleetlock(second.port, "steady-state", "a")[0] == 200
    assert fleetlock(second.port, "pre-reboot", "c")[0] == 200
    for node in ("b", "c"):
        assert fleetlock(second.port, "steady-state", node)[0] == 200
    assert holders(second.port) == set()
    assert fleet.store().snapshot("default").live == frozenset()  # no lease key left


def test_the_rollout_goes_on_with_one_etcd_member_stopped(fleet: Fleet) -> None:
    s = fleet.serve(single_group("default", 1))
    assert fleetlock(s.port, "pre-reboot", "n0")[0] == 200
    first = fleet.etcd.members[0]  # the member each store asks first
    fleet.etcd.stop_member(first)
    try:
        assert fleetlock(s.port, "steady-state", "n0")[0] == 200
        for i in range(1, 4):
            assert fleetlock(s.port, "pre-reboot", f"n{i}") == (200, None)
            assert fleetlock(s.port, "pre-reboot", "other")[0] == 409
            assert fleetlock(s.port, "steady-state", f"n{i}") == (200, None)
        assert holders(s.port) == set()
    finally:
        fleet.etcd.start_member(first)
        fleet.etcd.wait_healthy()
