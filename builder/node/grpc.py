"""One unary gRPC call over a Unix socket, for the health gate: HTTP/2 by h2, protobuf by hand.

The gate asks containerd which plugins loaded. `ctr` could tell too, but it is a 27 MB Go binary
read cold from the verified root at every boot, a second or more under emulation; Debian's
python3-h2 (pure Python, small) speaks HTTP/2, and the few protobuf fields read here are decoded
from the wire format directly.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

CHUNK = 65536


class GrpcError(Exception):
    """The call failed: no answer, a broken response, or a non-zero grpc-status."""


def unary_call(sock: Path, method: str, request: bytes, timeout: float = 10.0) -> bytes:
    """POST `request` (a serialized message) to `method` (/package.Service/Method); the reply."""
    import h2.config  # here: the gate imports this module before containerd is up
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, [
        (":method", "POST"), (":scheme", "http"), (":path", method),
        (":authority", "localhost"), ("content-type", "application/grpc"), ("te", "trailers"),
    ])  # fmt: skip
    conn.send_data(stream, b"\0" + len(request).to_bytes(4, "big") + request, end_stream=True)
    body, status, message = b"", b"", b""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(os.fspath(sock))
            s.sendall(conn.data_to_send())
            ended = False
            while not ended:
                data = s.recv(CHUNK)
                if not data:
                    raise GrpcError(f"{method}: connection closed before the reply ended")
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        body += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, stream)
                    elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        headers = dict(event.headers or ())
                        status = headers.get(b"grpc-status", status)
                        message = headers.get(b"grpc-message", message)
                    elif isinstance(event, h2.events.StreamReset):
                        raise GrpcError(f"{method}: stream reset (error code {event.error_code})")
                    elif isinstance(event, h2.events.StreamEnded):
                        ended = True
                s.sendall(conn.data_to_send())
    except OSError as e:
        raise GrpcError(f"{method}: {e}") from None
    if not status:
        raise GrpcError(f"{method}: the reply has no grpc-status (not a gRPC server?)")
    if status != b"0":
        raise GrpcError(f"{method}: grpc-status {status.decode()}: {message.decode()}")
    return _unframe(method, body)


def _unframe(method: str, body: bytes) -> bytes:
    """The one message of a unary reply (length-prefixed, uncompressed)."""
    if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
        raise GrpcError(f"{method}: not one uncompressed gRPC message ({len(body)} bytes)")
    return body[5:]


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(buf):
            raise GrpcError("truncated protobuf varint")
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i


def fields(message: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each field of a serialized protobuf message, in wire order."""
    i = 0
    while i < len(message):
        key, i = _varint(message, i)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, i = _varint(message, i)
        elif wire == 2:
            size, i = _varint(message, i)
            value, i = message[i : i + size], i + size
            if i > len(message):
                raise GrpcError(f"truncated protobuf field {number}")
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = message[i : i + size], i + size
        else:
            raise GrpcError(f"protobuf wire type {wire} (field {number}) is not supported")
        yield number, value


def string_field(number: int, value: str) -> bytes:
    """A length-delimited string field, serialized."""
    data = value.encode()
    return _encode_varint(number << 3 | 2) + _encode_varint(len(data)) + data


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
