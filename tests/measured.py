"""TPM2 measured boot, as tests check it: PCR 11 computed the way systemd-stub and
systemd-pcrphase extend it, the TPM2 PolicyPCR digest that a UKI's .pcrsig signs, and the
predictions a build records in its manifest.

Written from the TPM 2.0 specification and systemd's stub, not with systemd-measure, so that unit
tests check the build's systemd-measure results independently; a VM test compares a booted
node's PCR 11 (/sys/class/tpm/tpm0/pcr-sha256/11) with `predicted_pcr11(output)` and checks it
against the UKI's signed policy with `signed_policy_for`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from builder.build.manifest import MANIFEST
from builder.keys.secureboot import PHASES

PCR = 11
TPM_CC_POLICY_PCR = 0x0000017F
TPM_ALG_SHA256 = 0x000B
FINAL_PHASE = PHASES[-1]  # enter-initrd:leave-initrd:sysinit:ready: the booted system
# The order systemd-stub measures a UKI's sections in (systemd's unified_sections, less .pcrsig)
STUB_ORDER = (
    ".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname", ".sbat",
    ".pcrpkey", ".profile", ".dtbauto", ".hwids",
)  # fmt: skip


def extend(pcr: bytes, digest: bytes) -> bytes:
    """TPM2_PCR_Extend in the sha256 bank."""
    return hashlib.sha256(pcr + digest).digest()


def pe_section_table(data: bytes) -> dict[str, tuple[int, int, int]]:
    """A PE file's section table: name -> (file offset, raw size, virtual size). (Twelve lines,
    no PE library needed.)"""
    (pe,) = struct.unpack_from("<I", data, 0x3C)
    assert data[pe : pe + 4] == b"PE\0\0", "not a PE file"
    (count,) = struct.unpack_from("<H", data, pe + 6)
    (optional_size,) = struct.unpack_from("<H", data, pe + 20)
    table = pe + 24 + optional_size
    found = {}
    for i in range(count):
        name, vsize, _, raw_size, raw_at = struct.unpack_from("<8sIIII", data, table + 40 * i)
        found[name.rstrip(b"\0").decode()] = (raw_at, raw_size, vsize)
    return found


def pe_sections(data: bytes) -> dict[str, bytes]:
    """A PE file's sections as the firmware loads them: VirtualSize bytes each, zero-filled
    past the raw data."""
    sections = {}
    for name, (raw_at, raw_size, vsize) in pe_section_table(data).items():
        body = data[raw_at : raw_at + min(vsize, raw_size)]
        sections[name] = body + bytes(vsize - len(body))
    return sections


def stub_pcr11(sections: Mapping[str, bytes]) -> bytes:
    """PCR 11 after systemd-stub measured a UKI with these sections: for each present, non-empty
    section in the stub's order, its NUL-terminated name, then its contents."""
    pcr = bytes(32)
    for name in STUB_ORDER:
        data = sections.get(name)
        if data:
            pcr = extend(pcr, hashlib.sha256(name.encode() + b"\0").digest())
            pcr = extend(pcr, hashlib.sha256(data).digest())
    return pcr


def phase_pcr11(pcr: bytes, phase: str) -> bytes:
    """PCR 11 after systemd-pcrextend measured each word of a phase path ("a:b:c")."""
    for word in phase.split(":"):
        if word:
            pcr = extend(pcr, hashlib.sha256(word.encode()).digest())
    return pcr


def uki_pcr11(uki: Path, phases: tuple[str, ...] = PHASES) -> dict[str, str]:
    """`{phase: hex}` PCR 11 predicted for a UKI file, independently of systemd-measure."""
    base = stub_pcr11(pe_sections(uki.read_bytes()))
    return {phase: phase_pcr11(base, phase).hex() for phase in phases}


def policy_digest(pcr_value_hex: str) -> str:
    """The TPM2 PolicyPCR digest of a fresh sha256 policy session bound to PCR 11 (sha256 bank)
    holding `pcr_value_hex`: what systemd-measure signs, and the .pcrsig entry's "pol"."""
    select = bytearray(3)
    select[PCR // 8] |= 1 << (PCR % 8)
    selection = struct.pack(">IHB", 1, TPM_ALG_SHA256, len(select)) + bytes(select)
    pcr_digest = hashlib.sha256(bytes.fromhex(pcr_value_hex)).digest()
    command = struct.pack(">I", TPM_CC_POLICY_PCR)
    return hashlib.sha256(bytes(32) + command + selection + pcr_digest).hexdigest()


def signed_policy_for(
    pcrsig: Mapping[str, Any], public_pem: bytes, pcr_value_hex: str
) -> dict[str, Any]:
    """The sha256-bank entry of a .pcrsig JSON whose policy is PCR 11 == `pcr_value_hex`, its
    signature checked (RSA PKCS#1 v1.5 over SHA-256 of the policy digest, as systemd-measure
    signs); AssertionError if there is none or its signature does not verify."""
    key = serialization.load_pem_public_key(public_pem)
    assert isinstance(key, rsa.RSAPublicKey)
    fingerprint = hashlib.sha256(
        key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    ).hexdigest()
    wanted = policy_digest(pcr_value_hex)
    entries = [e for e in pcrsig.get("sha256", []) if e["pol"] == wanted and e["pcrs"] == [PCR]]
    assert entries, f"no signed sha256 policy for PCR {PCR} = {pcr_value_hex}"
    entry = entries[0]
    assert entry["pkfp"] == fingerprint, "the policy is signed by another PCR key"
    signature = base64.b64decode(entry["sig"])
    key.verify(signature, bytes.fromhex(wanted), padding.PKCS1v15(), hashes.SHA256())
    return dict(entry)


def manifest_pcr11(manifest: Mapping[str, Any]) -> dict[str, str]:
    """A manifest's `secure_boot.pcr11`: `{phase: hex}` for the sha256 bank."""
    return dict(manifest["secure_boot"]["pcr11"])


def predicted_pcr11(output: Path, phase: str = FINAL_PHASE) -> str:
    """The PCR 11 value (lower-case hex) a build in `output` predicts after `phase` (by default
    the booted system's, once systemd-pcrphase.service has run)."""
    manifest = json.loads((output / MANIFEST).read_text())
    return manifest_pcr11(manifest)[phase]


def node_pcr(text: str) -> str:
    """A PCR as the node's sysfs shows it (/sys/class/tpm/tpm0/pcr-sha256/11: upper-case hex,
    a newline), in the manifest's form."""
    return text.strip().lower()


# On a booted node (VM tests)
NODE_PCR11 = "/sys/class/tpm/tpm0/pcr-sha256/11"
# systemd-pcrextend's event log (JSON-SEQ, TCG canonical event log records): the initrd's entries
# survive switch-root with /run
MEASURE_LOG = "/run/log/systemd/tpm2-measure.log"
ROOT_PHASE_UNITS = ("systemd-pcrphase-sysinit.service", "systemd-pcrphase.service")
PHASE_WORDS = FINAL_PHASE.split(":")


def measured_words(log: str) -> list[str]:
    """The words systemd-pcrextend measured into PCR 11, in order, from its event log."""
    words = []
    for record in log.split("\x1e"):
        if record.strip():
            event = json.loads(record)
            if event.get("pcr") == PCR:
                words.append(str(event.get("content", {}).get("string")))
    return words


def uki_pcrsig(uki: Path) -> dict[str, Any]:
    """The signed PCR predictions (.pcrsig JSON) of a UKI file."""
    return dict(json.loads(pe_sections(uki.read_bytes())[".pcrsig"].rstrip(b"\0")))


def check_booted_node(
    sh: Callable[[str], str], output: Path, pcrsig: Mapping[str, Any] | None = None
) -> str:
    """A node booted from the build in `output`, with a TPM, reached the booted-system phase:
    `sh` runs a command on it (stdout; fails unless it exits 0). The root's phase units are
    active, the event log has the four phase words in order, PCR 11 is the manifest's
    prediction and, given the UKI's .pcrsig (`uki_pcrsig`), one of its policies is signed for
    that value by the build's PCR key. Returns the value."""
    sh(f"systemctl is-active {' '.join(ROOT_PHASE_UNITS)}")
    words = measured_words(sh(f"cat {MEASURE_LOG}"))
    assert words == PHASE_WORDS, f"PCR 11 phase measurements: {words}, expected {PHASE_WORDS}"
    value = node_pcr(sh(f"cat {NODE_PCR11}"))
    assert value == predicted_pcr11(output), (
        f"PCR 11 is {value}, predicted {predicted_pcr11(output)}"
    )
    if pcrsig is not None:
        public = (
            output
            / json.loads((output / MANIFEST).read_text())["secure_boot"]["files"]["pcr_public_key"]
        )
        signed_policy_for(pcrsig, public.read_bytes(), value)
    return value
