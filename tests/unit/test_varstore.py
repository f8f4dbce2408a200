"""Variable stores for real: throw-away certificates enrolled with virt-firmware, read back."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from builder.build.toolstree import OVMF_VARS
from builder.errors import HostbuildError
from builder.firmware.varstore import (
    GLOBAL_GUID,
    OWNER_GUID,
    SecureBootKeys,
    load_certificate,
    read_certificates,
    read_uefi_data,
    write_variable_store,
)
from builder.run import run
from tests.secureboot import empty_edk2_store, make_certificate, make_keys

X509_GUID = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")  # EFI_CERT_X509_GUID
TOOLS_TREE = Path.home() / ".cache/hostbuild/tools"


def read_back(path: Path) -> dict[str, dict[str, Any]]:
    """The variables of an edk2 or AWS store, as virt-firmware itself reads them."""
    argv: list[str | Path] = [sys.executable, "-m", "virt.firmware.vars", "-l", "error",
                              "-i", path, "--output-json", "-"]  # fmt: skip
    data = json.loads(run(argv).stdout)
    return {v["name"]: v for v in data["variables"]}


def signature_list(data: bytes) -> list[tuple[uuid.UUID, uuid.UUID, bytes]]:
    """(type, owner, certificate) of each entry of an EFI_SIGNATURE_LIST sequence."""
    entries, offset = [], 0
    while offset < len(data):
        kind = uuid.UUID(bytes_le=data[offset : offset + 16])
        list_size, header_size, entry_size = struct.unpack_from("<LLL", data, offset + 16)
        at = offset + 28 + header_size
        while at < offset + list_size:
            owner = uuid.UUID(bytes_le=data[at : at + 16])
            entries.append((kind, owner, data[at + 16 : at + entry_size]))
            at += entry_size
        offset += list_size
    return entries


def der(path: Path) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return load_certificate(path.read_bytes()).public_bytes(Encoding.DER)


def real_templates() -> list[Path]:
    """OVMF_VARS_4M.fd of every cached tools tree (none on a fresh machine)."""
    return sorted(p for p in TOOLS_TREE.glob(f"*/{OVMF_VARS.lstrip('/')}") if p.is_file())


@pytest.fixture(params=["synthetic", "ovmf"])
def template(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "synthetic":
        return empty_edk2_store(tmp_path / "empty.fd")
    found = real_templates()
    if not found:
        pytest.skip(f"no tools tree with {OVMF_VARS} under {TOOLS_TREE}")
    return found[0]


def check_enrolled(variables: dict[str, dict[str, Any]], keys: SecureBootKeys) -> None:
    assert variables["SecureBootEnable"]["data"] == "01"
    assert variables["CustomMode"]["data"] == "00"
    for name, paths in (("PK", (keys.pk,)), ("KEK", keys.kek), ("db", keys.db)):
        entries = signature_list(bytes.fromhex(variables[name]["data"]))
        assert entries == [(X509_GUID, uuid.UUID(OWNER_GUID), der(p)) for p in paths], name
    assert variables["PK"]["guid"] == variables["KEK"]["guid"] == GLOBAL_GUID
    # Authenticated, time-based (0x20) non-volatile boot-service runtime variables: the firmware
    # takes updates of PK, KEK and db only signed from here on
    assert all(variables[n]["attr"] == 0x27 for n in ("PK", "KEK", "db"))


def test_the_store_holds_our_keys_with_secure_boot_on(tmp_path: Path, template: Path) -> None:
    keys = make_keys(tmp_path / "keys", db=2)
    before = template.read_bytes()
    store, aws = tmp_path / "out" / "vars.fd", tmp_path / "out" / "uefi-data.b64"
    write_variable_store(keys, template, store, aws)
    assert template.read_bytes() == before, "the template is only read"
    assert store.stat().st_size == len(before), "the same flash size as the template"
    check_enrolled(read_back(store), keys)
    check_enrolled(read_back(aws), keys)
    assert base64.b64decode(aws.read_text()).startswith(b"AMZNUEFI")
    assert read_uefi_data(aws) == aws.read_text().strip()


def test_read_certificates_gives_each_variables_fingerprints(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys", db=2)
    store, aws = tmp_path / "vars.fd", tmp_path / "uefi-data.b64"
    write_variable_store(keys, empty_edk2_store(tmp_path / "e.fd"), store, aws)
    expected = {
        "PK": [sha256(der(keys.pk))], "KEK": [sha256(der(keys.kek[0]))],
        "db": [sha256(der(p)) for p in keys.db],
    }  # fmt: skip
    assert read_certificates(store) == read_certificates(aws) == expected
    assert read_certificates(empty_edk2_store(tmp_path / "empty.fd")) == {
        "PK": [], "KEK": [], "db": [],
    }  # fmt: skip


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_same_keys_make_the_same_bytes(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    template = empty_edk2_store(tmp_path / "empty.fd")
    outputs = []
    for n in (1, 2):
        write_variable_store(keys, template, tmp_path / f"{n}.fd", tmp_path / f"{n}.b64")
        outputs.append(((tmp_path / f"{n}.fd").read_bytes(), (tmp_path / f"{n}.b64").read_bytes()))
    assert outputs[0] == outputs[1]
    other = make_keys(tmp_path / "other")
    write_variable_store(other, template, tmp_path / "3.fd")
    assert (tmp_path / "3.fd").read_bytes() != outputs[0][0]


def test_uefi_data_alone_needs_no_template(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    aws = tmp_path / "uefi-data.b64"
    write_variable_store(keys, tmp_path / "missing.fd", aws_output=aws)
    check_enrolled(read_back(aws), keys)


def test_a_missing_certificate_is_named(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    keys = SecureBootKeys(keys.pk, (tmp_path / "nope.crt",), keys.db)
    with pytest.raises(HostbuildError, match=r"cannot read the KEK certificate '.*nope\.crt'"):
        write_variable_store(keys, empty_edk2_store(tmp_path / "e.fd"), tmp_path / "v.fd")
    assert not (tmp_path / "v.fd").exists()


def test_a_private_key_is_not_a_certificate(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    key = tmp_path / "db.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nMIGHAgEA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(HostbuildError, match="the db certificate '.*db.key' is not an X.509") as e:
        write_variable_store(SecureBootKeys(keys.pk, keys.kek, (key,)), tmp_path / "x",
                             aws_output=tmp_path / "a")  # fmt: skip
    assert e.value.hint is not None and "not a private key" in e.value.hint


def test_secure_boot_needs_kek_and_db(tmp_path: Path) -> None:
    pk = make_certificate(tmp_path / "PK.crt", "PK")
    with pytest.raises(HostbuildError, match="no db certificate given"):
        write_variable_store(
            SecureBootKeys(pk, (pk,), ()), tmp_path / "x", aws_output=tmp_path / "a"
        )


def test_an_edk2_store_is_not_uefi_data(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    store = tmp_path / "vars.fd"
    write_variable_store(keys, empty_edk2_store(tmp_path / "e.fd"), store)
    with pytest.raises(HostbuildError, match="is not an AWS UEFI variable store"):
        read_uefi_data(store)
    text = tmp_path / "text.b64"
    text.write_text(base64.b64encode(b"not a store").decode())
    with pytest.raises(HostbuildError, match="is not an AWS UEFI variable store"):
        read_uefi_data(text)
