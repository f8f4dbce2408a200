"""Named points of `update apply` where a crash-safety test stops the node dead.

With HOSTBUILD_FAILPOINT=NAME in the updater's environment, reaching point NAME writes NAME to
/run/hostbuild-failpoint and sleeps until the machine is killed (tests/vm/test_update_faults.py
kills QEMU then: a power cut at that very point). A failpoint changes nothing the updater does
before it, and without the variable (always, outside that test) `reached` returns at once.
The same idea as etcd's gofail or TiKV's fail-rs, reduced to "stop here".
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

ENV = "HOSTBUILD_FAILPOINT"
MARK = Path("/run/hostbuild-failpoint")
POINTS = (
    "download",  # half of the root payload downloaded
    "root-write",  # half of the root partition written
    "before-uki",  # the slot written, verified and named; its UKI not installed yet
    "uki-copy",  # half of the UKI written to its temporary file on the ESP
)
ACTIVE = os.environ.get(ENV)


def reached(name: str, when: bool = True, durable: Callable[[], None] | None = None) -> None:
    """Point `name` is reached (if `when`): stop here forever when it is the active one.

    `durable` runs first: it puts what is half-done on the disk (an fsync), the worst case a
    power cut can leave.
    """
    if name not in POINTS:
        raise ValueError(f"unknown failpoint {name!r}: one of {', '.join(POINTS)}")
    if name != ACTIVE or not when:
        return
    if durable is not None:
        durable()
    logger.warning("failpoint %s reached: waiting to be killed", name)
    MARK.write_text(f"{name}\n")
    while True:
        time.sleep(3600)
