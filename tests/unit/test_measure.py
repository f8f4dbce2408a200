"""PCR 11 predictions of a built UKI (builder/disk/measure.py, with the tools tree's ukify and
systemd-measure) against tests/measured.py's independent replay of the stub and the phases,
and against the policies the UKI's .pcrsig signs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from builder.build.toolstree import ToolsTree
from builder.disk.measure import predict_pcr11
from builder.disk.uki import build_uki
from builder.keys.secureboot import PHASES
from tests.measured import (
    FINAL_PHASE,
    MEASURE_LOG,
    NODE_PCR11,
    PCR,
    PHASE_WORDS,
    ROOT_PHASE_UNITS,
    check_booted_node,
    pe_sections,
    phase_pcr11,
    policy_digest,
    predicted_pcr11,
    signed_policy_for,
    stub_pcr11,
    uki_pcr11,
    uki_pcrsig,
)
from tests.secureboot import find_tools_tree
from tests.unit.sbkeys import keys
from tests.unit.test_sign import KVER, fake_tree, signer_for

__all__ = ["keys"]  # the fixture

TREE = find_tools_tree()
needs_tree = pytest.mark.skipif(TREE is None, reason="no complete tools tree in the cache")


@pytest.fixture
def tools() -> ToolsTree:
    assert TREE is not None
    return TREE


def uki(tools: ToolsTree, tmp_path: Path, keys: Path | None, cmdline: str = "ro quiet") -> Path:
    tree = fake_tree(tools, tmp_path / "tree")
    boot = tree / "boot"
    signer = signer_for(keys, tmp_path) if keys else None
    return build_uki(tools, tree, boot / f"vmlinuz-{KVER}", boot / f"initrd.img-{KVER}", KVER,
                     cmdline, tmp_path / "uki" / "test.efi", signer)  # fmt: skip


@needs_tree
def test_signed_uki_prediction_is_the_replayed_boot_and_the_signed_policy(
    tools: ToolsTree, keys: Path, tmp_path: Path
) -> None:
    signed = uki(tools, tmp_path, keys)
    predicted = predict_pcr11(tools, signed, tmp_path / "pcr11")
    assert list(predicted) == list(PHASES)
    assert predicted == uki_pcr11(signed)
    assert len(set(predicted.values())) == len(PHASES)
    assert not (tmp_path / "pcr11").exists()
    pcrsig = uki_pcrsig(signed)
    public = (keys / "pcr-public.pem").read_bytes()
    for phase, value in predicted.items():
        entry = signed_policy_for(pcrsig, public, value)
        assert entry["pol"] == policy_digest(value), phase
    # a value the UKI was not signed for has no policy (the check can fail)
    wrong = phase_pcr11(bytes.fromhex(predicted[FINAL_PHASE]), "shutdown").hex()
    with pytest.raises(AssertionError, match="no signed sha256 policy"):
        signed_policy_for(pcrsig, public, wrong)


@needs_tree
def test_unsigned_uki_is_predicted_too_and_the_command_line_counts(
    tools: ToolsTree, tmp_path: Path
) -> None:
    plain = uki(tools, tmp_path / "a", None)
    predicted = predict_pcr11(tools, plain, tmp_path / "a" / "pcr11")
    assert predicted == uki_pcr11(plain)
    assert ".pcrpkey" not in pe_sections(plain.read_bytes())
    other = uki(tools, tmp_path / "b", None, cmdline="ro quiet debug")
    assert predict_pcr11(tools, other, tmp_path / "b" / "pcr11") != predicted


def test_policy_digest_of_the_tpm_specification() -> None:
    # PolicyPCR over a fresh session: SHA256(0^32 || TPM_CC_PolicyPCR || TPML_PCR_SELECTION
    # {1, sha256, 3, 00 08 00} || SHA256(PCR 11)), the bytes written out here
    pcr = "11" * 32
    expected = hashlib.sha256(
        bytes(32) + bytes.fromhex("0000017f" "00000001" "000b" "03" "000800")
        + hashlib.sha256(bytes.fromhex(pcr)).digest()
    ).hexdigest()  # fmt: skip
    assert policy_digest(pcr) == expected
    assert policy_digest("22" * 32) != expected


def test_stub_replay_skips_absent_and_empty_sections() -> None:
    one = stub_pcr11({".linux": b"kernel"})
    assert stub_pcr11({".linux": b"kernel", ".splash": b""}) == one
    assert stub_pcr11({".linux": b"kernel", ".cmdline": b"ro"}) != one
    # the stub's order, not the file's
    a = stub_pcr11({".cmdline": b"ro", ".linux": b"kernel"})
    assert a == stub_pcr11({".linux": b"kernel", ".cmdline": b"ro"})


def fake_node(pcr: str, words: list[str]) -> dict[str, str]:
    """What a node answers: its phase units, event log and PCR 11 (sysfs: upper-case)."""
    log = (
        "".join(
            "\x1e"
            + json.dumps({"pcr": PCR, "content_type": "systemd", "content": {"string": w}})
            + "\n"
            for w in words
        )
        + "\x1e"
        + json.dumps({"pcr": 15, "content": {"string": "machine-id:x"}})
        + "\n"
    )
    return {
        f"systemctl is-active {' '.join(ROOT_PHASE_UNITS)}": "active\nactive\n",
        f"cat {MEASURE_LOG}": log,
        f"cat {NODE_PCR11}": pcr.upper() + "\n",
    }


def test_booted_node_check_compares_the_node_with_the_manifest(tmp_path: Path) -> None:
    base = stub_pcr11({".linux": b"kernel", ".cmdline": b"ro"})
    predicted = {phase: phase_pcr11(base, phase).hex() for phase in PHASES}
    (tmp_path / "manifest.json").write_text(json.dumps({"secure_boot": {"pcr11": predicted}}))
    final = predicted[FINAL_PHASE]
    assert predicted_pcr11(tmp_path) == final
    node = fake_node(final, PHASE_WORDS)
    assert check_booted_node(node.__getitem__, tmp_path) == final
    early = fake_node(predicted[PHASES[1]], PHASE_WORDS[:2])
    with pytest.raises(AssertionError, match="phase measurements"):
        check_booted_node(early.__getitem__, tmp_path)
    other = fake_node(phase_pcr11(base, "shutdown").hex(), PHASE_WORDS)
    with pytest.raises(AssertionError, match="predicted"):
        check_booted_node(other.__getitem__, tmp_path)
