"""The node's health gate: retries until healthy or the deadline, probes, kubelet healthz."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.node import health
from builder.node.health import deadline_of, kubelet_healthy, run_gate, user_probes


def test_gate_passes_once_every_check_passes() -> None:
    calls = {"n": 0}

    def flaky() -> str | None:
        calls["n"] += 1
        return None if calls["n"] >= 3 else "not yet"

    results = run_gate({"flaky": flaky, "ok": lambda: None}, deadline=10, interval=0)
    assert results == {"flaky": None, "ok": None}
    assert calls["n"] == 3


def test_gate_gives_up_at_the_deadline_with_the_reason() -> None:
    results = run_gate({"broken": lambda: "containerd socket: refused"}, deadline=0, interval=0)
    assert results == {"broken": "containerd socket: refused"}


def test_gate_retries_soon_then_backs_off(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    monkeypatch.setattr("builder.node.health.time.sleep", pauses.append)
    results = iter(["starting"] * 6 + [None])
    run_gate({"containerd": lambda: next(results)}, deadline=60, interval=2, first_interval=0.25)
    assert pauses == [0.25, 0.5, 1, 2, 2, 2]


def test_probes(tmp_path: Path) -> None:
    good = tmp_path / "10-good"
    good.write_text("#!/bin/sh\nexit 0\n")
    good.chmod(0o755)
    (tmp_path / "README").write_text("not executable: ignored\n")
    assert user_probes([tmp_path, tmp_path / "missing"]) is None
    bad = tmp_path / "20-bad"
    bad.write_text("#!/bin/sh\necho disk full\nexit 3\n")
    bad.chmod(0o755)
    reason = user_probes([tmp_path])
    assert reason is not None and "20-bad exited 3" in reason and "disk full" in reason


class Healthz(http.server.BaseHTTPRequestHandler):
    body = b"ok"

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(Healthz.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def healthz() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/healthz"
    server.shutdown()
    server.server_close()


def test_kubelet_checked_only_once_configured(tmp_path: Path, healthz: str) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    assert kubelet_healthy([kubeconfig], "http://127.0.0.1:9/healthz") is None  # not configured
    kubeconfig.write_text("apiVersion: v1\n")
    assert kubelet_healthy([kubeconfig], healthz) is None
    Healthz.body = b"[-]ping failed"
    try:
        assert kubelet_healthy([kubeconfig], healthz) == "healthz: '[-]ping failed'"
    finally:
        Healthz.body = b"ok"


def test_deadline_from_kernel_command_line_or_environment() -> None:
    assert deadline_of("ro quiet hostbuild.health_deadline=20", {}) == 20.0
    assert deadline_of("ro quiet", {"HOSTBUILD_HEALTH_DEADLINE": "300"}) == 300.0
    assert deadline_of("ro", {}) == 300.0


def test_verdict_names_each_failed_check() -> None:
    assert health.verdict({"containerd": None, "kubelet": None}) == "hostbuild-health: healthy"
    assert health.verdict({"containerd": "socket: refused", "kubelet": None}) == (
        "hostbuild-health: UNHEALTHY: containerd: socket: refused"
    )
