"""The values of a valid NodeConfig (hostbuild.dev/v1alpha1): frozen, typed, checked.

Built by `nodeconfig.parse`; read by the renderer and the agent. Stdlib only (runs on the node).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# updates: how often the timer's tick looks for a newer version (seconds), and the least rate a
# download may be limited to (bytes per second)
CHECK_INTERVAL = 3600
CHECK_JITTER = 900  # or the interval, when that is shorter
MIN_CHECK_INTERVAL = 300
MAX_CHECK_INTERVAL = 7 * 86400
MIN_BANDWIDTH = 64 << 10


@dataclass(frozen=True)
class Cluster:
    certificate_authority: str
    api_server: str | None = None
    bootstrap_token: str | None = None
    kubeconfig: str | None = None
    dns: tuple[str, ...] = ()
    domain: str | None = None


@dataclass(frozen=True)
class Taint:
    key: str
    effect: str
    value: str = ""


@dataclass(frozen=True)
class Node:
    name: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    provider_id: str | None = None


@dataclass(frozen=True)
class Kubelet:
    config: Mapping[str, Any] = field(default_factory=dict)
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Auth:
    username: str | None = None
    password: str | None = None
    token: str | None = None

    def header(self) -> str:
        if self.token is not None:
            return f"Bearer {self.token}"
        pair = f"{self.username}:{self.password}".encode()
        return f"Basic {base64.b64encode(pair).decode()}"


@dataclass(frozen=True)
class ClientCertificate:
    certificate: str
    key: str


@dataclass(frozen=True)
class Host:
    """A registry's upstream server (url None: containerd's default) or one of its mirrors."""

    url: str | None = None
    capabilities: tuple[str, ...] = ("pull", "resolve")
    ca: str | None = None
    skip_verify: bool = False
    client_certificate: ClientCertificate | None = None
    auth: Auth | None = None
    override_path: bool = False


@dataclass(frozen=True)
class Registry:
    name: str
    server: Host
    mirrors: tuple[Host, ...] = ()


@dataclass(frozen=True)
class Containerd:
    sandbox_image: str | None = None
    registries: tuple[Registry, ...] = ()


@dataclass(frozen=True)
class Admin:
    ssh_authorized_keys: tuple[str, ...] = ()
    serial_console: bool = False


@dataclass(frozen=True)
class FleetLock:
    url: str
    group: str = "default"
    ca: str | None = None  # PEM; instead of the system's CAs
    client_certificate: ClientCertificate | None = None


@dataclass(frozen=True)
class Window:
    start: str
    duration_minutes: int
    days: tuple[str, ...] = DAYS


@dataclass(frozen=True)
class Updates:
    repository: str | None = None
    channel: str | None = None
    fleet_lock: FleetLock | None = None
    maintenance_windows: tuple[Window, ...] = ()
    check_interval: int | None = None  # seconds; None: CHECK_INTERVAL
    check_jitter: int | None = None  # seconds; None: CHECK_JITTER (at most the interval)
    bandwidth_limit: int | None = None  # bytes per second; None: unlimited
    wave_seed: int | None = None  # 0..2047; None: drawn once and kept on /var


@dataclass(frozen=True)
class Probe:
    name: str
    command: str


@dataclass(frozen=True)
class Health:
    probes: tuple[Probe, ...] = ()
    deadline: int | None = None


@dataclass(frozen=True)
class NodeConfig:
    cluster: Cluster | None = None
    node: Node = Node()
    kubelet: Kubelet = Kubelet()
    containerd: Containerd = Containerd()
    admin: Admin = Admin()
    updates: Updates = Updates()
    health: Health = Health()
