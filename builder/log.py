"""Logging: console verbosity from -v/-q, a DEBUG log file per build, and timed steps."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

_depth = 0
_log_file: Path | None = None
_CONSOLE = "hostbuild-console"


def setup_logging(verbosity: int) -> None:
    """Console logging on stderr: WARNING at -q, INFO by default, DEBUG at -v."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    for handler in list(root.handlers):
        if handler.get_name() == _CONSOLE:
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_CONSOLE)
    level = logging.INFO if verbosity == 0 else logging.DEBUG if verbosity > 0 else logging.WARNING
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)


@contextlib.contextmanager
def log_file(path: Path) -> Iterator[Path]:
    """Write every record at DEBUG into `path` while the block runs."""
    global _log_file
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous, _log_file = _log_file, path
    try:
        yield path
    finally:
        _log_file = previous
        root.removeHandler(handler)
        handler.close()


def current_log_file() -> Path | None:
    """The DEBUG log of the build in progress, named in every error."""
    return _log_file


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """Log a build phase: one line when it starts, one with its elapsed time when it ends."""
    global _depth
    indent = "  " * _depth
    logger.info("%s▸ %s", indent, title)
    start = time.monotonic()
    _depth += 1
    try:
        yield
    except BaseException:
        logger.info("%s✗ %s failed after %.1fs", indent, title, time.monotonic() - start)
        raise
    finally:
        _depth -= 1
    logger.info("%s✓ %s (%.1fs)", indent, title, time.monotonic() - start)
