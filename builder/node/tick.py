"""`hostbuild-node update tick`: what the update timer runs every few minutes.

The NodeConfig arrives with user-data after the units are loaded, so its `checkInterval` and
`checkJitter` are not timer settings: the timer ticks often and this decides. Not due, the tick
reads two small files and returns (no network, python3-tuf not imported); due, it runs
`update apply`; with a version staged it goes on to `update reboot` (maintenance window, fleet
lock), which is asked again at the next tick when it says not yet.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

from . import rebootlock, updater
from .schedule import Due, next_check, record_run
from .updatestate import UpdateError, load_state, save_state

logger = logging.getLogger(__name__)

MACHINE_ID = "etc/machine-id"
STAT = "proc/stat"
BOOT_ID = "proc/sys/kernel/random/boot_id"


def _read(node: updater.Node, rel: str) -> str:
    try:
        return (node.root / rel).read_text().strip()
    except OSError:
        return ""


def booted_at(node: updater.Node) -> datetime.datetime | None:
    """When this boot began: /proc/stat's btime (whole seconds, the same at every tick)."""
    for line in _read(node, STAT).splitlines():
        key, _, value = line.partition(" ")
        if key == "btime" and value.strip().isdigit():
            return datetime.datetime.fromtimestamp(int(value), datetime.UTC)
    return None


def due(node: updater.Node, config: updater.Config, record: dict[str, Any] | None) -> Due:
    """When the next check is due for this node, as of its clock."""
    return next_check(
        record, config.interval, config.jitter, _read(node, MACHINE_ID), _read(node, BOOT_ID),
        booted_at(node),
    )  # fmt: skip


def tick(node: updater.Node) -> dict[str, Any]:
    """Apply if a check is due; then, with a version staged, reboot into it if allowed."""
    config = updater.read_config(node)  # not-configured: nothing to do
    moment = node.clock()
    state = load_state(node.state_file)
    when = due(node, config, state.schedule)
    report: dict[str, Any] = {"checked": False, "apply": None, "reboot": None}
    if when.reached(moment):
        report["checked"] = True
        error = None
        try:
            report["apply"] = updater.apply(node)
        except UpdateError as e:
            if e.kind == "busy":  # a run by hand: this tick leaves it be, the next one decides
                return report | {"detail": str(e), "next_check": when.describe()}
            error = f"{e.kind}: {e}"
            report["apply"] = {"result": "error", "kind": e.kind, "detail": str(e)}
        # from the run's end: a download held to bandwidthLimit may take hours
        when = _record(node, config, node.clock(), error)
    state = load_state(node.state_file)
    if state.staged is not None:
        report["reboot"] = updater.reboot(node, backoff=True)
    elif rebootlock.release_due(state, node.root, config.fleet_lock, _read(node, BOOT_ID)):
        # the fleet lock waits for this boot's verdict, not for the next check
        try:
            with updater.locked(node):
                report["events"] = updater.start(node).events
        except UpdateError as e:
            logger.warning("%s", e)
    return report | {"next_check": when.describe()}


def _record(
    node: updater.Node, config: updater.Config, moment: datetime.datetime, error: str | None
) -> Due:
    """Record this run in the state (under the run lock) and say when the next is due."""
    boot_id = _read(node, BOOT_ID)
    try:
        with updater.locked(node):
            state = load_state(node.state_file)
            state.schedule = record_run(state.schedule, moment, boot_id, error)
            when = due(node, config, state.schedule)
            state.schedule["next"] = when.describe()["time"]
            save_state(node.state_file, state)
            return when
    except (UpdateError, OSError) as e:  # busy, or a full /var: the next tick runs again
        logger.warning("recording the update run: %s", e)
        return Due(None, f"this run could not be recorded ({e})")


def status(node: updater.Node) -> dict[str, Any]:
    """`update status` with when the timer checks next."""
    report = updater.status(node)
    try:
        config = updater.read_config(node)
    except UpdateError:
        report["next_check"] = None
        return report
    report["fleet_lock_configured"] = config.fleet_lock is not None
    when = due(node, config, report.get("schedule"))
    report["next_check"] = when.describe() | {"interval": config.interval,
                                             "jitter": config.jitter}  # fmt: skip
    return report
