"""The tools tree: host detection, cache key, bwrap command lines, atomic builds (faked tools)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.build import toolstree
from builder.build.toolstree import (
    OVMF_VARS,
    PACKAGES,
    ToolsTree,
    ensure_tools_tree,
    host_is_new_enough,
    mmdebstrap_argv,
    tree_key,
)
from builder.errors import CommandError, HostbuildError

MIRROR = "http://mirror.invalid/debian"


@pytest.mark.parametrize(
    ("os_release", "expected"),
    [
        ('ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n', False),
        ('ID=debian\nVERSION_ID="13"\nVERSION_CODENAME=trixie\n', True),
        ("ID=debian\nVERSION_ID=14\n", True),
        ('ID=ubuntu\nVERSION_ID="24.04"\n', False),
        ("ID=debian\nVERSION_CODENAME=forky\n", False),  # testing has no VERSION_ID
        ("", False),
    ],
)
def test_host_is_new_enough(tmp_path: Path, os_release: str, expected: bool) -> None:
    path = tmp_path / "os-release"
    path.write_text(os_release)
    assert host_is_new_enough(path) is expected


def test_host_is_new_enough_without_os_release(tmp_path: Path) -> None:
    assert host_is_new_enough(tmp_path / "missing") is False


def test_tree_key_ignores_package_order_and_tracks_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    key = tree_key(["b", "a"], MIRROR)
    assert key == tree_key(["a", "b"], MIRROR)
    assert len(key) == 12
    assert key != tree_key(["a", "b"], MIRROR + "/")
    assert key != tree_key(["a", "b", "c"], MIRROR)
    monkeypatch.setattr(toolstree, "TOOLS_TREE_VERSION", "next")
    assert key != tree_key(["a", "b"], MIRROR)


def test_mmdebstrap_argv(tmp_path: Path) -> None:
    argv = mmdebstrap_argv(tmp_path / "tree", MIRROR, ["zstd", "ovmf"])
    assert argv[:3] == ["mmdebstrap", "--variant=minbase", "--include=ovmf,zstd"]
    assert '--aptopt=APT::Install-Recommends "false"' in argv
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in argv
    assert argv[-3:] == ["trixie", os.fspath(tmp_path / "tree"), MIRROR]


def test_host_tree_runs_argv_unchanged() -> None:
    host = ToolsTree(Path("/"))
    assert host.is_host
    assert host.argv(["qemu-img", Path("/x")], [Path("/nonexistent")]) == ["qemu-img", "/x"]
    assert host.path(OVMF_VARS) == Path(OVMF_VARS)


def test_tree_argv_binds_paths_at_the_same_place(tmp_path: Path) -> None:
    tree = ToolsTree(tmp_path / "tree")
    work = tmp_path / "work"
    (work / "nested").mkdir(parents=True)
    image = tmp_path / "disk.raw"
    image.touch()
    argv = tree.argv(["qemu-img", "info", image], [work / "nested", work], readonly=[image])
    root = os.fspath(tmp_path / "tree")
    assert argv[:2] == ["bwrap", "--die-with-parent"]
    assert argv[2:8] == ["--ro-bind", f"{root}/usr", "/usr", "--ro-bind", f"{root}/etc", "/etc"]
    joined = " ".join(argv)
    assert "--dev-bind /dev /dev --proc /proc" in joined
    assert "--tmpfs /tmp" in joined
    assert "--ro-bind-try /etc/resolv.conf /etc/resolv.conf" in joined
    binds = argv[argv.index("--ro-bind-try") + 3 : argv.index("--")]
    # parents before children, so the nested bind is not hidden by its parent
    assert binds == [
        "--ro-bind", os.fspath(image), os.fspath(image),
        "--bind", os.fspath(work), os.fspath(work),
        "--bind", os.fspath(work / "nested"), os.fspath(work / "nested"),
    ]  # fmt: skip
    assert argv[argv.index("--") + 1 :] == ["qemu-img", "info", os.fspath(image)]


def test_tree_argv_read_only_wins_and_chdir(tmp_path: Path) -> None:
    tree = ToolsTree(tmp_path / "tree")
    argv = tree.argv(["true"], [tmp_path], readonly=[tmp_path], cwd=tmp_path)
    assert argv.count(os.fspath(tmp_path)) == 3  # one --ro-bind pair and --chdir
    assert "--bind" not in argv[argv.index("--ro-bind-try") + 3 :]
    assert argv[argv.index("--chdir") + 1] == os.fspath(tmp_path)


@pytest.mark.parametrize("path", ["/", "/usr/share", "/etc", "/dev/kvm"])
def test_tree_argv_refuses_to_hide_the_tree(tmp_path: Path, path: str) -> None:
    with pytest.raises(HostbuildError, match="cannot bind .* it would hide"):
        ToolsTree(tmp_path).argv(["true"], [Path(path)])


def test_tree_argv_refuses_missing_binds(tmp_path: Path) -> None:
    with pytest.raises(HostbuildError, match="does not exist"):
        ToolsTree(tmp_path).argv(["true"], [tmp_path / "missing"])


def test_tree_path_is_a_host_path(tmp_path: Path) -> None:
    tree = ToolsTree(tmp_path)
    assert tree.path(OVMF_VARS) == tmp_path / "usr/share/OVMF/OVMF_VARS_4M.fd"
    with pytest.raises(ValueError, match="absolute"):
        tree.path("usr/bin/qemu-img")


def test_missing_lists_packages_without_their_marker(tmp_path: Path) -> None:
    tree = ToolsTree(tmp_path)
    assert tree.missing() == list(PACKAGES)
    _populate(tmp_path)
    assert tree.missing() == []


def _populate(root: Path) -> None:
    for marker in PACKAGES.values():
        path = root / marker.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


# A fake mmdebstrap: records its argv, creates every package's marker file in the target
# (second-to-last argument), and fails after a partial write when FAKE_FAIL is set.
FAKE_MMDEBSTRAP = """#!/bin/sh
echo "$@" >> "{log}"
eval "target=\\${{$(($# - 1))}}"
mkdir -p "$target/usr/bin"
if [ -e "{fail}" ]; then echo "E: fake failure" >&2; exit 1; fi
for m in {markers}; do mkdir -p "$target$(dirname $m)"; touch "$target$m"; done
"""


@pytest.fixture
def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """mmdebstrap and bwrap on PATH; the host counts as older than trixie."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = FAKE_MMDEBSTRAP.format(
        log=tmp_path / "mmdebstrap.log",
        fail=tmp_path / "fail",
        markers=" ".join(PACKAGES.values()),
    )
    (bin_dir / "mmdebstrap").write_text(script)
    (bin_dir / "bwrap").write_text("#!/bin/sh\nexit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(toolstree, "host_is_new_enough", lambda: False)
    return tmp_path


def test_ensure_tools_tree_builds_once(fake_tools: Path) -> None:
    cache = fake_tools / "cache"
    tree = ensure_tools_tree(cache, MIRROR)
    assert tree.root == cache / "tools" / f"trixie-{tree_key(list(PACKAGES), MIRROR)}"
    assert tree.missing() == []
    assert ensure_tools_tree(cache, MIRROR) == tree
    calls = (fake_tools / "mmdebstrap.log").read_text().splitlines()
    assert len(calls) == 1, "the second call reuses the cached tree"
    assert calls[0].endswith(
        f"trixie {tree.root.with_name('.' + tree.root.name + '.tmp')} {MIRROR}"
    )
    assert sorted(p.name for p in tree.root.parent.iterdir() if not p.name.endswith(".lock")) == [
        tree.root.name
    ]


def test_failed_build_leaves_nothing(fake_tools: Path) -> None:
    (fake_tools / "fail").touch()
    cache = fake_tools / "cache"
    with pytest.raises(CommandError, match="exit code 1"):
        ensure_tools_tree(cache, MIRROR)
    leftovers = [p.name for p in (cache / "tools").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_incomplete_tree_is_not_kept(fake_tools: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(toolstree, "PACKAGES", {**PACKAGES, "absent": "/usr/bin/absent"})
    cache = fake_tools / "cache"
    with pytest.raises(HostbuildError, match="lacks: absent"):
        ensure_tools_tree(cache, MIRROR)
    leftovers = [p.name for p in (cache / "tools").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_missing_bwrap_is_explained(fake_tools: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (fake_tools / "bin" / "bwrap").unlink()
    monkeypatch.setenv("PATH", os.fspath(fake_tools / "bin"))  # hide the host's bwrap
    with pytest.raises(HostbuildError) as info:
        ensure_tools_tree(fake_tools / "cache", MIRROR)
    assert info.value.hint == "apt-get install -y bubblewrap"


def test_new_host_uses_its_own_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(toolstree, "host_is_new_enough", lambda: True)
    monkeypatch.setattr(toolstree, "PACKAGES", {"ovmf": "/"})
    assert ensure_tools_tree(Path("/nonexistent"), MIRROR) == ToolsTree(Path("/"))
    monkeypatch.setattr(toolstree, "PACKAGES", {"qemu-utils": "/nonexistent/qemu-img"})
    with pytest.raises(HostbuildError) as info:
        ensure_tools_tree(Path("/nonexistent"), MIRROR)
    assert info.value.hint == "apt-get install -y --no-install-recommends qemu-utils"
