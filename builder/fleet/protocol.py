"""FleetLock requests and errors on the wire, as Zincati speaks them.

A request is `POST /v1/pre-reboot` or `/v1/steady-state` with the header
`fleet-lock-protocol: true` and `{"client_params": {"id": ..., "group": ...}}`; hostbuild nodes
may add `version` (the one they run), `health`, `failed_version` and `node_name` (the
hostname), which plain servers ignore.
Success is 200 with an empty body; an error is `{"kind": ..., "value": ...}` (airlock's form).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MAX_BODY = 64 * 1024
GROUP_RE = re.compile(r"^[a-zA-Z0-9.-]+$")
ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
HEALTH = ("healthy", "failed")
PRE_REBOOT = "/v1/pre-reboot"
STEADY_STATE = "/v1/steady-state"


class FleetLockError(Exception):
    """An answer other than 200: HTTP status, machine-friendly kind, human-friendly value."""

    def __init__(self, status: int, kind: str, value: str) -> None:
        super().__init__(f"{kind}: {value}")
        self.status = status
        self.kind = kind
        self.value = value

    def body(self) -> bytes:
        return json.dumps({"kind": self.kind, "value": self.value}).encode()


def bad_request(value: str) -> FleetLockError:
    return FleetLockError(400, "invalid_client_identity", value)


@dataclass(frozen=True)
class ClientParams:
    id: str
    group: str
    version: str | None = None
    health: str | None = None
    failed_version: str | None = None
    node_name: str | None = None


def _optional(params: dict[str, Any], key: str, pattern: re.Pattern[str]) -> str | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.match(value):
        raise bad_request(f"client_params.{key} must be a string matching {pattern.pattern}")
    return value


VERSION_RE = re.compile(r"^[A-Za-z0-9._+~:-]{1,128}$")
NODE_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")  # a hostname


def parse_params(protocol_header: str | None, body: bytes) -> ClientParams:
    """The client parameters of a FleetLock request, or FleetLockError 400 saying what is wrong."""
    if protocol_header != "true":
        raise bad_request("missing or wrong 'fleet-lock-protocol' header (must be 'true')")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_request(f"the body is not JSON: {e}") from None
    params = doc.get("client_params") if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        raise bad_request('the body must be {"client_params": {"id": ..., "group": ...}}')
    node_id, group = params.get("id"), params.get("group")
    if not isinstance(node_id, str) or not ID_RE.match(node_id):
        raise bad_request(f"client_params.id must be a string matching {ID_RE.pattern}")
    if not isinstance(group, str) or not GROUP_RE.match(group) or len(group) > 128:
        raise bad_request(f"client_params.group must be a string matching {GROUP_RE.pattern}")
    health = params.get("health")
    if health is not None and health not in HEALTH:
        raise bad_request(f"client_params.health must be one of {', '.join(HEALTH)}")
    return ClientParams(
        id=node_id,
        group=group,
        version=_optional(params, "version", VERSION_RE),
        health=health,
        failed_version=_optional(params, "failed_version", VERSION_RE),
        node_name=_optional(params, "node_name", NODE_NAME_RE),
    )
