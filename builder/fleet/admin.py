"""The client side of the coordinator's admin API (`hostbuild fleet status|pause|resume`)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from builder.errors import HostbuildError

MAX_ANSWER = 16 << 20


def read_token(path: Path) -> str:
    """The bearer token in `path` (its first line), refusing an empty file."""
    try:
        token = path.read_text().strip().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise HostbuildError(f"cannot read the admin token file {str(path)!r}: {e}") from None
    if not token or not token[0]:
        raise HostbuildError(
            f"the admin token file {str(path)!r} is empty",
            hint="write a long random token on its first line",
        )
    return token[0]


def admin_call(
    server: str, token: str, path: str, body: dict[str, Any] | None = None, ca: Path | None = None
) -> dict[str, Any]:
    """GET (no body) or POST `path` on the coordinator at `server`; its JSON answer."""
    url = server.rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    request.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=ca) if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as answer:
            return dict(json.loads(answer.read(MAX_ANSWER)))
    except urllib.error.HTTPError as e:
        try:
            doc = json.loads(e.read(MAX_ANSWER))
            what = f"{doc['kind']}: {doc['value']}"
        except (ValueError, KeyError, TypeError):
            what = f"HTTP {e.code}"
        raise HostbuildError(f"the coordinator at {server} refused {path}: {what}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise HostbuildError(
            f"cannot reach the coordinator at {server}: {reason}",
            hint="check --server (http(s)://HOST:PORT of 'hostbuild fleet serve')",
        ) from None
