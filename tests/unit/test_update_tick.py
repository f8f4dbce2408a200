"""The update timer's tick: quiet when no check is due, apply when it is, then reboot if allowed."""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.node import tick, updatecli, updater
from builder.node.schedule import draw
from builder.node.updatestate import load_state
from tests.unit.test_update_apply import Setup
from tests.unit.tufrepo import TufRepo, serve
from tests.unit.updatefakes import make_image

T0 = datetime.datetime(2026, 3, 2, 12, 0, tzinfo=datetime.UTC)
MACHINE_ID = "0123456789abcdef0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    repo = TufRepo(tmp_path / "repo")
    with serve(repo.base) as (url, faults):
        s = Setup(tmp_path, url, repo, faults)
        (s.fake.root / "etc/machine-id").write_text(MACHINE_ID + "\n")
        booted = int((T0 - datetime.timedelta(seconds=60)).timestamp())
        (s.fake.root / "proc/stat").write_text(f"cpu  1 2 3\nbtime {booted}\nprocesses 9\n")
        yield s


def node_at(setup: Setup, clock: Clock) -> updater.Node:
    node = setup.fake.node
    node.clock = clock
    return node


def repository(setup: Setup) -> str:
    url: str = json.loads((setup.fake.root / updater.UPDATES_JSON).read_text())["repository"]
    return url


def first_due(jitter: int = 900) -> datetime.datetime:
    booted = T0 - datetime.timedelta(seconds=60)
    return booted + datetime.timedelta(seconds=draw(f"{MACHINE_ID} boot boot-1", jitter))


def test_no_check_is_due_the_tick_returns_without_the_network_or_tuf(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    clock.now = first_due() - datetime.timedelta(seconds=1)
    setup.fake.updates("http://127.0.0.1:9")  # nothing listens: a check would fail
    monkeypatch.setitem(sys.modules, "builder.node.tufclient", None)  # importing it fails
    report = tick.tick(node_at(setup, clock))
    assert report["checked"] is False and report["apply"] is None
    assert report["next_check"] == {
        "time": first_due().isoformat(timespec="seconds"), "why": "first check since boot",
    }  # fmt: skip
    assert not setup.fake.node.state_file.exists()


def test_a_due_tick_applies_records_the_run_and_reboots_into_what_it_staged(
    setup: Setup,
) -> None:
    setup.publish(make_image("0.1.0-3"))
    clock = Clock()
    clock.now = first_due()
    report = tick.tick(node_at(setup, clock))
    assert report["checked"] is True
    assert report["apply"]["result"] == "staged"
    assert report["reboot"] == {"rebooting": True, "version": "0.1.0-3",
                                "reason": "rebooting into 0.1.0-3"}  # fmt: skip
    assert setup.fake.rebooted == 1
    schedule = setup.state()["schedule"]
    assert (schedule["time"], schedule["result"], schedule["failures"]) == (
        clock.now.isoformat(timespec="seconds"), "ok", 0,
    )  # fmt: skip
    expected = clock.now + datetime.timedelta(
        seconds=3600 + draw(f"{MACHINE_ID} check {schedule['time']}", 900)
    )
    assert schedule["next"] == expected.isoformat(timespec="seconds")
    assert report["next_check"]["time"] == schedule["next"]


def test_the_nodeconfig_interval_and_jitter_decide(setup: Setup) -> None:
    setup.fake.updates(repository(setup), checkInterval=600, checkJitter=0)
    setup.publish()
    clock = Clock()
    clock.now = first_due(0)
    assert clock.now == T0 - datetime.timedelta(seconds=60)  # no jitter: at once after boot
    assert tick.tick(node_at(setup, clock))["checked"] is True
    clock.advance(599)
    assert tick.tick(node_at(setup, clock))["checked"] is False
    clock.advance(1)
    report = tick.tick(node_at(setup, clock))
    assert report["checked"] is True and report["apply"]["result"] == "nothing"
    assert report["reboot"] is None and setup.fake.rebooted == 0


def test_failed_runs_are_retried_sooner_with_backoff(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    setup.fake.updates("http://127.0.0.1:9")
    clock = Clock()
    clock.now = first_due()
    node = node_at(setup, clock)
    assert updatecli.main(["tick"], node) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == (
        f"next check: {(clock.now + datetime.timedelta(seconds=300)).isoformat()} "
        "(retry after a failed run)"
    )
    clock.advance(299)
    assert tick.tick(node)["checked"] is False
    clock.advance(1)
    report = tick.tick(node)
    assert report["apply"]["kind"] == "unreachable"
    assert setup.state()["schedule"]["failures"] == 2
    assert report["next_check"] == {
        "time": (clock.now + datetime.timedelta(seconds=600)).isoformat(timespec="seconds"),
        "why": "retry after a failed 2 runs in a row",
    }  # fmt: skip


def test_a_run_in_progress_is_left_alone(setup: Setup) -> None:
    clock = Clock()
    clock.now = first_due()
    node = node_at(setup, clock)
    with updater.locked(node):
        report = tick.tick(node)
    assert report["checked"] is True and report["apply"] is None
    assert report["detail"] == "another update run is in progress"
    assert load_state(node.state_file).schedule is None


def test_a_staged_version_waits_for_its_window_at_every_tick(setup: Setup) -> None:
    windows = [{"days": ["Sat"], "start": "02:00", "durationMinutes": 60}]
    setup.fake.updates(repository(setup), maintenanceWindows=windows)
    setup.publish(make_image("0.1.0-3"))
    clock = Clock()  # a Monday
    clock.now = first_due()
    node = node_at(setup, clock)
    report = tick.tick(node)
    assert report["apply"]["result"] == "staged" and report["reboot"]["rebooting"] is False
    clock.advance(300)
    report = tick.tick(node)
    assert report["checked"] is False and report["reboot"]["rebooting"] is False
    assert setup.fake.rebooted == 0
    clock.now = datetime.datetime(2026, 3, 7, 2, 30, tzinfo=datetime.UTC)
    assert tick.tick(node)["reboot"]["rebooting"] is True and setup.fake.rebooted == 1


def test_status_says_when_the_next_check_is(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = Clock()
    node = node_at(setup, clock)
    assert updatecli.main(["status", "--json"], node) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["next_check"] == {
        "time": first_due().isoformat(timespec="seconds"), "why": "first check since boot",
        "interval": 3600, "jitter": 900,
    }  # fmt: skip
    assert updatecli.main(["status"], node) == 0
    out = capsys.readouterr().out
    assert f"next check: {first_due().isoformat()} (first check since boot)" in out


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, (3600, 900, None)),
        ({"checkInterval": 600}, (600, 600, None)),  # the default jitter, at most the interval
        ({"checkInterval": 1800, "checkJitter": 0, "bandwidthLimit": 1 << 20},
         (1800, 0, 1 << 20)),
        # a hand-edited updates.json is kept within what the NodeConfig allows
        ({"checkInterval": 10, "checkJitter": 9999, "bandwidthLimit": 10}, (300, 300, 65536)),
        ({"checkInterval": "1h", "checkJitter": True, "bandwidthLimit": "1MiB"},
         (3600, 900, None)),
    ],
)  # fmt: skip
def test_updates_json_timing_defaults_and_bounds(
    setup: Setup, given: dict[str, object], expected: tuple[int | None, ...]
) -> None:
    setup.fake.updates(repository(setup), **given)
    config = updater.read_config(setup.fake.node)
    assert (config.interval, config.jitter, config.bandwidth) == expected


def test_the_interval_counts_from_the_end_of_a_long_run(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup.publish()
    clock = Clock()
    clock.now = first_due()
    apply = updater.apply

    def slow_apply(node: updater.Node) -> dict[str, object]:
        clock.advance(3 * 3600)  # a download held to its bandwidth limit
        return apply(node)

    monkeypatch.setattr(updater, "apply", slow_apply)
    tick.tick(node_at(setup, clock))
    assert setup.state()["schedule"]["time"] == clock.now.isoformat(timespec="seconds")
    clock.advance(60)
    assert tick.tick(node_at(setup, clock))["checked"] is False
