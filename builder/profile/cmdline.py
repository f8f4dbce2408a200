"""What a profile may add to the UKI's kernel command line: parameters the boot chain leaves alone.

The command line starts with what binds the UKI to its slot (`disk/uki.py` `kernel_cmdline`);
the profile's `kernel.cmdline` follows. A parameter that would replace or switch off the verified
root, run something else as init, skip the default target, configure the initrd or take over
what a NodeConfig or another profile key sets is refused, naming the key to use instead where
there is one (as `kubelet.extra_args` does for the flags hostbuild manages).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from builder.disk.uki import kernel_cmdline

# the kernel keeps at most COMMAND_LINE_SIZE - 1 bytes (2048 on x86-64 and arm64) and drops the
# rest without a word: what hostbuild puts first must fit with the profile's parameters
COMMAND_LINE_SIZE = 2048
HOSTBUILD_PART = len(kernel_cmdline("0" * 64, ()))
ONE_PARAMETER = re.compile(r"^[^\s\"']+\Z")


@dataclass(frozen=True)
class Rule:
    """Parameters (by name, or name prefix) the boot chain owns, why, and what to use instead."""

    why: str
    names: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    instead: str | None = None  # may name {rest}: what follows the prefix
    allowed_prefixes: tuple[str, ...] = ()  # exceptions to `prefixes`


# fmt: off
RULES = (
    Rule(
        "the UKI mounts its own slot's root read-only through dm-verity",
        names=("root", "rootfstype", "rootflags", "ro", "rw", "roothash", "usrhash", "mount.usr",
               "mount.usrfstype", "mount.usrflags", "systemd.verity", "systemd.gpt_auto",
               "systemd.image_policy", "systemd.volatile", "systemd.mount_extra",
               "dm_mod.create", "initrd", "noinitrd"),
        prefixes=("systemd.verity_",),
    ),
    Rule(
        "boot counting and the health gate need systemd as init, booting its default target",
        names=("init", "rdinit", "systemd.unit", "systemd.mask", "systemd.wants", "systemd.run",
               "systemd.run_success_action", "systemd.run_failure_action",
               "systemd.debug_shell", "systemd.crash_shell", "systemd.break",
               "systemd.confirm_spawn", "emergency", "rescue", "single", "s", "S", "-s", "-b",
               "1", "2", "3", "4", "5", "noefi"),
    ),
    Rule("the UKI's command line sets it",
         names=("systemd.firstboot", "systemd.default_device_timeout_sec")),
    Rule(
        "the initrd is part of the verified boot chain and hostbuild configures it (an "
        "emergency there reboots)",
        names=("rd.break", "rd.shell", "rd.emergency", "rd.fstab"),
        prefixes=("rd.systemd.",),
        allowed_prefixes=("rd.systemd.log_", "rd.systemd.show_status"),
    ),
    Rule("the node agent renders it", names=("systemd.hostname",),
         instead="set the NodeConfig's spec.node.name instead"),
    Rule("hostbuild keeps the machine ID on /var", names=("systemd.machine_id",)),
    Rule(
        "a node's credentials come from the platform at boot, never from the image",
        names=("systemd.set_credential", "systemd.set_credential_binary",
               "systemd.import_credentials"),
        instead="pass them at boot instead (QEMU: -smbios type=11, see README 'Node "
                "configuration')",
    ),
    Rule("the profile has a key for it", prefixes=("sysctl.",),
         instead="set sysctls[{rest!r}] instead"),
    Rule("the profile has a key for it", names=("modules_load", "rd.modules_load"),
         instead="set kernel.modules instead"),
)
# fmt: on


def _normal(name: str) -> str:
    """Parameter names as the kernel and systemd compare them: '-' and '_' are the same."""
    return name.replace("-", "_")


_BY_NAME = {_normal(name): rule for rule in RULES for name in rule.names}


def managed(name: str) -> tuple[Rule, str] | None:
    """The rule that owns the parameter `name`, and what follows its prefix (if by prefix)."""
    key = _normal(name)
    if key in _BY_NAME:
        return _BY_NAME[key], ""
    for rule in RULES:
        for prefix in map(_normal, rule.prefixes):
            if key.startswith(prefix) and not key.startswith(
                tuple(map(_normal, rule.allowed_prefixes))
            ):
                return rule, name[len(prefix) :]
    return None


def check_cmdline(args: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """Every parameter of `kernel.cmdline` the UKI's command line may not take, and why."""
    for i, arg in enumerate(args):
        path = f"kernel.cmdline[{i}]"
        if not ONE_PARAMETER.match(arg):
            yield (
                path,
                f"{arg!r} is not one parameter: the items are joined with spaces, so each is "
                "one 'name' or 'name=value' without whitespace or quotes",
            )
            continue
        name, _, value = arg.partition("=")
        if found := managed(name):
            rule, rest = found
            instead = f"; {rule.instead.format(rest=rest)}" if rule.instead else ""
            yield path, f"{arg!r}: {name!r} is managed by hostbuild: {rule.why}{instead}"
        elif name == "panic" and value.strip() in ("0", ""):
            yield (
                path,
                f"{arg!r} would leave a node hung after a panic (a dm-verity corruption) instead "
                "of rebooting into the previous entry; allowed: seconds > 0, or < 0 for at once",
            )
        elif name == "efi" and "noruntime" in value.split(","):
            yield path, f"{arg!r} hides the EFI variables boot counting needs (systemd-bless-boot)"
    total = HOSTBUILD_PART + sum(1 + len(arg) for arg in args)
    if total >= COMMAND_LINE_SIZE:
        yield (
            "kernel.cmdline",
            f"the UKI's command line would be {total} bytes; the kernel keeps at most "
            f"{COMMAND_LINE_SIZE - 1} (of which hostbuild's parameters take {HOSTBUILD_PART})",
        )
