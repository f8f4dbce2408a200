"""This node's wave seed: a number in 0..2047 drawn once at random and kept on /var, unless the
NodeConfig pins one (`updates.waveSeed`, as Bottlerocket's `settings.updates.seed`).

The seed places the node in a version's waves (builder/node/waves.py). It survives updates and
reboots (it lives on /var, not in a slot), so a node keeps its place in every rollout; a file
that cannot be read or holds anything but a seed in range is replaced by a new draw, logged. A
pinned seed leaves the kept one alone: without the pin the node goes back to its own draw.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .updatestate import UpdateError, write_atomic
from .waves import SEEDS

logger = logging.getLogger(__name__)

SEED_FILE = Path("var/lib/hostbuild/update/seed")  # below the node's root
PINNED, DRAWN = "nodeconfig", "drawn"  # where a node's seed comes from


def pinned_seed(value: Any) -> int | None:
    """updates.json's `waveSeed` (checked when the NodeConfig was rendered): the seed, or None
    when there is none or it is no seed in range (a hand-edited file; logged)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < SEEDS:
        return value
    logger.warning("waveSeed %r in updates.json is not a seed in 0..%d: ignored", value, SEEDS - 1)
    return None


def node_seed(path: Path, pinned: int | None) -> int:
    """The pinned seed, else the one kept in `path` (drawn first if need be: see load_seed)."""
    return pinned if pinned is not None else load_seed(path)


def seed_status(path: Path, pinned: int | None) -> tuple[int | None, str | None]:
    """The seed and where it comes from (PINNED or DRAWN); (None, None) before the first draw.
    Changes nothing."""
    if pinned is not None:
        return pinned, PINNED
    kept = read_seed(path)
    return kept, (DRAWN if kept is not None else None)


def read_seed(path: Path) -> int | None:
    """The kept seed, or None if there is none or it is not a seed (changes nothing)."""
    try:
        return _parse(path.read_bytes())
    except (OSError, ValueError):
        return None


def load_seed(path: Path, draw: Callable[[int], int] = secrets.randbelow) -> int:
    """The kept seed; drawn (`draw(2048)`) and written atomically first if missing or bad.

    UpdateError (system) if a new seed cannot be kept: a node must not draw again each time.
    """
    try:
        return _parse(path.read_bytes())
    except FileNotFoundError:
        why = None
    except (OSError, ValueError) as e:
        why = str(e)
    seed = draw(SEEDS)
    if not 0 <= seed < SEEDS:
        raise ValueError(f"the seed drawn, {seed}, is not in 0..{SEEDS - 1}")
    try:
        write_atomic(path, f"{seed}\n".encode(), 0o644)
    except OSError as e:  # an unkept seed would be drawn again at each check: refuse instead
        raise UpdateError("system", f"keeping the update seed in {path}: {e}") from None
    if why is None:
        logger.info("update seed %d drawn and kept in %s", seed, path)
    else:
        logger.warning("update seed in %s replaced by a new draw, %d: %s", path, seed, why)
    return seed


def _parse(data: bytes) -> int:
    text = data.decode("ascii", errors="replace").strip()
    if not text.isdigit() or len(text) > 4 or str(int(text)) != text or int(text) >= SEEDS:
        raise ValueError(f"{text[:20]!r} is not a seed in 0..{SEEDS - 1}")
    return int(text)
