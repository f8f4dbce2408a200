"""The profile's secure_boot section and the build's key checks, before any long step."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from builder.build import image as image_module
from builder.build.apt import Mirrors
from builder.build.toolstree import ToolsTree
from builder.disk.sign import check_engine
from builder.errors import HostbuildError, ProfileError
from builder.keys.secureboot import (
    PHASES,
    Certificates,
    SigningKeys,
    build_certificates,
    certificate_paths,
    export_certificates,
    fingerprints,
    prepare_signer,
)
from builder.profile.load import load_profile
from builder.profile.model import dump_profile
from tests.conftest import Cli
from tests.secureboot import secure_profile, signing_keys
from tests.unit.sbkeys import keys, other_keys

__all__ = ["keys", "other_keys"]  # the fixtures

MIRRORS = Mirrors("http://deb.example.test/debian", "http://deb.example.test/debian-security")


def test_worker_stays_unsigned() -> None:
    profile = load_profile("worker")
    assert profile.secure_boot is None
    assert certificate_paths(profile) is None
    assert prepare_signer(profile, SigningKeys()) is None


def test_certificate_paths_are_relative_to_the_profile(keys: Path, tmp_path: Path) -> None:
    profile = load_profile(str(secure_profile(tmp_path, keys)))
    assert certificate_paths(profile) == Certificates(
        tmp_path / "keys/PK.crt", tmp_path / "keys/KEK.crt", tmp_path / "keys/db.crt",
        tmp_path / "keys/pcr-public.pem",
    )  # fmt: skip
    # the dump keeps what the profile says (no host path in the build inputs)
    assert "  db: keys/db.crt\n" in dump_profile(profile)


def test_a_child_profile_names_paths_relative_to_itself(keys: Path, tmp_path: Path) -> None:
    parent = secure_profile(tmp_path, keys)
    child_dir = tmp_path / "child"
    (child_dir / "mine").mkdir(parents=True)
    (child_dir / "mine" / "db.crt").write_bytes((keys / "db.crt").read_bytes())
    child = child_dir / "child.yaml"
    child.write_text(f"extends: {parent}\nsecure_boot:\n  db: mine/db.crt\n")
    certificates = certificate_paths(load_profile(str(child)))
    assert certificates is not None
    assert certificates.db == child_dir / "mine/db.crt"
    assert certificates.pk == tmp_path / "keys/PK.crt"


def test_disabled_section_builds_unsigned(keys: Path, tmp_path: Path) -> None:
    path = secure_profile(tmp_path, keys, enabled=False)
    shutil.rmtree(tmp_path / "keys")  # a development checkout without the certificates
    profile = load_profile(str(path))
    assert certificate_paths(profile) is None
    assert prepare_signer(profile, SigningKeys(str(keys / "db.key"))) is None


def test_a_private_key_named_as_certificate_is_a_profile_error(keys: Path, tmp_path: Path) -> None:
    path = secure_profile(tmp_path, keys)
    (tmp_path / "keys" / "db.crt").write_bytes(
        (keys / "db.crt").read_bytes() + (keys / "db.key").read_bytes()
    )
    with pytest.raises(ProfileError) as caught:
        load_profile(str(path))
    assert [i.message for i in caught.value.issues] == [
        "'keys/db.crt' holds a private key; name the .crt only"
    ]
    assert caught.value.issues[0].path == "secure_boot.db"


def test_signer_with_matching_keys_records_fingerprints(keys: Path, tmp_path: Path) -> None:
    profile = load_profile(str(secure_profile(tmp_path, keys)))
    signer = prepare_signer(profile, signing_keys(keys))
    assert signer is not None and signer.pcr_key == keys / "pcr-private.pem"
    record = signer.record()
    for role in ("pk", "kek", "db"):
        name = {"pk": "PK", "kek": "KEK", "db": "db"}[role]
        der = x509.load_pem_x509_certificate((keys / f"{name}.crt").read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
        assert record["certificates"][role] == {
            "sha256": hashlib.sha256(der).hexdigest(), "subject": f"CN=Test fleet {name}",
        }  # fmt: skip
    pcr = serialization.load_pem_public_key((keys / "pcr-public.pem").read_bytes())
    pkcs1 = pcr.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    assert record["pcr_public_key"] == {"sha256": hashlib.sha256(pkcs1).hexdigest()}
    assert record["signed"] is True and record["pcr_phases"] == list(PHASES)


def refusal(profile_path: Path, keys: SigningKeys) -> HostbuildError:
    with pytest.raises(HostbuildError) as caught:
        prepare_signer(load_profile(str(profile_path)), keys)
    return caught.value


def test_refuses_without_db_key(keys: Path, tmp_path: Path) -> None:
    error = refusal(
        secure_profile(tmp_path, keys), SigningKeys(None, str(keys / "pcr-private.pem"))
    )
    assert (
        error.message == "profile 'secure' has secure_boot enabled, but no db private key was given"
    )
    assert error.hint is not None and "HOSTBUILD_DB_KEY" in error.hint and "keys init" in error.hint


def test_refuses_a_db_key_of_another_set(keys: Path, other_keys: Path, tmp_path: Path) -> None:
    wrong = SigningKeys(str(other_keys / "db.key"), str(keys / "pcr-private.pem"))
    error = refusal(secure_profile(tmp_path, keys), wrong)
    assert error.message == (
        f"--db-key {str(other_keys / 'db.key')!r} is not the private key of {tmp_path}/keys/db.crt"
    )


def test_refuses_a_wrong_or_missing_pcr_key(keys: Path, other_keys: Path, tmp_path: Path) -> None:
    path = secure_profile(tmp_path, keys)
    db = str(keys / "db.key")
    error = refusal(path, SigningKeys(db, str(other_keys / "pcr-private.pem")))
    assert error.message.endswith(f"is not the private key of {tmp_path}/keys/pcr-public.pem")
    error = refusal(path, SigningKeys(db))
    assert error.message == (
        "profile 'secure' names secure_boot.pcr_public_key, but no PCR private key was given"
    )
    error = refusal(path, SigningKeys(db, str(tmp_path / "nope.pem")))
    assert error.message == f"--pcr-key {str(tmp_path / 'nope.pem')!r}: no such file"
    error = refusal(path, SigningKeys(db, str(keys / "pcr-public.pem")))
    assert error.message.startswith(f"--pcr-key {str(keys / 'pcr-public.pem')!r} is not an unen")


def test_refuses_a_pcr_key_the_profile_has_no_public_half_for(keys: Path, tmp_path: Path) -> None:
    path = secure_profile(tmp_path, keys, pcr=False)
    signer = prepare_signer(load_profile(str(path)), SigningKeys(str(keys / "db.key")))
    assert signer is not None and signer.pcr_key is None and signer.record()["pcr_phases"] == []
    error = refusal(path, signing_keys(keys))
    assert error.message.startswith("a PCR signing key was given, but profile 'secure' names no")


def test_engine_keys(keys: Path, tmp_path: Path) -> None:
    path = secure_profile(tmp_path, keys, pcr=False)
    uri = "pkcs11:token=fleet;object=db"
    signer = prepare_signer(load_profile(str(path)), SigningKeys(uri, engine="pkcs11"))
    assert signer is not None and signer.db_key == uri and signer.engine == "pkcs11"
    assert Path(uri).parent not in signer.readonly()
    error = refusal(path, SigningKeys(str(keys / "db.key"), engine="pkcs11"))
    assert "is a file, but --signing-engine 'pkcs11' loads keys through the engine" in error.message
    pcr = secure_profile(tmp_path / "pcr", keys)
    error = refusal(pcr, SigningKeys(uri, "pkcs11:object=pcr", engine="pkcs11"))
    assert error.message == "--pcr-key: a PKCS#11 URI is not supported for the PCR key"


@pytest.fixture
def stop_at_fetch(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The build's first long step records that it was reached, then stops the build."""
    reached: list[str] = []

    def fetch_all(*args: Any) -> None:
        reached.append("fetch_all")
        raise HostbuildError("stopped at the first long step (test)")

    monkeypatch.setattr(image_module, "resolve_mirrors", lambda debian: MIRRORS)
    monkeypatch.setattr(image_module, "fetch_all", fetch_all)
    for name in ("HOSTBUILD_DB_KEY", "HOSTBUILD_PCR_KEY", "HOSTBUILD_SIGNING_ENGINE"):
        monkeypatch.delenv(name, raising=False)
    return reached


def test_image_refuses_before_any_long_step(
    run_cli: Cli, keys: Path, tmp_path: Path, stop_at_fetch: list[str]
) -> None:
    profile = secure_profile(tmp_path, keys)
    result = run_cli("image", "--profile", str(profile), "--output", str(tmp_path / "out"),
                     "--pcr-key", str(keys / "pcr-private.pem"))  # fmt: skip
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[-3:-1] == [
        "Error: profile 'secure' has secure_boot enabled, but no db private key was given",
        "(pass --db-key FILE (or a PKCS#11 URI with --signing-engine pkcs11) or set "
        "HOSTBUILD_DB_KEY; hostbuild keys init DIR makes a key set; its README.txt says which "
        "file goes where)",
    ]
    assert lines[-1].startswith("log: ")
    assert stop_at_fetch == [] and not (tmp_path / "out").exists()


def test_image_takes_keys_from_the_environment(
    run_cli: Cli, keys: Path, tmp_path: Path, stop_at_fetch: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("HOSTBUILD_DB_KEY", str(keys / "db.key"))
    monkeypatch.setenv("HOSTBUILD_PCR_KEY", str(keys / "pcr-private.pem"))
    profile = secure_profile(tmp_path, keys)
    result = run_cli("image", "--profile", str(profile), "--output", str(tmp_path / "out"))
    assert "Error: stopped at the first long step (test)" in result.output
    assert stop_at_fetch == ["fetch_all"]


def test_dry_run_names_the_certificates_without_reading_keys(
    run_cli: Cli, keys: Path, tmp_path: Path, stop_at_fetch: list[str]
) -> None:
    profile = secure_profile(tmp_path, keys)
    result = run_cli("image", "--profile", str(profile), "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)["secure_boot"]
    signer = prepare_signer(
        load_profile(str(profile)),
        signing_keys(keys),
    )
    assert signer is not None
    expected = signer.record()
    del expected["pcr_phases"]
    assert plan == expected
    assert stop_at_fetch == []


def test_an_engine_must_be_in_the_tools_tree(keys: Path, tmp_path: Path) -> None:
    path = secure_profile(tmp_path / "profile", keys, pcr=False)
    signing = SigningKeys("pkcs11:token=fleet;object=db", engine="pkcs11")
    signer = prepare_signer(load_profile(str(path)), signing)
    assert signer is not None
    tree = ToolsTree(tmp_path / "tree")
    with pytest.raises(HostbuildError) as caught:
        check_engine(tree, signer)
    assert caught.value.message == (
        "--signing-engine 'pkcs11': the tools tree has no such OpenSSL engine "
        "(package libengine-pkcs11-openssl)"
    )
    engines = tmp_path / "tree/usr/lib/x86_64-linux-gnu/engines-3"
    engines.mkdir(parents=True)
    (engines / "pkcs11.so").write_bytes(b"")
    check_engine(tree, signer)


def test_staged_signer_copies_files_privately(keys: Path, tmp_path: Path) -> None:
    profile = load_profile(str(secure_profile(tmp_path / "profile", keys)))
    signer = prepare_signer(profile, signing_keys(keys))
    assert signer is not None
    staged = signer.staged(tmp_path / "work" / "keys")
    assert staged.readonly() == [tmp_path / "work" / "keys"]
    assert stat.S_IMODE((tmp_path / "work" / "keys").stat().st_mode) == 0o700
    assert Path(staged.db_key).read_bytes() == (keys / "db.key").read_bytes()
    assert staged.record() == signer.record()
    assert staged.pcr_key is not None and stat.S_IMODE(staged.pcr_key.stat().st_mode) == 0o600


def test_a_build_output_carries_the_certificates_it_was_signed_for(
    keys: Path, other_keys: Path, tmp_path: Path
) -> None:
    profile = load_profile(str(secure_profile(tmp_path / "profile", keys)))
    certificates = certificate_paths(profile)
    assert certificates is not None
    output = tmp_path / "output"
    output.mkdir()
    files = export_certificates(certificates, output)
    assert sorted(p.name for p in (output / "secure-boot").iterdir()) == [
        "KEK.crt", "PK.crt", "db.crt", "pcr-public.pem",
    ]  # fmt: skip
    record = {"signed": True, **fingerprints(certificates)}
    record["files"] = {k: p.relative_to(output).as_posix() for k, p in files.items()}
    found = build_certificates(output, {"secure_boot": record})
    assert found == Certificates(
        output / "secure-boot/PK.crt", output / "secure-boot/KEK.crt",
        output / "secure-boot/db.crt", output / "secure-boot/pcr-public.pem",
    )  # fmt: skip
    assert fingerprints(found) == fingerprints(certificates)
    assert build_certificates(output, {"secure_boot": {"signed": False}}) is None
    assert build_certificates(output, {}) is None
    (output / "secure-boot/db.crt").write_bytes((other_keys / "db.crt").read_bytes())
    with pytest.raises(HostbuildError, match="not the ones the build was signed for"):
        build_certificates(output, {"secure_boot": record})
