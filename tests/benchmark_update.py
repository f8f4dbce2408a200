"""Update benchmark: `python -m tests.benchmark_update [--image DIR --repo DIR]`.

Prints, measured in one run on this machine (QEMU, TCG), for the stand-in worker:
- build side: `hostbuild repo add` of a version (and the publish after it);
- in the guest: `hostbuild-node update apply` (check, download, verify, write the other slot,
  verify it, install the UKI) wall time, its memory peak and CPU time (systemd-run's account of
  the unit), and the bytes it downloaded against the payload's compressed size;
- downtime: from `systemctl reboot` to the health gate's verdict on the console, for the reboot
  into the update, and for a plain reboot of the same version made to count tries again (its
  entry renamed back to NAME+1.efi, so the gate runs on both).

Without --image it builds the stand-in worker (TEST STAND-IN kubelet and crictl) trusting a new
repository; the newer version is derived from it (tests/vm/versions.py).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import re
import shlex
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from builder.cli import cli
from builder.vm.qemu import GuestForward, VmConfig, boot_vm
from tests.vm.conftest import cache_dir, debian_mirror
from tests.vm.image import BuiltImage, Node, build_standin_image, make_ssh_key, ssh_config
from tests.vm.updatenode import nodeconfig, running
from tests.vm.updaterepo import GUEST_ADDR, UpdateRepo, make_repo
from tests.vm.versions import derive_version

BOOT_TIMEOUT = 600.0
VERDICT = "hostbuild-health: (healthy|UNHEALTHY)"
RUSAGE = """
import resource, subprocess, sys
done = subprocess.run(["hostbuild-node", "update", "apply", "--json"], stdout=sys.stdout)
print("MAXRSS_KIB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(done.returncode)
"""


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    served: list[int]

    def copyfile(self, source: Any, outputfile: Any) -> None:
        before = source.tell()
        super().copyfile(source, outputfile)
        self.served.append(source.tell() - before)

    def log_message(self, format: str, *args: object) -> None:
        pass


def timed_hostbuild(*args: str) -> float:
    start = time.monotonic()
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return time.monotonic() - start


def verdict_after(node: Node, command: str) -> float:
    """Seconds from `command` (a reboot) to the next health gate verdict on the console."""
    seen = len(re.findall(VERDICT, node.vm.serial_text()))
    start = time.monotonic()
    node.host.run(command)
    while len(re.findall(VERDICT, node.vm.serial_text())) <= seen:
        assert time.monotonic() - start < BOOT_TIMEOUT, "no verdict"
        time.sleep(0.2)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", type=Path, help="a stand-in worker output built --update-root")
    parser.add_argument("--repo", type=Path, help="the repository (and keys beside it) it trusts")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hostbuild-bench-update-"))
    from builder.build.toolstree import ensure_tools_tree

    mirror = debian_mirror()
    assert mirror is not None, "no Debian mirror for the tools tree"
    tools = ensure_tools_tree(cache_dir(), mirror)
    if args.image and args.repo:
        repo = UpdateRepo(args.repo, args.repo.parent / "keys", work / "served")
        repo.served.mkdir()
        image = BuiltImage(args.image, json.loads((args.image / "manifest.json").read_text()))
    else:
        repo = make_repo(work / "repo")
        image = build_standin_image(cache_dir(), work / "image", repo.root)
    v2 = derive_version(image, tools, work / "v2", "9.0.0-1", upgrade_from=None)
    add = timed_hostbuild("repo", "add", os.fspath(repo.path), "--keys", os.fspath(repo.keys),
                          "--image", os.fspath(v2.output))  # fmt: skip
    publish = timed_hostbuild("repo", "publish", os.fspath(repo.path), "--to",
                              os.fspath(repo.served))  # fmt: skip
    payload = sum(f["compressed_size"] for f in v2.manifest["payload"]["files"].values())

    served: list[int] = []
    handler = type("Handler", (CountingHandler,), {"served": served})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=os.fspath(repo.served))
    )
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    key = make_ssh_key(work)
    config = VmConfig(
        image=image.raw, credentials={"hostbuild.nodeconfig": nodeconfig(key)},
        serial_log=work / "serial.log", disk=work / "disk.qcow2",
        guest_forwards=(GuestForward(GUEST_ADDR, 80, httpd.server_address[1]),),
    )  # fmt: skip
    with boot_vm(config, tools, work / "vm") as vm:
        vm.wait_for_ssh(BOOT_TIMEOUT)
        node = Node(vm, ssh_config(work / "ssh_config", vm.ssh_port, key))
        node.wait_for("systemctl is-active systemd-bless-boot.service", BOOT_TIMEOUT)
        node.sh("systemctl stop hostbuild-update.timer")  # only the benchmark runs the updater
        served.clear()
        start = time.monotonic()
        # the agent's own peak RSS (ru_maxrss of its largest process: the agent, zstd or
        # veritysetup), apart from the page cache its writes dirty, which the unit's memory
        # peak (systemd-run's account) also counts
        out = node.host.run(
            "systemd-run --wait --pipe -p Nice=19 -p IOSchedulingClass=idle "
            "-p CPUSchedulingPolicy=idle python3 -c " + shlex.quote(RUSAGE)
        )
        apply_seconds = time.monotonic() - start
        assert out.rc == 0, out.stdout + out.stderr
        report = json.loads(out.stdout.rsplit("MAXRSS_KIB", 1)[0])
        assert report["version"] == "9.0.0-1", out.stdout
        peak_rss = int(out.stdout.rsplit("MAXRSS_KIB", 1)[1]) / 1024
        # systemd-run --wait ends with its account of the unit: runtime, CPU time, memory peak
        account = "; ".join(
            line.strip() for line in out.stderr.splitlines()
            if re.match(r"\s*(Service runtime|CPU time consumed|Memory peak|IO bytes)", line)
        )  # fmt: skip
        downloaded = sum(served)
        update_down = verdict_after(node, "systemctl reboot")
        vm.wait_for_ssh(BOOT_TIMEOUT)
        node.wait_for("systemctl is-active systemd-bless-boot.service", BOOT_TIMEOUT)
        node.sh("systemctl stop hostbuild-update.timer")  # only the benchmark runs the updater
        assert running(node)[0] == "9.0.0-1"
        esp = node.sh("bootctl --print-esp-path").strip()
        name = f"{image.manifest['profile']}_9.0.0-1"
        node.sh(f"mv {esp}/EFI/Linux/{name}.efi {esp}/EFI/Linux/{name}+1.efi && sync")
        plain_down = verdict_after(node, "systemctl reboot")
        vm.poweroff()
    httpd.shutdown()
    print("| measure | value |\n|---|---|")
    print(f"| repo add (build side) | {add:.1f} s |")
    print(f"| repo publish | {publish:.1f} s |")
    print(
        f"| update apply in the guest (download, verify, write, verify) | {apply_seconds:.1f} s |"
    )
    print(f"| peak RSS of the updater's largest process | {peak_rss:.1f} MiB |")
    print(f"| the apply unit (systemd-run; its memory peak counts the page cache) | {account} |")
    print(f"| bytes downloaded / payload | {downloaded} / {payload} = {downloaded / payload:.3f} |")
    print(f"| reboot into the update -> gate verdict | {update_down:.1f} s |")
    print(f"| plain reboot (tries counted) -> gate verdict | {plain_down:.1f} s |")
    print(f"| update downtime / plain reboot | {update_down / plain_down:.2f} |")


if __name__ == "__main__":
    main()
