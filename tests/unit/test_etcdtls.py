"""TLS options for etcd refused before the first request, and the reasons pulled out of
requests' messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.fleet import etcdtls
from builder.fleet.etcdtls import EtcdTls, EtcdTlsError

HTTPS = ["https://10.0.0.1:2379"]


def test_a_certificate_needs_its_key_and_the_other_way(tmp_path: Path) -> None:
    pem = tmp_path / "c.pem"
    pem.write_text("x")
    with pytest.raises(EtcdTlsError, match="--etcd-cert was given without --etcd-key"):
        etcdtls.check(EtcdTls(cert=str(pem)), HTTPS)
    with pytest.raises(EtcdTlsError, match="--etcd-key was given without --etcd-cert"):
        etcdtls.check(EtcdTls(key=str(pem)), HTTPS)
    etcdtls.check(EtcdTls(cert=str(pem), key=str(pem)), HTTPS)


def test_a_missing_file_is_named_with_its_option(tmp_path: Path) -> None:
    with pytest.raises(EtcdTlsError, match=f"--etcd-ca {tmp_path}/ca.crt: no such readable"):
        etcdtls.check(EtcdTls(ca=str(tmp_path / "ca.crt")), HTTPS)


def test_tls_options_with_plain_http_endpoints_are_refused(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    urls = [*HTTPS, "http://10.0.0.2:2379"]
    with pytest.raises(EtcdTlsError, match="etcd endpoint http://10.0.0.2:2379 is plain http"):
        etcdtls.check(EtcdTls(ca=str(ca)), urls)
    etcdtls.check(EtcdTls(), urls)  # no TLS asked for: plain http is fine


def test_the_given_ca_wins_over_requests_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/elsewhere.pem")
    pinned = etcdtls.session(EtcdTls(ca="/mine.pem"))
    assert pinned.merge_environment_settings(HTTPS[0], {}, None, None, None)["verify"] == (
        "/mine.pem"
    )
    default = etcdtls.session(EtcdTls())
    assert default.merge_environment_settings(HTTPS[0], {}, None, None, None)["verify"] == (
        "/elsewhere.pem"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            "HTTPSConnectionPool(host='h', port=1): Max retries exceeded (Caused by "
            "SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate "
            "verify failed: unable to get local issuer certificate (_ssl.c:1006)')))",
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local "
            "issuer certificate",
        ),
        (
            "(Caused by SSLError(SSLEOFError(8, 'EOF occurred in violation of protocol')))",
            "EOF occurred in violation of protocol",
        ),
        (
            "HTTPConnectionPool(host='h', port=1): Max retries exceeded (Caused by "
            "NewConnectionError('<urllib3.connection.HTTPConnection object at 0x7f>: Failed to "
            "establish a new connection: [Errno 111] Connection refused'))",
            "[Errno 111] Connection refused",
        ),
        ("something else", "something else"),
    ],
)
def test_the_innermost_reason_is_kept(text: str, reason: str) -> None:
    assert etcdtls.reason(text) == reason
