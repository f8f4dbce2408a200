"""Maintenance windows as updates.json carries them: days, a UTC start, a duration.

A window opens at `start` on each of its days and lasts `durationMinutes` (at most a day), so
one opening late on Saturday runs into Sunday. No windows: any time will do.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Sequence
from typing import Any

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _openings(
    windows: Sequence[dict[str, Any]], first: datetime.date, days: int
) -> Iterator[tuple[datetime.datetime, datetime.datetime]]:
    for offset in range(days):
        day = first + datetime.timedelta(days=offset)
        for w in windows:
            if DAYS[day.weekday()] not in w.get("days", DAYS):
                continue
            hours, minutes = (int(part) for part in str(w["start"]).split(":"))
            start = datetime.datetime.combine(
                day, datetime.time(hours, minutes), tzinfo=datetime.UTC
            )
            yield start, start + datetime.timedelta(minutes=int(w["durationMinutes"]))


def in_window(windows: Sequence[dict[str, Any]], now: datetime.datetime) -> bool:
    """Whether `now` (aware) lies in one of `windows` (always, when there are none)."""
    if not windows:
        return True
    now = now.astimezone(datetime.UTC)
    yesterday = now.date() - datetime.timedelta(days=1)
    return any(start <= now < end for start, end in _openings(windows, yesterday, 2))


def next_window(
    windows: Sequence[dict[str, Any]], now: datetime.datetime
) -> datetime.datetime | None:
    """When the next window opens after `now` (None without windows)."""
    now = now.astimezone(datetime.UTC)
    starts = [start for start, _ in _openings(windows, now.date(), 8) if start > now]
    return min(starts, default=None)
