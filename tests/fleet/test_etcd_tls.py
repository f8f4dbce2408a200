"""The coordinator's etcd over https with client certificates (one more cluster, TLS only)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.fleet.policy import single_group
from builder.fleet.store import EtcdTls, Store, StoreError
from tests.etcdcluster import EtcdCluster, etcd_cluster
from tests.fleet.conftest import Fleet, admin, fleetlock
from tests.standin.kubetls import PkiFiles, make_pki

pytestmark = pytest.mark.fleet


@pytest.fixture(scope="module")
def tls_etcd() -> Iterator[EtcdCluster]:
    with etcd_cluster(make_pki("etcd")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> PkiFiles:
    """A CA and client certificate that etcd's CA did not sign."""
    return make_pki("stranger").write(tmp_path_factory.mktemp("stranger"))


def pki_of(cluster: EtcdCluster) -> PkiFiles:
    assert cluster.tls is not None
    return cluster.tls


def tls(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> EtcdTls:
    return EtcdTls(*(str(p) if p else None for p in (ca, cert, key)))


def test_a_slot_is_granted_and_released_over_https_with_a_client_certificate(
    tls_etcd: EtcdCluster, stranger: PkiFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    # requests prefers this variable to a session's own CA: --etcd-ca must still be the one used
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stranger.ca))
    files = pki_of(tls_etcd)
    assert all(url.startswith("https://") for url in tls_etcd.urls)
    fleet = Fleet(tls_etcd, tls=tls(files.ca, files.client_cert, files.client_key))
    try:
        s = fleet.serve(single_group("default", 1))
        assert fleetlock(s.port, "pre-reboot", "a") == (200, None)
        assert fleetlock(s.port, "pre-reboot", "b")[0] == 409
        _, body = admin(s.port, "status")
        assert body and set(body["groups"]["default"]["holders"]) == {"a"}
        assert fleetlock(s.port, "steady-state", "a") == (200, None)
        assert fleet.store().snapshot("default").state.holders == {}
    finally:
        fleet.close()


def test_without_a_client_certificate_the_error_names_the_endpoint_and_the_options(
    tls_etcd: EtcdCluster,
) -> None:
    with pytest.raises(StoreError) as e:
        Store(tls_etcd.urls, tls(pki_of(tls_etcd).ca), timeout=3.0).groups()
    assert e.value.message.startswith(f"etcd {tls_etcd.urls[0]} refused the TLS handshake")
    assert "requires a client certificate" in e.value.message
    assert e.value.hint and "--etcd-cert and --etcd-key" in e.value.hint


def test_a_coordinator_without_a_client_certificate_answers_503_with_the_reason(
    tls_etcd: EtcdCluster,
) -> None:
    fleet = Fleet(tls_etcd, tls=tls(pki_of(tls_etcd).ca))
    try:
        s = fleet.serve(single_group("default", 1))
        status, body = fleetlock(s.port, "pre-reboot", "a")
    finally:
        fleet.close()
    assert status == 503 and body and body["kind"] == "store_unavailable"
    assert "requires a client certificate" in body["value"]


def test_a_ca_that_did_not_sign_the_server_is_named_with_the_option(
    tls_etcd: EtcdCluster, stranger: PkiFiles
) -> None:
    files = pki_of(tls_etcd)
    wrong = tls(stranger.ca, files.client_cert, files.client_key)
    with pytest.raises(StoreError) as e:
        Store(tls_etcd.urls, wrong, timeout=3.0).groups()
    assert e.value.message.startswith(f"etcd {tls_etcd.urls[0]}: its server certificate")
    assert f"not signed by the CA in --etcd-ca {stranger.ca}" in e.value.message
    assert "CERTIFICATE_VERIFY_FAILED" in e.value.message
    assert e.value.hint and "--etcd-ca" in e.value.hint


def test_a_client_certificate_of_another_ca_is_named(
    tls_etcd: EtcdCluster, stranger: PkiFiles
) -> None:
    files = pki_of(tls_etcd)
    foreign = tls(files.ca, stranger.client_cert, stranger.client_key)
    with pytest.raises(StoreError) as e:
        Store(tls_etcd.urls, foreign, timeout=3.0).groups()
    assert f"with the client certificate --etcd-cert {stranger.client_cert}" in e.value.message
    assert e.value.hint and "--trusted-ca-file" in e.value.hint


def test_plain_http_to_a_tls_member_says_which_endpoints_did_not_answer(
    tls_etcd: EtcdCluster,
) -> None:
    plain = [u.replace("https://", "http://") for u in tls_etcd.urls]
    with pytest.raises(StoreError) as e:
        Store(plain, timeout=3.0).groups()
    assert e.value.message.startswith("no etcd member answered (etcd " + plain[0])
    assert all(u in e.value.message for u in plain)
    assert e.value.hint and "https://" in e.value.hint
