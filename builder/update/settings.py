"""The repository's own settings (expiry period per role) and durations such as `365d`, `12h`.

They live in `DIR/hostbuild-repo.json`, which is not published: only `metadata/` and `targets/`
are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType

from builder.errors import HostbuildError
from builder.update.files import atomic_write
from builder.update.keys import ROLES

SETTINGS = "hostbuild-repo.json"
FORMAT = 1

DEFAULT_EXPIRY = MappingProxyType({
    "root": timedelta(days=365),
    "targets": timedelta(days=90),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
})  # fmt: skip
DEFAULT_THRESHOLD = 1

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^([1-9][0-9]*)([smhdw])$")


def parse_duration(text: str) -> timedelta:
    """`90s`, `30m`, `12h`, `7d`, `2w`."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(
            f"{text!r} is not a duration: a whole number and a unit s, m, h, d or w "
            "(e.g. '12h', '7d', '365d')"
        )
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]])


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Settings:
    expiry: Mapping[str, timedelta] = field(default_factory=lambda: DEFAULT_EXPIRY)

    def to_json(self) -> bytes:
        record = {"format": FORMAT, "expiry": {r: format_duration(self.expiry[r]) for r in ROLES}}
        return (json.dumps(record, indent=2) + "\n").encode()


def load_settings(repository: Path) -> Settings:
    path = repository / SETTINGS
    try:
        record = json.loads(path.read_text())
        if record.get("format") != FORMAT:
            raise ValueError(f"format {record.get('format')!r}, this hostbuild reads {FORMAT}")
        expiry = {role: parse_duration(str(record["expiry"][role])) for role in ROLES}
    except FileNotFoundError as e:
        raise HostbuildError(
            f"{repository} is not a hostbuild update repository: {path.name} is missing",
            hint="create one with: hostbuild repo init DIR",
        ) from e
    except (ValueError, KeyError, TypeError) as e:
        raise HostbuildError(
            f"{path}: unreadable: {e}",
            hint='expected {"format": 1, "expiry": {ROLE: DURATION, ...}} for roles '
            + ", ".join(ROLES),
        ) from e
    return Settings(MappingProxyType(expiry))


def save_settings(repository: Path, settings: Settings) -> None:
    atomic_write(repository / SETTINGS, settings.to_json())
