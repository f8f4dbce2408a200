"""A minimal client of QEMU's machine protocol (QMP) over its unix socket."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from builder.vm.errors import VmError

logger = logging.getLogger(__name__)


class Qmp:
    """A minimal QMP client over QEMU's unix socket: one command at a time, events skipped."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._reader = sock.makefile("rb")

    @classmethod
    def connect(cls, path: Path, timeout: float) -> Qmp:
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(os.fspath(path))
                break
            except (FileNotFoundError, ConnectionRefusedError) as e:
                sock.close()
                if time.monotonic() >= deadline:
                    raise VmError(f"cannot connect to QEMU's QMP socket {path}: {e}") from e
                time.sleep(0.1)
        qmp = cls(sock)
        qmp._read()  # the greeting
        qmp.execute("qmp_capabilities")
        return qmp

    def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = dict(arguments)
        logger.debug("QMP %s", json.dumps(message))
        self._sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                error = reply["error"]
                raise VmError(f"QMP {command} failed: {error.get('desc', error)}")
            # anything else is an asynchronous event

    def _read(self) -> dict[str, Any]:
        line = self._reader.readline()
        if not line:
            raise VmError("QEMU closed the QMP connection")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        self._reader.close()
        self._sock.close()
