"""The health gate: a boot is marked good only when the node is healthy (stdlib and h2).

Ordered before boot-complete.target: while it has not passed, systemd-bless-boot does not mark the
boot entry good; when it fails (the deadline passed), the unit's FailureAction reboots and boot
counting falls back to the previous entry once the tries are used up.
"""

from __future__ import annotations

import json
import os
import subprocess  # noqa: TID251 -- runs on the node, outside the builder
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import grpc

CONTAINERD_SOCKET = Path("/run/containerd/containerd.sock")
CRI_TYPE = "io.containerd.grpc.v1"
PLUGINS_METHOD = "/containerd.services.introspection.v1.Introspection/Plugins"
# What the node agent renders this boot from valid user-data; a kubeconfig kept on /var from an
# earlier boot does not count, so broken user-data never makes the gate wait for kubelet.
KUBELET_CONFIGURED = (
    Path("/run/hostbuild/kubelet/kubeconfig"),
    Path("/run/hostbuild/kubelet/bootstrap-kubeconfig"),
)
KUBELET_HEALTHZ = "http://127.0.0.1:10248/healthz"
PROBE_DIRS = (Path("/etc/hostbuild/health.d"), Path("/run/hostbuild/health.d"))
STATUS = Path("/run/hostbuild/health.json")
DEFAULT_DEADLINE = 300.0
# The gate starts with containerd and kubelet, not after them: it retries soon at first (they are
# about to answer), then every INTERVAL seconds (a round costs a connect while they start).
FIRST_INTERVAL = 0.25
INTERVAL = 1.0

Check = Callable[[], str | None]  # None when healthy, else the reason


def containerd_answers(sock: Path = CONTAINERD_SOCKET) -> str | None:
    """containerd answers on its socket, and its CRI plugin (what kubelet talks to) is loaded."""
    try:
        reply = grpc.unary_call(sock, PLUGINS_METHOD, grpc.string_field(1, "id==cri"))
    except grpc.GrpcError as e:
        return f"containerd socket {sock}: {e}"
    return cri_plugin_problem(reply)


def cri_plugin_problem(reply: bytes) -> str | None:
    """None when the Introspection.Plugins reply lists the CRI plugin without an init error."""
    for number, plugin in grpc.fields(reply):  # PluginsResponse.plugins = 1
        if number != 1 or not isinstance(plugin, bytes):
            continue
        found = {n: v for n, v in grpc.fields(plugin) if n in (1, 2, 7)}  # type, id, init_err
        if found.get(1) != CRI_TYPE.encode() or found.get(2) != b"cri":
            continue
        error = found.get(7)
        if not isinstance(error, bytes):
            return None
        text = b"".join(v for n, v in grpc.fields(error) if n == 2 and isinstance(v, bytes))
        return f"containerd's CRI plugin failed to load: {text.decode(errors='replace')}"
    return "containerd's CRI plugin is not loaded (disabled in /etc/containerd/config.toml?)"


def kubelet_healthy(
    configured: Sequence[Path] = KUBELET_CONFIGURED, url: str = KUBELET_HEALTHZ
) -> str | None:
    """kubelet answers healthz, once node configuration has given it a cluster to join."""
    if not any(p.exists() for p in configured):
        return None  # not configured yet: nothing to check
    import urllib.request  # here: it loads http, email and ssl, slow to import on small nodes

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read(100).decode(errors="replace")
            return None if response.status == 200 and body.strip() == "ok" else f"healthz: {body!r}"
    except OSError as e:
        return f"kubelet healthz {url}: {e}"


def user_probes(dirs: Sequence[Path] = PROBE_DIRS) -> str | None:
    """Every executable drop-in probe exits 0."""
    for directory in dirs:
        if not directory.is_dir():
            continue
        for probe in sorted(directory.iterdir()):
            if not (probe.is_file() and os.access(probe, os.X_OK)):
                continue
            result = subprocess.run(
                [os.fspath(probe)], capture_output=True, text=True, timeout=60, check=False
            )
            if result.returncode != 0:
                return f"probe {probe} exited {result.returncode}: {result.stdout + result.stderr}"[
                    -300:
                ]
    return None


CHECKS: dict[str, Check] = {
    "containerd": containerd_answers,
    "kubelet": kubelet_healthy,
    "probes": user_probes,
}


def run_gate(
    checks: dict[str, Check],
    deadline: float,
    interval: float = INTERVAL,
    first_interval: float = FIRST_INTERVAL,
) -> dict[str, str | None]:
    """Retry the checks until all pass or the deadline (seconds) passes; return the last results.

    The pause between rounds doubles from `first_interval` up to `interval`.
    """
    end = time.monotonic() + deadline
    pause = min(first_interval, interval)
    while True:
        results = {name: check() for name, check in checks.items()}
        if all(r is None for r in results.values()) or time.monotonic() >= end:
            return results
        time.sleep(pause)
        pause = min(pause * 2, interval)


def deadline_of(cmdline: str, environ: dict[str, str]) -> float:
    """`hostbuild.health_deadline=N` on the kernel command line, else the unit's environment."""
    for arg in cmdline.split():
        if arg.startswith("hostbuild.health_deadline="):
            return float(arg.split("=", 1)[1])
    return float(environ.get("HOSTBUILD_HEALTH_DEADLINE", DEFAULT_DEADLINE))


def verdict(results: dict[str, str | None]) -> str:
    """The one line the unit prints on the console (tests and operators watch for it)."""
    failed = {name: reason for name, reason in results.items() if reason is not None}
    if not failed:
        return "hostbuild-health: healthy"
    return "hostbuild-health: UNHEALTHY: " + "; ".join(f"{n}: {r}" for n, r in failed.items())


def main(argv: Sequence[str] = sys.argv[1:]) -> int:
    deadline = deadline_of(Path("/proc/cmdline").read_text(), dict(os.environ))
    print(f"hostbuild-health: checking (deadline {deadline:g} s)", flush=True)  # noqa: T201
    results = run_gate(CHECKS, deadline)
    healthy = all(r is None for r in results.values())
    STATUS.parent.mkdir(parents=True, exist_ok=True)
    STATUS.write_text(json.dumps({"healthy": healthy, "checks": results}, indent=2) + "\n")
    for name, reason in results.items():
        print(f"{name}: {'ok' if reason is None else reason}", file=sys.stderr)  # noqa: T201
    print(verdict(results), flush=True)  # noqa: T201
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
