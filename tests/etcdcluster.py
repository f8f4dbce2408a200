"""A three-member etcd cluster on 127.0.0.1 for the fleet tests and benchmark (apt: etcd-server).

Each member gets free loopback ports and a data directory (under /dev/shm when there is one:
etcd syncs its log on every commit, and a tmpfs keeps that from timing the tests). With a PKI
the members serve their clients over https only and require a client certificate signed by its
CA (--client-cert-auth); the peers talk plain http on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.fleet.store import Store, from_b64, to_b64
from builder.run import Spawned, spawn
from tests.standin.kubetls import Pki, PkiFiles

NAMES = ("m0", "m1", "m2")


def etcd_missing() -> str | None:
    """Why the cluster cannot start here (None when it can)."""
    if shutil.which("etcd") is None:
        return "the etcd binary is not installed (apt: etcd-server; .ci/setup installs it)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data: Path
    log: Path
    scheme: str = "http"
    proc: Spawned | None = None

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


@dataclass
class EtcdCluster:
    root: Path
    members: list[Member] = field(default_factory=list)
    tls: PkiFiles | None = None

    @property
    def urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    def start_member(self, member: Member, state: str = "new") -> None:
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        member.proc = spawn(
            [
                "etcd", "--name", member.name, "--data-dir", member.data,
                "--listen-client-urls", member.client_url,
                "--advertise-client-urls", member.client_url,
                "--listen-peer-urls", member.peer_url,
                "--initial-advertise-peer-urls", member.peer_url,
                "--initial-cluster", cluster,
                "--initial-cluster-state", state,
                "--initial-cluster-token", f"hostbuild-{os.getpid()}",
                "--heartbeat-interval", "50", "--election-timeout", "500",
                "--max-txn-ops", "1024", "--logger", "zap", "--log-level", "warn",
                *self._client_tls(),
            ],
            output=member.log,
        )  # fmt: skip

    def _client_tls(self) -> list[str | Path]:
        if self.tls is None:
            return []
        return [
            "--cert-file", self.tls.server_cert, "--key-file", self.tls.server_key,
            "--trusted-ca-file", self.tls.ca, "--client-cert-auth",
        ]  # fmt: skip

    def _health_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        context = ssl.create_default_context(cafile=self.tls.ca)
        context.load_cert_chain(self.tls.client_cert, self.tls.client_key)
        return context

    def stop_member(self, member: Member) -> None:
        if member.proc is not None:
            member.proc.terminate()
            if member.proc.wait(10) is None:
                member.proc.kill()
                member.proc.wait(10)
            member.proc = None

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every running member answers /health with a leader."""
        deadline = time.monotonic() + timeout
        context = self._health_context()
        for m in self.members:
            if m.proc is None:
                continue
            while True:
                try:
                    with urllib.request.urlopen(
                        f"{m.client_url}/health", timeout=2, context=context
                    ) as r:
                        if b'"true"' in r.read():
                            break
                except OSError:
                    pass
                if m.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"etcd member {m.name} did not start: see {m.log}")
                time.sleep(0.1)


@contextlib.contextmanager
def etcd_cluster(pki: Pki | None = None) -> Iterator[EtcdCluster]:
    """Start three members (serving https with `pki`), wait for a leader, yield the cluster;
    always stop every member."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="hostbuild-etcd-", dir=base) as tmp:
        root = Path(tmp)
        cluster = EtcdCluster(root, tls=pki.write(root / "pki") if pki else None)
        scheme = "https" if pki else "http"
        for name in NAMES:
            cluster.members.append(
                Member(name, free_port(), free_port(), root / name, root / f"{name}.log", scheme)
            )
        try:
            for m in cluster.members:
                cluster.start_member(m)
            cluster.wait_healthy()
            yield cluster
        finally:
            for m in cluster.members:
                cluster.stop_member(m)


def max_holders_in_etcd(store: Store, group: str) -> tuple[int, int]:
    """Walk the group key back through every revision (etcd keeps them until a compaction):
    the most holders any version had, and how many versions there were."""
    key = store.group_key(group)
    revision: int | None = None
    most = versions = 0
    while True:
        body: dict[str, Any] = {"key": to_b64(key)}
        if revision is not None:
            body["revision"] = revision
        kvs = store._call("/kv/range", body).get("kvs", [])
        if not kvs:
            return most, versions
        kv = kvs[0]
        versions += 1
        most = max(most, len(json.loads(from_b64(kv["value"]))["holders"]))
        if int(kv["mod_revision"]) <= int(kv["create_revision"]):
            return most, versions
        revision = int(kv["mod_revision"]) - 1


def etcd_revision(store: Store) -> int:
    """etcd's current revision (a read's header; reads do not move it)."""
    return int(store._call("/kv/range", {"key": to_b64(store.prefix)})["header"]["revision"])
