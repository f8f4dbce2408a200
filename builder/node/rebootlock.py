"""When the node uses its fleet lock: a slot before rebooting into a staged version, freed once
this boot's health gate passed (or the version it rebooted for was rolled back).

The record is `fleet_lock` in state.json: `held` and the `version` and `boot_id` it was taken
for, `released_boot` (steady-state succeeded in that boot: not asked again in it), `last` (the
last request and its answer), `failures` and `next` (pre-reboot refused: asked again then).
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fleetlock import Answer, Client, Params, Tls, app_specific_id
from .schedule import parse_time, retry_delay
from .updatestate import State, UpdateError

logger = logging.getLogger(__name__)

MACHINE_ID = Path("etc/machine-id")
HOSTNAME = Path("proc/sys/kernel/hostname")
HEALTH = Path("run/hostbuild/health.json")  # the health gate's verdict, this boot


@dataclass(frozen=True)
class LockConfig:
    url: str
    group: str = "default"
    tls: Tls = Tls()

    def client(self) -> Client:
        return Client(self.url, self.tls)


def lock_config(data: Any, root: Path) -> LockConfig | None:
    """updates.json's `fleetLock` (None: no lock server); its file paths lie below `root`."""
    if not isinstance(data, Mapping) or not isinstance(data.get("url"), str):
        return None

    def path(key: str) -> Path | None:
        value = data.get(key)
        return root / value.lstrip("/") if isinstance(value, str) and value else None

    group = data.get("group")
    tls = Tls(path("ca"), path("certificate"), path("key"))
    return LockConfig(data["url"], group if isinstance(group, str) and group else "default", tls)


def _read(root: Path, rel: Path) -> str:
    try:
        return (root / rel).read_text().strip()
    except OSError:
        return ""


def node_id(root: Path) -> str:
    """The ID Zincati would give this node (the machine ID, app-specific)."""
    try:
        return app_specific_id(_read(root, MACHINE_ID))
    except ValueError as e:
        raise UpdateError("system", f"no ID for the fleet lock: /etc/machine-id: {e}") from None


def gate_passed(root: Path, blessed: bool) -> bool:
    """This boot's health gate said healthy, and the running entry is blessed."""
    try:
        verdict = json.loads(_read(root, HEALTH) or "null")
    except ValueError:
        return False
    return blessed and isinstance(verdict, dict) and verdict.get("healthy") is True


def _stamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat(timespec="seconds")


def _last(op: str, answer: Answer, moment: datetime.datetime) -> dict[str, Any]:
    result = "ok" if answer.ok else "refused" if answer.reachable else "unreachable"
    return {"op": op, "time": _stamp(moment), "result": result, "status": answer.status,
            "kind": answer.kind, "detail": answer.describe()}  # fmt: skip


def release_due(state: State, root: Path, config: LockConfig | None, boot_id: str) -> bool:
    """Whether `release` would ask now, as far as is known without the ESP (a cheap look)."""
    if config is None:
        return False
    record = state.fleet_lock or {}
    if record.get("released_boot") == boot_id:
        return False
    if record.get("held") and record.get("boot_id") == boot_id:
        return False
    target = record.get("version") if record.get("held") else None
    return target in state.failures() or gate_passed(root, blessed=True)


def release(
    state: State, root: Path, config: LockConfig | None, running: str, boot_id: str,
    blessed: bool, moment: datetime.datetime,
) -> str | None:  # fmt: skip
    """steady-state, once per boot when the verdict is in; an event sentence or None.

    Asked whether or not the record says a slot is held (a node that crashed holding one, or
    lost its state, frees it), but never for a slot taken in this boot for the reboot to come.
    """
    if config is None:
        return None
    record = dict(state.fleet_lock or {})
    if record.get("released_boot") == boot_id:
        return None
    if record.get("held") and record.get("boot_id") == boot_id:
        return None
    target = record.get("version") if record.get("held") else None
    failed = isinstance(target, str) and target != running and target in state.failures()
    if not failed and not gate_passed(root, blessed):
        return None  # asked at a later run, once the gate passed
    params = Params(
        node_id(root), config.group, running, "failed" if failed else "healthy",
        target if failed else None, _read(root, HOSTNAME) or None,
    )  # fmt: skip
    answer = config.client().steady_state(params)
    record["last"] = _last("steady-state", answer, moment)
    state.fleet_lock = record
    verdict = f"{target} failed, running {running}" if failed else f"{running} is healthy"
    if answer.ok:
        record.update(held=False, released_boot=boot_id)
        return f"fleet lock freed (steady-state, {config.group!r}): {verdict}"
    logger.warning("fleet lock steady-state: %s; asked again at the next run", answer.describe())
    return None


def acquire(
    state: State, root: Path, config: LockConfig | None, running: str, staged: str,
    boot_id: str, moment: datetime.datetime, interval: int, backoff: bool = True,
) -> str | None:  # fmt: skip
    """pre-reboot before rebooting into `staged`: None when the node may reboot, else why not.

    A refusal or no answer is asked again at a later tick, backing off (5 minutes, doubling up
    to `interval`); `backoff` False (a run by hand) asks at once.
    """
    if config is None:
        return None
    record = dict(state.fleet_lock or {})
    failures = record["failures"] if isinstance(record.get("failures"), int) else 0
    retry = parse_time(record.get("next")) if failures else None
    if backoff and retry is not None and moment < retry:
        last = (record.get("last") or {}).get("detail", "refused")
        return (f"{staged} is staged; the fleet lock said {last}; asking again at "
                f"{_stamp(retry)}")  # fmt: skip
    params = Params(node_id(root), config.group, running, "healthy", None,
                    _read(root, HOSTNAME) or None)  # fmt: skip
    answer = config.client().pre_reboot(params)
    record["last"] = _last("pre-reboot", answer, moment)
    state.fleet_lock = record
    if answer.ok:
        record.update(held=True, version=staged, boot_id=boot_id, failures=0, next=None,
                      time=_stamp(moment))  # fmt: skip
        return None
    failures += 1
    retry = moment + datetime.timedelta(seconds=retry_delay(failures, interval))
    record.update(failures=failures, next=_stamp(retry))
    what = "refused the slot" if answer.reachable else "did not answer"
    return (f"{staged} is staged; not rebooting: the fleet lock ({config.group!r}) {what} "
            f"({answer.describe()}); asking again at {_stamp(retry)}")  # fmt: skip


def describe(record: Mapping[str, Any] | None) -> str:
    """The `fleet lock:` line of `update status`."""
    if not record:
        return "not asked yet"
    last = record.get("last") or {}
    if record.get("held"):
        text = f"held for {record.get('version')} since {record.get('time')}"
    elif record.get("released_boot"):
        text = "free (released in the boot " + str(record["released_boot"]) + ")"
    else:
        text = "not held"
    if last:
        text += f"; last {last.get('op')} at {last.get('time')}: {last.get('detail')}"
    if record.get("failures") and record.get("next"):
        text += f"; asking again at {record['next']}"
    return text
