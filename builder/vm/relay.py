"""Relay one guest connection to a TCP port on the host's loopback (QEMU `guestfwd=...-cmd:`).

QEMU runs this once per connection the guest opens to a forwarded address, with the
connection on stdin and stdout (a chardev target would carry a single connection for the VM's
whole life). It runs under the tools tree's python3: standard library only.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
from collections.abc import Sequence

CHUNK = 1 << 16


def relay(port: int, stdin: int = 0, stdout: int = 1) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        selector = selectors.DefaultSelector()
        selector.register(stdin, selectors.EVENT_READ, "guest")
        selector.register(sock, selectors.EVENT_READ, "host")
        while True:
            for key, _ in selector.select():
                if key.data == "guest":
                    data = os.read(stdin, CHUNK)
                    if not data:  # the guest closed its side: so does the host's
                        selector.unregister(stdin)
                        sock.shutdown(socket.SHUT_WR)
                    else:
                        sock.sendall(data)
                    continue
                data = sock.recv(CHUNK)
                if not data:
                    return
                view = memoryview(data)
                while view:
                    view = view[os.write(stdout, view) :]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not args[0].isdigit():
        print("usage: relay.py PORT", file=sys.stderr)  # noqa: T201 -- a command's usage line
        return 2
    try:
        relay(int(args[0]))
    except OSError as e:
        print(f"relay to 127.0.0.1:{args[0]}: {e}", file=sys.stderr)  # noqa: T201 -- to QEMU's log
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
