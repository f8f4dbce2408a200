"""Fixtures for the coordinator tests: a three-member etcd cluster on 127.0.0.1 (one per
session), coordinators serving on free ports with their keys under a prefix of their own, and a
FleetLock client."""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from builder.fleet.coordinator import Coordinator
from builder.fleet.hooks import Drainer
from builder.fleet.policy import FleetPolicy, single_group
from builder.fleet.server import FleetHttpServer, start_server
from builder.fleet.store import EtcdTls, Store
from tests.etcdcluster import EtcdCluster, etcd_cluster, etcd_missing

TOKEN = "s3cret-admin-token"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = etcd_missing()
    for item in items:
        if "tests/fleet/" in item.nodeid:
            item.add_marker(pytest.mark.fleet)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdCluster]:
    with etcd_cluster() as cluster:
        yield cluster


@dataclass
class Served:
    coordinator: Coordinator
    server: FleetHttpServer

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.coordinator.close()


@dataclass
class Fleet:
    """Coordinators over one etcd prefix (replicas of one fleet); all closed at teardown."""

    etcd: EtcdCluster
    prefix: str = field(default_factory=lambda: f"/hostbuild-test/{uuid.uuid4().hex}/")
    served: list[Served] = field(default_factory=list)
    tls: EtcdTls = EtcdTls()

    def store(self) -> Store:
        return Store(self.etcd.urls, self.tls, timeout=3.0, prefix=self.prefix)

    def serve(
        self,
        policy: FleetPolicy | None = None,
        drainer: Drainer | None = None,
        *,
        wait: float = 0.0,
        refresh: float = 0.2,
    ) -> Served:
        coordinator = Coordinator(
            self.store(), policy or single_group("default", 1), drainer, wait=wait, refresh=refresh
        )
        server = FleetHttpServer(("127.0.0.1", 0), coordinator, admin_token=TOKEN)
        start_server(server)
        s = Served(coordinator, server)
        self.served.append(s)
        return s

    def close(self) -> None:
        for s in self.served:
            s.close()
        self.served.clear()


@pytest.fixture
def fleet(etcd: EtcdCluster) -> Iterator[Fleet]:
    f = Fleet(etcd)
    yield f
    f.close()


def call(
    port: int, path: str, body: Any, headers: dict[str, str] | None = None, method: str = "POST"
) -> tuple[int, dict[str, Any] | None]:
    """One request; the status and the JSON body (None when empty)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {})
        answer = conn.getresponse()
        raw = answer.read()
        return answer.status, (json.loads(raw) if raw else None)
    finally:
        conn.close()


def fleetlock(
    port: int, endpoint: str, node_id: str, group: str = "default", **extra: str
) -> tuple[int, dict[str, Any] | None]:
    body = {"client_params": {"id": node_id, "group": group, **extra}}
    return call(port, f"/v1/{endpoint}", body, {"fleet-lock-protocol": "true"})


def admin(
    port: int, path: str, body: Any = None, token: str | None = TOKEN
) -> tuple[int, dict[str, Any] | None]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is None:
        return call(port, f"/v1/admin/{path}", b"", headers, method="GET")
    return call(port, f"/v1/admin/{path}", body, headers)
