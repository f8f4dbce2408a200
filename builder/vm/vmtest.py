"""`hostbuild test`: the fast smoke check (verdict on the serial console) or the full VM suite."""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from builder.build.toolstree import ToolsTree
from builder.errors import HostbuildError
from builder.run import base_environment, stream
from builder.vm.qemu import VmConfig, boot_vm

VERDICT = re.compile(r"HOSTBUILD-SMOKE: (PASS|FAIL: .*)")
SUITE = Path(__file__).parents[2] / "tests" / "vm" / "test_image.py"


@dataclass(frozen=True)
class SmokeResult:
    passed: bool
    verdicts: list[str]
    seconds: float
    serial_log: Path


def run_smoke(image: Path, tools: ToolsTree, work: Path, timeout: float = 600.0) -> SmokeResult:
    """Boot with the hostbuild.smoke credential; the image checks itself and powers off."""
    config = VmConfig(image=image, credentials={"hostbuild.smoke": b"1"}, want_reboot=False)
    start = time.monotonic()
    with boot_vm(config, tools, work) as vm:
        while vm.exit_code() is None and time.monotonic() - start < timeout:
            time.sleep(1)
        if vm.exit_code() is None:
            raise HostbuildError(
                f"the smoke check of {image} did not power off within {timeout:.0f}s",
                hint=f"see the serial console log {vm.serial_log}",
            )
        text = vm.serial_text()
        serial = vm.serial_log
    verdicts = [m.group(1) for m in VERDICT.finditer(text)]
    passed = bool(verdicts) and all(v == "PASS" for v in verdicts)
    return SmokeResult(passed, verdicts, time.monotonic() - start, serial)


def run_suite(output: Path, extra: list[str]) -> None:
    """The testinfra VM suite against an image already built into `output`."""
    if not SUITE.exists():
        raise HostbuildError(f"the VM test suite {SUITE} is not here", hint="run from a checkout")
    env = base_environment()
    env["HOSTBUILD_TEST_IMAGE_DIR"] = os.fspath(output.absolute())
    stream([sys.executable, "-m", "pytest", "-m", "vm", SUITE, *extra], env=env,
           cwd=SUITE.parent.parent.parent)  # fmt: skip
