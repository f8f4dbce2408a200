"""`hostbuild fleet serve`: FleetLock and the admin API over HTTP(S), one thread per request.

Every answer but a 200 carries FleetLock's `{"kind": ..., "value": ...}`: bad headers, bodies
over MAX_BODY, unknown paths and unexpected errors included, never a traceback.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from builder.errors import HostbuildError

from .coordinator import Coordinator
from .protocol import MAX_BODY, PRE_REBOOT, STEADY_STATE, ClientParams, FleetLockError, parse_params
from .status import fleet_status

logger = logging.getLogger(__name__)

ADMIN = "/v1/admin/"
IO_TIMEOUT = 30.0  # seconds a client may take to send its request
LINGER = (1.0, 1 << 20)  # after refusing a body unread: seconds and bytes of it drained


def linger(sock: socket.socket) -> None:
    """Close after an answer whose request body was not read, the way HTTP servers do
    ("lingering close"): stop writing, then read and drop what the client still sends for a
    moment. Closing with unread bytes makes the kernel reset the connection, and a client
    still sending its body would get a broken pipe instead of the answer."""
    seconds, most = LINGER
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + seconds
        drained = 0
        while drained < most and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            data = sock.recv(65536)
            if not data:
                return
            drained += len(data)


@dataclass(frozen=True)
class Tls:
    cert: Path
    key: Path
    client_ca: Path | None = None  # nodes must present a certificate it signed
    match_id: bool = False  # ... whose CN or a DNS name is the node's id or node_name


def server_context(tls: Tls) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert, tls.key)
        if tls.client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=tls.client_ca)
    except (OSError, ssl.SSLError) as e:
        raise HostbuildError(
            f"cannot load the TLS files: {e}",
            hint="--tls-cert and --tls-key take PEM files; --client-ca a PEM CA",
        ) from None
    return context


def _names(cert: dict[str, Any]) -> set[str]:
    names = {v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"}
    names |= {v for k, v in cert.get("subjectAltName", ()) if k == "DNS"}
    return names


class Handler(BaseHTTPRequestHandler):
    server: FleetHttpServer
    protocol_version = "HTTP/1.1"
    timeout = IO_TIMEOUT
    unread = False  # this request's body was refused without being read

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json") -> None:
        self.send_response(status)
        if body:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, e: FleetLockError) -> None:
        self._send(e.status, e.body())

    def _refuse_unread(self) -> None:
        """The body is refused without being read: the connection closes after the answer."""
        self.close_connection = True
        self.unread = True

    def finish(self) -> None:
        super().finish()
        if self.unread:
            linger(self.connection)

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._refuse_unread()
            raise FleetLockError(
                411, "invalid_request", "send a Content-Length, not a chunked body"
            )
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self._refuse_unread()
            raise FleetLockError(400, "invalid_request", "Content-Length is not a number") from None
        if length < 0 or length > MAX_BODY:
            self._refuse_unread()
            raise FleetLockError(
                413, "request_too_large", f"the body is {length} bytes; at most {MAX_BODY}"
            )
        return self.rfile.read(length)

    def do_POST(self) -> None:
        self._guarded(self._post)

    def do_GET(self) -> None:
        self._guarded(self._get)

    def _other(self) -> None:
        self.close_connection = True
        self._error(FleetLockError(405, "method_not_allowed", "FleetLock takes POST requests only"))

    do_PUT = do_DELETE = do_PATCH = do_HEAD = _other

    def _guarded(self, action: Any) -> None:
        try:
            action()
        except FleetLockError as e:
            self._error(e)
        except Exception as e:
            logger.exception("unexpected error serving %s", self.path)
            self.close_connection = True
            self._error(
                FleetLockError(
                    500,
                    "internal_error",
                    f"unexpected {type(e).__name__}; see the coordinator's log",
                )
            )

    def _post(self) -> None:
        path = urlsplit(self.path).path
        body = self._body()
        coordinator = self.server.coordinator
        if path in (PRE_REBOOT, STEADY_STATE):
            params = parse_params(self.headers.get("fleet-lock-protocol"), body)
            self._check_identity(params)
            if path == PRE_REBOOT:
                coordinator.pre_reboot(params)
            else:
                coordinator.steady_state(params)
            self._send(200)
        elif path in (ADMIN + "pause", ADMIN + "resume"):
            self._authorize()
            try:
                doc = json.loads(body or b"{}")
            except (UnicodeDecodeError, json.JSONDecodeError):
                doc = None
            if not isinstance(doc, dict):
                raise FleetLockError(
                    400, "invalid_request", 'the body must be {"group": ..., "reason": ...}'
                )
            groups = [doc["group"]] if doc.get("group") else sorted(coordinator.policy.groups)
            for group in groups:
                if not isinstance(group, str) or group not in coordinator.policy.groups:
                    raise FleetLockError(400, "unknown_group", f"unknown group {group!r}")
            for group in groups:
                if path.endswith("pause"):
                    coordinator.pause(group, str(doc.get("reason") or "paused by an administrator"))
                else:
                    coordinator.resume(group)
            self._send(200, json.dumps(fleet_status(coordinator)).encode())
        else:
            raise FleetLockError(
                404, "not_found", f"no endpoint {path!r}: POST {PRE_REBOOT} or {STEADY_STATE}"
            )

    def _get(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != ADMIN + "status":
            self.close_connection = True
            raise FleetLockError(405, "method_not_allowed", "FleetLock takes POST requests only")
        self._authorize()
        groups = parse_qs(parts.query).get("group")
        group = groups[0] if groups else None
        if group is not None and group not in self.server.coordinator.policy.groups:
            raise FleetLockError(400, "unknown_group", f"unknown group {group!r}")
        self._send(200, json.dumps(fleet_status(self.server.coordinator, group)).encode())

    def _authorize(self) -> None:
        token = self.server.admin_token
        if token is None:
            raise FleetLockError(
                403, "forbidden", "the admin API is off (start with --admin-token-file)"
            )
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise FleetLockError(
                401, "unauthorized", "the admin API needs 'Authorization: Bearer <token>'"
            )

    def _check_identity(self, params: ClientParams) -> None:
        tls = self.server.tls
        if tls is None or not tls.match_id or not isinstance(self.connection, ssl.SSLSocket):
            return
        names = _names(self.connection.getpeercert() or {})
        if params.id not in names and (params.node_name is None or params.node_name not in names):
            raise FleetLockError(
                403,
                "forbidden",
                f"the client certificate ({', '.join(sorted(names)) or 'no names'}) "
                f"does not name id {params.id!r}",
            )


class FleetHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(
        self,
        address: tuple[str, int],
        coordinator: Coordinator,
        *,
        tls: Tls | None = None,
        admin_token: str | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.tls = tls
        self.admin_token = admin_token
        super().__init__(address, Handler)
        if tls is not None:
            # the handshake runs in the request's thread (on first read), not in accept()
            self.socket = server_context(tls).wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s ended", client_address, exc_info=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host!s}:{port}"


def start_server(server: FleetHttpServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="fleet-http", daemon=True)
    thread.start()
    return thread
