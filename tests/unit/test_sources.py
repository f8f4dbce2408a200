"""Sources of the NodeConfig: DMI, an IMDSv2 server on 127.0.0.1, credentials, config partition."""

from __future__ import annotations

import base64
import gzip
import http.server
import os
import shutil
import socket
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from builder.node.command import CommandFailed
from builder.node.sources import (
    MAX_EXPANDED,
    MAX_SIZE,
    Imds,
    SourceError,
    Sources,
    discover,
    extract_nodeconfig,
    is_ec2,
)

CONFIG = b"apiVersion: hostbuild.dev/v1alpha1\nkind: NodeConfig\nspec: {}\n"


@dataclass
class Metadata:
    """What the fake instance metadata service serves, and what it saw."""

    user_data: bytes | None = CONFIG
    documents: dict[str, bytes] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)
    expire_next: bool = False
    delay: float = 0.0
    requests: list[str] = field(default_factory=list)


class Handler(http.server.BaseHTTPRequestHandler):
    metadata: Metadata

    def _send(self, code: int, body: bytes = b"") -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        md = self.metadata
        md.requests.append(f"PUT {self.path}")
        time.sleep(md.delay)
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        if self.path != "/latest/api/token" or not ttl or not 1 <= int(ttl) <= 21600:
            return self._send(400)
        token = f"token-{len(md.tokens)}"
        md.tokens.add(token)
        self._send(200, token.encode())

    def do_GET(self) -> None:
        md = self.metadata
        md.requests.append(f"GET {self.path}")
        time.sleep(md.delay)
        if self.headers.get("X-aws-ec2-metadata-token") not in md.tokens:
            return self._send(401)
        if md.expire_next:
            md.expire_next = False
            md.tokens.clear()
            return self._send(401)
        if self.path == "/latest/user-data":
            return self._send(404) if md.user_data is None else self._send(200, md.user_data)
        document = md.documents.get(self.path)
        self._send(404) if document is None else self._send(200, document)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def imds() -> Iterator[tuple[str, Metadata]]:
    metadata = Metadata()
    handler = type("BoundHandler", (Handler,), {"metadata": metadata})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", metadata
    server.shutdown()
    server.server_close()


def client(url: str, deadline: float = 2.0) -> Imds:
    return Imds(url, timeout=0.3, deadline=deadline, sleep=lambda s: None)


def test_token_is_required_and_sent(imds: tuple[str, Metadata]) -> None:
    url, md = imds
    assert client(url).get("latest/user-data") == CONFIG
    assert md.requests == ["PUT /latest/api/token", "GET /latest/user-data"]
    md.requests.clear()
    with pytest.raises(urllib.error.HTTPError, match="401"):  # the server does want a token
        urllib.request.urlopen(f"{url}/latest/user-data", timeout=1)


def test_expired_token_is_fetched_again_once(imds: tuple[str, Metadata]) -> None:
    url, md = imds
    imds_client = client(url)
    imds_client.fetch_token()
    md.expire_next = True
    assert imds_client.get("latest/user-data") == CONFIG
    assert md.requests == [
        "PUT /latest/api/token", "GET /latest/user-data",
        "PUT /latest/api/token", "GET /latest/user-data",
    ]  # fmt: skip


def test_a_token_refused_twice_is_an_error(imds: tuple[str, Metadata]) -> None:
    url, md = imds
    imds_client = client(url)
    imds_client.token = "forged"
    md.tokens.add("unrelated")
    md.expire_next = False
    imds_client.fetch_token = lambda: "forged"  # type: ignore[method-assign]
    with pytest.raises(SourceError, match="HTTP 401"):
        imds_client.get("latest/user-data")
    assert md.requests == ["GET /latest/user-data", "GET /latest/user-data"]


def test_404_user_data_is_none(imds: tuple[str, Metadata]) -> None:
    url, md = imds
    md.user_data = None
    assert client(url).get("latest/user-data") is None


def test_platform_name_and_provider_id(imds: tuple[str, Metadata]) -> None:
    url, md = imds
    md.documents = {
        "/latest/meta-data/local-hostname": b"ip-10-0-0-21.test.internal",
        "/latest/meta-data/placement/availability-zone": b"zone-a",
        "/latest/meta-data/instance-id": b"i-0123456789abcdef0",
    }
    platform = client(url).platform()
    assert platform.name == "ip-10-0-0-21.test.internal"
    assert platform.provider_id == "aws:///zone-a/i-0123456789abcdef0"


def test_slow_server_times_out_within_the_deadline(imds: tuple[str, Metadata]) -> None:
    url, md = imds
    md.delay = 1.0
    start = time.monotonic()
    with pytest.raises(SourceError, match="gave up after 0.5s"):
        Imds(url, timeout=0.1, deadline=0.5).get("latest/user-data")
    assert time.monotonic() - start < 1.5


def test_unreachable_service_gives_up_at_the_deadline() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    sleeps: list[float] = []
    imds_client = Imds(f"http://127.0.0.1:{port}", timeout=0.2, deadline=0.3, sleep=sleeps.append)
    start = time.monotonic()
    with pytest.raises(SourceError, match="gave up"):
        imds_client.get("latest/user-data")
    assert time.monotonic() - start < 1.0
    assert sleeps and all(s <= 2.0 for s in sleeps)


def test_gzip_user_data() -> None:
    assert extract_nodeconfig(gzip.compress(CONFIG)) == CONFIG
    two = gzip.compress(CONFIG[:20]) + gzip.compress(CONFIG[20:]) + bytes(8)  # padded, like gzip(1)
    assert extract_nodeconfig(two) == CONFIG
    with pytest.raises(SourceError, match="does not decompress: Error -3 "):
        extract_nodeconfig(b"\x1f\x8b" + b"garbage")
    with pytest.raises(
        SourceError, match="^user-data is gzip but does not decompress: it is trunc"
    ):
        extract_nodeconfig(gzip.compress(CONFIG)[:-9])


def gzip_of_zeros(size: int) -> bytes:
    """A gzip bomb, made in steps of 1 MiB (never `size` bytes in memory at once)."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    return b"".join([*(deflate.compress(chunk) for _ in range(size >> 20)), deflate.flush()])


def test_a_gzip_bomb_is_refused_with_bounded_memory() -> None:
    bomb = gzip_of_zeros(64 << 20)  # 64 KiB that expand to 64 MiB
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(SourceError) as caught:
            extract_nodeconfig(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(caught.value) == (
        "user-data is gzip that expands to over 1 MiB; decompressed user-data may be at most "
        "1 MiB (all its gzip together)"
    )
    assert peak < MAX_EXPANDED * 6, f"{peak} bytes to refuse the bomb"
    # just under 1 MiB of gzip members that expand to 900 MiB together
    many = gzip.compress(bytes(1 << 20)) * 900
    assert len(many) <= MAX_SIZE
    with pytest.raises(SourceError, match="^user-data is gzip that expands to over 1 MiB"):
        extract_nodeconfig(many)


def test_gzip_of_mime_parts_counts_together() -> None:
    part = base64.encodebytes(gzip.compress(b"#" * (600 << 10)))
    assert extract_nodeconfig(mime(("text/x-shellscript", part), transfer="base64")) is None
    twice = mime(("text/x-shellscript", part), ("text/x-shellscript", part), transfer="base64")
    with pytest.raises(SourceError, match=r"^MIME part 2 \(text/x-shellscript\) is gzip that"):
        extract_nodeconfig(twice)
    truncated = base64.encodebytes(gzip.compress(CONFIG)[:-9])
    with pytest.raises(SourceError, match=r"^MIME part 1 \(text/yaml\) .* it is truncated$"):
        extract_nodeconfig(mime(("text/yaml", truncated), transfer="base64"))


def test_user_data_over_1_mib_is_refused_before_anything_else() -> None:
    with pytest.raises(SourceError) as caught:
        extract_nodeconfig(CONFIG + b"#" * MAX_SIZE)
    assert str(caught.value) == (
        "user-data is over 1 MiB; at most 1 MiB is allowed (a NodeConfig is a few KiB; EC2 "
        "itself takes at most 16 KiB)"
    )


def mime(*parts: tuple[str, bytes], transfer: str = "") -> bytes:
    lines = [b'Content-Type: multipart/mixed; boundary="XX"', b"MIME-Version: 1.0", b""]
    for content_type, body in parts:
        lines += [b"--XX", f"Content-Type: {content_type}".encode()]
        if transfer:
            lines.append(f"Content-Transfer-Encoding: {transfer}".encode())
        lines += [b"", body]
    return b"\n".join([*lines, b"--XX--", b""])


def test_mime_part_by_content_type() -> None:
    other = b"apiVersion: hostbuild.dev/v1alpha1\nkind: NodeConfig\nspec: {admin: {}}\n"
    data = mime(("text/x-shellscript", b"#!/bin/sh\necho hi"), ("text/yaml", other),
                ("application/node.hostbuild.dev; charset=us-ascii", CONFIG))  # fmt: skip
    assert extract_nodeconfig(data) == CONFIG


def test_mime_part_by_api_version_base64_and_gzip() -> None:
    data = mime(("text/x-shellscript", b"#!/bin/sh\necho hi"))
    assert extract_nodeconfig(data) is None
    encoded = base64.encodebytes(gzip.compress(CONFIG))
    data = mime(("application/octet-stream", encoded), transfer="base64")
    assert extract_nodeconfig(data) == CONFIG
    assert extract_nodeconfig(gzip.compress(mime(("text/yaml", CONFIG)))) == CONFIG


def test_plain_user_data_is_passed_through() -> None:
    assert extract_nodeconfig(b"#!/bin/sh\n") == b"#!/bin/sh\n"  # validation says what is wrong


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"sys_vendor": "Amazon EC2\n"}, True),
        ({"sys_vendor": "QEMU\n", "board_vendor": "Amazon EC2\n"}, True),
        ({"sys_vendor": "Xen\n", "product_uuid": "EC2E1916-9099-7CAF-FD21-012345678901\n"}, True),
        ({"sys_vendor": "QEMU\n", "product_uuid": "4c4c4544-0000-1111-2222-333344445555\n"}, False),
        ({}, False),
    ],
)
def test_is_ec2_from_dmi(tmp_path: Path, files: dict[str, str], expected: bool) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert is_ec2(tmp_path) is expected


@pytest.fixture
def sources(tmp_path: Path) -> Sources:
    """A non-EC2 machine with no credentials and no config partition (yet)."""
    (tmp_path / "dmi").mkdir()
    (tmp_path / "dmi" / "sys_vendor").write_text("QEMU\n")
    return Sources(
        dmi=tmp_path / "dmi", imds=Imds("http://127.0.0.1:9", timeout=0.1, deadline=0.1),
        credential_dirs=[tmp_path / "creds", tmp_path / "system-creds"],
        by_label=tmp_path / "by-label" / "HBCONFIG", mountpoint=tmp_path / "mnt",
        settle=lambda: None,
    )  # fmt: skip


def fake_partition(tmp_path: Path, sources: Sources, content: dict[str, bytes]) -> list[str]:
    """A labelled 'device' whose mount copies `content` into the mountpoint; returns the calls."""
    device = tmp_path / "dev" / "vdb1"
    device.parent.mkdir()
    device.touch()
    sources.by_label.parent.mkdir()
    sources.by_label.symlink_to(device)
    calls: list[str] = []

    def mount(dev: Path, mnt: Path) -> None:
        calls.append(f"mount {dev} {mnt}")
        for name, data in content.items():
            (mnt / name).write_bytes(data)

    def umount(mnt: Path) -> None:
        calls.append(f"umount {mnt}")
        for child in mnt.iterdir():
            child.unlink()

    sources.mount, sources.umount = mount, umount
    return calls


def test_nothing_found_without_touching_the_network(sources: Sources) -> None:
    found = discover(sources)
    assert found.found is None and found.errors == []
    assert found.tried == ["credential", "partition"]


def test_credential_source(sources: Sources, tmp_path: Path) -> None:
    (tmp_path / "system-creds").mkdir()
    (tmp_path / "system-creds" / "hostbuild.nodeconfig").write_bytes(gzip.compress(CONFIG))
    found = discover(sources)
    assert found.found is not None
    assert (found.found.source, found.found.data) == ("credential", CONFIG)
    assert found.found.detail == os.fspath(tmp_path / "system-creds" / "hostbuild.nodeconfig")


def test_config_partition_is_mounted_read_and_unmounted(sources: Sources, tmp_path: Path) -> None:
    calls = fake_partition(tmp_path, sources, {"nodeconfig.yaml": CONFIG})
    found = discover(sources)
    assert found.found is not None and found.found.source == "partition"
    assert found.found.data == CONFIG
    assert calls == [f"mount {tmp_path}/dev/vdb1 {tmp_path}/mnt", f"umount {tmp_path}/mnt"]


def test_a_partition_udev_finds_late_is_read(sources: Sources, tmp_path: Path) -> None:
    """No label link yet: the agent waits for udev's queue, then finds the partition."""
    device = tmp_path / "vdb1"
    device.touch()
    settled: list[bool] = []

    def settle() -> None:  # udev handles the disk's events meanwhile
        settled.append(True)
        sources.by_label.parent.mkdir()
        sources.by_label.symlink_to(device)

    def mount(device: Path, mountpoint: Path) -> None:
        (mountpoint / "nodeconfig.yaml").write_bytes(CONFIG)

    sources.settle, sources.mount, sources.umount = settle, mount, lambda mnt: None
    found = discover(sources)
    assert settled == [True]
    assert found.found is not None and found.found.source == "partition"


def test_no_wait_for_udev_when_the_partition_is_there(sources: Sources, tmp_path: Path) -> None:
    fake_partition(tmp_path, sources, {"nodeconfig.yaml": CONFIG})
    sources.settle = lambda: pytest.fail("waited for udev with the partition already found")
    assert discover(sources).found is not None


def test_udev_not_settling_is_no_error(sources: Sources) -> None:
    def settle() -> None:
        raise CommandFailed("udevadm settle --timeout=30 exited 1: timeout")

    sources.settle = settle
    found = discover(sources)
    assert found.found is None and found.errors == []


def test_partition_without_the_file(sources: Sources, tmp_path: Path) -> None:
    calls = fake_partition(tmp_path, sources, {"other.txt": b"x"})
    assert discover(sources).found is None
    assert calls[-1] == f"umount {tmp_path}/mnt"


def test_credential_wins_over_partition(sources: Sources, tmp_path: Path) -> None:
    calls = fake_partition(tmp_path, sources, {"nodeconfig.yaml": b"partition"})
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "hostbuild.nodeconfig").write_bytes(CONFIG)
    found = discover(sources)
    assert found.found is not None and found.found.source == "credential"
    assert calls == []


def test_ec2_user_data_wins_and_brings_the_platform(
    sources: Sources, tmp_path: Path, imds: tuple[str, Metadata]
) -> None:
    url, md = imds
    md.documents["/latest/meta-data/instance-id"] = b"i-0123456789abcdef0"
    md.documents["/latest/meta-data/placement/availability-zone"] = b"zone-a"
    (tmp_path / "dmi" / "sys_vendor").write_text("Amazon EC2\n")
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "hostbuild.nodeconfig").write_bytes(b"credential")
    sources.imds = client(url)
    found = discover(sources)
    assert found.found is not None and found.found.source == "imds"
    assert found.found.data == CONFIG
    assert found.platform.provider_id == "aws:///zone-a/i-0123456789abcdef0"


def test_ec2_without_user_data_falls_through(
    sources: Sources, tmp_path: Path, imds: tuple[str, Metadata]
) -> None:
    url, md = imds
    md.user_data = None
    (tmp_path / "dmi" / "sys_vendor").write_text("Amazon EC2\n")
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "hostbuild.nodeconfig").write_bytes(CONFIG)
    sources.imds = client(url)
    found = discover(sources)
    assert found.found is not None and found.found.source == "credential"
    assert found.tried == ["imds", "credential"]


def test_ec2_with_unreachable_metadata_reports_it(sources: Sources, tmp_path: Path) -> None:
    (tmp_path / "dmi" / "sys_vendor").write_text("Amazon EC2\n")
    found = discover(sources)
    assert found.found is None
    assert len(found.errors) == 1 and found.errors[0].startswith("IMDS: http://127.0.0.1:9/")


def test_real_mount_helpers_report_failures(tmp_path: Path) -> None:
    from builder.node import command

    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    with pytest.raises(command.CommandFailed, match="mount -o ro,nodev,nosuid,noexec"):
        command.mount_ro(tmp_path / "no-such-device", tmp_path)


def test_deeply_nested_mime_is_refused_before_the_parser_recurses() -> None:
    depth = 3000  # the email parser recurses into each: RecursionError, without the limit
    data = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\nMIME-Version: 1.0\n\n--b%d\n' % (i, i)
        for i in range(depth)
    )
    data += (
        b"Content-Type: text/yaml\n\n"
        + CONFIG
        + b"".join(b"--b%d--\n" % i for i in reversed(range(depth)))
    )
    with pytest.raises(SourceError, match="^user-data has more than 20 MIME multi-part sections$"):
        extract_nodeconfig(data)
    assert extract_nodeconfig(mime(("text/yaml", CONFIG))) == CONFIG
