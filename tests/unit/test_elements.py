"""Rendering from the profile: golden files, KubeletConfiguration merging, element trees."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from builder.build.artifacts import Artifact, Fetched
from builder.build.elements import (
    ImageFile,
    binary_files,
    config_files,
    image_elements,
    kubelet_config,
    prepare_elements,
)
from builder.errors import HostbuildError
from builder.profile.load import load_profile
from tests.conftest import DATA, REPO

GOLDEN = DATA / "golden"
UPDATE = os.environ.get("HOSTBUILD_UPDATE_GOLDEN") == "1"
# the node package, installed verbatim from builder/node/
VERBATIM = {
    f"/usr/lib/hostbuild/hostbuild_node/{source.name}": source
    for source in (REPO / "builder" / "node").glob("*.py")
}


@pytest.mark.parametrize("name", ["worker", "base"])
def test_rendered_files_match_golden(name: str) -> None:
    rendered = {f.path: f for f in config_files(load_profile(name), build=1)}
    # installed verbatim from builder/node/: compared with its source, not a golden copy
    for path, source in VERBATIM.items():
        assert rendered.pop(path).content == source.read_bytes()
    root = GOLDEN / name
    if UPDATE:
        for f in rendered.values():
            target = root / f.path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.content)
    modes = "".join(f"{f.mode:04o} {path}\n" for path, f in sorted(rendered.items()))
    if UPDATE:
        (GOLDEN / f"{name}.modes").write_text(modes)
    golden = {"/" + os.fspath(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert set(rendered) == golden, "run with HOSTBUILD_UPDATE_GOLDEN=1 after a deliberate change"
    for path, f in rendered.items():
        assert f.content == (root / path.lstrip("/")).read_bytes(), path
    assert modes == (GOLDEN / f"{name}.modes").read_text()


def test_extra_config_merges_into_kubelet_configuration() -> None:
    child = load_profile("tests/data/profiles/good_child.yaml")
    assert child.kubelet is not None
    config = kubelet_config(child.kubelet)
    assert config["maxPods"] == 250
    # a nested mapping merges with hostbuild's defaults instead of replacing them
    assert config["authentication"]["anonymous"] == {"enabled": True}
    assert config["authentication"]["webhook"] == {"enabled": True}
    unit = next(f for f in config_files(child, build=1) if f.path.endswith("kubelet.service"))
    assert b"  --node-ip=10.0.0.5 \\\n  $KUBELET_EXTRA_ARGS\n" in unit.content


def test_extra_args_stand_for_themselves_on_execstart(tmp_path: Path) -> None:
    child = tmp_path / "child.yaml"
    child.write_text(
        "extends: worker\nkubelet:\n  extra_args:\n"
        "    eviction-soft: memory.available<10%\n    node-labels: a=$HOME\n"
    )
    profile = load_profile(str(child))
    unit = next(f for f in config_files(profile, build=1) if f.path.endswith("kubelet.service"))
    assert b"  --eviction-soft=memory.available<10%% \\\n" in unit.content
    assert b"  --node-labels=a=$$HOME \\\n" in unit.content


def test_elements_follow_pinned_components() -> None:
    assert image_elements(load_profile("base")) == [
        "hostbuild-debian", "hostbuild-base", "hostbuild-boot",
    ]  # fmt: skip
    assert image_elements(load_profile("worker"))[-3:] == [
        "hostbuild-containerd", "hostbuild-crictl", "hostbuild-kubelet",
    ]  # fmt: skip


def _tarball(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _fetched(tmp_path: Path, name: str, kind: str, data: bytes) -> Fetched:
    path = tmp_path / name
    path.write_bytes(data)
    artifact = Artifact(name, "1.0.0", "amd64", f"https://x.test/{name}", "0" * 64, kind)
    return Fetched(artifact, path, len(data), False, "test")


def test_binaries_land_where_their_component_kind_says(tmp_path: Path) -> None:
    fetched = [
        _fetched(tmp_path, "kubelet", "file", b"kubelet-bytes"),
        _fetched(tmp_path, "crictl", "tar.gz", _tarball({"crictl": b"crictl-bytes"})),
        _fetched(tmp_path, "cni_plugins", "tar.gz",
                 _tarball({"./bridge": b"b", "./loopback": b"l", "./LICENSE": b"x"})),
        _fetched(tmp_path, "containerd", "tar.gz", _tarball({
            "bin/containerd": b"c", "bin/containerd-shim-runc-v2": b"s", "bin/ctr": b"t",
            "bin/containerd-stress": b"unused",
        })),
    ]  # fmt: skip
    files = {f.path: f for f in binary_files(fetched)}
    assert files["/usr/bin/kubelet"] == ImageFile(
        "hostbuild-kubelet", "/usr/bin/kubelet", b"kubelet-bytes", 0o755
    )
    assert files["/usr/bin/crictl"].content == b"crictl-bytes"
    assert files["/usr/lib/cni/bridge"].element == "hostbuild-containerd"
    assert "/usr/lib/cni/loopback" in files
    assert set(files) == {
        "/usr/bin/kubelet", "/usr/bin/crictl", "/usr/lib/cni/bridge", "/usr/lib/cni/loopback",
        "/usr/lib/cni/LICENSE", "/usr/bin/containerd", "/usr/bin/containerd-shim-runc-v2",
        "/usr/bin/ctr",
    }  # fmt: skip


def test_archive_without_expected_member_is_an_error(tmp_path: Path) -> None:
    fetched = [_fetched(tmp_path, "crictl", "tar.gz", _tarball({"README": b"no binary"}))]
    with pytest.raises(HostbuildError, match="archive .* lacks crictl"):
        binary_files(fetched)


def test_prepare_elements_writes_each_elements_files(tmp_path: Path) -> None:
    profile = load_profile("worker")
    files = config_files(profile, build=1)
    names = prepare_elements(profile, files, tmp_path / "elements")
    assert names == image_elements(profile)
    config = tmp_path / "elements/hostbuild-containerd/files/etc/containerd/config.toml"
    assert config.read_bytes() == next(f.content for f in files if f.path.endswith("config.toml"))
    assert (tmp_path / "elements/hostbuild-debian/root.d/10-hostbuild-bootstrap").exists()
    assert not (Path("elements") / "hostbuild-containerd" / "files").exists()  # source untouched
