"""The fleet rollout policy file and the pure rules of a group's state (no etcd here)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from builder.fleet import state as rules
from builder.fleet.policy import PolicyError, load_policy, parse_policy
from builder.fleet.protocol import ClientParams, FleetLockError, parse_params


def test_a_policy_file_becomes_groups(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "version: '2.0'\n"
        "groups:\n"
        "  canary: {slots: 1, reboot_deadline: 10m}\n"
        "  workers:\n"
        "    slots: 5\n"
        "    soak: 90s\n"
        "    after: [canary]\n"
        "    windows: [{days: [Sat], start: '02:00', durationMinutes: 60}]\n"
    )
    policy = load_policy(path)
    assert policy.version == "2.0"
    assert policy.groups["canary"].reboot_deadline == 600
    workers = policy.groups["workers"]
    assert (workers.slots, workers.soak, workers.after) == (5, 90, ("canary",))
    assert workers.windows == ({"days": ["Sat"], "start": "02:00", "durationMinutes": 60},)


def test_every_policy_problem_is_reported_at_once() -> None:
    doc = {
        "groups": {
            "workers": {"slots": 0, "after": ["nope"], "reboot_deadline": "1s", "soak": "soon",
                        "windows": [{"start": "25:00", "durationMinutes": 0}], "slot": 1},
            "bad name": {},
        },
        "extra": 1,
    }  # fmt: skip
    with pytest.raises(PolicyError) as e:
        parse_policy(doc, "fleet.yaml")
    assert [str(i) for i in e.value.issues] == [
        "fleet.yaml: extra: unknown key; allowed: groups, version",
        "fleet.yaml: groups.bad name: a group name must match ^[a-zA-Z0-9.-]+$",
        "fleet.yaml: groups.workers.after: unknown group 'nope'; known: workers",
        "fleet.yaml: groups.workers.reboot_deadline: must be at least 2 seconds (an etcd lease)",
        "fleet.yaml: groups.workers.slot: unknown key; allowed: slots, reboot_deadline, soak, "
        "after, after_healthy, windows",
        "fleet.yaml: groups.workers.slots: 0 must be a whole number 1 to 10000",
        "fleet.yaml: groups.workers.soak: 'soon' is not a duration: a whole number and a unit "
        "s, m, h, d or w (e.g. '12h', '7d', '365d')",
        "fleet.yaml: groups.workers.windows[0].durationMinutes: must be a whole number 1 to 1440",
        "fleet.yaml: groups.workers.windows[0].start: '25:00' is not a UTC time 'HH:MM'",
    ]


def test_groups_that_wait_for_each_other_are_refused() -> None:
    doc = {"groups": {"a": {"after": ["b"]}, "b": {"after": ["c"]}, "c": {"after": ["a"]}}}
    with pytest.raises(PolicyError) as e:
        parse_policy(doc, "fleet.yaml")
    assert str(e.value.issues[0]) == (
        "fleet.yaml: groups.a.after: the groups wait for each other in a circle: none would "
        "ever reboot"
    )


def test_zincatis_pretty_printed_body_parses() -> None:
    body = b'{\n  "client_params": {\n    "id": "e0f3",\n    "group": "workers"\n  }\n}'
    assert parse_params("true", body) == ClientParams("e0f3", "workers")
    with pytest.raises(FleetLockError) as e:
        parse_params(None, body)
    assert (e.value.status, e.value.kind) == (400, "invalid_client_identity")


POLICY = parse_policy({"groups": {"g": {"slots": 1, "soak": 60, "reboot_deadline": 30}}}, "p")


def lock(state: rules.GroupState, node: str, now: float) -> rules.Granted | FleetLockError:
    return rules.lock(state, ClientParams(node, "g"), POLICY.groups["g"], rules.Changes(), now,
                      lambda: 7, lambda p: None, drain=False)  # fmt: skip


def test_soak_between_grants_and_a_lost_holder() -> None:
    state = rules.GroupState()
    assert lock(state, "a", 1000.0) == rules.Granted(reentrant=False, drained=True)
    assert state.holders["a"]["deadline"] == 1030.0 and state.holders["a"]["lease"] == 7
    rules.unlock(state, ClientParams("a", "g"), POLICY.groups["g"], rules.Changes(), 1010.0)
    refused = lock(state, "b", 1020.0)
    assert isinstance(refused, FleetLockError) and refused.kind == "soaking"
    assert lock(state, "b", 1061.0) == rules.Granted(reentrant=False, drained=True)
    changes = rules.Changes()
    assert rules.reap(state, frozenset(), changes, 1100.0) == ["b"]
    assert state.holders == {} and state.paused and state.paused["node"] == "b"
    assert changes.reports["b"]["state"] == "lost"


def test_outside_its_maintenance_window_a_group_grants_nothing() -> None:
    window = {"days": ["Sat"], "start": "02:00", "durationMinutes": 60}
    policy = parse_policy({"groups": {"g": {"windows": [window]}}}, "p").groups["g"]
    saturday_0230 = datetime.datetime(2026, 11, 28, 2, 30, tzinfo=datetime.UTC).timestamp()
    friday = saturday_0230 - 86400

    def ask(now: float) -> rules.Granted | FleetLockError:
        return rules.lock(rules.GroupState(), ClientParams("a", "g"), policy, rules.Changes(),
                          now, lambda: 1, lambda p: None, drain=False)  # fmt: skip

    refused = ask(friday)
    assert isinstance(refused, FleetLockError) and refused.kind == "outside_window"
    assert "the next opens at 2026-11-28T02:00:00+00:00" in refused.value
    assert isinstance(ask(saturday_0230), rules.Granted)
