"""Boot the stand-in worker with a NodeConfig as a systemd credential (QEMU: SMBIOS type 11).

One disk goes through three boots, each a new QEMU with other user-data (as a stop/start with
changed user-data is on a cloud): a full NodeConfig, a changed one, then an invalid one.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.build.toolstree import ToolsTree
from builder.vm.qemu import VmConfig, boot_vm
from tests import cis
from tests.vm.image import BuiltImage, Node, SshKey, ssh_config

pytestmark = pytest.mark.vm

FULL = Path(__file__).parents[1] / "data" / "nodeconfig" / "full.yaml"
BOOT_TIMEOUT = 400.0


def nodeconfig(key: SshKey, **changes: Any) -> dict[str, Any]:
    """The README's full example with root's SSH key from the NodeConfig and `changes` merged."""
    config: dict[str, Any] = yaml.safe_load(FULL.read_text())
    spec = config["spec"]
    spec["admin"]["sshAuthorizedKeys"] = [key.public.strip()]
    for section, values in changes.items():
        spec[section] = {**spec.get(section, {}), **values}
    return config


# The running containerd's CRI configuration, from its verbose CRI status (what kubelet would see;
# `containerd config dump` only reads the files), through the health gate's gRPC client.
CRI_SANDBOX_IMAGE = """
import re, sys
from pathlib import Path
sys.path.insert(0, "/usr/lib/hostbuild")
from hostbuild_node.grpc import unary_call
reply = unary_call(Path("/run/containerd/containerd.sock"), "/runtime.v1.RuntimeService/Status",
                   b"\\x08\\x01")  # StatusRequest{verbose: true}
print(re.search(rb'"sandboxImage":"([^"]*)"', reply).group(1).decode())
"""


def running_sandbox_image(node: Node) -> str:
    return node.sh(f"python3 -c {shlex.quote(CRI_SANDBOX_IMAGE)}").strip()


@contextmanager
def boot_with(
    image: BuiltImage, tools: ToolsTree, work: Path, disk: Path, user_data: bytes, key: SshKey
) -> Iterator[Node]:
    """Boot the shared disk with `user_data` as the hostbuild.nodeconfig credential."""
    work.mkdir()
    config = VmConfig(image=image.raw, credentials={"hostbuild.nodeconfig": user_data},
                      serial_log=work / "serial.log", disk=disk)  # fmt: skip
    with boot_vm(config, tools, work) as vm:
        vm.wait_for_ssh(BOOT_TIMEOUT)
        node = Node(vm, ssh_config(work / "ssh_config", vm.ssh_port, key))
        node.wait_for("systemctl is-system-running --wait; systemctl is-active multi-user.target")
        yield node
        vm.poweroff()


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("disk") / "node.qcow2"


def test_full_nodeconfig_configures_the_node(
    image: BuiltImage, key: SshKey, tools_tree: ToolsTree, disk: Path, tmp_path: Path
) -> None:
    user_data = yaml.safe_dump(nodeconfig(key)).encode()
    with boot_with(image, tools_tree, tmp_path / "vm", disk, user_data, key) as node:
        status = json.loads(node.sh("hostbuild-node status --json"))
        assert (status["ok"], status["source"], status["kubelet"]) == (
            True, "credential", "configured",
        )  # fmt: skip
        assert node.sh("hostname").strip() == "worker-1"
        # kubelet started from the rendered configuration: its flags and its config file
        node.wait_for("systemctl is-active kubelet.service")
        args = node.sh("cat /run/kubelet-standin/args").splitlines()
        assert "--config=/run/hostbuild/kubelet/config.yaml" in args
        assert "--bootstrap-kubeconfig=/run/hostbuild/kubelet/bootstrap-kubeconfig" in args
        assert "--kubeconfig=/var/lib/kubelet/kubeconfig" in args
        assert "--node-labels=example.com/team=storage,node.kubernetes.io/pool=general" in args
        assert {"--hostname-override=worker-1", "--node-ip=10.0.0.21", "--v=2"} <= set(args)
        config = yaml.safe_load(node.sh("cat /run/hostbuild/kubelet/config.yaml"))
        assert config["maxPods"] == 58 and config["cgroupDriver"] == "systemd"
        assert config["registerWithTaints"] == [
            {"key": "example.com/dedicated", "value": "storage", "effect": "NoSchedule"}
        ]
        assert config["providerID"] == "metal:///rack-4/worker-1"
        # the CIS Kubernetes Benchmark's worker node checks on the node's own files and kubelet's
        # arguments (4.2.7, --hostname-override, is the documented exception: the config names
        # the node)
        results = cis.evaluate(cis.load_checks(), cis.HostNode(node.host, args))
        assert not cis.unexpected(results), cis.report(results)
        assert "token: abcdef.0123456789abcdef" in node.sh(
            "cat /run/hostbuild/kubelet/bootstrap-kubeconfig"
        )
        # containerd: registry mirror configuration and the sandbox image in effect
        hosts = node.sh("cat /run/hostbuild/containerd/certs.d/registry.example.com/hosts.toml")
        assert 'host."https://mirror.example.net:5000"' in hosts
        assert "registry.example.com/pause:3.10.1" in node.sh(
            "containerd config dump | grep sandbox_image"
        )
        # containerd started beside the agent: the agent restarted it for the sandbox drop-in
        assert running_sandbox_image(node) == "registry.example.com/pause:3.10.1"
        assert json.loads(node.sh("cat /run/hostbuild/node-status.json"))["restarted"] == [
            "containerd.service"
        ]
        # SSH works with the NodeConfig's key (no credential carried one), and the health gate
        # counted kubelet's healthz (the stand-in answers it)
        assert node.sh("cat /run/hostbuild/ssh/authorized_keys.root").strip() == key.public.strip()
        node.wait_for("systemctl is-active boot-complete.target")
        assert node.host.service("serial-getty@ttyS0").is_running  # admin.serialConsole: true
        health = json.loads(node.sh("cat /run/hostbuild/health.json"))
        assert health == {"healthy": True, "checks": {"containerd": None, "kubelet": None,
                                                      "probes": None}}  # fmt: skip


def test_changed_nodeconfig_applies_and_leaves_nothing_stale(
    image: BuiltImage, key: SshKey, tools_tree: ToolsTree, disk: Path, tmp_path: Path
) -> None:
    changed = nodeconfig(
        key, node={"name": "worker-2", "labels": {"tier": "batch"}, "taints": []},
        admin={"serialConsole": False},
    )  # fmt: skip
    del changed["spec"]["containerd"]
    user_data = yaml.safe_dump(changed).encode()
    with boot_with(image, tools_tree, tmp_path / "vm", disk, user_data, key) as node:
        assert node.sh("hostname").strip() == "worker-2"
        node.wait_for("systemctl is-active kubelet.service")
        args = node.sh("cat /run/kubelet-standin/args").splitlines()
        assert "--node-labels=tier=batch" in args and "--hostname-override=worker-2" in args
        config = yaml.safe_load(node.sh("cat /run/hostbuild/kubelet/config.yaml"))
        assert "registerWithTaints" not in config
        assert node.host.run("ls /run/hostbuild/containerd/certs.d").stdout.strip() == ""
        assert not node.host.service("serial-getty@ttyS0").is_running
        assert "registry.example.com/pause" not in node.sh(
            "containerd config dump | grep sandbox_image"
        )
        assert running_sandbox_image(node) == "registry.k8s.io/pause:3.10.1"
        # the data partition kept what the first boot wrote
        assert node.host.file("/var/lib/hostbuild/machine-id").exists


def test_invalid_nodeconfig_keeps_the_node_up_and_says_why(
    image: BuiltImage, key: SshKey, tools_tree: ToolsTree, disk: Path, tmp_path: Path
) -> None:
    bad = nodeconfig(key)
    bad["spec"]["cluster"]["apiServer"] = "http://10.0.0.10:6443"
    work = tmp_path / "vm"
    work.mkdir()
    credentials = {
        "hostbuild.nodeconfig": yaml.safe_dump(bad).encode(),
        # an invalid NodeConfig grants no access: the operator's way in is the credential's key
        "ssh.authorized_keys.root": key.public.encode(),
    }
    config = VmConfig(image=image.raw, credentials=credentials, serial_log=work / "serial.log",
                      disk=disk)  # fmt: skip
    with boot_vm(config, tools_tree, work) as vm:
        vm.wait_for_serial(r"hostbuild-node: node configuration .* NOT applied", BOOT_TIMEOUT)
        vm.wait_for_serial(r"spec\.cluster\.apiServer: must be an https:// URL", 5)
        vm.wait_for_ssh(BOOT_TIMEOUT)
        node = Node(vm, ssh_config(work / "ssh_config", vm.ssh_port, key))
        node.wait_for("systemctl is-system-running --wait; systemctl is-active multi-user.target")
        result = node.host.run("hostbuild-node status")
        assert result.rc == 1 and "spec.cluster.apiServer" in result.stdout + result.stderr
        assert node.host.service("containerd").is_running
        assert not node.host.service("kubelet").is_running
        assert not node.host.file("/run/hostbuild/kubelet/config.yaml").exists
        assert "NOT applied" in node.sh("journalctl -b -u hostbuild-node --no-pager")
        vm.poweroff()
