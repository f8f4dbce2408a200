"""TLS to etcd's client URLs: the options checked before the first request, the HTTP session
that trusts exactly the CA given, and what a failed handshake means in the operator's terms."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import requests

from builder.errors import HostbuildError

CA, CERT, KEY = "--etcd-ca", "--etcd-cert", "--etcd-key"


@dataclass(frozen=True)
class EtcdTls:
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def __bool__(self) -> bool:
        return any((self.ca, self.cert, self.key))


class EtcdTlsError(HostbuildError):
    """The TLS options, or the handshake with an etcd member, are wrong."""


def check(tls: EtcdTls, urls: Sequence[str]) -> None:
    """Refuse options that could only fail (or be ignored) later, saying which and why."""
    if bool(tls.cert) != bool(tls.key):
        given, missing = (CERT, KEY) if tls.cert else (KEY, CERT)
        raise EtcdTlsError(
            f"{given} was given without {missing}: a client certificate needs its key",
            hint=f"pass both {CERT} and {KEY}, or neither",
        )
    for option, path in ((CA, tls.ca), (CERT, tls.cert), (KEY, tls.key)):
        if path and not os.access(path, os.R_OK):
            raise EtcdTlsError(
                f"{option} {path}: no such readable file",
                hint=f"{option} takes a PEM file",
            )
    plain = [u for u in urls if u.startswith("http://")]
    if tls and plain:
        raise EtcdTlsError(
            f"etcd endpoint {plain[0]} is plain http, so {CA}/{CERT}/{KEY} would not be used",
            hint="give the endpoints as https://HOST:PORT, as etcd's --advertise-client-urls has "
            "them",
        )


class PinnedSession(requests.Session):
    """A session that verifies with its own CA file even when REQUESTS_CA_BUNDLE or
    CURL_CA_BUNDLE is set (requests lets those override a session's `verify`)."""

    def merge_environment_settings(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        settings = super().merge_environment_settings(*args, **kwargs)
        settings["verify"] = self.verify
        return settings


def session(tls: EtcdTls) -> requests.Session:
    s = PinnedSession() if tls.ca else requests.Session()
    if tls.ca:
        s.verify = tls.ca
    if tls.cert and tls.key:
        s.cert = (tls.cert, tls.key)
    return s


def _ssl_error(error: BaseException) -> BaseException | None:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, requests.exceptions.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def reason(text: str) -> str:
    """The innermost reason in a requests/urllib3 message (`[SSL: X] y`, `[Errno N] y`, an
    exception's own text), else all of it."""
    for pattern in (
        r"\[(?:SSL: [A-Z0-9_]+|Errno \d+)\][^'\"()]*",
        r"\w+Error\(\d+, '([^']+)'\)",
        r"\w+\('([^']+)'\)",
    ):
        if found := re.findall(pattern, text):
            return str(found[-1]).strip()
    return text


@dataclass(frozen=True)
class Problem:
    message: str
    hint: str


def diagnose(error: BaseException, endpoint: str, tls: EtcdTls) -> Problem | None:
    """What a failed handshake with `endpoint` means and which option fixes it; None when
    `error` is no TLS error."""
    ssl_error = _ssl_error(error)
    if ssl_error is None:
        return None
    why = reason(str(ssl_error))
    trusted = f"the CA in {CA} {tls.ca}" if tls.ca else f"the system's CAs (no {CA} given)"
    if "CERTIFICATE_VERIFY_FAILED" in why and "mismatch" in why:
        return Problem(
            f"etcd {endpoint}: its server certificate does not name that host ({why})",
            "use the host name or address etcd's --cert-file was issued for in --etcd",
        )
    if "CERTIFICATE_VERIFY_FAILED" in why:
        return Problem(
            f"etcd {endpoint}: its server certificate is not signed by {trusted} ({why})",
            f"pass {CA} with the CA that signed etcd's --cert-file",
        )
    if not tls.cert:
        return Problem(
            f"etcd {endpoint} refused the TLS handshake: it requires a client certificate "
            f"and none was given ({why})",
            f"pass {CERT} and {KEY}: a certificate signed by etcd's --trusted-ca-file",
        )
    return Problem(
        f"etcd {endpoint} refused the TLS handshake with the client certificate "
        f"{CERT} {tls.cert} ({why})",
        f"{CERT} must be signed by the CA in etcd's --trusted-ca-file and allow "
        "client authentication",
    )
