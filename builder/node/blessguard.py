"""Keep systemd-bless-boot from blessing an entry that did not boot.

systemd-boot counts a try by renaming the entry it picked and telling the OS which file it
renamed (LoaderBootCountPath); systemd-bless-boot marks that file good once the boot is. When the
firmware refuses the picked UKI (Secure Boot: LoadImage "Access denied"), systemd-boot returns
to the firmware, which starts systemd-boot once more in the same power cycle; that second run
boots another, uncounted entry and leaves LoaderBootCountPath, a volatile variable, naming the
refused one. Blessing it would make the refused UKI the entry every later boot picks first, and
the firmware refuses it at every boot: the node would never come up again.

`python3 -m hostbuild_node.blessguard` is systemd-bless-boot.service's ExecCondition: when the
counted entry is not the one booted (LoaderEntrySelected), it marks the counted entry bad
(`systemd-bless-boot bad`) and exits 1, so the unit is skipped and nothing is blessed; otherwise
it exits 0.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from .bootsecurity import read_efi_var
from .command import CommandFailed, run

LOADER = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"  # systemd-boot's vendor GUID
BLESS = "/usr/lib/systemd/systemd-bless-boot"
_COUNTER = re.compile(r"\+\d+(-\d+)?(?=\.(efi|conf)$)")


def loader_string(root: Path, name: str) -> str | None:
    """A systemd-boot string variable (UTF-16LE, NUL-terminated), or None when it is absent."""
    data = read_efi_var(root, name, LOADER)
    if data is None:
        return None
    return data.decode("utf-16-le", errors="replace").split("\0", 1)[0]


def entry_id(name: str) -> str:
    """An entry's id as systemd-boot reports it: the file name without its tries counter."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return _COUNTER.sub("", base).lower()


def counted_is_booted(root: Path) -> tuple[bool, str]:
    """Whether the entry whose try was counted is the one that booted, and why."""
    counted = loader_string(root, "LoaderBootCountPath")
    if counted is None:
        return True, "this boot counted no try"
    selected = loader_string(root, "LoaderEntrySelected")
    if selected is None:
        return True, f"{counted} was counted; the boot loader did not say what it booted"
    if entry_id(counted) == entry_id(selected):
        return True, f"{counted} was counted and booted"
    return False, f"{counted} was counted, but {selected} booted (the firmware refused the first)"


def main(argv: Sequence[str] = sys.argv[1:], root: Path = Path("/")) -> int:
    ok, why = counted_is_booted(root)
    if ok:
        return 0
    print(f"hostbuild-blessguard: {why}: marking it bad, blessing nothing")  # noqa: T201
    try:
        run([BLESS, "bad"])
    except CommandFailed as e:
        print(f"hostbuild-blessguard: {e}", file=sys.stderr)  # noqa: T201
    return 1


if __name__ == "__main__":
    sys.exit(main())
