"""Maintenance windows: days, a UTC start and a duration, crossing midnight."""

from __future__ import annotations

import datetime

import pytest

from builder.node.windows import in_window, next_window

SAT_NIGHT = {"days": ["Sat"], "start": "23:00", "durationMinutes": 180}


def at(day: int, hour: int, minute: int = 0) -> datetime.datetime:
    """January 2026: the 3rd is a Saturday."""
    return datetime.datetime(2026, 1, day, hour, minute, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("moment", "inside"),
    [
        (at(3, 22, 59), False),
        (at(3, 23, 0), True),
        (at(4, 1, 59), True),  # Sunday morning: the Saturday window runs on
        (at(4, 2, 0), False),
        (at(10, 23, 30), True),
        (at(4, 23, 30), False),  # not on Sundays
    ],
)
def test_a_window_runs_from_its_start_for_its_duration(
    moment: datetime.datetime, inside: bool
) -> None:
    assert in_window([SAT_NIGHT], moment) is inside


def test_no_windows_means_any_time() -> None:
    assert in_window([], at(5, 12))
    assert next_window([], at(5, 12)) is None


def test_every_day_without_days_and_local_times_are_converted() -> None:
    daily = {"start": "02:00", "durationMinutes": 60}
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    assert in_window([daily], datetime.datetime(2026, 1, 6, 4, 30, tzinfo=plus_two))
    assert not in_window([daily], at(6, 4, 30))


def test_the_next_window() -> None:
    assert next_window([SAT_NIGHT], at(5, 12)) == at(10, 23)
    assert next_window([SAT_NIGHT, {"days": ["Tue"], "start": "01:00", "durationMinutes": 60}],
                       at(5, 12)) == at(6, 1)  # fmt: skip
