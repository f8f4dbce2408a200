"""The health gate's gRPC call, against a local HTTP/2 server on a Unix socket."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from builder.node import grpc, health

Reply = Callable[[str, bytes], tuple[bytes, str]]  # (path, request) -> (body, grpc-status)


def message(*parts: bytes) -> bytes:
    return b"".join(parts)


def field(number: int, value: bytes) -> bytes:
    return grpc._encode_varint(number << 3 | 2) + grpc._encode_varint(len(value)) + value


def plugin(type_: str, id_: str, init_err: str | None = None) -> bytes:
    parts = [field(1, type_.encode()), field(2, id_.encode()), field(3, b"io.containerd.x")]
    if init_err is not None:
        parts.append(field(7, b"\x08\x02" + field(2, init_err.encode())))  # code 2, message
    return field(1, message(*parts))


def framed(payload: bytes) -> bytes:
    return b"\0" + len(payload).to_bytes(4, "big") + payload


def serve(listener: socket.socket, reply: Reply, seen: list[tuple[str, bytes]]) -> None:
    conn_sock, _ = listener.accept()
    with conn_sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        conn_sock.sendall(conn.data_to_send())
        path, body = "", b""
        while True:
            data = conn_sock.recv(65536)
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    path = dict(event.headers or ())[b":path"].decode()
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                elif isinstance(event, h2.events.StreamEnded):
                    seen.append((path, body))
                    payload, status = reply(path, body)
                    sid = event.stream_id
                    conn.send_headers(
                        sid, [(":status", "200"), ("content-type", "application/grpc")]
                    )
                    if payload:
                        conn.send_data(sid, payload)
                    conn.send_headers(sid, [("grpc-status", status)], end_stream=True)
            try:
                conn_sock.sendall(conn.data_to_send())
            except (BrokenPipeError, ConnectionResetError):
                return  # the client hung up once its reply ended


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[[Reply], tuple[Path, list[tuple[str, bytes]]]]]:
    threads: list[threading.Thread] = []
    listeners: list[socket.socket] = []

    def start(reply: Reply) -> tuple[Path, list[tuple[str, bytes]]]:
        path = tmp_path / f"containerd-{len(listeners)}.sock"
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(path))
        listener.listen(1)
        seen: list[tuple[str, bytes]] = []
        thread = threading.Thread(target=serve, args=(listener, reply, seen), daemon=True)
        thread.start()
        listeners.append(listener)
        threads.append(thread)
        return path, seen

    yield start
    for listener in listeners:
        listener.close()
    for thread in threads:
        thread.join(timeout=5)


def plugins_reply(*plugins: bytes) -> Reply:
    return lambda path, request: (framed(message(*plugins)), "0")


def test_cri_plugin_loaded(server: Callable[[Reply], tuple[Path, list[tuple[str, bytes]]]]) -> None:
    sock, seen = server(plugins_reply(plugin("io.containerd.snapshotter.v1", "overlayfs"),
                                      plugin("io.containerd.grpc.v1", "cri")))  # fmt: skip
    assert health.containerd_answers(sock) is None
    # the request: Introspection/Plugins, filtered to the CRI plugin (PluginsRequest.filters = 1)
    assert seen == [(health.PLUGINS_METHOD, framed(field(1, b"id==cri")))]


def test_cri_plugin_failed_to_load(
    server: Callable[[Reply], tuple[Path, list[tuple[str, bytes]]]],
) -> None:
    error = "mkdir /etc/cni/net.d: read-only file system"
    sock, _ = server(plugins_reply(plugin("io.containerd.grpc.v1", "cri", init_err=error)))
    assert health.containerd_answers(sock) == f"containerd's CRI plugin failed to load: {error}"


def test_cri_plugin_missing(
    server: Callable[[Reply], tuple[Path, list[tuple[str, bytes]]]],
) -> None:
    sock, _ = server(plugins_reply(plugin("io.containerd.grpc.v1", "version")))
    assert "CRI plugin is not loaded" in (health.containerd_answers(sock) or "")


def test_grpc_error_status(server: Callable[[Reply], tuple[Path, list[tuple[str, bytes]]]]) -> None:
    sock, _ = server(lambda path, request: (b"", "12"))
    reason = health.containerd_answers(sock) or ""
    assert reason.endswith(f"{health.PLUGINS_METHOD}: grpc-status 12: ")


def test_containerd_not_up_yet(tmp_path: Path) -> None:
    reason = health.containerd_answers(tmp_path / "none.sock") or ""
    assert reason.startswith(f"containerd socket {tmp_path}/none.sock: ")
    assert "No such file" in reason


def test_broken_reply_is_an_error(
    server: Callable[[Reply], tuple[Path, list[tuple[str, bytes]]]],
) -> None:
    sock, _ = server(lambda path, request: (b"\0\0\0\0\x09abc", "0"))  # says 9 bytes, has 3
    assert "not one uncompressed gRPC message" in (health.containerd_answers(sock) or "")


def test_protobuf_fields_of_every_wire_type() -> None:
    data = b"\x08\x96\x01" + field(2, b"hi") + b"\x19" + bytes(8) + b"\x25" + bytes(4)
    assert list(grpc.fields(data)) == [(1, 150), (2, b"hi"), (3, bytes(8)), (4, bytes(4))]
    with pytest.raises(grpc.GrpcError, match="truncated"):
        list(grpc.fields(b"\x12\x05ab"))
    assert grpc.string_field(1, "id==cri") == b"\x0a\x07id==cri"
