"""The FleetLock client over HTTPS: a private CA instead of the system's, client certificates."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from builder.node.fleetlock import Client, Params, Tls

ID = "e0f3745b108f471cbd4883c6fbed8cdd"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
           ) -> tuple[Path, Path]:  # fmt: skip
    crt, pem = directory / f"{stem}.crt", directory / f"{stem}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))  # fmt: skip
    return crt, pem


def _certificate(subject: str, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey,
                 key: ec.EllipticCurvePrivateKey, ca: bool = False,
                 ip: str | None = None) -> x509.Certificate:  # fmt: skip
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )  # fmt: skip
    if ip:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test-ca", _name("test-ca"), ca_key, ca_key, ca=True)
    files = {"ca": _write(directory, "ca", ca, ca_key)[0]}
    for name, ip in (("server", "127.0.0.1"), ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        crt, pem = _write(directory, name, _certificate(name, ca.subject, ca_key, key, ip=ip), key)
        files[f"{name}.crt"], files[f"{name}.key"] = crt, pem
    return files


@contextmanager
def https_server(pki: dict[str, Path], require_client: bool) -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            peer = self.connection.getpeercert()
            subject = dict(x[0] for x in peer["subject"]) if peer else {}
            seen.append(str(subject.get("commonName", "")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["server.crt"], pki["server.key"])
    if require_client:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki["ca"])
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}/", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_private_ca_is_trusted_instead_of_the_systems(pki: dict[str, Path]) -> None:
    with https_server(pki, require_client=False) as (url, _):
        assert Client(url, Tls(ca=pki["ca"])).pre_reboot(Params(ID, "default")).ok
        untrusted = Client(url).pre_reboot(Params(ID, "default"))  # the system's CAs
    assert (untrusted.ok, untrusted.status) == (False, None)
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.detail


def test_a_client_certificate_is_presented(pki: dict[str, Path]) -> None:
    tls = Tls(ca=pki["ca"], certificate=pki["client.crt"], key=pki["client.key"])
    with https_server(pki, require_client=True) as (url, seen):
        assert Client(url, tls).steady_state(Params(ID, "default")).ok
        without = Client(url, Tls(ca=pki["ca"])).steady_state(Params(ID, "default"))
    assert seen == ["client"]
    assert (without.ok, without.status, without.kind) == (False, None, "client_failed_request")
