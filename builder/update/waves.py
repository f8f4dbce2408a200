"""`repo add --waves`: a wave schedule (shares of the fleet and delays) becomes a channel entry's
`waves` (seed bounds and UTC start times; rules and node side in builder/node/waves.py).

A schedule file is TOML, the shape of Bottlerocket's waves files, one table per wave, shares
cumulative and delays counted from the moment the version is added to the channel:

    [[waves]]
    start_after = "1h"        # or "1 hour", "2 days"; 0 is allowed
    fleet_percentage = 1      # of the fleet, cumulative, up to 100 (or seed_below = 1..2048)

`default` is Bottlerocket's default schedule (its default-waves.toml): 1 % after 1 hour, 5 %
after 4 hours, 15 % after 1 day, 40 % after 2 days, 60 % after 4 days, 90 % after 5 days and
everyone after 6 days. A share becomes the seed bound floor(share × 2048 / 100), at least 1.
"""

from __future__ import annotations

import datetime
import re
import tomllib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from builder.errors import HostbuildError
from builder.node.waves import SEEDS, Wave, format_time, parse_waves

DEFAULT = "default"
NONE = "none"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_WORDS = {"sec": "s", "second": "s", "min": "m", "minute": "m", "hour": "h", "day": "d",
          "week": "w"}  # fmt: skip
_DELAY = re.compile(r"^(0|[1-9][0-9]*) *([a-z]+)?$")
_HINT = (
    "a waves file is TOML: [[waves]] tables, each with start_after (e.g. '4h', '1 day') and "
    "fleet_percentage (0 < P <= 100) or seed_below (1..2048), both increasing, the last wave "
    "100 % (or seed_below 2048); or use --waves default or --waves none"
)


@dataclass(frozen=True)
class Step:
    """One wave of a schedule: seeds below `seed_below` may update `after` the version is added."""

    seed_below: int
    after: datetime.timedelta


Schedule = tuple[Step, ...]  # empty: no waves (every node at once)

DEFAULT_SCHEDULE: Schedule = tuple(
    Step(int(Fraction(share) * SEEDS / 100), datetime.timedelta(hours=hours))
    for hours, share in ((1, 1), (4, 5), (24, 15), (48, 40), (96, 60), (120, 90), (144, 100))
)


def parse_delay(text: Any) -> datetime.timedelta:
    """`4h`, `90m`, `1 day`, `2 days`, `0` (ValueError otherwise)."""
    m = _DELAY.match(text.strip().lower()) if isinstance(text, str) else None
    word = (m.group(2) or "") if m else ""
    unit = word if word in _UNITS else _WORDS.get(word.removesuffix("s"))
    if m is None or (unit is None and (word or m.group(1) != "0")):
        raise ValueError(
            f"start_after {text!r} is not a delay: a whole number and a unit s, m, h, d or w "
            "(or second, minute, hour, day, week), e.g. '4h' or '1 day'"
        )
    return datetime.timedelta(seconds=int(m.group(1)) * _UNITS.get(unit or "s", 1))


def load_schedule(spec: str) -> Schedule:
    """`default`, `none` (no waves) or the path of a waves file; HostbuildError if it is bad."""
    if spec == DEFAULT:
        return DEFAULT_SCHEDULE
    if spec == NONE:
        return ()
    path = Path(spec)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise HostbuildError(f"--waves {spec}: no such file", hint=_HINT) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise HostbuildError(f"{path}: not a waves file: {e}", hint=_HINT) from None
    try:
        return parse_schedule(data)
    except ValueError as e:
        raise HostbuildError(f"{path}: {e}", hint=_HINT) from None


def parse_schedule(data: Any) -> Schedule:
    """A waves file's content (TOML as a dict) as a schedule; ValueError says where and why."""
    if not isinstance(data, dict) or sorted(data) != ["waves"]:
        got = sorted(data) if isinstance(data, dict) else data
        raise ValueError(f"expected only a [[waves]] array of tables, got keys {got!r}")
    waves = data["waves"]
    if not isinstance(waves, list) or not waves:
        raise ValueError("waves must be a non-empty array of tables ([[waves]])")
    steps: list[Step] = []
    for index, item in enumerate(waves):
        here = f"waves[{index}]"
        if not isinstance(item, dict):
            raise ValueError(f"{here} is not a table")
        keys = set(item)
        shares = keys & {"fleet_percentage", "seed_below"}
        unknown = sorted(keys - {"fleet_percentage", "seed_below", "start_after"})
        if unknown or len(shares) != 1 or "start_after" not in keys:
            raise ValueError(
                f"{here} has keys {sorted(keys)!r}: it needs start_after and exactly one of "
                "fleet_percentage and seed_below, nothing else"
            )
        try:
            after = parse_delay(item["start_after"])
        except ValueError as e:
            raise ValueError(f"{here}: {e}") from None
        step = Step(_bound(here, item), after)
        if steps and step.seed_below <= steps[-1].seed_below:
            raise ValueError(
                f"{here} covers seeds below {step.seed_below}, not more than the wave before it "
                f"({steps[-1].seed_below}): shares are cumulative and increase"
            )
        if steps and step.after <= steps[-1].after:
            raise ValueError(
                f"{here} starts after {step.after}, not later than the wave before it "
                f"({steps[-1].after}): delays increase"
            )
        steps.append(step)
    if steps[-1].seed_below != SEEDS:
        raise ValueError(
            f"the last wave covers seeds below {steps[-1].seed_below}, not the whole fleet: "
            f"it must be fleet_percentage 100 (or seed_below {SEEDS})"
        )
    return tuple(steps)


def _bound(here: str, item: dict[str, Any]) -> int:
    if "seed_below" in item:
        bound = item["seed_below"]
        if not isinstance(bound, int) or isinstance(bound, bool) or not 1 <= bound <= SEEDS:
            raise ValueError(f"{here}.seed_below must be an integer 1..{SEEDS}, got {bound!r}")
        return bound
    share = item["fleet_percentage"]
    if not isinstance(share, int | float) or isinstance(share, bool) or not 0 < share <= 100:
        raise ValueError(f"{here}.fleet_percentage must be a number 0 < P <= 100, got {share!r}")
    return max(1, int(Fraction(str(share)) * SEEDS / 100))


def waves_at(schedule: Schedule, added: datetime.datetime) -> tuple[Wave, ...]:
    """The schedule's waves for a version added at `added`, checked by the node's own rules."""
    raw = [{"seed_below": s.seed_below, "start": format_time(added + s.after)} for s in schedule]
    return parse_waves(raw or None)


def describe(waves: tuple[Wave, ...]) -> str:
    """`7 waves: 0.977 % of seeds from 2026-01-01T01:00:00Z, all from 2026-01-07T00:00:00Z`."""
    if not waves:
        return "no waves (every node at once)"
    share = f"{waves[0].seed_below * 100 / SEEDS:.3g} %"
    return (f"{len(waves)} wave(s): {share} of seeds from {format_time(waves[0].start)}, all "
            f"from {format_time(waves[-1].start)}")  # fmt: skip
