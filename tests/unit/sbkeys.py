"""Key set fixtures for the unit tests (made once per module: RSA key generation is slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.secureboot import make_keyset


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keyset(tmp_path_factory.mktemp("keys") / "fleet")


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keyset(tmp_path_factory.mktemp("keys") / "other", "Other fleet")
