"""When the update timer's tick looks for a newer version: an interval, a jitter, backoff.

A check is due at the last run's time + the interval + a jitter drawn for this node and that
run (from the machine ID and the run's time, so every tick and `update status` compute the
same moment), and first in a boot at boot + a jitter. A failed run is retried sooner.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RETRY = 300  # seconds after a failed run; doubles with each failure, up to the interval


@dataclass(frozen=True)
class Due:
    """When the next check is due (None: now, nothing says otherwise) and why."""

    at: datetime.datetime | None
    why: str

    def reached(self, moment: datetime.datetime) -> bool:
        return self.at is None or moment >= self.at

    def describe(self) -> dict[str, Any]:
        when = self.at.isoformat(timespec="seconds") if self.at else None
        return {"time": when, "why": self.why}


def draw(seed: str, jitter: int) -> int:
    """Whole seconds in [0, jitter], uniform, the same for the same seed."""
    if jitter <= 0:
        return 0
    value = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big")
    return value * (jitter + 1) >> 64


def retry_delay(failures: int, interval: int) -> int:
    """Seconds from the `failures`-th failed run in a row to the next try."""
    return min(interval, RETRY << min(max(failures, 1) - 1, 16))


def parse_time(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def next_check(
    record: Mapping[str, Any] | None, interval: int, jitter: int, machine_id: str,
    boot_id: str, booted: datetime.datetime | None,
) -> Due:  # fmt: skip
    """When the tick should check next, from its last run's `record` (state.json `schedule`).

    `booted` is when this boot began (None: unknown, then a first check is due at once).
    """
    last = parse_time(record.get("time")) if record else None
    if record is None or last is None or record.get("boot_id") != boot_id:
        if booted is None:
            return Due(None, "first check since boot")
        delay = draw(f"{machine_id} boot {boot_id}", jitter)
        return Due(booted + datetime.timedelta(seconds=delay), "first check since boot")
    failures = record.get("failures")
    if isinstance(failures, int) and failures > 0:
        delay = retry_delay(failures, interval)
        runs = "run" if failures == 1 else f"{failures} runs in a row"
        return Due(last + datetime.timedelta(seconds=delay), f"retry after a failed {runs}")
    delay = interval + draw(f"{machine_id} check {record['time']}", jitter)
    return Due(last + datetime.timedelta(seconds=delay), "interval")


def record_run(
    previous: Mapping[str, Any] | None, moment: datetime.datetime, boot_id: str,
    error: str | None,
) -> dict[str, Any]:  # fmt: skip
    """The `schedule` record after a run at `moment` that failed with `error` (None: ok)."""
    failures = 0
    if error is not None:
        same_boot = previous is not None and previous.get("boot_id") == boot_id
        before = previous.get("failures") if previous is not None and same_boot else 0
        failures = (before if isinstance(before, int) else 0) + 1
    return {
        "time": moment.astimezone(datetime.UTC).isoformat(timespec="seconds"),
        "boot_id": boot_id, "result": "ok" if error is None else "error",
        "failures": failures, "detail": error,
    }  # fmt: skip
