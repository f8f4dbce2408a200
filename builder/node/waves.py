"""Waves: a channel entry may open a version to the fleet over time, by the nodes' seeds.

Each node keeps a seed in 0..2047 (builder/node/seed.py). A version's `waves` list, in a
channel entry, is `[{"seed_below": N, "start": "YYYY-MM-DDTHH:MM:SSZ"}, ...]`, seeds and start
times strictly increasing, the last wave `seed_below` 2048 (every seed is in a wave). A node is
in the first wave whose `seed_below` is above its seed, and takes the version once that wave's
start has passed: no coordinator is needed for a fleet to update gradually (Bottlerocket's
waves). Pure functions; the build side (builder/update/waves.py) writes waves through these.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SEEDS = 2048  # seeds are 0..SEEDS-1
MAX_WAVES = 64


@dataclass(frozen=True)
class Wave:
    seed_below: int  # the wave holds the seeds from the previous wave's bound up to this one
    start: datetime.datetime  # aware, UTC

    def as_dict(self) -> dict[str, Any]:
        return {"seed_below": self.seed_below, "start": format_time(self.start)}


def format_time(moment: datetime.datetime) -> str:
    """RFC 3339 in UTC, to the second: `2026-01-31T12:00:00Z`."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any, where: str) -> datetime.datetime:
    """An RFC 3339 time in UTC (`...Z` or `...+00:00`); ValueError naming `where` otherwise."""
    shape = "an RFC 3339 time in UTC like '2026-01-31T12:00:00Z'"
    if not isinstance(text, str) or "T" not in text:
        raise ValueError(f"{where} must be {shape}, got {text!r}")
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{where} must be {shape}, got {text!r}") from None
    if moment.utcoffset() != datetime.timedelta(0):
        raise ValueError(f"{where} must be {shape} (offset Z or +00:00), got {text!r}")
    return moment.astimezone(datetime.UTC)


def parse_waves(data: Any, where: str = "waves") -> tuple[Wave, ...]:
    """A channel entry's `waves` list checked (None: no waves); ValueError says where and why."""
    if data is None:
        return ()
    if not isinstance(data, list) or not data:
        raise ValueError(f"{where} must be a non-empty list of waves or absent, got {data!r}")
    if len(data) > MAX_WAVES:
        raise ValueError(f"{where} has {len(data)} waves, at most {MAX_WAVES} are allowed")
    waves: list[Wave] = []
    for index, item in enumerate(data):
        here = f"{where}[{index}]"
        if not isinstance(item, dict) or sorted(item) != ["seed_below", "start"]:
            got = sorted(item) if isinstance(item, dict) else item
            raise ValueError(f"{here} must be an object with seed_below and start, got {got!r}")
        bound = item["seed_below"]
        if not isinstance(bound, int) or isinstance(bound, bool) or not 1 <= bound <= SEEDS:
            raise ValueError(f"{here}.seed_below must be an integer 1..{SEEDS}, got {bound!r}")
        wave = Wave(bound, parse_time(item["start"], f"{here}.start"))
        if waves and wave.seed_below <= waves[-1].seed_below:
            raise ValueError(
                f"{here}.seed_below {bound} is not above the previous wave's "
                f"{waves[-1].seed_below} (seeds increase from wave to wave)"
            )
        if waves and wave.start <= waves[-1].start:
            raise ValueError(
                f"{here}.start {format_time(wave.start)} is not after the previous wave's "
                f"{format_time(waves[-1].start)} (start times increase from wave to wave)"
            )
        waves.append(wave)
    if waves[-1].seed_below != SEEDS:
        raise ValueError(
            f"{where}: the last wave's seed_below is {waves[-1].seed_below}, it must be {SEEDS} "
            "so that every seed is in a wave"
        )
    return tuple(waves)


def wave_of(waves: Sequence[Wave], seed: int) -> tuple[int, Wave]:
    """The wave (numbered from 1) of `seed`; `waves` checked by parse_waves."""
    if not 0 <= seed < SEEDS:
        raise ValueError(f"seed {seed} is not in 0..{SEEDS - 1}")
    return next((n, w) for n, w in enumerate(waves, 1) if seed < w.seed_below)


def not_started(
    waves: Sequence[Wave], seed: int, now: datetime.datetime
) -> tuple[str, datetime.datetime] | None:
    """Why a node of `seed` does not take the version at `now`, and when it will (None: it may)."""
    if not waves:
        return None
    number, wave = wave_of(waves, seed)
    if now >= wave.start:
        return None
    return (
        f"wave {number} for seeds below {wave.seed_below} starts at {format_time(wave.start)} "
        f"(this node's seed is {seed})",
        wave.start,
    )
