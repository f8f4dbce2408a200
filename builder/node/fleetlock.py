"""FleetLock as Zincati speaks it: `pre-reboot` takes a reboot slot, `steady-state` frees it.

`POST <url>/v1/pre-reboot` or `/v1/steady-state` (the suffix joined to the URL as a relative
reference, as Zincati's `Url::join` does), header `fleet-lock-protocol: true`, a pretty-printed
JSON body `{"client_params": {"id": ..., "group": ...}}` (plus fields plain servers ignore) and
no Content-Type, as Zincati sends none. Success is 200 (the protocol) or any 2xx (Zincati's
code); anything else is a refusal, whose JSON `{"kind", "value"}` says why. Redirects are not
followed (the header is there against them).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import os
import re
import ssl
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Zincati's application ID (src/identity/mod.rs): both hand a lock server the same node ID
APP_ID = bytes.fromhex("de35106b6ec24688b63afddaa156679b")
_ID128 = re.compile(r"[0-9a-f]{32}")
PRE_REBOOT = "v1/pre-reboot"
STEADY_STATE = "v1/steady-state"
CONNECT_TIMEOUT = 30.0
# Zincati waits up to 30 minutes for an answer: a coordinator may drain the node first. Freeing
# a slot drains nothing, and every update run starts with it: a minute is plenty.
RESPONSE_TIMEOUT = 1800.0
STEADY_STATE_TIMEOUT = 60.0
MAX_ERROR_BODY = 64 << 10  # what is read of a refusal's body, at most
USER_AGENT = "hostbuild-node"


def parse_id128(value: str, what: str) -> bytes:
    """The 16 bytes of a systemd id128 written as 32 hex digits (dashes and case are ignored)."""
    text = value.strip().replace("-", "").lower()
    if not _ID128.fullmatch(text):
        raise ValueError(
            f"{what} {value.strip()!r} is not an id128: 32 hex digits are allowed"
            " (dashes and case do not matter)"
        )
    return bytes.fromhex(text)


def app_specific_id(machine_id: str, app_id: bytes = APP_ID) -> str:
    """sd_id128_get_machine_app_specific(): HMAC-SHA256 keyed by the machine ID over the app ID,
    its first 16 bytes made a version-4 UUID (RFC 4122 variant), as 32 lowercase hex digits.
    The one implementation: the coordinator's drain finds a Kubernetes Node by it too."""
    key = parse_id128(machine_id, "machine id")
    digest = bytearray(hmac.digest(key, app_id, hashlib.sha256)[:16])
    digest[6] = (digest[6] & 0x0F) | 0x40
    digest[8] = (digest[8] & 0x3F) | 0x80
    return digest.hex()


@dataclass(frozen=True)
class Params:
    """`client_params`: id and group (the protocol), then what hostbuild's coordinator reads."""

    id: str
    group: str
    version: str | None = None
    health: str | None = None  # "healthy" or "failed"
    failed_version: str | None = None
    node_name: str | None = None

    def body(self) -> bytes:
        params = {"id": self.id, "group": self.group}
        extra = {"version": self.version, "health": self.health,
                 "failed_version": self.failed_version, "node_name": self.node_name}  # fmt: skip
        params |= {k: v for k, v in extra.items() if v is not None}
        return json.dumps({"client_params": params}, indent=2).encode()


@dataclass(frozen=True)
class Answer:
    """What the server said: `ok` for a 2xx; `status` None when no answer came."""

    ok: bool
    status: int | None = None
    kind: str = ""  # the server's error kind, or Zincati's generic_http_NNN, client_failed_request
    detail: str = ""

    @property
    def reachable(self) -> bool:
        return self.status is not None

    def describe(self) -> str:
        if self.ok:
            return f"HTTP {self.status}"
        if self.status is None:
            return f"no answer ({self.detail})"
        return f"refused, HTTP {self.status} {self.kind}: {self.detail}"


@dataclass(frozen=True)
class Tls:
    """Files for HTTPS: a CA bundle instead of the system's, a client certificate and key."""

    ca: Path | None = None
    certificate: Path | None = None
    key: Path | None = None


@dataclass
class Client:
    url: str
    tls: Tls = field(default_factory=Tls)
    connect_timeout: float = CONNECT_TIMEOUT
    response_timeout: float = RESPONSE_TIMEOUT

    def pre_reboot(self, params: Params) -> Answer:
        """Ask for a reboot slot (recursive: asking again while holding it succeeds)."""
        return self.post(PRE_REBOOT, params, self.response_timeout)

    def steady_state(self, params: Params) -> Answer:
        """Free the slot this node holds, if any."""
        return self.post(STEADY_STATE, params, min(self.response_timeout, STEADY_STATE_TIMEOUT))

    def endpoint(self, suffix: str) -> str:
        return urllib.parse.urljoin(self.url, suffix)

    def post(self, suffix: str, params: Params, response_timeout: float) -> Answer:
        url = self.endpoint(suffix)
        parts = urllib.parse.urlsplit(url)
        body = params.body()
        headers = {"fleet-lock-protocol": "true", "User-Agent": USER_AGENT}
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn = self._connection(parts)
            try:
                conn.connect()  # the connect timeout; the answer may take the drain's time
                if conn.sock is not None:
                    conn.sock.settimeout(response_timeout)
                conn.request("POST", path, body, headers)
                response = conn.getresponse()
                status = response.status
                payload = b"" if 200 <= status < 300 else response.read(MAX_ERROR_BODY)
            finally:
                conn.close()
        except (OSError, http.client.HTTPException, ValueError) as e:
            reason = e.reason if isinstance(e, ssl.SSLError) and e.reason else e
            logger.info("fleet lock %s: %s", url, reason)
            return Answer(False, None, "client_failed_request", f"{url}: {reason}")
        if 200 <= status < 300:
            return Answer(True, status)
        kind, value = remote_error(payload)
        return Answer(False, status, kind or f"generic_http_{status}",
                      value or "(unknown/generic server error)")  # fmt: skip

    def _connection(self, parts: urllib.parse.SplitResult) -> http.client.HTTPConnection:
        if parts.scheme == "http":
            return http.client.HTTPConnection(parts.netloc, timeout=self.connect_timeout)
        if parts.scheme != "https":
            raise ValueError(f"not an http:// or https:// URL: {self.url!r}")
        context = ssl.create_default_context(cafile=os.fspath(self.tls.ca) if self.tls.ca else None)
        if self.tls.certificate is not None:
            context.load_cert_chain(
                self.tls.certificate, self.tls.key if self.tls.key is not None else None
            )
        return http.client.HTTPSConnection(
            parts.netloc, timeout=self.connect_timeout, context=context
        )


def remote_error(payload: bytes) -> tuple[str, str]:
    """A refusal's `{"kind": ..., "value": ...}`, as one line each ("" when absent)."""
    try:
        data: Any = json.loads(payload)
    except ValueError:
        return "", ""
    if not isinstance(data, dict):
        return "", ""

    def line(value: Any) -> str:
        return " ".join(value.split())[:200] if isinstance(value, str) else ""

    return line(data.get("kind")), line(data.get("value"))
