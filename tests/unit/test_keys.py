"""hostbuild keys init: the files of a key set, their modes, the chain, imports and refusals."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from builder.errors import HostbuildError
from builder.keys.keyset import README, init_keyset, keyset_files
from tests.conftest import Cli
from tests.unit.sbkeys import keys

__all__ = ["keys"]  # the fixture


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_keyset_files_and_modes(keys: Path) -> None:
    names = sorted(p.name for p in keys.iterdir())
    assert names == sorted([*keyset_files(), README])
    for name in names:
        mode = stat.S_IMODE((keys / name).stat().st_mode)
        private = name.endswith(".key") or name == "pcr-private.pem"
        assert (mode & 0o077 == 0) if private else (mode & 0o044 == 0o044), (name, oct(mode))
        assert (b"PRIVATE KEY" in (keys / name).read_bytes()) is private, name


def test_chain_subjects_and_usage(keys: Path) -> None:
    pk, kek, db = cert(keys / "PK.crt"), cert(keys / "KEK.crt"), cert(keys / "db.crt")
    assert [c.subject.rfc4514_string() for c in (pk, kek, db)] == [
        "CN=Test fleet PK", "CN=Test fleet KEK", "CN=Test fleet db",
    ]  # fmt: skip
    pk.verify_directly_issued_by(pk)
    kek.verify_directly_issued_by(pk)
    db.verify_directly_issued_by(kek)
    with pytest.raises(ValueError):
        db.verify_directly_issued_by(pk)
    usage = db.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CODE_SIGNING in usage
    assert not db.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for c in (pk, kek, db):
        assert c.public_key().key_size == 2048  # type: ignore[union-attr]
    for role in ("PK", "KEK", "db"):
        key = serialization.load_pem_private_key((keys / f"{role}.key").read_bytes(), None)
        assert key.public_key() == cert(keys / f"{role}.crt").public_key()
    pcr = serialization.load_pem_private_key((keys / "pcr-private.pem").read_bytes(), None)
    assert pcr.public_key() == serialization.load_pem_public_key(
        (keys / "pcr-public.pem").read_bytes()
    )


def test_readme_says_where_keys_live(keys: Path) -> None:
    text = (keys / README).read_text()
    assert "OFFLINE" in text and "--db-key" in text and "--pcr-key" in text
    assert "secure_boot:" in text and "pcr_public_key: keys/pcr-public.pem" in text


def test_refuses_to_overwrite(keys: Path) -> None:
    before = {p.name: p.read_bytes() for p in keys.iterdir()}
    with pytest.raises(HostbuildError, match="already holds a key set .*refusing to overwrite"):
        init_keyset(keys, "Again")
    assert {p.name: p.read_bytes() for p in keys.iterdir()} == before


def test_refuses_a_directory_with_one_file_of_a_set(tmp_path: Path) -> None:
    (tmp_path / "db.key").write_text("mine")
    with pytest.raises(HostbuildError, match=r"\(db.key\); refusing"):
        init_keyset(tmp_path, "X")
    assert (tmp_path / "db.key").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.key"]


def test_from_existing_keeps_offline_keys_out(keys: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("PK.crt", "KEK.crt", "db.crt", "db.key"):  # PK.key, KEK.key stay offline
        (source / name).write_bytes((keys / name).read_bytes())
    target = tmp_path / "target"
    made = init_keyset(target, "Imported", existing=source)
    assert made.imported == ("KEK.crt", "PK.crt", "db.crt", "db.key")
    assert set(made.written) == {*made.imported, "pcr-private.pem", "pcr-public.pem"}
    assert not (target / "PK.key").exists() and not (target / "KEK.key").exists()
    assert (target / "db.crt").read_bytes() == (keys / "db.crt").read_bytes()
    assert stat.S_IMODE((target / "db.key").stat().st_mode) == 0o600


def test_from_existing_makes_missing_roles(keys: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("PK.crt", "PK.key"):
        (source / name).write_bytes((keys / name).read_bytes())
    target = tmp_path / "target"
    init_keyset(target, "Grown", existing=source)
    cert(target / "KEK.crt").verify_directly_issued_by(cert(keys / "PK.crt"))
    assert cert(target / "db.crt").subject.rfc4514_string() == "CN=Grown db"


def test_from_existing_refuses_a_key_of_another_certificate(keys: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "db.crt").write_bytes((keys / "db.crt").read_bytes())
    (source / "db.key").write_bytes((keys / "KEK.key").read_bytes())
    (source / "pcr-public.pem").write_bytes((keys / "pcr-public.pem").read_bytes())
    with pytest.raises(HostbuildError) as caught:
        init_keyset(tmp_path / "target", "X", existing=source)
    assert caught.value.message == (
        f"{source}: db.key is not the private key of db.crt; "
        "pcr-private.pem and pcr-public.pem come together (one is missing)"
    )
    assert not (tmp_path / "target").exists()


def test_cli_keys_init_lists_files_and_refuses_again(run_cli: Cli, tmp_path: Path) -> None:
    target = tmp_path / "fleet"
    result = run_cli("keys", "init", str(target), "--org", "Acme")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"{target}: Secure Boot key set",
        "  KEK.crt (public, 0644)", "  KEK.key (private, 0600)",
        "  PK.crt (public, 0644)", "  PK.key (private, 0600)",
        "  db.crt (public, 0644)", "  db.key (private, 0600)",
        "  pcr-private.pem (private, 0600)", "  pcr-public.pem (public, 0644)",
        f"read {target / README}: keep PK.key and KEK.key offline, never commit a key",
    ]  # fmt: skip
    assert cert(target / "PK.crt").subject.rfc4514_string() == "CN=Acme PK"
    again = run_cli("keys", "init", str(target))
    assert again.exit_code == 1
    assert again.output.startswith(f"Error: {target} already holds a key set (PK.crt, PK.key,")
