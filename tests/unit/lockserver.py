"""A tiny FleetLock server on 127.0.0.1 for tests: records every request byte for byte and
answers what the test scripts (per endpoint: a status and a body, or a delay)."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lowercase names
    body: bytes

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = json.loads(self.body)["client_params"]
        return params


@dataclass
class LockServer:
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    answers: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # path -> status, body
    delay: float = 0.0

    def answer(self, path: str, status: int, body: Any = b"") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.answers[path] = (status, data)

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]


@contextmanager
def lock_server() -> Iterator[LockServer]:
    server = LockServer()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            server.requests.append(Request("POST", self.path, headers, body))
            if server.delay:
                time.sleep(server.delay)
            status, data = server.answers.get(self.path, (200, b""))
            self.send_response(status)
            if status in (301, 302, 307, 308):
                self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
