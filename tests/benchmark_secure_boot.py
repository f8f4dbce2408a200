"""Secure Boot benchmark: `python -m tests.benchmark_secure_boot OUTPUT_DIR [--rounds N]`.

OUTPUT_DIR is a signed `hostbuild image` output (a profile with `secure_boot`, built with
--db-key and --pcr-key). Prints, measured in one run on this machine:
- boot times of that image under QEMU (TCG) with Secure Boot on (OVMF's Secure Boot firmware, the
  fleet's keys enrolled from OUTPUT_DIR/secure-boot/) and a software TPM, against the same image
  with both off, interleaved (off, on, off, on, ...) so the machine's drift hits both alike; each
  round is a first boot of a fresh disk and one reboot; medians per boot;
- the build time signing adds: sbsign of systemd-boot and of the UKI (with the sbverify check),
  and ukify's signed PCR 11 predictions (ukify build with and without the PCR key).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from builder.build.apt import host_mirrors
from builder.build.toolstree import OVMF_VARS, SYSTEMD_BOOT_EFI, ToolsTree, ensure_tools_tree
from builder.disk.sign import sign_pe, ukify_pcr_options
from builder.firmware.varstore import SecureBootKeys, write_variable_store
from builder.keys.secureboot import Signer, build_certificates
from builder.run import run
from builder.vm.swtpm import SoftwareTpm
from tests.benchmark_image import Boot, worker_boots
from tests.measured import pe_sections
from tests.vm.conftest import cache_dir

UNITS = ("multi-user.target", "boot-complete.target")


def wall(boot: Boot, unit: str) -> float | None:
    at = boot.marks.get(unit)
    return None if at is None else boot.firmware + at


def boot_rounds(
    raw: Path, tools: ToolsTree, work: Path, store: Path, rounds: int
) -> dict[str, list[list[Boot]]]:
    found: dict[str, list[list[Boot]]] = {"off": [], "on": []}
    for n in range(rounds):
        for mode in ("off", "on"):
            extra: dict[str, Any] = {}
            if mode == "on":
                extra = {"secure_boot_vars": store, "tpm": SoftwareTpm()}
            where = work / f"{mode}-{n}"
            where.mkdir()
            found[mode].append(worker_boots(raw, tools, where, 2, **extra))
            shutil.rmtree(where, ignore_errors=True)
    return found


def print_boots(found: dict[str, list[list[Boot]]]) -> None:
    print(f"{'boot':<6} {'unit':<22} {'off (s)':>8} {'on (s)':>8} {'on/off':>7}")
    for index, name in ((0, "first"), (1, "reboot")):
        for unit in UNITS:
            cells = {}
            for mode, rounds in found.items():
                values = [v for r in rounds if (v := wall(r[index], unit)) is not None]
                cells[mode] = statistics.median(values) if values else None
            off, on = cells["off"], cells["on"]
            if off is None or on is None:
                continue
            print(f"{name:<6} {unit:<22} {off:8.1f} {on:8.1f} {on / off:7.3f}")
        firmware = {m: statistics.median(r[index].firmware for r in rs) for m, rs in found.items()}
        print(f"{name:<6} {'firmware + loader':<22} {firmware['off']:8.1f} {firmware['on']:8.1f}")


def signing_times(output: Path, manifest: dict[str, Any], tools: ToolsTree, work: Path,
                  keys: Path) -> None:  # fmt: skip
    """Seconds signing adds to a build: sbsign (with its sbverify check) of systemd-boot and of
    the UKI, and ukify build with the PCR key against without (the same sections)."""
    certificates = build_certificates(output, manifest)
    assert certificates is not None
    signer = Signer(certificates, str(keys / "db.key"), keys / "pcr-private.pem")
    name = manifest["name"]
    uki = work / "uki.efi"
    run(["zstd", "-q", "-d", "-f", output / f"{name}.update" / f"{name}.efi.zst", "-o", uki])
    sections = {}
    for label, body in pe_sections(uki.read_bytes()).items():
        if label in (".linux", ".initrd", ".osrel", ".cmdline"):
            sections[label] = work / f"section{label}"
            sections[label].write_bytes(body.rstrip(b"\0") if label != ".linux" else body)
    stub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"  # the tools tree's own
    boot = tools.path(SYSTEMD_BOOT_EFI)

    def ukify(pcr: bool) -> float:
        out = work / f"ukify-{pcr}.efi"
        start = time.monotonic()
        tools.run([
            "ukify", "build", f"--linux={sections['.linux']}", f"--initrd={sections['.initrd']}",
            f"--os-release=@{sections['.osrel']}", f"--cmdline=@{sections['.cmdline']}",
            f"--stub={stub}", *(ukify_pcr_options(signer) if pcr else []), f"--output={out}",
        ], binds=[work], readonly=signer.readonly())  # fmt: skip
        return time.monotonic() - start

    def signed(source: Path) -> float:
        start = time.monotonic()
        sign_pe(tools, signer, source, work / f"signed-{source.name}")
        return time.monotonic() - start

    plain = statistics.median(ukify(False) for _ in range(3))
    with_pcr = statistics.median(ukify(True) for _ in range(3))
    uki_sign = statistics.median(signed(uki) for _ in range(3))
    boot_sign = statistics.median(signed(boot) for _ in range(3))
    print(f"ukify build: {plain:.2f} s, with signed PCR 11 predictions {with_pcr:.2f} s "
          f"(+{with_pcr - plain:.2f} s)")  # fmt: skip
    print(f"sbsign + sbverify: UKI ({uki.stat().st_size / 2**20:.1f} MiB) {uki_sign:.2f} s, "
          f"systemd-boot {boot_sign:.2f} s (twice on the ESP: one signing)")  # fmt: skip
    print(
        f"signing adds to a build: {with_pcr - plain + uki_sign + boot_sign:.2f} s (medians of 3)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="a signed `hostbuild image` output directory")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="boot rounds per mode (default 3; 0: signing times only)",
    )
    parser.add_argument("--keys", type=Path, help="the key set's directory (for the signing times)")
    args = parser.parse_args()
    manifest = json.loads((args.output / "manifest.json").read_text())
    certificates = build_certificates(args.output, manifest)
    if certificates is None:
        parser.error(f"{args.output} is not a signed build (its manifest's secure_boot.signed)")
    mirrors = host_mirrors()
    assert mirrors is not None, "no Debian mirror in the host's apt sources"
    tools = ensure_tools_tree(cache_dir(), mirrors.main)
    work = Path(tempfile.mkdtemp(prefix="hostbuild-bench-sb-"))
    store = work / "vars.fd"
    keys = SecureBootKeys(certificates.pk, (certificates.kek,), (certificates.db,))
    write_variable_store(keys, tools.path(OVMF_VARS), store)
    raw = args.output / f"{manifest['name']}.raw"
    if args.rounds > 0:
        print_boots(boot_rounds(raw, tools, work, store, args.rounds))
    if args.keys:
        signing_times(args.output, manifest, tools, work, args.keys)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
