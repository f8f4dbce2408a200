"""`repo status`: what it warns of (its JSON shape is in test_repo_cli.py)."""

from __future__ import annotations

import datetime
from pathlib import Path

from builder.update.repository import open_repository
from builder.update.status import repository_status
from tests.updaterepo import ROLES, new_repository


def test_status_warns_of_what_expires_soon(tmp_path: Path) -> None:
    path, keys = new_repository(tmp_path)
    repo = open_repository(path)
    expires = {r: repo.role(r).signed.expires for r in ROLES}
    assert repository_status(path, keys)["warnings"] == []
    # a quarter of the period left: 6 hours of a timestamp's day
    at = expires["timestamp"] - datetime.timedelta(hours=5)
    assert repository_status(path, keys, at)["warnings"] == [
        f"timestamp expires in 5h 0m: run hostbuild repo refresh {path} (the cron job)"
    ]
    at = expires["targets"] - datetime.timedelta(days=10)
    assert repository_status(path, keys, at)["warnings"] == [
        f"targets expires in 10d 0h: run hostbuild repo refresh {path} --role targets (with the "
        "targets key)",
        f"snapshot expired at {expires['snapshot'].isoformat()}: run hostbuild repo refresh "
        f"{path} (the cron job)",
        f"timestamp expired at {expires['timestamp'].isoformat()}: run hostbuild repo refresh "
        f"{path} (the cron job)",
    ]
