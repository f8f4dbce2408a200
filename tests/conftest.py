"""Shared fixtures: the repository as working directory, a CLI runner, capability probes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from builder.cli import cli

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"


def skip_marked(items: list[pytest.Item], marker: str, reason: str | None) -> None:
    """Skip the collected tests carrying `marker` when a capability probe gave a reason."""
    if reason:
        for item in items:
            if marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages name files relative to the working directory: run every test from the repo."""
    monkeypatch.chdir(REPO)


class Cli:
    """Invoke `hostbuild` in-process with an isolated cache directory."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.runner = CliRunner()

    def __call__(self, *args: str) -> Result:
        argv = ["--cache-dir", os.fspath(self.cache), *args]
        return self.runner.invoke(cli, argv, catch_exceptions=False)


@pytest.fixture
def run_cli(tmp_path: Path) -> Iterator[Cli]:
    yield Cli(tmp_path / "cache")
