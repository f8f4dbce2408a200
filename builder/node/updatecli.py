"""`hostbuild-node update check|apply|reboot|status [--json]`: the updater's command line.

Exit codes: 0 done (nothing to do included), 1 an update step failed (why on stderr and in
`update status`), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import rebootlock, tick, updater
from .seed import PINNED
from .updatestate import UpdateError

logger = logging.getLogger(__name__)


def _print(text: str) -> None:
    print(text)  # noqa: T201 -- the CLI's output


def main(argv: Sequence[str], node: updater.Node | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hostbuild-node update", description="OS updates: A/B slots from a TUF repository"
    )
    parser.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {
        "check": "refresh the repository's metadata and say which version this node would take",
        "apply": "check, download, write the other slot and stage it (no reboot)",
        "reboot": "reboot into the staged version if a maintenance window is open and the "
        "fleet lock (if any) grants a slot",
        "status": "running version and slot, the other slot, last check, staged and failed",
        "tick": "what the timer runs: apply when a check is due, then reboot into a staged "
        "version when allowed",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        if name == "reboot":
            p.add_argument("--ignore-window", action="store_true",
                           help="reboot outside the maintenance windows too")  # fmt: skip
    args = parser.parse_args(argv)
    node = node or updater.Node(root=args.root)
    try:
        if args.command == "check":
            report = updater.check(node)
            _print(json.dumps(report, indent=2) if args.json else _check_text(report))
        elif args.command == "apply":
            report = updater.apply(node)
            _print(json.dumps(report, indent=2) if args.json else _apply_text(report))
        elif args.command == "reboot":
            report = updater.reboot(node, args.ignore_window)
            _print(json.dumps(report, indent=2) if args.json else report["reason"])
        elif args.command == "tick":
            report = tick.tick(node)
            _print(json.dumps(report, indent=2) if args.json else _tick_text(report))
            return 1 if (report.get("apply") or {}).get("result") == "error" else 0
        else:
            report = tick.status(node)
            _print(json.dumps(report, indent=2) if args.json else _status_text(report))
            return 1 if _last_failed(report) else 0
    except UpdateError as e:
        if args.json:
            _print(json.dumps({"result": "error", "kind": e.kind, "detail": str(e)}, indent=2))
        print(f"hostbuild-node update {args.command}: {e.kind}: {e}", file=sys.stderr)  # noqa: T201 -- the CLI's output
        return 0 if e.kind == "not-configured" else 1
    except Exception:
        # a bug, not a fault of the repository or the node: the traceback goes to the journal
        logger.exception("hostbuild-node update %s failed", args.command)
        return 1
    return 0


def _skipped(report: dict[str, Any]) -> list[str]:
    items = report.get("skipped") or []
    return ["skipped:", *(f"  {s['version']}: {s['reason']}" for s in items)] if items else []


def _check_text(report: dict[str, Any]) -> str:
    running = report["running"]
    chosen = report["chosen"]
    lines = [
        *report["events"],
        f"running:  {running['image_id']} {running['version']}",
        f"channel:  {report['channel']} at {report['repository']} "
        f"({len(report['versions'])} versions)",
        f"update:   {chosen} would be installed" if chosen else "update:   none (up to date)",
        *_skipped(report),
    ]
    return "\n".join(lines)


def _apply_text(report: dict[str, Any]) -> str:
    return "\n".join([*report["events"], report["detail"], *_skipped(report)])


def _tick_text(report: dict[str, Any]) -> str:
    lines = []
    if report.get("detail"):
        lines.append(report["detail"])
    applied = report.get("apply")
    if applied:
        lines += [*applied.get("events", []), applied["detail"]]
    if report.get("reboot"):
        lines.append(report["reboot"]["reason"])
    lines.append(f"next check: {_next(report.get('next_check'))}")
    return "\n".join(lines)


def _next(due: dict[str, Any] | None) -> str:
    if not due:
        return "never (no updates section in the NodeConfig)"
    return f"{due['time'] or 'at the next tick'} ({due['why']})"


def _when(record: dict[str, Any] | None) -> str:
    if not record:
        return "never"
    if record.get("result") == "error":
        return f"{record['time']} error ({record.get('kind')}): {record.get('detail')}"
    detail = record.get("detail")
    if detail is None:  # a check
        chosen = record.get("chosen")
        detail = f"{chosen} available" if chosen else "up to date"
    return f"{record['time']} {detail}"


def _status_text(report: dict[str, Any]) -> str:
    lines = [*report["events"], f"running:    {report['image_id']} {report['running']}"]
    slots = report["slots"]
    if "error" in slots:
        lines.append(f"slots:      unknown ({slots['error']})")
    for name, slot in sorted(slots.items()) if "error" not in slots else ():
        entry = slot["entry"] or "no boot entry"
        role = "running" if slot["running"] else "other"
        lines.append(f"slot {name}:     {role}, {slot['root']}: {slot['label']} ({entry})")
    staged = report.get("staged")
    lines.append(
        f"staged:     {staged['version']} ({staged['time']}); reboot to boot it"
        if staged else "staged:     nothing"
    )  # fmt: skip
    writing = report.get("writing")
    if writing:
        state = "interrupted" if writing.get("interrupted") else "in progress"
        lines.append(f"writing:    {writing['version']} into slot {writing['slot']} ({state})")
    lines += [f"last check: {_when(report.get('last_check'))}",
              f"last apply: {_when(report.get('last_apply'))}"]  # fmt: skip
    if "next_check" in report:
        lines.append(f"next check: {_next(report['next_check'])}")
    if report.get("fleet_lock") or report.get("fleet_lock_configured"):
        lines.append(f"fleet lock: {rebootlock.describe(report.get('fleet_lock'))}")
    booted = report.get("booted")
    if booted:
        lines.append(f"booted:     {booted['version']} ({booted['time']})")
    failed = report.get("failed") or {}
    if failed:
        lines.append("failed (never installed again automatically):")
        lines += [
            f"  {version}: {f['reason']} ({f.get('digest') or 'no digest'}, {f['time']})"
            for version, f in sorted(failed.items())
        ]
    seed = report.get("seed")
    if seed is None:
        lines.append("seed:       none yet (the next check draws it)")
    elif report.get("seed_source") == PINNED:
        lines.append(f"seed:       {seed} (of 0..2047: this node's place in waves, pinned by "
                     "the NodeConfig's updates.waveSeed)")  # fmt: skip
    else:
        lines.append(f"seed:       {seed} (of 0..2047: this node's place in waves)")
    return "\n".join(lines)


def _last_failed(report: dict[str, Any]) -> bool:
    records = [report.get(key) or {} for key in ("last_check", "last_apply")]
    return any(r.get("result") == "error" and r.get("kind") != "not-configured" for r in records)
