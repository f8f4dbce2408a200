"""Polling a Describe call until a resource reaches a state, with a deadline."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection

from builder.errors import HostbuildError

logger = logging.getLogger(__name__)


def wait_for_state(
    what: str, state: Callable[[], tuple[str, str]], *, ready: str, failed: Collection[str],
    timeout: float, interval: float, hint: str,
) -> None:  # fmt: skip
    """Poll `state()` (state, detail) until it is `ready`; raise on a failed state or timeout."""
    deadline = time.monotonic() + timeout
    while True:
        current, detail = state()
        if current == ready:
            return
        if current in failed:
            reason = f": {detail}" if detail else ""
            raise HostbuildError(f"{what} is {current!r}{reason}", hint=hint)
        if time.monotonic() >= deadline:
            raise HostbuildError(
                f"{what} is still {current!r} after {timeout:.0f}s",
                hint=f"it may still finish: {hint}",
            )
        logger.debug("%s is %s, waiting", what, current)
        time.sleep(interval)
