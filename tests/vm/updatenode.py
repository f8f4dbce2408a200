"""A booted node for the update VM tests, and what they ask it.

The node takes its updates from a copy of the session's repository served on 127.0.0.1, which
the guest reaches at http://10.0.2.100/ (its only way out of its restricted network).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from builder.build.toolstree import ToolsTree
from builder.vm.qemu import GuestForward, VmConfig, boot_vm
from tests.vm.image import BuiltImage, Node, SshKey, ssh_config
from tests.vm.updaterepo import GUEST_URL, serving

BOOT_TIMEOUT = 400.0


def nodeconfig(
    key: SshKey, channel: str = "stable", updates: dict[str, Any] | None = None
) -> bytes:
    """A NodeConfig: root's SSH key, updates from `channel` (plus the `updates` keys given)."""
    config = {
        "apiVersion": "hostbuild.dev/v1alpha1", "kind": "NodeConfig",
        "spec": {
            "admin": {"sshAuthorizedKeys": [key.public.strip()]},
            "updates": {"repository": GUEST_URL, "channel": channel, **(updates or {})},
        },
    }  # fmt: skip
    return yaml.safe_dump(config).encode()


@contextmanager
def node_on(
    image: BuiltImage,
    tools: ToolsTree,
    work: Path,
    disk: Path,
    key: SshKey,
    served: Path,
    channel: str = "stable",
    requests: list[tuple[str, str | None]] | None = None,
    updates: dict[str, Any] | None = None,
    forwards: tuple[GuestForward, ...] = (),
    cpus: int | None = None,
) -> Iterator[Node]:
    """Boot `disk` (a qcow2 over the image, kept between boots) with a NodeConfig that takes
    updates from `channel` of the repository copy `served`; its requests go to `requests`.
    `updates` adds NodeConfig keys, `forwards` more host services, `cpus` overrides the
    machine's."""
    work.mkdir(parents=True)
    with serving(served, requests) as forward:
        credentials = {"hostbuild.nodeconfig": nodeconfig(key, channel, updates)}
        config = VmConfig(image=image.raw, credentials=credentials,
                          serial_log=work / "serial.log", disk=disk, cpus=cpus,
                          guest_forwards=(forward, *forwards))  # fmt: skip
        with boot_vm(config, tools, work) as vm:
            vm.wait_for_ssh(BOOT_TIMEOUT)
            node = Node(vm, ssh_config(work / "ssh_config", vm.ssh_port, key))
            settle(node)
            yield node
            vm.poweroff()


def update_json(node: Node, verb: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(node.sh(f"hostbuild-node update {verb} --json"))
    return result


def settle(node: Node) -> None:
    """Wait for multi-user.target; stop the update timer, so only the test runs the updater."""
    node.wait_for("systemctl is-active multi-user.target")
    node.sh("systemctl stop hostbuild-update.timer")


def reboot(node: Node) -> None:
    node.host.run("systemctl reboot")
    time.sleep(15)
    node.vm.wait_for_ssh(BOOT_TIMEOUT)
    settle(node)


def running(node: Node) -> tuple[str, str]:
    """The running version (os-release) and the partition under / (through dm-verity)."""
    release = dict(
        line.split("=", 1)
        for line in node.sh("cat /usr/lib/os-release").splitlines()
        if "=" in line
    )
    slave = node.sh("ls /sys/block/$(basename $(readlink -f /dev/mapper/root))/slaves").split()
    return release["IMAGE_VERSION"], " ".join(sorted(slave))


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"no {what} within {timeout:g} s"
        time.sleep(2)


def entries(node: Node) -> list[str]:
    linux = node.sh("bootctl --print-esp-path").strip() + "/EFI/Linux"
    return sorted(node.sh(f"ls {linux}").split())
