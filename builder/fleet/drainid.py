"""FleetLock ids: the app-specific machine id Zincati sends, computed from a Node's machineID."""

from __future__ import annotations

import hashlib
import hmac
import re

# Zincati's application id for sd_id128_get_machine_app_specific(): FleetLock's client id.
FLEETLOCK_APP_ID = "de35106b6ec24688b63afddaa156679b"

_ID128 = re.compile(r"[0-9a-f]{32}")


def parse_id128(value: str, what: str) -> bytes:
    """The 16 bytes of a systemd id128 written as 32 hex digits (dashes and case are ignored)."""
    text = value.strip().replace("-", "").lower()
    if not _ID128.fullmatch(text):
        raise ValueError(f"{what} {value!r} is not an id128: 32 hexadecimal digits are allowed")
    return bytes.fromhex(text)


def app_specific_id(machine_id: str, app_id: str = FLEETLOCK_APP_ID) -> str:
    """sd_id128_get_machine_app_specific(): HMAC-SHA256 keyed by the machine id over the app id,
    cut to 16 bytes and stamped as a UUID v4 (RFC 4122 variant), as 32 lowercase hex digits."""
    key = parse_id128(machine_id, "machine id")
    digest = bytearray(hmac.digest(key, parse_id128(app_id, "app id"), hashlib.sha256)[:16])
    digest[6] = (digest[6] & 0x0F) | 0x40
    digest[8] = (digest[8] & 0x3F) | 0x80
    return digest.hex()
