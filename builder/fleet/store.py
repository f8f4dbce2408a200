"""The coordinator's only state: etcd, through its v3 JSON gateway with etcd3gw.

Keys under PREFIX: `groups/<g>` (the group state, changed by compare-and-swap on its
mod_revision), `leases/<g>/<id>` (bound to the holder's lease), `nodes/<g>/<id>` (the last
report of a node). Requests go to one member and move on to the next when it cannot be reached.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import etcd3gw
from etcd3gw import exceptions as etcd_errors

from builder.errors import HostbuildError

from . import etcdtls
from .etcdtls import EtcdTls
from .state import Changes, GroupState, Snapshot

logger = logging.getLogger(__name__)

PREFIX = "/hostbuild/fleet/v1/"
LEASE_REUSE = 1.0  # seconds: holders granted this close together share one lease


class StoreError(HostbuildError):
    """No etcd member answered."""


def to_b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def from_b64(text: str) -> bytes:
    return base64.b64decode(text)


def _end(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


__all__ = ["PREFIX", "EtcdTls", "Store", "StoreError"]


class Store:
    """etcd endpoints (fail over in turn), key layout, snapshots, commits and leases."""

    def __init__(
        self,
        urls: Sequence[str],
        tls: EtcdTls | None = None,
        timeout: float = 5.0,
        prefix: str = PREFIX,
    ) -> None:
        if not urls:
            raise StoreError("no etcd endpoint given", hint="pass --etcd URL[,URL...]")
        self.prefix = prefix
        self.tls = tls or EtcdTls()
        hosts = []
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise StoreError(f"etcd endpoint {url!r} is not an http(s)://HOST:PORT URL")
            hosts.append((parts.scheme, parts.hostname, parts.port or 2379))
        etcdtls.check(self.tls, urls)
        self.clients = [
            etcd3gw.client(
                host=host,
                port=port,
                protocol=scheme,
                timeout=timeout,
                api_path="/v3/",
                session=etcdtls.session(self.tls),
            )
            for scheme, host, port in hosts
        ]
        self._current = 0
        self._leases: dict[int, tuple[int, float]] = {}
        self._lock = threading.Lock()

    # -- transport ---------------------------------------------------------------------------

    def _call(self, path: str, body: dict[str, Any]) -> Any:
        failed: list[str] = []
        tls_problem: etcdtls.Problem | None = None
        for _ in range(len(self.clients)):
            index = self._current
            client = self.clients[index]
            try:
                return client.post(client.get_url(path), data=json.dumps(body))
            except (etcd_errors.ConnectionFailedError, etcd_errors.ConnectionTimeoutError) as e:
                with self._lock:
                    if self._current == index:
                        self._current = (index + 1) % len(self.clients)
                problem = etcdtls.diagnose(e, client.base_url, self.tls)
                tls_problem = tls_problem or problem
                why = problem.message if problem else etcdtls.reason(e.detail_text or repr(e))
                failed.append(why if problem else f"etcd {client.base_url}: {why}")
                logger.warning("%s; trying the next member", failed[-1])
            except etcd_errors.Etcd3Exception as e:
                raise StoreError(f"etcd refused {path}: {e.detail_text or e}") from None
        if tls_problem is not None:
            raise StoreError(tls_problem.message, hint=tls_problem.hint)
        raise StoreError(
            f"no etcd member answered ({'; '.join(failed)})",
            hint="check the --etcd endpoints, http:// or https:// as etcd's "
            "--advertise-client-urls has them, and that a quorum is up",
        )

    def txn(self, body: dict[str, Any]) -> Any:
        return self._call("/kv/txn", body)

    # -- keys ---------------------------------------------------------------------------------

    def group_key(self, group: str) -> str:
        return f"{self.prefix}groups/{group}"

    def lease_prefix(self, group: str) -> str:
        return f"{self.prefix}leases/{group}/"

    def node_prefix(self, group: str) -> str:
        return f"{self.prefix}nodes/{group}/"

    def _range(self, key: str, prefix: bool = False) -> dict[str, Any]:
        r: dict[str, Any] = {"key": to_b64(key)}
        if prefix:
            r["range_end"] = to_b64(_end(key))
        return {"request_range": r}

    # -- reads --------------------------------------------------------------------------------

    def _snapshot_from(self, responses: list[dict[str, Any]], group: str) -> Snapshot:
        group_kvs = responses[0]["response_range"].get("kvs", [])
        lease_kvs = responses[1]["response_range"].get("kvs", [])
        if group_kvs:
            state = GroupState.from_json(from_b64(group_kvs[0].get("value", "")))
            revision = int(group_kvs[0]["mod_revision"])
        else:
            state, revision = GroupState(), 0
        cut = len(self.lease_prefix(group))
        live = frozenset(from_b64(kv["key"]).decode()[cut:] for kv in lease_kvs)
        return Snapshot(state, revision, live, time.monotonic())

    def snapshot(self, group: str) -> Snapshot:
        """The group key and its live lease keys, read at one revision (one txn of ranges)."""
        reads = [self._range(self.group_key(group)), self._range(self.lease_prefix(group), True)]
        result = self.txn({"compare": [], "success": reads, "failure": []})
        return self._snapshot_from(result.get("responses", []), group)

    def reports(self, group: str) -> dict[str, dict[str, Any]]:
        """The last report of each node of `group`, by id."""
        result = self._call(
            "/kv/range", self._range(self.node_prefix(group), True)["request_range"]
        )
        out = {}
        for kv in result.get("kvs", []):
            record = json.loads(from_b64(kv.get("value", "")))
            out[str(record.get("id"))] = record
        return out

    def groups(self) -> list[str]:
        """Groups that have a state in etcd."""
        start = f"{self.prefix}groups/"
        body = {**self._range(start, True)["request_range"], "keys_only": True}
        result = self._call("/kv/range", body)
        return sorted(from_b64(kv["key"]).decode()[len(start) :] for kv in result.get("kvs", []))

    # -- writes -------------------------------------------------------------------------------

    def lease(self, ttl: float) -> int:
        """A lease of `ttl` seconds; holders granted within LEASE_REUSE share one."""
        seconds = max(2, round(ttl))
        with self._lock:
            cached = self._leases.get(seconds)
            if cached and time.monotonic() - cached[1] < LEASE_REUSE:
                return cached[0]
        result = self._call("/lease/grant", {"TTL": seconds, "ID": 0})
        lease_id = int(result["ID"])
        with self._lock:
            self._leases[seconds] = (lease_id, time.monotonic())
        return lease_id

    def commit(
        self, group: str, snap: Snapshot, state: GroupState, changes: Changes
    ) -> Snapshot | None:
        """Write `state` if the group key is still at `snap`'s revision (and every holder being
        released still has its lease key); the new snapshot, or None with nothing written."""
        key = self.group_key(group)
        compare: list[dict[str, Any]] = [
            {
                "key": to_b64(key),
                "target": "MOD",
                "result": "EQUAL",
                "mod_revision": snap.mod_revision,
            }
        ]
        for node_id in sorted(changes.must_have_lease):
            compare.append(
                {
                    "key": to_b64(self.lease_prefix(group) + node_id),
                    "target": "VERSION",
                    "result": "GREATER",
                    "version": 0,
                }
            )
        ops: list[dict[str, Any]] = [
            {"request_put": {"key": to_b64(key), "value": to_b64(state.to_json().decode())}}
        ]
        for node_id, lease_id in changes.lease_puts.items():
            ops.append(
                {
                    "request_put": {
                        "key": to_b64(self.lease_prefix(group) + node_id),
                        "value": to_b64(node_id),
                        "lease": lease_id,
                    }
                }
            )
        for node_id in changes.lease_deletes - set(changes.lease_puts):
            ops.append(
                {"request_delete_range": {"key": to_b64(self.lease_prefix(group) + node_id)}}
            )
        for node_id, record in changes.reports.items():
            ops.append(
                {
                    "request_put": {
                        "key": to_b64(self.node_prefix(group) + node_id),
                        "value": to_b64(json.dumps(record, sort_keys=True)),
                    }
                }
            )
        result = self.txn({"compare": compare, "success": ops, "failure": []})
        if not result.get("succeeded"):
            return None
        revision = int(result["header"]["revision"])
        live = (snap.live - changes.lease_deletes) | set(changes.lease_puts)
        return Snapshot(state, revision, frozenset(live), time.monotonic())

    def delete_all(self) -> None:
        """Remove every key under the prefix (tests and `fleet reset`)."""
        self._call("/kv/deleterange", self._range(self.prefix, True)["request_range"])
