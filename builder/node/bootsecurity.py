"""What protected this boot: the firmware's Secure Boot state (efivars) and the TPM's PCRs (sysfs).

Read live at each `hostbuild-node status`, not at boot: PCRs go on being extended after the
agent's unit ran (systemd measures boot phases into PCR 11).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

EFI_GLOBAL_VARIABLE = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
IMAGE_SECURITY_DATABASE = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"  # db and dbx
EFI = Path("sys/firmware/efi")  # below the root
EFIVARS = EFI / "efivars"
TPM = Path("sys/class/tpm/tpm0")
PCR_BANK = "sha256"
PCRS = range(16)  # the firmware's, the boot loader's and the OS's; 16-23 are for debug/apps


def read_efi_flag(root: Path, name: str) -> int | None:
    """A one-byte global UEFI variable (SecureBoot, SetupMode), or None when it is absent.

    efivarfs files start with the variable's 4 attribute bytes, then its data.
    """
    try:
        data = (root / EFIVARS / f"{name}-{EFI_GLOBAL_VARIABLE}").read_bytes()
    except OSError:
        return None
    return data[4] if len(data) >= 5 else None


def read_efi_var(root: Path, name: str, guid: str) -> bytes | None:
    """A UEFI variable's data (its 4 attribute bytes dropped), or None when it is absent."""
    try:
        data = (root / EFIVARS / f"{name}-{guid}").read_bytes()
    except OSError:
        return None
    return data[4:] if len(data) >= 4 else None


def secure_boot_state(root: Path) -> dict[str, Any]:
    """{"state": enabled|disabled|setup|unsupported|unknown|no-uefi, "secure_boot", "setup_mode",
    "detail"}: what the firmware says it enforced."""
    if not (root / EFI).is_dir():
        return {"state": "no-uefi", "secure_boot": None, "setup_mode": None,
                "detail": f"no /{EFI}: booted without UEFI"}  # fmt: skip
    if not (root / EFIVARS).is_dir():
        return {"state": "unknown", "secure_boot": None, "setup_mode": None,
                "detail": f"/{EFIVARS} is not mounted"}  # fmt: skip
    secure, setup = read_efi_flag(root, "SecureBoot"), read_efi_flag(root, "SetupMode")
    if secure is None:
        state, detail = "unsupported", "the firmware has no SecureBoot variable"
    elif secure == 1:
        state, detail = "enabled", "the firmware verified the boot loader and the UKI with db"
    elif setup == 1:
        state, detail = "setup", "setup mode: no platform key enrolled, nothing is verified"
    else:
        state, detail = "disabled", "keys are enrolled but Secure Boot is off"
    return {"state": state, "secure_boot": secure, "setup_mode": setup, "detail": detail}


def tpm_state(root: Path) -> dict[str, Any]:
    """{"present", "version", "bank", "pcrs": {"0": hex, ...}}: the TPM's PCRs 0-15 now."""
    device = root / TPM
    if not device.is_dir():
        return {"present": False, "version": None, "bank": None, "pcrs": {}}
    try:
        version: str | None = (device / "tpm_version_major").read_text().strip()
    except OSError:
        version = None
    pcrs: dict[str, str] = {}
    for index in PCRS:
        try:
            pcrs[str(index)] = (device / f"pcr-{PCR_BANK}" / str(index)).read_text().strip().lower()
        except OSError:
            continue  # no such bank (a TPM 1.2, a kernel before 5.12) or PCR
    return {"present": True, "version": version, "bank": PCR_BANK if pcrs else None, "pcrs": pcrs}


def boot_security(root: Path) -> dict[str, Any]:
    """The status report's `secure_boot` and `tpm` sections."""
    return {"secure_boot": secure_boot_state(root), "tpm": tpm_state(root)}


def describe(report: dict[str, Any]) -> list[str]:
    """The text lines of `hostbuild-node status` for `boot_security`'s report."""
    sb = report["secure_boot"]
    lines = [f"secure boot: {sb['state']} ({sb['detail']})"]
    tpm = report["tpm"]
    if not tpm["present"]:
        lines.append("tpm:      none")
    elif not tpm["pcrs"]:
        lines.append(f"tpm:      TPM {tpm['version'] or '?'}, no {PCR_BANK} PCRs in sysfs")
    else:
        lines.append(f"tpm:      TPM {tpm['version'] or '?'}, PCRs ({tpm['bank']}):")
        lines += [f"  {index:>2}: {value}" for index, value in
                  sorted(tpm["pcrs"].items(), key=lambda item: int(item[0]))]  # fmt: skip
    return lines
