"""What reaches the coordinator from outside: Zincati's bytes, bad requests, the admin
credential, TLS and client certificates, and `hostbuild fleet serve|status|pause|resume`."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from builder.fleet.coordinator import Coordinator
from builder.fleet.policy import single_group
from builder.fleet.server import FleetHttpServer, Tls, start_server
from tests.conftest import Cli
from tests.fleet.conftest import TOKEN, Fleet, admin, call, fleetlock
from tests.fleetserve import fleet_serve

pytestmark = pytest.mark.fleet

ZINCATI_ID = "e0f3745b108f471cbd4883c6fbed8cdd"


def zincati_request(endpoint: str, port: int, node_id: str, group: str) -> bytes:
    """The request Zincati's fleet_lock client sends: reqwest, a pretty-printed serde body,
    the protocol header, and no Content-Type (src/fleet_lock/mod.rs)."""
    body = (
        f'{{\n  "client_params": {{\n    "id": "{node_id}",\n    "group": "{group}"\n  }}\n}}'
    ).encode()
    head = (
        f"POST /v1/{endpoint} HTTP/1.1\r\n"
        "fleet-lock-protocol: true\r\n"
        "accept: */*\r\n"
        f"host: 127.0.0.1:{port}\r\n"
        f"content-length: {len(body)}\r\n"
        "\r\n"
    ).encode()
    return head + body


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    f = sock.makefile("rb")
    status = int(f.readline().split()[1])
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = f.read(int(headers.get("content-length", "0")))
    return status, headers, body


@pytest.fixture
def served_cli(fleet: Fleet, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """`hostbuild fleet serve` as a process: one group 'workers' with one slot."""
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    options = ["--group", "workers", "--slots", "1", "--admin-token-file", os.fspath(token)]
    with fleet_serve(fleet.etcd.urls, fleet.prefix, options, tmp_path / "serve.log") as (port, _):
        yield port, token


def test_zincati_byte_for_byte(served_cli: tuple[int, Path]) -> None:
    port, _ = served_cli
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        # Zincati first reports steady state (nothing held), then asks for the lock, on one
        # pooled connection
        sock.sendall(zincati_request("steady-state", port, ZINCATI_ID, "workers"))
        assert read_answer(sock)[0] == 200
        sock.sendall(zincati_request("pre-reboot", port, ZINCATI_ID, "workers"))
        assert read_answer(sock)[0] == 200
        sock.sendall(zincati_request("pre-reboot", port, ZINCATI_ID, "workers"))
        assert read_answer(sock)[0] == 200  # recursive lock
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(zincati_request("pre-reboot", port, "f" * 32, "workers"))
        status, headers, body = read_answer(sock)
        # Zincati decodes a non-2xx body as {kind, value} (RemoteJsonError)
        assert status == 409 and headers["content-type"] == "application/json"
        rejection = json.loads(body)
        assert set(rejection) == {"kind", "value"} and rejection["kind"] == "failed_lock"
        sock.sendall(zincati_request("steady-state", port, ZINCATI_ID, "workers"))
        assert read_answer(sock)[0] == 200
        sock.sendall(zincati_request("pre-reboot", port, "f" * 32, "workers"))
        assert read_answer(sock)[0] == 200


def test_cli_status_pause_resume(served_cli: tuple[int, Path], run_cli: Cli) -> None:
    port, token = served_cli
    server = ["--server", f"http://127.0.0.1:{port}", "--token-file", os.fspath(token)]
    assert fleetlock(port, "pre-reboot", "n1", "workers")[0] == 200
    result = run_cli("fleet", "pause", *server, "--group", "workers", "--reason", "bad v3")
    assert result.exit_code == 0, result.output
    assert "PAUSED since" in result.output and "(admin): bad v3" in result.output
    assert "holder n1" in result.output
    assert fleetlock(port, "pre-reboot", "n2", "workers")[0] == 423
    result = run_cli("fleet", "status", *server, "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["groups"]["workers"]["paused"]["reason"] == "bad v3"
    result = run_cli("fleet", "resume", *server)
    assert result.exit_code == 0 and "PAUSED" not in result.output
    bad = token.parent / "wrong"
    bad.write_text("nope\n")
    result = run_cli(
        "fleet", "status", "--server", f"http://127.0.0.1:{port}", "--token-file", os.fspath(bad)
    )
    assert result.exit_code == 1
    assert "refused /v1/admin/status: unauthorized:" in result.output


def test_the_admin_api_needs_its_token(fleet: Fleet) -> None:
    s = fleet.serve()
    for token in (None, "wrong", TOKEN + "x"):
        status, body = admin(s.port, "pause", {"group": "default"}, token=token)
        assert status == 401 and body and body["kind"] == "unauthorized"
        assert admin(s.port, "status", token=token)[0] == 401
    # a node's request carries no admin power, and the group is not paused
    assert fleetlock(s.port, "pre-reboot", "n1") == (200, None)
    status, body = admin(s.port, "pause", {"group": "nope"})
    assert status == 400 and body and body["kind"] == "unknown_group"


P = {"fleet-lock-protocol": "true"}
IDENTITY = "invalid_client_identity"


def params(**fields: object) -> dict[str, object]:
    return {"client_params": {"id": "a", "group": "default", **fields}}


BAD = [
    ({}, params(), 400, IDENTITY),
    ({"fleet-lock-protocol": "yes"}, params(), 400, IDENTITY),
    (P, b"{not json", 400, IDENTITY),
    (P, b"\xff\xfe", 400, IDENTITY),
    (P, [1, 2], 400, IDENTITY),
    (P, {"client_params": {"group": "default"}}, 400, IDENTITY),
    (P, params(id="a/../b"), 400, IDENTITY),
    (P, params(group="bad group"), 400, IDENTITY),
    (P, params(health="meh"), 400, IDENTITY),
    (P, params(version=3), 400, IDENTITY),
    (P, params(group="other"), 400, "unknown_group"),
    (P, b"x" * (64 * 1024 + 1), 413, "request_too_large"),
]


@pytest.mark.parametrize("endpoint", ["pre-reboot", "steady-state"])
def test_malformed_requests_get_an_error_body_and_no_slot(fleet: Fleet, endpoint: str) -> None:
    s = fleet.serve()
    for headers, body, status, kind in BAD:
        got, answer = call(s.port, f"/v1/{endpoint}", body, headers)
        assert (got, answer and answer["kind"]) == (status, kind), (headers, body)
        assert answer and answer["value"]
    got, answer = call(s.port, f"/v1/{endpoint}", b"", {}, method="GET")
    assert got == 405 and answer and answer["kind"] == "method_not_allowed"
    got, answer = call(s.port, "/v2/pre-reboot", {}, {"fleet-lock-protocol": "true"})
    assert got == 404 and answer and answer["kind"] == "not_found"
    # a chunked body is refused before it is read
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
    conn.request(
        "POST", f"/v1/{endpoint}", body=iter([b"{}"]), headers={"fleet-lock-protocol": "true"}
    )
    answer_chunked = conn.getresponse()
    assert (
        answer_chunked.status == 411
        and json.loads(answer_chunked.read())["kind"] == "invalid_request"
    )
    conn.close()
    assert fleet.store().snapshot("default").state.holders == {}
    assert fleetlock(s.port, "pre-reboot", "a") == (200, None)  # and the server still serves


def make_cert(
    directory: Path,
    name: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    ca: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def test_tls_with_client_certificates_that_name_the_node(fleet: Fleet, tmp_path: Path) -> None:
    ca = make_cert(tmp_path, "fleet-ca", ca=True)
    make_cert(tmp_path, "localhost", ca)
    for node in ("node-a", "node-b"):
        make_cert(tmp_path, node, ca)
    tls = Tls(
        tmp_path / "localhost.pem",
        tmp_path / "localhost.key",
        tmp_path / "fleet-ca.pem",
        match_id=True,
    )
    coordinator = Coordinator(fleet.store(), single_group(), refresh=0.2)
    server = FleetHttpServer(("127.0.0.1", 0), coordinator, tls=tls)
    start_server(server)
    port = int(server.server_address[1])
    body = json.dumps({"client_params": {"id": "node-a", "group": "default"}})

    def post(cert: str | None) -> tuple[int, dict[str, str] | None]:
        context = ssl.create_default_context(cafile=tmp_path / "fleet-ca.pem")
        if cert:
            context.load_cert_chain(tmp_path / f"{cert}.pem", tmp_path / f"{cert}.key")
        conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=30)
        try:
            conn.request(
                "POST", "/v1/pre-reboot", body=body, headers={"fleet-lock-protocol": "true"}
            )
            answer = conn.getresponse()
            raw = answer.read()
            return answer.status, json.loads(raw) if raw else None
        finally:
            conn.close()

    try:
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            post(None)  # no client certificate: the handshake fails
        status, answer = post("node-b")
        assert status == 403 and answer and answer["kind"] == "forbidden"
        assert "node-b" in answer["value"] and "'node-a'" in answer["value"]
        assert post("node-a") == (200, None)
    finally:
        server.shutdown()
        server.server_close()
        coordinator.close()
