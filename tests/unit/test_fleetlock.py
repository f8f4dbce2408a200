"""The FleetLock client against a local server: the node ID, the request byte for byte, answers."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.node.command import run
from builder.node.fleetlock import APP_ID, Client, Params, app_specific_id
from tests.unit.lockserver import LockServer, lock_server

ID = "e0f3745b108f471cbd4883c6fbed8cdd"  # the node ID of Zincati's own FleetLock tests


@pytest.fixture
def server() -> Iterator[LockServer]:
    with lock_server() as s:
        yield s


def test_the_node_id_is_systemds_app_specific_machine_id() -> None:
    # computed by `systemd-id128 machine-id --app-specific=de35106b6ec24688b63afddaa156679b`
    # on a host whose /etc/machine-id was 3d1219c7c4c5404aaa1f6d2a48adfda4
    assert app_specific_id("3d1219c7c4c5404aaa1f6d2a48adfda4") == "975228d46dc94622b9bbe16671e2b58d"
    assert APP_ID.hex() == "de35106b6ec24688b63afddaa156679b"
    with pytest.raises(ValueError, match="32 hex digits"):
        app_specific_id("")


def systemd_app_id(machine_id_file: Path | None = None) -> str:
    """What systemd-id128 prints for FleetLock's app ID, for /etc/machine-id or, in a private
    mount namespace, for `machine_id_file` bound over it."""
    argv = ["systemd-id128", "machine-id", f"--app-specific={APP_ID.hex()}"]
    if machine_id_file is not None:
        bind = f"mount --bind {machine_id_file} /etc/machine-id && exec {' '.join(argv)}"
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", bind]
    return run(argv).strip()


SYSTEMD_ID128 = shutil.which("systemd-id128")
MACHINE_ID = Path("/etc/machine-id")


@pytest.mark.skipif(SYSTEMD_ID128 is None, reason="systemd-id128 is not installed")
@pytest.mark.skipif(not MACHINE_ID.is_file(), reason="this host has no /etc/machine-id")
def test_the_node_id_matches_systemd_id128_on_this_host() -> None:
    assert app_specific_id(MACHINE_ID.read_text()) == systemd_app_id()


@pytest.mark.skipif(SYSTEMD_ID128 is None, reason="systemd-id128 is not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="binding over /etc/machine-id needs root")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare is not installed")
def test_the_node_id_matches_systemd_id128_for_other_machine_ids(tmp_path: Path) -> None:
    for machine_id in [uuid.uuid4().hex for _ in range(3)] + ["0" * 31 + "1", "f" * 32]:
        (tmp_path / "machine-id").write_text(machine_id + "\n")
        assert app_specific_id(machine_id) == systemd_app_id(tmp_path / "machine-id"), machine_id


def test_the_node_id_is_a_uuid_v4_and_takes_id128_spellings() -> None:
    machine_id = uuid.uuid4()
    fleetlock_id = uuid.UUID(app_specific_id(machine_id.hex))
    assert (fleetlock_id.version, fleetlock_id.variant) == (4, uuid.RFC_4122)
    assert app_specific_id(str(machine_id).upper() + "\n") == fleetlock_id.hex
    assert app_specific_id(machine_id.hex, app_id=uuid.uuid4().bytes) != fleetlock_id.hex
    with pytest.raises(ValueError, match=r"machine id 'node-a' is not an id128: 32 hex digits"):
        app_specific_id("node-a")


def test_pre_reboot_is_the_request_zincati_sends(server: LockServer) -> None:
    answer = Client(server.url).pre_reboot(Params(ID, "mock-workers"))
    assert answer.ok and answer.status == 200
    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/v1/pre-reboot")
    assert request.headers["fleet-lock-protocol"] == "true"
    assert "content-type" not in request.headers  # Zincati sends none
    # serde_json::to_string_pretty of Zincati's body, byte for byte
    assert request.body == (
        b'{\n  "client_params": {\n    "id": "e0f3745b108f471cbd4883c6fbed8cdd",\n'
        b'    "group": "mock-workers"\n  }\n}'
    )
    assert request.headers["content-length"] == str(len(request.body))


def test_steady_state_carries_the_extra_fields_after_id_and_group(server: LockServer) -> None:
    params = Params(ID, "workers", "0.1.0-2", "failed", "0.1.0-3", "worker-1")
    assert Client(server.url).steady_state(params).ok
    (request,) = server.requests
    assert request.path == "/v1/steady-state"
    assert list(request.params()) == ["id", "group", "version", "health", "failed_version",
                                      "node_name"]  # fmt: skip
    assert request.params()["failed_version"] == "0.1.0-3"


def test_the_endpoint_is_joined_to_the_url_as_zincati_joins_it(server: LockServer) -> None:
    base = server.url.rstrip("/")
    Client(f"{base}/fleetlock/").pre_reboot(Params(ID, "default"))
    Client(f"{base}/fleetlock").pre_reboot(Params(ID, "default"))  # the last segment goes
    Client(base).steady_state(Params(ID, "default"))
    assert server.paths() == ["/fleetlock/v1/pre-reboot", "/v1/pre-reboot", "/v1/steady-state"]


@pytest.mark.parametrize(
    ("status", "body", "kind", "detail"),
    [
        (409, {"kind": "failed_lock_semaphore_full", "value": "all slots are locked"},
         "failed_lock_semaphore_full", "all slots are locked"),
        (500, b"<html>oops</html>", "generic_http_500", "(unknown/generic server error)"),
        (404, b"", "generic_http_404", "(unknown/generic server error)"),
        (302, b"", "generic_http_302", "(unknown/generic server error)"),  # not followed
        (400, {"kind": "bad\nrequest", "value": ["not", "a string"]},
         "bad request", "(unknown/generic server error)"),
    ],
)  # fmt: skip
def test_anything_but_success_is_a_refusal(
    server: LockServer, status: int, body: object, kind: str, detail: str
) -> None:
    server.answer("/v1/pre-reboot", status, body)
    answer = Client(server.url).pre_reboot(Params(ID, "default"))
    assert (answer.ok, answer.status, answer.kind, answer.detail) == (False, status, kind, detail)
    assert answer.reachable
    assert answer.describe() == f"refused, HTTP {status} {kind}: {detail}"
    assert server.paths() == ["/v1/pre-reboot"]


def test_any_2xx_is_success_as_in_zincati(server: LockServer) -> None:
    server.answer("/v1/pre-reboot", 204)
    assert Client(server.url).pre_reboot(Params(ID, "default")).ok


def test_an_unreachable_server_is_no_answer() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    answer = Client(f"http://127.0.0.1:{port}/").pre_reboot(Params(ID, "default"))
    assert (answer.ok, answer.status, answer.kind) == (False, None, "client_failed_request")
    assert not answer.reachable and "Connection refused" in answer.detail


def test_a_server_that_does_not_answer_in_time_is_no_answer(server: LockServer) -> None:
    server.delay = 1.0
    client = Client(server.url, response_timeout=0.2)
    answer = client.steady_state(Params(ID, "default"))
    assert (answer.ok, answer.status) == (False, None)
    assert "timed out" in answer.detail


def test_only_http_and_https(server: LockServer) -> None:
    answer = Client("ftp://127.0.0.1/").pre_reboot(Params(ID, "default"))
    assert (answer.ok, answer.status) == (False, None) and "ftp://" in answer.detail
