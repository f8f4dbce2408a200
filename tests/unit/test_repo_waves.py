"""`repo add --waves`: schedules (files, default, none) and the waves they give a channel entry."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

import pytest

from builder.errors import HostbuildError
from builder.node.waves import format_time
from builder.update.images import add_build, read_channel
from builder.update.keys import KeyStore
from builder.update.repository import open_repository
from builder.update.waves import (
    DEFAULT_SCHEDULE,
    Step,
    load_schedule,
    parse_delay,
    parse_schedule,
    waves_at,
)
from tests.conftest import Cli
from tests.updaterepo import make_build, new_repository, tree

UTC = datetime.UTC
T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = datetime.timedelta(hours=1)


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, KeyStore]:
    return new_repository(tmp_path)


def entry_of(path: Path, version: str = "0.1.0-1") -> dict[str, Any]:
    channel = read_channel(open_repository(path), "stable")
    assert channel is not None
    found = channel.entry(version)
    assert found is not None
    return found.as_dict()


def waves_file(tmp_path: Path, text: str, name: str = "waves.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


THREE = """
[[waves]]
start_after = "0"
fleet_percentage = 1

[[waves]]
start_after = "4 hours"
seed_below = 512

[[waves]]
start_after = "1d"
fleet_percentage = 100
"""


def test_the_default_is_bottlerockets_default_schedule() -> None:
    hours = [s.after / HOUR for s in DEFAULT_SCHEDULE]
    shares = [s.seed_below * 100 / 2048 for s in DEFAULT_SCHEDULE]
    assert hours == [1, 4, 24, 48, 96, 120, 144]
    assert [round(s, 1) for s in shares] == [1.0, 5.0, 15.0, 40.0, 60.0, 90.0, 100.0]
    assert [s.seed_below for s in DEFAULT_SCHEDULE] == [20, 102, 307, 819, 1228, 1843, 2048]
    assert load_schedule("default") == DEFAULT_SCHEDULE
    assert load_schedule("none") == ()


def test_a_schedule_file(tmp_path: Path) -> None:
    schedule = load_schedule(os.fspath(waves_file(tmp_path, THREE)))
    assert schedule == (Step(20, 0 * HOUR), Step(512, 4 * HOUR), Step(2048, 24 * HOUR))
    waves = waves_at(schedule, T0)
    assert [w.as_dict() for w in waves] == [
        {"seed_below": 20, "start": "2026-03-01T12:00:00Z"},
        {"seed_below": 512, "start": "2026-03-01T16:00:00Z"},
        {"seed_below": 2048, "start": "2026-03-02T12:00:00Z"},
    ]
    assert waves_at((), T0) == ()


@pytest.mark.parametrize(
    ("text", "delay"),
    [("0", 0), ("0h", 0), ("90s", 90), ("30m", 1800), ("4h", 14400), ("1 hour", 3600),
     ("2 hours", 7200), ("1 day", 86400), ("2days", 172800), ("1w", 604800), ("3 Weeks", 1814400),
     ("5 minutes", 300), ("10 secs", 10)],
)  # fmt: skip
def test_delays(text: str, delay: int) -> None:
    assert parse_delay(text) == datetime.timedelta(seconds=delay)


@pytest.mark.parametrize("bad", ["", "1", "h", "-1h", "01h", "1.5h", "1 fortnight", "1 hourss", 4])
def test_bad_delays(bad: Any) -> None:
    with pytest.raises(ValueError, match="is not a delay: a whole number and a unit"):
        parse_delay(bad)


def wave(after: str = "1h", **share: Any) -> dict[str, Any]:
    return {"start_after": after, **(share or {"fleet_percentage": 100})}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "expected only a [[waves]] array of tables, got keys []"),
        ({"waves": [wave()], "x": 1}, "got keys ['waves', 'x']"),
        ({"waves": []}, "waves must be a non-empty array of tables"),
        ({"waves": ["x"]}, "waves[0] is not a table"),
        ({"waves": [{"fleet_percentage": 100}]}, "waves[0] has keys ['fleet_percentage']: it "
         "needs start_after and exactly one of fleet_percentage and seed_below, nothing else"),
        ({"waves": [wave(fleet_percentage=100, seed_below=2048)]}, "exactly one of"),
        ({"waves": [wave(percent=100)]}, "waves[0] has keys ['percent', 'start_after']"),
        ({"waves": [wave("soon")]}, "waves[0]: start_after 'soon' is not a delay"),
        ({"waves": [wave(fleet_percentage=0)]}, "waves[0].fleet_percentage must be a number "
         "0 < P <= 100, got 0"),
        ({"waves": [wave(fleet_percentage=101)]}, "0 < P <= 100, got 101"),
        ({"waves": [wave(fleet_percentage="5")]}, "0 < P <= 100, got '5'"),
        ({"waves": [wave(seed_below=0)]}, "waves[0].seed_below must be an integer 1..2048, got 0"),
        ({"waves": [wave(seed_below=4096)]}, "1..2048, got 4096"),
        ({"waves": [wave(fleet_percentage=50)]}, "the last wave covers seeds below 1024, not the "
         "whole fleet: it must be fleet_percentage 100 (or seed_below 2048)"),
        ({"waves": [wave("1h", fleet_percentage=5), wave("2h", fleet_percentage=5), wave("3h")]},
         "waves[1] covers seeds below 102, not more than the wave before it (102): shares are "
         "cumulative and increase"),
        ({"waves": [wave("1h", fleet_percentage=1), wave("1h", fleet_percentage=1.01), wave()]},
         "waves[1] covers seeds below 20, not more than the wave before it (20)"),
        ({"waves": [wave("2h", fleet_percentage=5), wave("1h")]}, "waves[1] starts after 1:00:00, "
         "not later than the wave before it (2:00:00): delays increase"),
    ],
)  # fmt: skip
def test_bad_schedules_say_where_and_what_is_allowed(data: Any, message: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_schedule(data)
    assert message in str(e.value)


def test_a_fractional_share_rounds_down_to_at_least_one_seed() -> None:
    data = {
        "waves": [wave("0", fleet_percentage=0.01), wave("1h", fleet_percentage=12.5), wave("2h")]
    }
    assert [s.seed_below for s in parse_schedule(data)] == [1, 256, 2048]


def test_schedule_file_errors_name_the_file_and_give_the_shape(tmp_path: Path) -> None:
    with pytest.raises(HostbuildError) as e:
        load_schedule(os.fspath(tmp_path / "missing.toml"))
    assert e.value.message == f"--waves {tmp_path / 'missing.toml'}: no such file"
    assert e.value.hint is not None and "[[waves]] tables" in e.value.hint
    bad = waves_file(tmp_path, "[[waves]\n")
    with pytest.raises(HostbuildError, match=rf"^{bad}: not a waves file: "):
        load_schedule(os.fspath(bad))
    short = waves_file(tmp_path, '[[waves]]\nstart_after = "1h"\nfleet_percentage = 50\n')
    with pytest.raises(HostbuildError, match=rf"^{short}: the last wave covers seeds below 1024"):
        load_schedule(os.fspath(short))


# repo add


def test_add_with_waves_writes_them_from_the_time_it_was_added(
    tmp_path: Path, repo: tuple[Path, KeyStore]
) -> None:
    path, keys = repo
    result = add_build(path, keys, make_build(tmp_path / "b1"), now=T0, waves=DEFAULT_SCHEDULE)
    assert result.changed and not result.rewaved
    waves = entry_of(path)["waves"]
    assert waves == [{"seed_below": s.seed_below, "start": format_time(T0 + s.after)}
                     for s in DEFAULT_SCHEDULE]  # fmt: skip
    assert waves[0] == {"seed_below": 20, "start": "2026-03-01T13:00:00Z"}
    assert waves[-1] == {"seed_below": 2048, "start": "2026-03-07T12:00:00Z"}


def test_add_without_waves_writes_no_waves_key(tmp_path: Path, repo: tuple[Path, KeyStore]) -> None:
    path, keys = repo
    add_build(path, keys, make_build(tmp_path / "b1"), now=T0)
    assert "waves" not in entry_of(path)


def test_the_same_build_with_the_same_waves_later_changes_nothing(
    tmp_path: Path, repo: tuple[Path, KeyStore]
) -> None:
    path, keys = repo
    build = make_build(tmp_path / "b1")
    add_build(path, keys, build, now=T0, waves=DEFAULT_SCHEDULE)
    before = tree(path)
    for waves in (DEFAULT_SCHEDULE, None):  # None: keep the entry's waves
        result = add_build(path, keys, build, now=T0 + 30 * HOUR, waves=waves)
        assert not result.changed and result.signed == {}
        assert result.waves == waves_at(DEFAULT_SCHEDULE, T0)
        assert tree(path) == before


def test_the_same_build_with_other_waves_changes_only_its_waves(
    tmp_path: Path, repo: tuple[Path, KeyStore]
) -> None:
    path, keys = repo
    build = make_build(tmp_path / "b1")
    add_build(path, keys, build, now=T0, waves=DEFAULT_SCHEDULE)
    before = entry_of(path)
    fast = load_schedule(os.fspath(waves_file(tmp_path, THREE)))
    result = add_build(path, keys, build, now=T0 + 2 * HOUR, waves=fast)
    assert result.changed and result.rewaved
    assert result.targets == ["channels/stable.json"]  # no payload file again
    assert result.signed == {"targets": 3, "snapshot": 3, "timestamp": 3}
    after = entry_of(path)
    assert after["waves"] == [w.as_dict() for w in waves_at(fast, T0)]  # from when it was added
    assert {k: v for k, v in after.items() if k != "waves"} == {
        k: v for k, v in before.items() if k != "waves"
    }
    assert add_build(path, keys, build, waves=()).rewaved
    assert "waves" not in entry_of(path)


def test_waves_of_a_channel_manifest_are_read_back_and_checked(
    tmp_path: Path, repo: tuple[Path, KeyStore]
) -> None:
    from builder.update.channel import parse_channel

    path, keys = repo
    add_build(path, keys, make_build(tmp_path / "b1"), now=T0, waves=DEFAULT_SCHEDULE)
    channel = read_channel(open_repository(path), "stable")
    assert channel is not None
    data = channel.as_dict()
    assert parse_channel(json.dumps(data).encode(), "x").as_dict() == data
    data["versions"][0]["waves"][-1]["seed_below"] = 2000
    with pytest.raises(HostbuildError, match=r"^x: not a channel manifest: versions\[0\]\.waves: "
                       "the last wave's seed_below is 2000"):  # fmt: skip
        parse_channel(json.dumps(data).encode(), "x")


def init(run_cli: Cli, tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    result = run_cli("-q", "repo", "init", os.fspath(path))
    assert result.exit_code == 0, result.output
    return path


def test_repo_add_waves_on_the_command_line(run_cli: Cli, tmp_path: Path) -> None:
    path = init(run_cli, tmp_path)
    build = os.fspath(make_build(tmp_path / "b1"))
    result = run_cli("-q", "repo", "add", os.fspath(path), "--image", build, "--waves", "default")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        "added worker-standin 0.1.0-1 to channel 'stable' in 7 wave(s): 0.977 % of seeds from "
    )
    result = run_cli("-q", "repo", "add", os.fspath(path), "--image", build, "--waves", "default")
    assert result.output == "worker-standin 0.1.0-1 is on channel 'stable' already: unchanged\n"
    three = os.fspath(waves_file(tmp_path, THREE))
    result = run_cli("-q", "repo", "add", os.fspath(path), "--image", build, "--waves", three,
                     "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["changed"] and record["waves_changed"]
    assert [w["seed_below"] for w in record["waves"]] == [20, 512, 2048]
    result = run_cli("-q", "repo", "add", os.fspath(path), "--image", build, "--waves", "none")
    assert result.output.startswith(
        "worker-standin 0.1.0-1 on channel 'stable': waves now no waves (every node at once): "
    )


def test_repo_add_with_a_bad_waves_file_changes_nothing(run_cli: Cli, tmp_path: Path) -> None:
    path = init(run_cli, tmp_path)
    before = tree(path)
    bad = waves_file(tmp_path, '[[waves]]\nstart_after = "1h"\nfleet_percentage = 150\n')
    result = run_cli("-q", "repo", "add", os.fspath(path), "--image",
                     os.fspath(make_build(tmp_path / "b1")), "--waves", os.fspath(bad))  # fmt: skip
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == (
        f"Error: {bad}: waves[0].fleet_percentage must be a number 0 < P <= 100, got 150"
    )
    assert "--waves default or --waves none" in result.output
    assert tree(path) == before


def test_status_shows_how_far_each_rollout_is(tmp_path: Path, repo: tuple[Path, KeyStore]) -> None:
    from builder.update.status import format_status, repository_status

    path, keys = repo
    add_build(path, keys, make_build(tmp_path / "b1", "0.1.0-1"), now=T0)
    add_build(path, keys, make_build(tmp_path / "b2", "0.1.0-2"), now=T0, waves=DEFAULT_SCHEDULE)
    for hours, below in ((0.5, 0), (1, 20), (30, 307), (144, 2048)):
        status = repository_status(path, keys, now=T0 + hours * HOUR)
        rollouts = status["channels"]["stable"]["rollouts"]
        assert list(rollouts) == ["0.1.0-2"]  # a version without waves has no rollout
        assert rollouts["0.1.0-2"]["open_seeds_below"] == below
        assert rollouts["0.1.0-2"]["complete_at"] == "2026-03-07T12:00:00Z"
    lines = format_status(repository_status(path, keys, now=T0 + 30 * HOUR))
    assert "  0.1.0-2 in waves: 15 % of seeds open, all from 2026-03-07T12:00:00Z" in lines
