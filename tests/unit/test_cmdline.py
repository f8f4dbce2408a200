"""What a profile may add to the UKI's kernel command line."""

from __future__ import annotations

import pytest

from builder.disk.uki import kernel_cmdline
from builder.profile.cmdline import COMMAND_LINE_SIZE, HOSTBUILD_PART, check_cmdline, managed
from builder.profile.load import load_profile


def test_every_parameter_hostbuild_sets_is_refused_in_profiles() -> None:
    ours = kernel_cmdline("c" * 64, ()).split()
    assert len(ours) >= 7  # the root, its hash and options, and how the initrd fails
    for arg in ours:
        assert managed(arg.partition("=")[0]) is not None, arg
        assert list(check_cmdline((arg,))), arg


@pytest.mark.parametrize(
    "arg",
    ["console=ttyS0,115200", "panic=10", "panic=-1", "quiet", "lsm=landlock,lockdown,yama",
     "rd.systemd.log_level=debug", "systemd.log_level=debug", "rd.systemd.show_status=1",
     "efi=debug", "systemd.unified_cgroup_hierarchy=1", "init_on_alloc=1", "rootdelay=5"],
)  # fmt: skip
def test_other_parameters_are_the_profiles(arg: str) -> None:
    assert list(check_cmdline((arg,))) == []


def test_dashes_and_underscores_are_the_same_name() -> None:
    assert managed("systemd.verity-root-hash") is not None
    assert managed("rd.systemd.default-device-timeout-sec") is not None
    assert managed("rd.systemd.log-level") is None


def test_the_whole_command_line_must_fit_the_kernels() -> None:
    room = COMMAND_LINE_SIZE - 1 - HOSTBUILD_PART
    assert list(check_cmdline(("x" * (room - 1),))) == []
    assert list(check_cmdline(("x" * room,))) == [
        (
            "kernel.cmdline",
            f"the UKI's command line would be {COMMAND_LINE_SIZE} bytes; the kernel keeps at "
            f"most {COMMAND_LINE_SIZE - 1} (of which hostbuild's parameters take {HOSTBUILD_PART})",
        )
    ]


def test_the_shipped_profiles_pass() -> None:
    assert load_profile("base").kernel.cmdline
    assert load_profile("worker").kernel.cmdline
