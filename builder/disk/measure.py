"""PCR 11 as a node's TPM holds it after each boot phase, predicted from the UKI as built.

systemd-stub measures the UKI's sections into PCR 11 (sha256 bank: the one every TPM 2.0 and
swtpm has), then systemd-pcrphase extends it with one word per boot phase. `predict_pcr11`
takes the sections out of the finished (signed) file with ukify inspect, so the prediction is
of exactly what the ESP and the update payload carry (sbsign adds a certificate table, not a
section), and replays the stub with systemd-measure calculate.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from builder.disk.slot import Tools
from builder.errors import HostbuildError
from builder.keys.secureboot import PHASES

MEASURE = "/usr/lib/systemd/systemd-measure"
BANK = "sha256"
# The sections systemd-measure (like the stub) measures, by its option names; .pcrsig is not
# measured (it holds the signed predictions themselves).
SECTIONS = (
    "linux", "osrel", "cmdline", "initrd", "ucode", "splash", "dtb", "dtbauto", "uname", "sbat",
    "pcrpkey", "profile", "hwids",
)  # fmt: skip


def predict_pcr11(
    tools: Tools, uki: Path, work: Path, phases: tuple[str, ...] = PHASES
) -> dict[str, str]:
    """`{phase: hex}`: PCR 11 (sha256 bank) after each phase path, in the order of `phases`."""
    work.mkdir(parents=True)
    try:
        tools.run([
            "ukify", "inspect", uki, "--json=short",
            *(f"--section=.{name}:binary@{work / name}" for name in SECTIONS),
        ], binds=[work], readonly=[uki.parent])  # fmt: skip
        found = [name for name in SECTIONS if (work / name).exists()]
        if "linux" not in found:
            raise HostbuildError(f"{uki}: no .linux section, not a UKI")
        result = tools.run([
            MEASURE, "calculate", "--json=short", f"--bank={BANK}",
            *(f"--phase={phase}" for phase in phases),
            *(f"--{name}={work / name}" for name in found),
        ], binds=[work])  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    values = {entry["phase"]: entry["hash"] for entry in json.loads(result.stdout)[BANK]}
    return {phase: values[phase] for phase in phases}
