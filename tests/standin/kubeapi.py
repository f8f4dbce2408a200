"""TEST STAND-IN for a Kubernetes API server: NOT Kubernetes. No real one can be installed here.

A threaded HTTP server on 127.0.0.1 that answers the endpoints hostbuild's drain calls through
the official client, with the status codes and `Status` bodies a real API server sends: nodes
(list, read, merge and strategic-merge patches), pods (list by field selector, read) and the
policy/v1 Eviction subresource (201, 404, 409, 429 from `kubecluster`'s budget model). It
speaks HTTPS with a throwaway CA (`kubetls`) and takes a bearer token or a client certificate;
`write_kubeconfig` gives the client a kubeconfig for it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import ssl
import tempfile
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
from tests.standin.kubetls import CLIENT_NAME, Pki, make_pki

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

    def setup(self) -> None:
        super().setup()
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # here, in the request's thread, not in accept()

    def authenticated(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {TOKEN}":
            return True
        peer = self.request.getpeercert() if isinstance(self.request, ssl.SSLSocket) else None
        subject: Any = (peer or {}).get("subject", ())  # ((("commonName", "x"),), ...)
        return (("commonName", CLIENT_NAME),) in subject

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
            if not self.authenticated():
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

    def __init__(self, cluster: Cluster, tls: ssl.SSLContext | None, pki: Pki) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.cluster, self.tls, self.pki = cluster, tls, pki

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = self.socket.accept()
        if self.tls is not None:
            connection = self.tls.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        return connection, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up or refused the certificate: the client reports it

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}"

    def write_kubeconfig(
        self, path: Path, token: str | None = TOKEN, client_cert: bool = False
    ) -> Path:
        """A kubeconfig (one cluster, its CA, one user with a bearer token and/or the stand-in
        client certificate, one current context)."""

        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode()

        cluster: Json = {"server": self.url}
        if self.tls is not None:
            cluster["certificate-authority-data"] = b64(self.pki.ca)
        user: Json = {"token": token} if token is not None else {}
        if client_cert:
            user["client-certificate-data"] = b64(self.pki.client.cert)
            user["client-key-data"] = b64(self.pki.client.key)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "standin", "cluster": cluster}],
            "users": [{"name": "fleet", "user": user}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "fleet"}}],
            "current-context": "standin",
        }
        path.write_text(yaml.safe_dump(config))
        os.chmod(path, 0o600)
        return path


@contextmanager
def serve(cluster: Cluster, tls: bool = True) -> Iterator[StandinServer]:
    """Run the stand-in on a free loopback port (HTTPS unless `tls` is False) until the block
    ends."""
    pki = make_pki()
    with tempfile.TemporaryDirectory(prefix="kubeapi-standin-") as directory:
        context = pki.server_context(Path(directory)) if tls else None
    server = StandinServer(cluster, context, pki)
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
