"""`hostbuild fleet`: the FleetLock coordinator (`serve`) and its administration.

`status`, `pause` and `resume` go through the coordinator's admin API rather than to etcd:
the admin token is then the one credential that may pause a rollout (nodes never hold it),
and the status can show the queue each coordinator keeps in memory.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import click

from builder.fleet.admin import admin_call, read_token
from builder.fleet.coordinator import Coordinator
from builder.fleet.policy import load_policy, single_group
from builder.fleet.server import FleetHttpServer, Tls
from builder.fleet.status import format_status
from builder.fleet.store import PREFIX, EtcdTls, Store
from builder.update.settings import parse_duration

logger = logging.getLogger(__name__)


def _listen(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"{value!r} is not ADDR:PORT (e.g. 0.0.0.0:8443)", ctx, param)
    return host.strip("[]"), int(port)


def _seconds(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return (
            float(value)
            if value.replace(".", "", 1).isdigit()
            else parse_duration(value).total_seconds()
        )
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from e


@click.group()
def fleet() -> None:
    """Fleet rolling updates: the FleetLock coordinator, its state in etcd."""


@fleet.command("serve")
@click.option(
    "--etcd",
    "etcd_urls",
    required=True,
    metavar="URL[,URL...]",
    envvar="HOSTBUILD_FLEET_ETCD",
    help="etcd client URLs (its v3 JSON gateway) [env: HOSTBUILD_FLEET_ETCD].",
)
@click.option(
    "--etcd-prefix", default=PREFIX, show_default=True, help="Where in etcd the fleet's keys live."
)
@click.option(
    "--listen", required=True, callback=_listen, metavar="ADDR:PORT", help="Where nodes connect."
)
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The rollout policy (YAML: groups, slots, deadlines, canary order, windows).",
)
@click.option(
    "--group", default="default", show_default=True, help="Without --config: the one group."
)
@click.option(
    "--slots",
    type=click.IntRange(1, 10000),
    default=1,
    show_default=True,
    help="Without --config: how many nodes of the group may be down at once.",
)
@click.option(
    "--reboot-deadline",
    default="30m",
    show_default=True,
    callback=_seconds,
    help="Without --config: how long a holder may take to report steady state.",
)
@click.option(
    "--wait",
    default="0",
    show_default=True,
    callback=_seconds,
    help="How long a pre-reboot may wait for a slot before it is refused (long poll).",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Serve HTTPS with this PEM certificate.",
)
@click.option(
    "--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="... and this PEM key."
)
@click.option(
    "--client-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Require client certificates signed by this CA (mTLS).",
)
@click.option(
    "--match-client-id",
    is_flag=True,
    help="With --client-ca: the certificate's CN or a DNS name must be the node's id or node_name.",
)
@click.option(
    "--admin-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file holding the bearer token of the admin API (off without it).",
)
@click.option(
    "--etcd-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CA of etcd's https endpoints.",
)
@click.option(
    "--etcd-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Client certificate for etcd.",
)
@click.option("--etcd-key", type=click.Path(dir_okay=False, path_type=Path), help="Its key.")
@click.option(
    "--drain/--no-drain",
    default=False,
    show_default=True,
    help="Cordon and evict a node (Kubernetes Eviction API) before granting its reboot; a "
    "drain that does not finish refuses the lock.",
)
@click.option(
    "--kubeconfig",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The cluster to drain in (default: in-cluster credentials, else KUBECONFIG or "
    "~/.kube/config).",
)
@click.option("--kube-context", help="The kubeconfig context (default: its current one).")
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=1),
    default=600.0,
    show_default=True,
    help="Seconds a whole drain may take (keep it under the reboot deadline).",
)
def serve(
    etcd_urls: str,
    etcd_prefix: str,
    listen: tuple[str, int],
    config: Path | None,
    group: str,
    slots: int,
    reboot_deadline: float,
    wait: float,
    tls_cert: Path | None,
    tls_key: Path | None,
    client_ca: Path | None,
    match_client_id: bool,
    admin_token_file: Path | None,
    etcd_ca: Path | None,
    etcd_cert: Path | None,
    etcd_key: Path | None,
    drain: bool,
    kubeconfig: Path | None,
    kube_context: str | None,
    drain_timeout: float,
) -> None:
    """Serve FleetLock (POST /v1/pre-reboot, /v1/steady-state) with the state in etcd."""
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if client_ca is not None and tls_cert is None:
        raise click.UsageError("--client-ca needs --tls-cert and --tls-key")
    if (kubeconfig or kube_context) and not drain:
        raise click.UsageError("--kubeconfig and --kube-context need --drain")
    policy = load_policy(config) if config else single_group(group, slots, reboot_deadline)
    tls = Tls(tls_cert, tls_key, client_ca, match_client_id) if tls_cert and tls_key else None
    token = read_token(admin_token_file) if admin_token_file else None
    etcd_tls = EtcdTls(*(str(p) if p else None for p in (etcd_ca, etcd_cert, etcd_key)))
    store = Store(
        [u.strip() for u in etcd_urls.split(",") if u.strip()], etcd_tls, prefix=etcd_prefix
    )
    drainer = None
    if drain:
        # here: the kubernetes client takes a second to import, and only a draining server needs it
        from builder.fleet.drain import DrainTimeouts, load_drainer

        timeouts = DrainTimeouts(total=drain_timeout, per_pod=min(300.0, drain_timeout))
        drainer = load_drainer(kubeconfig, kube_context, timeouts)
    coordinator = Coordinator(store, policy, drainer, wait=wait)
    server = FleetHttpServer(listen, coordinator, tls=tls, admin_token=token)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    click.echo(
        f"fleet: serving FleetLock on {server.url} (groups: {', '.join(policy.groups)})", err=True
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
        coordinator.close()


server_option = click.option(
    "--server",
    required=True,
    envvar="HOSTBUILD_FLEET_SERVER",
    metavar="URL",
    help="The coordinator (http(s)://HOST:PORT) [env: HOSTBUILD_FLEET_SERVER].",
)
token_option = click.option(
    "--token-file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="HOSTBUILD_FLEET_TOKEN_FILE",
    help="The admin bearer token [env: HOSTBUILD_FLEET_TOKEN_FILE].",
)
ca_option = click.option(
    "--ca",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CA of the coordinator's certificate.",
)
group_option = click.option("--group", help="One group (default: all).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")


def _show(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True))
    else:
        for line in format_status(status):
            click.echo(line)


@fleet.command("status")
@server_option
@token_option
@ca_option
@group_option
@json_option
def status(
    server: str, token_file: Path, ca: Path | None, group: str | None, as_json: bool
) -> None:
    """Per group: slots, holders, queue, failures, why paused, versions."""
    path = "/v1/admin/status" + (f"?group={group}" if group else "")
    _show(admin_call(server, read_token(token_file), path, ca=ca), as_json)


@fleet.command("pause")
@server_option
@token_option
@ca_option
@group_option
@click.option("--reason", default="paused by an administrator", show_default=True)
@json_option
def pause(
    server: str, token_file: Path, ca: Path | None, group: str | None, reason: str, as_json: bool
) -> None:
    """Stop granting slots (nodes already rebooting finish)."""
    body = {"group": group, "reason": reason}
    _show(admin_call(server, read_token(token_file), "/v1/admin/pause", body, ca=ca), as_json)


@fleet.command("resume")
@server_option
@token_option
@ca_option
@group_option
@json_option
def resume(
    server: str, token_file: Path, ca: Path | None, group: str | None, as_json: bool
) -> None:
    """Grant slots again after a pause (automatic or not)."""
    _show(
        admin_call(server, read_token(token_file), "/v1/admin/resume", {"group": group}, ca=ca),
        as_json,
    )
