"""hostbuild-node: fetch, validate and render the node configuration at every boot.

`apply` (the boot unit) never fails the boot on bad or missing user-data: it renders no kubelet
configuration, says why on stderr (the journal), the console and in the status file, and exits 0.
"""

from __future__ import annotations

import argparse
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

from .check import InvalidConfig
from .model import NodeConfig
from .nodeconfig import parse_text
from .render import install_outputs, render_outputs
from .sources import Discovery, SourceError, Sources, discover, extract_nodeconfig

logger = logging.getLogger(__name__)

RUN = Path("run/hostbuild")  # below --root
STATUS = "node-status.json"
PROFILE_KUBELET = Path("etc/kubernetes/kubelet/config.yaml")  # below --root
CONTAINERD_CONFIG = Path("etc/containerd/config.toml")  # below --root
SSH_CREDENTIAL = "ssh.authorized_keys.root"
CONSOLE = Path("/dev/console")


def apply(
    root: Path, sources: Sources, console: Path | None = CONSOLE,
    set_hostname: Callable[[str], None] = socket.sethostname,
) -> dict[str, Any]:  # fmt: skip
    """Render the node configuration under `root`; returns the status it also writes."""
    discovery = discover(sources)
    status: dict[str, Any] = {
        "ok": True, "source": None, "detail": None, "digest": None, "errors": [],
        "warnings": [], "kubelet": "not configured", "outputs": [],
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
        config if status["ok"] else None, base, discovery.platform, _credential_keys(sources),
        containerd, status["warnings"],
    )  # fmt: skip
    install_outputs(outputs, run)
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


def _credential_keys(sources: Sources) -> list[str]:
    """Root's keys from the ssh.authorized_keys.root credential, kept next to user-data's."""
    for directory in sources.credential_dirs:
        try:
            return (directory / SSH_CREDENTIAL).read_text().splitlines()
        except OSError:
            continue
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
    path = root / RUN / STATUS
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"no status: {path}: {e}", file=sys.stderr)  # noqa: T201 -- the CLI's output
        return 1
    if as_json:
        print(json.dumps(status, indent=2))  # noqa: T201 -- the CLI's output
        return 0 if status.get("ok") else 1
    source = f"{status['source']} ({status['detail']})" if status.get("source") else "none"
    lines = [
        f"result:   {'ok' if status.get('ok') else 'ERROR'}",
        f"source:   {source}",
        f"digest:   {status.get('digest') or '-'}",
        f"kubelet:  {status.get('kubelet')}",
        f"time:     {status.get('time')}",
    ]
    for title in ("errors", "warnings", "outputs"):
        if status.get(title):
            lines += [f"{title}:", *(f"  {item}" for item in status[title])]
    print("\n".join(lines))  # noqa: T201 -- the CLI's output
    return 0 if status.get("ok") else 1


def validate_file(path: Path) -> int:
    """Print every issue of a NodeConfig (or user-data holding one); 2 when invalid."""
    try:
        data = extract_nodeconfig(path.read_bytes())
        if data is None:
            raise SourceError("multi-part user-data without a NodeConfig part")
        parse_text(data)
    except (OSError, SourceError) as e:
        print(f"{path}: {e}", file=sys.stderr)  # noqa: T201 -- the CLI's output
        return 2
    except InvalidConfig as e:
        for issue in e.issues:
            print(f"{path}: {issue}", file=sys.stderr)  # noqa: T201 -- the CLI's output
        return 2
    print(f"{path}: valid")  # noqa: T201 -- the CLI's output
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hostbuild-node", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/"), help="render below this root")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("apply", help="fetch, validate and render (the default; the boot unit)")
    status = sub.add_parser("status", help="what the last apply did")
    status.add_argument("--json", action="store_true")
    validate = sub.add_parser("validate", help="check a NodeConfig or user-data file")
    validate.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    if args.command == "status":
        return show_status(args.root, args.json)
    if args.command == "validate":
        return validate_file(args.file)
    try:
        apply(args.root, Sources.from_environment(dict(os.environ)))
    except Exception:
        # a bug, not bad user-data: the unit shows failed, and the boot still goes on
        logger.exception("hostbuild-node apply failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
