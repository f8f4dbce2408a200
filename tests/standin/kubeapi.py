"""TEST STAND-IN for a Kubernetes API server: NOT Kubernetes. No real one can be installed here.

A threaded HTTP server on 127.0.0.1 that answers the endpoints hostbuild's drain calls through
the official client, with the status codes and `Status` bodies a real API server sends: nodes
(list, read, merge and strategic-merge patches), pods (list by field selector, read) and the
policy/v1 Eviction subresource (201, 404, 409, 429 from `kubecluster`'s budget model). It checks
a bearer token; `write_kubeconfig` gives the client a kubeconfig for it.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from tests.standin.kubecluster import ApiStatus, Cluster, Json, discovery, merge_patch, not_found
from tests.standin.kubecluster import select as select_objects

TOKEN = "hostbuild-test-standin-token"
MERGE_PATCHES = ("application/merge-patch+json", "application/strategic-merge-patch+json")
EVICTION_VERSIONS = ("policy/v1", "policy/v1beta1")
NAME = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
NODE = re.compile(rf"/api/v1/nodes/(?P<name>{NAME})")
PODS = re.compile(rf"/api/v1/namespaces/(?P<namespace>{NAME})/pods")
POD = re.compile(rf"/api/v1/namespaces/(?P<namespace>{NAME})/pods/(?P<name>{NAME})")
EVICTION = re.compile(rf"{POD.pattern}/eviction")
SUCCESS: Json = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}


class Handler(BaseHTTPRequestHandler):
    """One request: authenticate, route, answer JSON (an object or a `Status`)."""

    server: StandinServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes

    def do_GET(self) -> None:
        self.handle_api("GET")

    def do_PATCH(self) -> None:
        self.handle_api("PATCH")

    def do_POST(self) -> None:
        self.handle_api("POST")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read `Cluster.requests`; stderr stays quiet

    def handle_api(self, method: str) -> None:
        url = urlsplit(self.path)
        cluster = self.server.cluster
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        with cluster.lock:
            cluster.requests.append((method, url.path))
            fault = cluster.faults.get((method, url.path))
        try:
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                raise ApiStatus(401, "Unauthorized", "Unauthorized")
            if fault is not None:
                raise ApiStatus(fault, "InternalError", f"stand-in fault injected: {fault}")
            code, body = route(cluster, method, url.path, parse_qs(url.query), self.headers, raw)
        except ApiStatus as status:
            code, body = status.code, status.body()
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def route(
    cluster: Cluster, method: str, path: str, query: dict[str, list[str]], headers: Any, raw: bytes
) -> tuple[int, Json]:
    """The answer (status code, JSON body) to one authenticated request."""
    answer = discovery(path) if method == "GET" else None
    if answer is not None:
        return 200, answer
    with cluster.lock:
        if path == "/api/v1/nodes":
            return expect(
                method, "GET", select_objects(list(cluster.nodes.values()), query, "Node")
            )
        if match := NODE.fullmatch(path):
            if method == "PATCH":
                return patch_node(cluster, match["name"], headers, raw)
            return expect(method, "GET", read(cluster.nodes, match["name"], "nodes", match["name"]))
        if path == "/api/v1/pods":
            return expect(method, "GET", select_objects(list(cluster.pods.values()), query, "Pod"))
        if match := PODS.fullmatch(path):
            pods = [p for (ns, _), p in cluster.pods.items() if ns == match["namespace"]]
            return expect(method, "GET", select_objects(pods, query, "Pod"))
        if match := POD.fullmatch(path):
            key = (match["namespace"], match["name"])
            return expect(method, "GET", read(cluster.pods, key, "pods", match["name"]))
        if match := EVICTION.fullmatch(path):
            expect(method, "POST", {})
            return evict(cluster, match["namespace"], match["name"], raw)
    raise ApiStatus(404, "NotFound", "the server could not find the requested resource")


def expect(method: str, allowed: str, body: Json) -> tuple[int, Json]:
    if method != allowed:
        raise ApiStatus(405, "MethodNotAllowed", f"the server does not allow this method: {method}")
    return 200, body


def read(objects: dict[Any, Json], key: Any, resource: str, name: str) -> Json:
    if key not in objects:
        raise not_found(resource, name)
    copied: Json = json.loads(json.dumps(objects[key]))
    return copied


def patch_node(cluster: Cluster, name: str, headers: Any, raw: bytes) -> tuple[int, Json]:
    node = cluster.nodes.get(name)
    if node is None:
        raise not_found("nodes", name)
    content_type = (headers.get("Content-Type") or "").split(";")[0].strip()
    if content_type not in MERGE_PATCHES:
        message = f"the stand-in takes only {' and '.join(MERGE_PATCHES)}, not {content_type!r}"
        raise ApiStatus(415, "UnsupportedMediaType", message)
    patched = merge_patch(node, decode(raw))
    if patched["metadata"].get("name") != name:
        raise ApiStatus(422, "Invalid", f'Node "{name}" is invalid: metadata.name may not change')
    cluster.nodes[name] = patched
    return 200, read(cluster.nodes, name, "nodes", name)


def evict(cluster: Cluster, namespace: str, name: str, raw: bytes) -> tuple[int, Json]:
    eviction = decode(raw)
    # like the real server, a body without kind and apiVersion gets the endpoint's defaults
    kind, version = eviction.get("kind", "Eviction"), eviction.get("apiVersion", "policy/v1")
    if kind != "Eviction" or version not in EVICTION_VERSIONS:
        message = f"expected an Eviction of {' or '.join(EVICTION_VERSIONS)}, got {raw[:80]!r}"
        raise ApiStatus(400, "BadRequest", message)
    cluster.evict(namespace, name, eviction)
    return 201, {**SUCCESS, "code": 201}


def decode(raw: bytes) -> Json:
    try:
        body = json.loads(raw)
    except ValueError as error:
        raise ApiStatus(400, "BadRequest", f"the body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise ApiStatus(400, "BadRequest", "the body is not a JSON object")
    return body


class StandinServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.cluster = cluster

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def write_kubeconfig(self, path: Path, token: str = TOKEN) -> Path:
        """A kubeconfig (one cluster, one user with a bearer token, one current context)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "fleet", "user": {"token": token}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "fleet"}}],
            "current-context": "standin",
        }
        path.write_text(yaml.safe_dump(config))
        os.chmod(path, 0o600)
        return path


@contextmanager
def serve(cluster: Cluster) -> Iterator[StandinServer]:
    """Run the stand-in on a free loopback port until the block ends."""
    server = StandinServer(cluster)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="kubeapi-standin", daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        cluster.close()
