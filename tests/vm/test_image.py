"""Boot the stand-in worker image under QEMU and check it with testinfra over SSH.

The tests with VMs of their own run first. Then one VM is shared by the read-only checks, and
the reboot and boot-counting checks run last on the same VM: a node as a fleet runs it, with
Secure Boot on (OVMF's Secure Boot firmware, the session's PK, KEK and db enrolled; the session's
image is signed with them) and a TPM (swtpm). There, too, three newer UKIs with one try each (no
signature, another fleet's db, the image's own with one byte of its command line changed) are
refused by the firmware and boot counting falls back to the good entry in one reboot.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from builder.build.toolstree import ToolsTree
from builder.keys.secureboot import build_certificates
from builder.run import run
from builder.vm.qemu import VmConfig, boot_vm
from builder.vm.swtpm import SoftwareTpm
from builder.vm.vmtest import run_smoke
from tests.measured import check_booted_node, uki_pcrsig
from tests.secureboot import make_keyset
from tests.vm.image import (
    BuiltImage,
    Node,
    SshKey,
    booted,
    build_uki_variant,
    ssh_config,
    tampered_copy,
)
from tests.vm.oci import IMAGE_NAME, build_oci_archive
from tests.vm.secure import (
    EFI_GLOBAL,
    EFI_IMAGE_SECURITY,
    altered,
    efivar,
    enrolled_store,
    signed,
    signed_uki,
)

pytestmark = pytest.mark.vm

BUSYBOX = Path("/bin/busybox")


@pytest.fixture(scope="module")
def node(
    image: BuiltImage, key: SshKey, tools_tree: ToolsTree, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    """The shared VM: Secure Boot with the session's keys, and a software TPM."""
    work = tmp_path_factory.mktemp("vm")
    store = enrolled_store(image, tools_tree, work / "secure-boot-vars.fd")
    with booted(image.raw, tools_tree, work, key, secure_boot_vars=store, tpm=SoftwareTpm()) as vm:
        yield Node(vm, ssh_config(work / "ssh_config", vm.ssh_port, key))


# Own VMs first, so the shared VM is not left idling beside them


def test_no_ssh_without_a_key(image: BuiltImage, tools_tree: ToolsTree, tmp_path: Path) -> None:
    with booted(image.raw, tools_tree, tmp_path, key=None) as vm:
        vm.wait_for_serial(r"hostbuild-health: healthy", 300)
        time.sleep(5)
        with pytest.raises(Exception):  # noqa: B017 -- any failure to get a banner is the point
            vm.wait_for_ssh(5)


@pytest.mark.destructive
def test_tampered_root_is_never_run(
    image: BuiltImage, tools_tree: ToolsTree, tmp_path: Path
) -> None:
    """Flipped bytes in slot A: dm-verity refuses the block and the node never comes up."""
    copy = tampered_copy(image, tmp_path)
    config = VmConfig(image=copy, want_reboot=False, serial_log=tmp_path / "serial.log")
    with boot_vm(config, tools_tree, tmp_path / "vm") as vm:
        vm.wait_for_serial(r"verity.*(corrupt|mismatch)|Kernel panic", 300)
        end = time.monotonic() + 120
        while vm.exit_code() is None and time.monotonic() < end:
            time.sleep(2)
        text = vm.serial_text()
    assert "hostbuild-health:" not in text and "login:" not in text


def test_smoke_mode_powers_off_with_a_verdict(
    image: BuiltImage, tools_tree: ToolsTree, tmp_path: Path
) -> None:
    result = run_smoke(image.raw, tools_tree, tmp_path)
    assert result.verdicts == ["PASS"], result.serial_log


def test_boot_completes_and_the_entry_is_blessed(node: Node, image: BuiltImage) -> None:
    node.wait_for("systemctl is-active boot-complete.target")
    node.wait_for("systemctl is-active systemd-bless-boot.service")
    esp = node.sh("bootctl --print-esp-path").strip()
    entries = node.sh(f"ls {esp}/EFI/Linux").split()
    assert entries == [image.manifest["uki"]["file"].replace("+3", "")]  # counter removed
    assert "hostbuild" in node.sh("bootctl status --no-pager")


def test_disk_layout_v2(node: Node, image: BuiltImage) -> None:
    columns = "NAME,PARTUUID,PARTTYPE,PARTLABEL,START,SIZE"
    table = json.loads(node.sh(f"lsblk --json --bytes -o {columns} /dev/vda"))
    parts = table["blockdevices"][0]["children"]
    expected = image.manifest["layout"]["partitions"]
    for got, want in zip(parts, expected, strict=False):
        assert got["partuuid"] == want["partuuid"]
        assert got["parttype"] == want["type_guid"]
        assert got["partlabel"] == want["label"]
    var = parts[len(expected)]
    assert var["partlabel"] == "var" and var["parttype"] == "4d21b016-b534-45c2-a9fb-5c16e091fd2d"
    disk_bytes = int(node.sh("blockdev --getsize64 /dev/vda"))
    assert var["start"] * 512 + var["size"] >= disk_bytes - 2 * 2**20  # /var fills the disk
    esp = node.sh("bootctl --print-esp-path").strip()
    assert node.sh(f"cat {esp}/loader/hostbuild-layout") == "layout 2\n"
    # the slot was found by its root hash alone: the UUIDs are its halves (DPS)
    roothash = image.manifest["roothash"]
    assert str(uuid.UUID(hex=roothash[:32])) == parts[1]["partuuid"]
    assert str(uuid.UUID(hex=roothash[32:])) == parts[2]["partuuid"]
    cmdline = node.sh("cat /proc/cmdline")
    assert f"roothash={roothash}" in cmdline and "partuuid" not in cmdline


def test_root_is_dm_verity_and_read_only(node: Node, image: BuiltImage) -> None:
    source, fstype, options = node.sh("findmnt -no SOURCE,FSTYPE,OPTIONS /").split()
    assert (source, fstype) == ("/dev/mapper/root", "erofs")
    assert "ro" in options.split(",")
    status = node.sh("veritysetup status root")
    assert "type:        VERITY" in status and "status:      verified" in status
    assert image.manifest["roothash"] in node.sh("cat /proc/cmdline")
    for path in ("/hostbuild-test", "/usr/hostbuild-test", "/etc/hostbuild-test"):
        result = node.host.run(f"touch {path}")
        assert result.rc != 0 and "Read-only file system" in result.stderr


def test_var_is_the_persistent_data_partition(node: Node) -> None:
    source, fstype = node.sh("findmnt -no SOURCE,FSTYPE /var").split()
    assert fstype == "ext4" and node.sh(f"lsblk -no PARTLABEL {source}").strip() == "var"
    machine_id = node.sh("cat /etc/machine-id").strip()
    assert machine_id == node.sh("cat /var/lib/hostbuild/machine-id").strip()
    assert node.host.file(f"/var/log/journal/{machine_id}").is_directory


def test_containerd_runs_a_container(node: Node, tmp_path: Path) -> None:
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed on the host (bash .ci/setup installs it)")
    archive = build_oci_archive(BUSYBOX, tmp_path / "busybox-oci.tar")
    run(["scp", "-F", node.config, "-q", archive, "vm:/var/tmp/busybox-oci.tar"])
    node.sh("ctr image import /var/tmp/busybox-oci.tar")
    out = node.sh(
        f"ctr run --rm {IMAGE_NAME} hostbuild-test /bin/busybox echo hello from a container"
    )
    assert out.strip() == "hello from a container"


def test_pinned_components(node: Node, image: BuiltImage) -> None:
    pins = image.manifest["debian"]["pinned"]
    for package, version in pins.items():
        assert node.sh(f"dpkg-query -W -f '${{Version}}' {package}") == version
    kubelet = image.manifest["components"]["kubelet"]
    assert node.sh("sha256sum /usr/bin/kubelet").split()[0] == kubelet["sha256"]
    assert node.host.file("/usr/sbin/runc").is_file
    assert node.host.file("/usr/lib/cni/bridge").is_file


def test_kubelet_waits_for_cluster_configuration(node: Node) -> None:
    assert node.host.service("kubelet").is_enabled
    assert node.sh("systemctl show kubelet -p ConditionResult --value").strip() == "no"
    config = node.sh("cat /etc/kubernetes/kubelet/config.yaml")
    assert "maxPods: 110" in config and "serializeImagePulls: false" in config
    assert node.host.service("containerd").is_running


def test_modules_and_sysctls_in_effect(node: Node) -> None:
    modules = node.sh("lsmod")
    assert "br_netfilter" in modules and "overlay" in modules
    assert node.sh("sysctl -n net.ipv4.ip_forward").strip() == "1"
    assert node.sh("sysctl -n net.bridge.bridge-nf-call-iptables").strip() == "1"


def test_nothing_waits_for_the_network(node: Node) -> None:
    assert not node.host.service("systemd-networkd-wait-online").is_enabled
    assert node.host.run("systemctl is-active network-online.target").stdout.strip() != "active"


def test_health_gate_passed(node: Node) -> None:
    assert (
        node.host.service("hostbuild-health").is_running
        or node.sh("systemctl is-active hostbuild-health").strip() == "active"
    )
    health = json.loads(node.sh("cat /run/hostbuild/health.json"))
    assert health["healthy"] is True
    assert health["checks"]["containerd"] is None


def test_secure_boot_is_on_with_the_fleet_keys(node: Node, image: BuiltImage) -> None:
    assert re.search(r"Secure Boot: enabled \(user\)", node.sh("bootctl status --no-pager"))
    assert efivar(node, f"SecureBoot-{EFI_GLOBAL}") == b"\x01"
    assert efivar(node, f"SetupMode-{EFI_GLOBAL}") == b"\x00"
    certificates = build_certificates(image.output, image.manifest)
    assert certificates is not None
    # the firmware's db holds the session's db certificate (DER, in an EFI signature list)
    db = x509.load_pem_x509_certificate(certificates.db.read_bytes())
    assert db.public_bytes(serialization.Encoding.DER) in efivar(node, f"db-{EFI_IMAGE_SECURITY}")
    report = json.loads(node.sh("hostbuild-node status --json"))
    assert report["secure_boot"]["state"] == "enabled", report["secure_boot"]


def test_pcr_11_is_what_the_build_predicted_and_signed(
    node: Node, image: BuiltImage, tmp_path: Path
) -> None:
    """The boot phases measured into PCR 11 (initrd and root), its value the manifest's
    prediction, and one of the UKI's signed policies is for that value (so a secret sealed to
    the build's PCR key unseals on this node, in this phase)."""
    node.wait_for("systemctl is-active systemd-pcrphase.service")
    value = check_booted_node(
        node.sh, image.output, uki_pcrsig(signed_uki(image, tmp_path / "uki.efi"))
    )
    report = json.loads(node.sh("hostbuild-node status --json"))
    assert report["tpm"]["pcrs"]["11"].lower() == value, report["tpm"]


def test_kernel_meets_kubernetes_node_requirements(node: Node) -> None:
    assert node.sh("stat -fc %T /sys/fs/cgroup").strip() == "cgroup2fs"
    controllers = node.sh("cat /sys/fs/cgroup/cgroup.controllers").split()
    assert {"cpu", "cpuset", "io", "memory", "pids"} <= set(controllers)
    config = node.sh("cat /usr/lib/modules/$(uname -r)/config")
    for option in (
        "CONFIG_NAMESPACES", "CONFIG_NET_NS", "CONFIG_PID_NS", "CONFIG_IPC_NS", "CONFIG_UTS_NS",
        "CONFIG_CGROUPS", "CONFIG_CGROUP_BPF", "CONFIG_CGROUP_PIDS", "CONFIG_MEMCG",
        "CONFIG_CPUSETS", "CONFIG_SECCOMP", "CONFIG_OVERLAY_FS", "CONFIG_BRIDGE_NETFILTER",
        "CONFIG_VETH", "CONFIG_NF_NAT", "CONFIG_NETFILTER_XT_MATCH_CONNTRACK",
        "CONFIG_IP_NF_IPTABLES", "CONFIG_NF_TABLES", "CONFIG_EROFS_FS", "CONFIG_DM_VERITY",
    ):  # fmt: skip
        assert f"\n{option}=y" in config or f"\n{option}=m" in config, option


def test_reboot_keeps_machine_id_and_journal(node: Node) -> None:
    machine_id = node.sh("cat /etc/machine-id").strip()
    node.sh("echo kept > /var/lib/hostbuild/persistence-check && sync")
    node.host.run("systemctl reboot")
    time.sleep(10)
    node.vm.wait_for_ssh(300)
    # the entry was blessed on the first boot: no boot counting, so no boot-complete.target now
    node.wait_for("systemctl is-active multi-user.target")
    assert node.sh("cat /etc/machine-id").strip() == machine_id
    assert node.sh("cat /var/lib/hostbuild/persistence-check") == "kept\n"
    boots = node.sh("journalctl --list-boots --no-pager -q").strip().splitlines()
    assert len(boots) >= 2


COUNTING = "/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"


def reboot_into_newer_entry(node: Node, uki: Path, name: str) -> Callable[[], list[str]]:
    """Install `uki` as the boot entry `name` with one try, once this boot is blessed (or did
    not count: its entry was blessed before); reboot.

    Returns what lists the ESP's entries of that version (e.g. ["9.9.9-1+0-1"]) after the reboot.
    """
    node.wait_for(f"test ! -e {COUNTING} || systemctl is-active systemd-bless-boot.service")
    linux = node.sh("bootctl --print-esp-path").strip() + "/EFI/Linux"
    run(["scp", "-F", node.config, "-q", uki, f"vm:{linux}/{name}+1.efi"])
    node.sh("sync")
    node.host.run("systemctl reboot")
    prefix = name.rsplit("_", 1)[0] + "_"
    return lambda: [
        e.removeprefix(prefix).removesuffix(".efi")
        for e in node.sh(f"ls {linux}").split()
        if e.startswith(name)
    ]


# The two fallbacks run on the shared VM, after its reboot (each leaves a bad entry behind,
# which no later boot of that VM picks)


def test_boot_counting_falls_back_when_the_health_gate_fails(
    node: Node, image: BuiltImage, tools_tree: ToolsTree, fleet_keys: Path, tmp_path: Path
) -> None:
    """A newer UKI (+1 try) whose boot fails the health gate: the previous entry boots again."""
    cmdline = image.manifest["kernel"]["cmdline"]
    # containerd never starts, so the gate fails at its (shortened) deadline and reboots
    bad_cmdline = f"{cmdline} systemd.mask=containerd.service hostbuild.health_deadline=20"
    bad = build_uki_variant(image, tools_tree, tmp_path, "9.9.9-1", bad_cmdline)
    signed(tools_tree, fleet_keys, bad)  # Secure Boot lets it start: it fails later
    entries = reboot_into_newer_entry(node, bad, f"{image.manifest['profile']}_9.9.9-1")
    node.vm.wait_for_serial(r"hostbuild-health: checking \(deadline 20 s\)", 300)
    node.vm.wait_for_serial(r"hostbuild-health: UNHEALTHY: containerd", 300)
    time.sleep(10)
    node.vm.wait_for_ssh(400)
    # the previous entry was blessed on the first boot: it boots without counting
    node.wait_for("systemctl is-active multi-user.target")
    assert entries() == ["9.9.9-1+0-1"]  # tried once, no tries left: bad
    assert "systemd.mask=containerd.service" not in node.sh("cat /proc/cmdline")
    assert node.host.service("containerd").is_running


def test_a_failing_initrd_reboots_and_falls_back(
    node: Node, image: BuiltImage, tools_tree: ToolsTree, fleet_keys: Path, tmp_path: Path
) -> None:
    """A newer UKI whose root partition never appears: a reboot (no shell), the old entry."""
    cmdline = image.manifest["kernel"]["cmdline"]
    bogus = "b0b0" * 16
    # no slot holds this root hash, so no partition has its UUIDs: the initrd waits for them
    # (10 s here), then gives up
    bad_cmdline = re.sub(r"roothash=\S+", f"roothash={bogus}", cmdline)
    bad = build_uki_variant(image, tools_tree, tmp_path, "9.9.9-2",
                            f"{bad_cmdline} rd.systemd.default_device_timeout_sec=10")  # fmt: skip
    signed(tools_tree, fleet_keys, bad)
    entries = reboot_into_newer_entry(node, bad, f"{image.manifest['profile']}_9.9.9-2")
    node.vm.wait_for_serial(r"hostbuild: the initrd failed", 300)
    time.sleep(10)
    node.vm.wait_for_ssh(400)
    node.wait_for("systemctl is-active multi-user.target")
    assert entries() == ["9.9.9-2+0-1"]  # tried once, no tries left: bad
    assert bogus not in node.sh("cat /proc/cmdline")


def test_unsigned_foreign_and_altered_ukis_are_refused_and_the_good_entry_boots(
    node: Node, image: BuiltImage, tools_tree: ToolsTree, tmp_path: Path
) -> None:
    """A newer entry with one try, one reboot each: systemd-boot takes it, the firmware refuses
    it (LoadImage: access denied) and systemd-boot returns; the firmware's second attempt of the
    power cycle (its platform recovery, the removable path again) finds it out of tries and
    boots the blessed entry. (Two attempts per power cycle is all OVMF gives: see the README.)"""
    profile, version = image.manifest["profile"], image.manifest["version"]
    cmdline = image.manifest["kernel"]["cmdline"]
    unsigned = build_uki_variant(image, tools_tree, tmp_path / "unsigned", "9.9.9-3", cmdline)
    other_fleet = make_keyset(tmp_path / "other-fleet", "another fleet")
    foreign = build_uki_variant(image, tools_tree, tmp_path / "foreign", "9.9.9-4", cmdline)
    signed(tools_tree, other_fleet, foreign)
    # the image's own signed UKI, one byte of its root hash changed: its version is the good
    # entry's, its file name sorts above it
    changed = altered(signed_uki(image, tmp_path / "signed.efi"), tmp_path / "altered.efi")
    linux = node.sh("bootctl --print-esp-path").strip() + "/EFI/Linux"
    for n, (bad_version, uki) in enumerate(
        (("9.9.9-3", unsigned), ("9.9.9-4", foreign), ("9.9.9-5", changed))
    ):
        if n == 0:  # the shared VM's last boot was a fallback that counted no try
            node.wait_for(f"test ! -e {COUNTING} || systemctl is-active systemd-bless-boot.service")
        before = sorted(node.sh(f"ls {linux}").split())
        name = f"{profile}_{bad_version}"
        run(["scp", "-F", node.config, "-q", uki, f"vm:{linux}/{name}+1.efi"])
        node.sh("sync")
        node.host.run("systemctl reboot")
        node.vm.wait_for_serial(
            rf"Error loading \\EFI\\Linux\\{name}\+0-1\.efi: Access denied", 400
        )
        time.sleep(10)
        node.vm.wait_for_ssh(400)
        node.wait_for("systemctl is-active multi-user.target")
        # this boot's LoaderBootCountPath still names the refused entry (the firmware ran
        # systemd-boot twice): the bless guard skips systemd-bless-boot, which must bless nothing
        node.wait_for(
            "systemctl show -P Result systemd-bless-boot.service | grep -qx exec-condition"
        )
        after = sorted(node.sh(f"ls {linux}").split())
        # tried once and refused (no tries left); the others as they were
        assert after == sorted([*before, f"{name}+0-1.efi"]), after
        assert f"IMAGE_VERSION={version}" in node.sh("cat /usr/lib/os-release")
