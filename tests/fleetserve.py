"""`hostbuild fleet serve` as a process on a free loopback port, for the fleet tests and the
fleet benchmark: started with the given options, waited for until it listens, stopped after."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from builder.run import Spawned, spawn
from tests.etcdcluster import free_port

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def fleet_serve(
    etcd_urls: Sequence[str], prefix: str, options: Sequence[str], log: Path, start: float = 30
) -> Iterator[tuple[int, Spawned]]:
    """The port it serves on and the process; RuntimeError (with its log) if it stops or does
    not listen within `start` seconds."""
    port = free_port()
    argv = [
        sys.executable, "-m", "builder", "fleet", "serve",
        "--etcd", ",".join(etcd_urls), "--etcd-prefix", prefix,
        "--listen", f"127.0.0.1:{port}", *options,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.fspath(REPO)}
    proc = spawn(argv, output=log, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + start
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"hostbuild fleet serve stopped: {log.read_text()}"
                    ) from None
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"hostbuild fleet serve did not listen within {start:g} s:"
                        f" {log.read_text()}"
                    ) from None
                time.sleep(0.1)
        yield port, proc
    finally:
        proc.terminate()
        if proc.wait(10) is None:
            proc.kill()
            proc.wait(10)
