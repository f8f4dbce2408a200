"""The image side of TPM2 measured boot: the initrd gets systemd's PCR phase module and every
TSS2 library systemd-pcrextend loads, and the boot element installs the packages holding them.

Checked against the tools tree, which carries the same trixie systemd and libtss2 packages."""

from __future__ import annotations

import re

import pytest
import yaml

from builder.build.toolstree import ToolsTree
from tests.conftest import REPO
from tests.secureboot import find_tools_tree

TREE = find_tools_tree()
BOOT = REPO / "elements" / "hostbuild-boot"
INITRD_SCRIPT = BOOT / "post-install.d" / "60-hostbuild-initrd"
DRACUT_CONF = REPO / "builder" / "build" / "templates" / "dracut.conf"
LIBDIR = "/usr/lib/x86_64-linux-gnu"
needs_tree = pytest.mark.skipif(TREE is None, reason="no complete tools tree in the cache")


def initrd_libraries() -> list[str]:
    """The TPM libraries 60-hostbuild-initrd hands dracut (--install)."""
    found = re.search(r"^for lib in (.+); do$", INITRD_SCRIPT.read_text(), re.MULTILINE)
    assert found, f"{INITRD_SCRIPT}: no `for lib in ...` list"
    return found.group(1).split()


def dracut_modules() -> set[str]:
    text = DRACUT_CONF.read_text()
    return {
        m for line in re.findall(r'^add_dracutmodules\+="(.*)"$', text, re.M) for m in line.split()
    }


def test_initrd_has_the_pcr_phase_module_and_not_the_tpm2_tools() -> None:
    modules = dracut_modules()
    assert "systemd-pcrphase" in modules
    # tpm2-tss needs the tpm2 command line tools, which the image does not carry
    assert "tpm2-tss" not in modules


@pytest.fixture
def tools() -> ToolsTree:
    assert TREE is not None
    return TREE


def dlopened(tools: ToolsTree) -> set[str]:
    """The TSS2 sonames libsystemd-shared declares it dlopens (its ELF .note.dlopen)."""
    shared = next(tools.path(LIBDIR).glob("systemd/libsystemd-shared-*.so"))
    found = re.findall(rb'"soname":\["(libtss2-[^"]+)"\]', shared.read_bytes())
    return {name.decode() for name in found}


@needs_tree
def test_initrd_gets_what_systemd_dlopens_and_what_that_links(tools: ToolsTree) -> None:
    libs = initrd_libraries()
    assert dlopened(tools) == {"libtss2-esys.so.0", "libtss2-mu.so.0", "libtss2-rc.so.0"}
    assert dlopened(tools) <= set(libs)
    # the transport tpm2_context_new loads for its default device:/dev/tpmrm0
    assert "libtss2-tcti-device.so.0" in libs
    for lib in libs:
        out = tools.run(["ldd", f"{LIBDIR}/{lib}"]).stdout
        linked = set(re.findall(r"^\s*(libtss2-\S+)", out, re.MULTILINE))
        assert linked <= set(libs), f"{lib} links {linked - set(libs)}, not in the initrd"


def owner(tools: ToolsTree, path: str) -> str:
    """The package whose file list holds `path` (a library's symlink)."""
    for listing in tools.path("/var/lib/dpkg/info").glob("*.list"):
        if path in listing.read_text().split("\n"):
            return listing.name.removesuffix(".list").split(":")[0]
    raise AssertionError(f"no package of the tools tree ships {path}")


def depends(tools: ToolsTree, package: str) -> set[str]:
    status = tools.path("/var/lib/dpkg/status").read_text()
    stanza = next(s for s in status.split("\n\n") if f"Package: {package}\n" in s + "\n")
    line = next((x for x in stanza.splitlines() if x.startswith("Depends: ")), "Depends: ")
    return {d.strip().split()[0] for d in line.removeprefix("Depends: ").split(",") if d.strip()}


@needs_tree
def test_the_boot_element_installs_the_packages_of_the_initrd_libraries(tools: ToolsTree) -> None:
    listed = set(yaml.safe_load((BOOT / "package-installs.yaml").read_text()))
    installed = listed | {d for p in listed if p.startswith("libtss2") for d in depends(tools, p)}
    for lib in initrd_libraries():
        package = owner(tools, f"{LIBDIR}/{lib}")
        assert package in installed, f"{lib} is in {package}, which hostbuild-boot does not pull"
    # every library systemd dlopens is installed by name (not only as someone's dependency)
    for soname in dlopened(tools):
        assert owner(tools, f"{LIBDIR}/{soname}") in listed
