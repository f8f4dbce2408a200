"""Render a NodeConfig into the files kubelet, containerd, sshd and the health gate read.

`render_outputs` is pure (paths relative to /run/hostbuild); `install_outputs` replaces the whole
previous output set, so a file the new config no longer asks for disappears.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .model import Cluster, Host, NodeConfig, Registry
from .sources import Platform

RUN = "/run/hostbuild"
KUBELET = f"{RUN}/kubelet"
CERTS_D = f"{RUN}/containerd/certs.d"
HEADER = "Rendered by hostbuild-node from the NodeConfig at boot: do not edit."
# Everything below /run/hostbuild the agent owns: whole directories, and single files
OWNED_DIRS = ("kubelet", "containerd", "health.d", "fleetlock")
OWNED_FILES = (
    "ssh/authorized_keys.root", "hostname", "health.env", "serial-getty.enabled", "updates.json",
)  # fmt: skip
PRIVATE_DIRS = ("kubelet", "ssh", "containerd/certs.d", "fleetlock")
CRI = "io.containerd.grpc.v1.cri"
SANDBOX_LINE = re.compile(r"^(\s*)sandbox_image\s*=.*$", re.MULTILINE)
IMPORTS_LINE = re.compile(r"^imports\s*=.*\n?", re.MULTILINE)


@dataclass(frozen=True)
class Output:
    content: bytes
    mode: int = 0o644


def render_outputs(
    config: NodeConfig | None, base_kubelet: Mapping[str, Any], platform: Platform,
    extra_ssh_keys: Iterable[str] = (), base_containerd: str | None = None,
    warnings: list[str] | None = None,
) -> dict[str, Output]:  # fmt: skip
    """Every file to have under /run/hostbuild (relative paths); None renders only extra keys.

    `base_*` are the image's kubelet configuration and containerd config.toml; what cannot be
    rendered from them is added to `warnings`.
    """
    out: dict[str, Output] = {}
    keys = [*(config.admin.ssh_authorized_keys if config else ()), *extra_ssh_keys]
    keys = list(dict.fromkeys(k.strip() for k in keys if k.strip()))
    if keys:
        out["ssh/authorized_keys.root"] = Output(("\n".join(keys) + "\n").encode(), 0o600)
    if config is None:
        return out
    name = config.node.name or platform.name
    if name:
        out["hostname"] = _text(kernel_hostname(name) + "\n")
    if config.cluster is not None:
        out |= _kubelet_files(config, config.cluster, base_kubelet, platform)
    for registry in config.containerd.registries:
        out |= _registry_files(registry)
    if image := config.containerd.sandbox_image:
        try:
            out["containerd/conf.d/sandbox.toml"] = _text(sandbox_dropin(base_containerd, image))
        except ValueError as e:
            if warnings is not None:
                warnings.append(f"sandbox image {image!r} not applied: {e}")
    for i, probe in enumerate(config.health.probes):
        script = f"#!/bin/sh\n# {HEADER}\n# health probe {probe.name!r}\n{probe.command.strip()}\n"
        out[f"health.d/{10 * (i + 1):02d}-{probe.name}"] = Output(script.encode(), 0o755)
    if config.health.deadline is not None:
        out["health.env"] = _text(
            f"# {HEADER}\nHOSTBUILD_HEALTH_DEADLINE={config.health.deadline}\n"
        )
    if config.admin.serial_console:
        out["serial-getty.enabled"] = _text("")
    if updates := _updates(config):
        out["updates.json"] = _text(json.dumps(updates, indent=2) + "\n")
    out |= _fleet_lock_files(config)
    return out


def sandbox_dropin(base: str | None, image: str) -> str:
    """The image's containerd config with another sandbox image, for `imports` to load.

    containerd 1.7 replaces a plugin's whole section with an imported one instead of merging
    key by key, so the drop-in carries the whole CRI section, checked to differ only there.
    """
    import tomllib  # here: only a sandbox image override needs it

    if base is None:
        raise ValueError("the image has no /etc/containerd/config.toml")
    text = IMPORTS_LINE.sub("", base)
    text, count = SANDBOX_LINE.subn(lambda m: f"{m.group(1)}sandbox_image = {_toml(image)}", text)
    expected = copy.deepcopy(tomllib.loads(base))
    expected.pop("imports", None)
    cri = expected.get("plugins", {}).get(CRI)
    if count != 1 or not isinstance(cri, dict) or "sandbox_image" not in cri:
        raise ValueError(f"config.toml has no single plugins.{CRI!r}.sandbox_image line")
    cri["sandbox_image"] = image
    try:
        changed = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        changed = None
    if changed != expected:
        raise ValueError("config.toml is not in the expected layout")
    note = "A copy of /etc/containerd/config.toml with the NodeConfig's sandbox image."
    return f"# {HEADER}\n# {note}\n{text}"


def kernel_hostname(name: str) -> str:
    """The kernel takes at most 64 characters: a longer DNS name gives its first label."""
    return name if len(name) <= 64 else name.split(".", 1)[0][:63]


def _text(text: str, mode: int = 0o644) -> Output:
    return Output(text.encode(), mode)


def _kubelet_files(
    config: NodeConfig, cluster: Cluster, base: Mapping[str, Any], platform: Platform
) -> dict[str, Output]:
    # all 0600, as CIS Kubernetes Benchmark 4.1.5, 4.1.7 and 4.1.9 ask: only kubelet (root) reads
    out = {"kubelet/ca.crt": _text(cluster.certificate_authority, 0o600)}
    if cluster.kubeconfig is not None:
        out["kubelet/kubeconfig"] = _text(cluster.kubeconfig, 0o600)
        kubeconfig_args = f"--kubeconfig={KUBELET}/kubeconfig"
    else:
        out["kubelet/bootstrap-kubeconfig"] = _text(bootstrap_kubeconfig(cluster), 0o600)
        kubeconfig_args = (
            f"--kubeconfig=/var/lib/kubelet/kubeconfig "
            f"--bootstrap-kubeconfig={KUBELET}/bootstrap-kubeconfig"
        )
    derived: dict[str, Any] = {}
    if cluster.dns:
        derived["clusterDNS"] = list(cluster.dns)
    if cluster.domain:
        derived["clusterDomain"] = cluster.domain
    if config.node.taints:
        derived["registerWithTaints"] = [
            {"key": t.key, **({"value": t.value} if t.value else {}), "effect": t.effect}
            for t in config.node.taints
        ]
    if provider_id := config.node.provider_id or platform.provider_id:
        derived["providerID"] = provider_id
    merged = merge(merge(dict(base), derived), config.kubelet.config)
    out["kubelet/config.yaml"] = _text(
        f"# {HEADER}\n" + yaml.safe_dump(merged, sort_keys=False), 0o600
    )
    flags = []
    if config.node.labels:
        labels = ",".join(f"{k}={v}" for k, v in sorted(config.node.labels.items()))
        flags.append(f"--node-labels={labels}")
    if config.node.name:
        flags.append(f"--hostname-override={config.node.name}")
    flags += config.kubelet.flags
    out["kubelet/flags.env"] = _text(
        f"# {HEADER}\nKUBELET_KUBECONFIG_ARGS={env_quote(kubeconfig_args)}\n"
        f"KUBELET_EXTRA_ARGS={env_quote(' '.join(flags))}\n",
        0o600,
    )
    return out


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` over `base`: mappings merge key by key, anything else (lists too) is replaced."""
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


def bootstrap_kubeconfig(cluster: Cluster) -> str:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": {
            "server": cluster.api_server, "certificate-authority": f"{KUBELET}/ca.crt"}}],
        "users": [{"name": "kubelet-bootstrap", "user": {"token": cluster.bootstrap_token}}],
        "contexts": [{"name": "bootstrap",
                      "context": {"cluster": "cluster", "user": "kubelet-bootstrap"}}],
        "current-context": "bootstrap",
    }  # fmt: skip
    return f"# {HEADER}\n" + yaml.safe_dump(config, sort_keys=False)


def env_quote(value: str) -> str:
    """A double-quoted value for a systemd EnvironmentFile (which unescapes \\ " ` $)."""
    escaped = "".join("\\" + ch if ch in '\\"`$' else ch for ch in value)
    return f'"{escaped}"'


def _toml(value: str | bool | list[str]) -> str:
    """A TOML value; JSON's string escapes are TOML basic-string escapes."""
    return json.dumps(value)


def _registry_files(registry: Registry) -> dict[str, Output]:
    base = f"containerd/certs.d/{registry.name}"
    out: dict[str, Output] = {}
    secret = any(h.auth or h.client_certificate for h in (registry.server, *registry.mirrors))
    lines = [f"# {HEADER}"]
    if registry.server.url:
        lines.append(f"server = {_toml(registry.server.url)}")
    keys, auth = _host_settings(registry.server, base, "", out)
    lines += keys
    if auth:
        lines += ["", "[header]", f"  Authorization = {_toml(auth)}"]
    for i, mirror in enumerate(registry.mirrors):
        assert mirror.url is not None
        table = f"host.{_toml(mirror.url)}"
        keys, auth = _host_settings(mirror, base, f"mirror-{i}-", out)
        lines += ["", f"[{table}]", f"  capabilities = {_toml(list(mirror.capabilities))}"]
        lines += [f"  {k}" for k in keys]
        if mirror.override_path:
            lines.append("  override_path = true")
        if auth:
            lines += [f"  [{table}.header]", f"    Authorization = {_toml(auth)}"]
    out[f"{base}/hosts.toml"] = _text("\n".join(lines) + "\n", 0o600 if secret else 0o644)
    return out


def _host_settings(
    host: Host, base: str, prefix: str, out: dict[str, Output]
) -> tuple[list[str], str | None]:
    """A host's TOML keys (its certificates added to `out`) and its Authorization header."""
    keys = []
    on_node = f"{RUN}/{base}"
    if host.ca:
        out[f"{base}/{prefix}ca.crt"] = _text(host.ca)
        keys.append(f"ca = {_toml(f'{on_node}/{prefix}ca.crt')}")
    if host.skip_verify:
        keys.append("skip_verify = true")
    if host.client_certificate:
        out[f"{base}/{prefix}client.crt"] = _text(host.client_certificate.certificate)
        out[f"{base}/{prefix}client.key"] = _text(host.client_certificate.key, 0o600)
        pair = [f"{on_node}/{prefix}client.crt", f"{on_node}/{prefix}client.key"]
        keys.append(f"client = [{_toml(pair)}]")
    return keys, host.auth.header() if host.auth else None


def _updates(config: NodeConfig) -> dict[str, Any]:
    u = config.updates
    result: dict[str, Any] = {}
    if u.repository:
        result["repository"] = u.repository
    if u.channel:
        result["channel"] = u.channel
    if u.fleet_lock:
        result["fleetLock"] = {"url": u.fleet_lock.url, "group": u.fleet_lock.group}
        if u.fleet_lock.ca:
            result["fleetLock"]["ca"] = f"{RUN}/fleetlock/ca.crt"
        if u.fleet_lock.client_certificate:
            result["fleetLock"]["certificate"] = f"{RUN}/fleetlock/client.crt"
            result["fleetLock"]["key"] = f"{RUN}/fleetlock/client.key"
    if u.maintenance_windows:
        result["maintenanceWindows"] = [
            {"days": list(w.days), "start": w.start, "durationMinutes": w.duration_minutes}
            for w in u.maintenance_windows
        ]
    # seconds, bytes per second, the seed; the updater applies the defaults of what is not given
    for key, number in (("checkInterval", u.check_interval), ("checkJitter", u.check_jitter),
                        ("bandwidthLimit", u.bandwidth_limit),
                        ("waveSeed", u.wave_seed)):  # fmt: skip
        if number is not None:
            result[key] = number
    return result


def _fleet_lock_files(config: NodeConfig) -> dict[str, Output]:
    """The fleet lock's CA and client certificate, for the updater (updates.json names them)."""
    lock = config.updates.fleet_lock
    out: dict[str, Output] = {}
    if lock and lock.ca:
        out["fleetlock/ca.crt"] = _text(lock.ca)
    if lock and lock.client_certificate:
        out["fleetlock/client.crt"] = _text(lock.client_certificate.certificate)
        out["fleetlock/client.key"] = _text(lock.client_certificate.key, 0o600)
    return out


def install_outputs(outputs: Mapping[str, Output], run: Path) -> None:
    """Make `run` hold exactly `outputs` among the paths the agent owns.

    Everything is written into a fresh directory under `run` first; owned directories are then
    swapped in whole by rename and owned files replaced or removed, so nothing stale survives.
    """
    run.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".render-", dir=run))
    try:
        for d in PRIVATE_DIRS:
            (staging / d).mkdir(mode=0o700, parents=True, exist_ok=True)
        for rel, output in outputs.items():
            _check_owned(rel)
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(output.content)
            target.chmod(output.mode)
        for d in OWNED_DIRS:
            old = run / d
            if old.exists():
                old.rename(staging / f".old-{d}")
            if (staging / d).exists():
                (staging / d).rename(old)
        (run / "ssh").mkdir(mode=0o700, exist_ok=True)
        for rel in OWNED_FILES:
            if (staging / rel).exists():
                os.replace(staging / rel, run / rel)
            else:
                (run / rel).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_owned(rel: str) -> None:
    if not (rel in OWNED_FILES or rel.split("/", 1)[0] in OWNED_DIRS) or ".." in rel.split("/"):
        raise ValueError(f"internal: {rel} is not an output the agent owns")
