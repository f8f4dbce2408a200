"""hostbuild-node: fetch, validate and render the node configuration at every boot.

`apply` (the boot unit) never fails the boot on bad or missing user-data: it renders no kubelet
configuration, says why on stderr (the journal), the console and in the status file, and exits 0.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from .bootsecurity import boot_security
from .bootsecurity import describe as describe_security
from .check import InvalidConfig
from .command import CommandFailed
from .command import run as run_command
from .model import NodeConfig
from .nodeconfig import parse_text
from .render import install_outputs, render_outputs
from .sources import Discovery, SourceError, Sources, discover, extract_nodeconfig, read_capped
from .yamlsafe import YamlError, decode_utf8

logger = logging.getLogger(__name__)

RUN = Path("run/hostbuild")  # below --root
STATUS = "node-status.json"
PROFILE_KUBELET = Path("etc/kubernetes/kubelet/config.yaml")  # below --root
CONTAINERD_CONFIG = Path("etc/containerd/config.toml")  # below --root
SSH_CREDENTIAL = "ssh.authorized_keys.root"
CONSOLE = Path("/dev/console")
CONTAINERD_DROPINS = "containerd/conf.d"  # below RUN: the config.toml `imports` the agent renders
CONTAINERD_UNIT = "containerd.service"


def restart_unit(unit: str) -> None:
    """Queue a restart of `unit` (a start if it is not running) and return at once.

    Queued while the unit's start job runs, systemd turns that job into a restart, so the
    service reads what was written before this call in every case.
    """
    run_command(["systemctl", "restart", "--no-block", unit])


def apply(
    root: Path, sources: Sources, console: Path | None = CONSOLE,
    set_hostname: Callable[[str], None] = socket.sethostname,
    restart: Callable[[str], None] = restart_unit,
) -> dict[str, Any]:  # fmt: skip
    """Render the node configuration under `root`; returns the status it also writes.

    containerd does not wait for the agent at boot (its start is the longest on the way to
    boot-complete.target): when the drop-ins it imports change, the agent restarts it.
    """
    discovery = discover(sources)
    status: dict[str, Any] = {
        "ok": True, "source": None, "detail": None, "digest": None, "errors": [],
        "warnings": [], "kubelet": "not configured", "outputs": [], "restarted": [],
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    config = _config_of(discovery, status)
    base: dict[str, Any] = {}
    if config is not None and config.cluster is not None:
        base = _profile_kubelet(root, status)
    containerd = None
    if config is not None and config.containerd.sandbox_image:
        with contextlib.suppress(OSError):
            containerd = (root / CONTAINERD_CONFIG).read_text()
    run = root / RUN
    outputs = render_outputs(
        config if status["ok"] else None, base, discovery.platform,
        _credential_keys(sources, status["warnings"]),
        containerd, status["warnings"],
    )  # fmt: skip
    dropins = _files(run / CONTAINERD_DROPINS)
    install_outputs(outputs, run)
    if _files(run / CONTAINERD_DROPINS) != dropins:
        try:
            restart(CONTAINERD_UNIT)
            status["restarted"].append(CONTAINERD_UNIT)
        except CommandFailed as e:
            status["warnings"].append(f"containerd's drop-ins changed, restarting it failed: {e}")
    status["outputs"] = sorted(f"/{RUN}/{rel}" for rel in outputs)
    if any(rel.startswith("kubelet/") for rel in outputs):
        status["kubelet"] = "configured"
    if "hostname" in outputs:
        name = outputs["hostname"].content.decode().strip()
        try:
            set_hostname(name)
        except OSError as e:
            status["warnings"].append(f"setting the hostname {name!r}: {e}")
    _write_status(run, status)
    _report(status, console)
    return status


def _files(directory: Path) -> dict[str, bytes]:
    """The files directly in `directory` and their contents (none if it is missing)."""
    try:
        return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}
    except OSError:
        return {}


def _config_of(discovery: Discovery, status: dict[str, Any]) -> NodeConfig | None:
    found = discovery.found
    if found is None:
        status["errors"] += discovery.errors
        status["ok"] = not discovery.errors
        logger.info("no node configuration (looked at: %s)", ", ".join(discovery.tried))
        return None
    status["warnings"] += discovery.errors
    status |= {"source": found.source, "detail": found.detail}
    status["digest"] = "sha256:" + hashlib.sha256(found.data).hexdigest()
    logger.info("node configuration from %s (%s), %s", found.source, found.detail, status["digest"])
    try:
        return parse_text(found.data)
    except InvalidConfig as e:
        status["errors"] += [str(i) for i in e.issues]
        status["ok"] = False
        return None


def _profile_kubelet(root: Path, status: dict[str, Any]) -> dict[str, Any]:
    """The image's KubeletConfiguration, which the node configuration is merged over."""
    path = root / PROFILE_KUBELET
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        status["warnings"].append(f"the image's kubelet configuration {path}: {e}")
        data = None
    if isinstance(data, dict):
        return data
    return {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration"}


def _credential_keys(sources: Sources, warnings: list[str]) -> list[str]:
    """Root's keys from the ssh.authorized_keys.root credential, kept next to user-data's."""
    for directory in sources.credential_dirs:
        path = directory / SSH_CREDENTIAL
        try:
            return decode_utf8(read_capped(path)).splitlines()
        except OSError:
            continue
        except YamlError as e:
            warnings.append(f"credential {path}: {e.message}; its keys are not installed")
            return []
    return []


def _write_status(run: Path, status: dict[str, Any]) -> None:
    tmp = run / f".{STATUS}.tmp"
    tmp.write_text(json.dumps(status, indent=2) + "\n")
    tmp.chmod(0o644)
    os.replace(tmp, run / STATUS)


def _report(status: dict[str, Any], console: Path | None) -> None:
    for warning in status["warnings"]:
        logger.warning("%s", warning)
    where = f" from {status['source']} ({status['detail']})" if status["source"] else ""
    if status["restarted"]:
        logger.info("restarted %s: its drop-ins changed", ", ".join(status["restarted"]))
    if status["ok"]:
        logger.info("kubelet %s; %d files rendered", status["kubelet"], len(status["outputs"]))
        # one line on the console at every boot: what a serial console reader looks for first
        summary = f"node configuration{where} applied" if status["source"] else (
            "no node configuration (no user-data)")  # fmt: skip
        lines = [f"hostbuild-node: {summary}; kubelet {status['kubelet']}"]
    else:
        lines = [
            f"hostbuild-node: node configuration{where} NOT applied: kubelet will not start.",
            *(f"hostbuild-node:   {e}" for e in status["errors"]),
            f"hostbuild-node: details: /{RUN}/{STATUS} or 'hostbuild-node status'",
        ]
        for line in lines:
            logger.error("%s", line.removeprefix("hostbuild-node: "))
    if console is not None:
        try:
            with console.open("a") as tty:
                tty.write("\n".join(lines) + "\n")
        except OSError as e:
            logger.debug("console %s not writable: %s", console, e)


def show_status(root: Path, as_json: bool) -> int:
    """The last apply's status file, with Secure Boot and the TPM's PCRs read now."""
    path = root / RUN / STATUS
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"no status: {path}: {e}", file=sys.stderr)  # noqa: T201 -- the CLI's output
        return 1
    security = boot_security(root)
    if as_json:
        print(json.dumps(status | security, indent=2))  # noqa: T201 -- the CLI's output
        return 0 if status.get("ok") else 1
    source = f"{status['source']} ({status['detail']})" if status.get("source") else "none"
    lines = [
        f"result:   {'ok' if status.get('ok') else 'ERROR'}",
        f"source:   {source}",
        f"digest:   {status.get('digest') or '-'}",
        f"kubelet:  {status.get('kubelet')}",
        f"time:     {status.get('time')}",
        *describe_security(security),
    ]
    for title in ("errors", "warnings", "outputs", "restarted"):
        if status.get(title):
            lines += [f"{title}:", *(f"  {item}" for item in status[title])]
    print("\n".join(lines))  # noqa: T201 -- the CLI's output
    return 0 if status.get("ok") else 1


def validate_file(path: Path) -> int:
    """Print every issue of a NodeConfig (or user-data holding one); 2 when invalid."""
    try:
        data = extract_nodeconfig(read_capped(path))
        if data is None:
            raise SourceError("multi-part user-data without a NodeConfig part")
        parse_text(data)
    except OSError as e:
        print(f"{path}: cannot be read: {e.strerror}", file=sys.stderr)  # noqa: T201 -- the CLI's output
        return 2
    except SourceError as e:
        print(f"{path}: {e}", file=sys.stderr)  # noqa: T201 -- the CLI's output
        return 2
    except InvalidConfig as e:
        for issue in e.issues:
            print(f"{path}: {issue}", file=sys.stderr)  # noqa: T201 -- the CLI's output
        return 2
    print(f"{path}: valid")  # noqa: T201 -- the CLI's output
    return 0


def _no_restart(unit: str) -> None:
    logger.info("not restarting %s: --root is not /", unit)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    if args == ["apply"]:  # the boot unit: no argparse to import, a tenth of a second or more
        return _apply(Path("/"))
    if args[:1] == ["update"]:  # OS updates: their own command line (updatecli)
        from .updatecli import main as update_main

        return update_main(args[1:])
    import argparse

    parser = argparse.ArgumentParser(prog="hostbuild-node", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/"), help="render below this root")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("apply", help="fetch, validate and render (the default; the boot unit)")
    status = sub.add_parser(
        "status", help="what the last apply did, and the boot's Secure Boot state and TPM PCRs"
    )
    status.add_argument("--json", action="store_true")
    sub.add_parser("update", help="OS updates: check, apply, reboot, status (update --help)")
    validate = sub.add_parser("validate", help="check a NodeConfig or user-data file")
    validate.add_argument("file", type=Path)
    parsed = parser.parse_args(args)
    if parsed.command == "status":
        return show_status(parsed.root, parsed.json)
    if parsed.command == "validate":
        return validate_file(parsed.file)
    return _apply(parsed.root)


def _apply(root: Path) -> int:
    # a root other than this node's: nothing of this node's to restart
    restart = restart_unit if root == Path("/") else _no_restart
    try:
        apply(root, Sources.from_environment(dict(os.environ)), restart=restart)
    except Exception:
        # a bug, not bad user-data: the unit shows failed, and the boot still goes on
        logger.exception("hostbuild-node apply failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
