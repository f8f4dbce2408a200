"""The CIS Kubernetes Benchmark's worker node section against what hostbuild renders."""

from __future__ import annotations

import copy
import dataclasses
import grp
import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.build.elements import ImageFile, config_files
from builder.node.nodeconfig import parse
from builder.node.render import Output, render_outputs
from builder.node.sources import Platform
from builder.profile.load import load_profile
from builder.profile.model import File, Profile
from builder.run import run
from tests.cis import (
    HostNode,
    NodeView,
    Outcome,
    RenderedNode,
    Stat,
    evaluate,
    kubelet_command,
    load_checks,
    parse_environment,
    rendered_node,
    report,
    unexpected,
)
from tests.conftest import DATA

CHECKS = load_checks()
WORKER = load_profile("worker")
BASE_KUBELET = "/etc/kubernetes/kubelet/config.yaml"
UNIT = "/usr/lib/systemd/system/kubelet.service"


def nodeconfig(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DATA / "nodeconfig" / f"{name}.yaml").read_text())
    return data


def render_node(
    config: dict[str, Any], profile: Profile = WORKER,
    image_mode: Callable[[ImageFile], int] = lambda f: f.mode,
    output_mode: Callable[[str, Output], int] = lambda rel, o: o.mode,
) -> RenderedNode:  # fmt: skip
    """The worker node as its image and the node agent would have it from `config`."""
    image = [dataclasses.replace(f, mode=image_mode(f)) for f in config_files(profile, build=1)]
    # the agent merges the NodeConfig over the image's KubeletConfiguration
    base = yaml.safe_load(next(f.content for f in image if f.path == BASE_KUBELET))
    outputs = render_outputs(parse(config), base, Platform("ip-10-0-0-9.test.internal"))
    return rendered_node(image, {r: dataclasses.replace(o, mode=output_mode(r, o))
                                 for r, o in outputs.items()})  # fmt: skip


def outcomes(node: NodeView) -> dict[str, Outcome]:
    return {r.check.id: r.outcome for r in evaluate(CHECKS, node)}


def test_the_data_is_section_4_as_the_benchmark_numbers_it() -> None:
    ids = [c.id for c in CHECKS]
    assert ids == [
        *(f"4.1.{i}" for i in range(1, 11)), *(f"4.2.{i}" for i in range(1, 14)), "4.3.1",
    ]  # fmt: skip
    assert {c.id for c in CHECKS if c.assessment == "automated"} == {
        "4.1.1", "4.1.2", "4.1.5", "4.1.6", "4.1.9", "4.1.10", "4.2.1", "4.2.2", "4.2.3",
        "4.2.6", "4.2.10", "4.3.1",
    }  # fmt: skip


@pytest.mark.parametrize("name", ["full", "minimal", "good_kubeconfig"])
def test_the_worker_passes_section_4(name: str) -> None:
    results = evaluate(CHECKS, render_node(nodeconfig(name)))
    assert not unexpected(results), report(results)
    found = {r.check.id: r for r in results}
    assert found["4.1.1"].detail == UNIT
    assert found["4.1.9"].detail == f"/run/hostbuild/kubelet/config.yaml, {BASE_KUBELET}"
    assert found["4.1.7"].detail == "/run/hostbuild/kubelet/ca.crt"
    kubeconfig = "kubeconfig" if name == "good_kubeconfig" else "bootstrap-kubeconfig"
    assert found["4.1.5"].detail == f"/run/hostbuild/kubelet/{kubeconfig}"
    assert {found[i].outcome for i in ("4.1.3", "4.1.4", "4.3.1")} <= {"absent", "manual"}
    # --hostname-override only when the NodeConfig names the node: the documented exception
    assert found["4.2.7"].outcome == ("fail" if name == "full" else "pass")


def _with(nodeconfig: dict[str, Any], **kubelet: Any) -> dict[str, Any]:
    changed = copy.deepcopy(nodeconfig)
    changed["spec"]["kubelet"] = kubelet
    return changed


def _extra_config(**extra: Any) -> Profile:
    assert WORKER.kubelet is not None
    kubelet = WORKER.kubelet
    config = {**kubelet.extra_config, **extra}
    return dataclasses.replace(WORKER, kubelet=dataclasses.replace(kubelet, extra_config=config))


MINIMAL = nodeconfig("minimal")
DROPIN = File("/etc/systemd/system/kubelet.service.d/10-local.conf", "[Service]\n", "0644")
# each breaks one setting: the checks (ids) that fail for it, and the node
VIOLATIONS: dict[str, tuple[str, Callable[[], RenderedNode]]] = {
    "the unit 0644": ("4.1.1", lambda: render_node(
        MINIMAL, image_mode=lambda f: 0o644 if f.path == UNIT else f.mode)),
    "a profile's drop-in 0644": ("4.1.1", lambda: render_node(
        MINIMAL, dataclasses.replace(WORKER, files=(DROPIN,)))),
    "the rendered config 0644": ("4.1.9", lambda: render_node(
        MINIMAL, output_mode=lambda rel, o: 0o644 if rel == "kubelet/config.yaml" else o.mode)),
    "the bootstrap kubeconfig 0640": ("4.1.5", lambda: render_node(
        MINIMAL, output_mode=lambda rel, o: 0o640 if "kubeconfig" in rel else o.mode)),
    "the client CA 0644": ("4.1.7", lambda: render_node(
        MINIMAL, output_mode=lambda rel, o: 0o644 if rel.endswith("ca.crt") else o.mode)),
    "anonymous auth from the profile": ("4.2.1", lambda: render_node(
        MINIMAL, _extra_config(authentication={"anonymous": {"enabled": True}}))),
    "AlwaysAllow": ("4.2.2", lambda: render_node(
        _with(MINIMAL, config={"authorization": {"mode": "AlwaysAllow"}}))),
    "no client CA": ("4.1.7 4.1.8 4.2.3", lambda: render_node(
        _with(MINIMAL, config={"authentication": {"x509": {"clientCAFile": ""}}}))),
    "readOnlyPort 10255": ("4.2.4", lambda: render_node(
        _with(MINIMAL, config={"readOnlyPort": 10255}))),
    "--read-only-port=10255 over the config": ("4.2.4", lambda: render_node(
        _with(MINIMAL, flags=["--read-only-port=10255"]))),
    "no streaming idle timeout": ("4.2.5", lambda: render_node(
        _with(MINIMAL, config={"streamingConnectionIdleTimeout": "0s"}))),
    "no iptables util chains": ("4.2.6", lambda: render_node(
        _with(MINIMAL, flags=["--make-iptables-util-chains=false"]))),
    "--rotate-certificates=false": ("4.2.10", lambda: render_node(
        _with(MINIMAL, flags=["--rotate-certificates=false"]))),
    "the serving certificate gate off": ("4.2.11", lambda: render_node(
        _with(MINIMAL, flags=["--feature-gates=RotateKubeletServerCertificate=false"]))),
    "a weak cipher": ("4.2.12", lambda: render_node(
        _with(MINIMAL, config={"tlsCipherSuites": ["TLS_RSA_WITH_AES_128_CBC_SHA"]}))),
    "unlimited pod PIDs": ("4.2.13", lambda: render_node(
        _with(MINIMAL, config={"podPidsLimit": -1}))),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
def test_the_checker_flags_a_violation(case: str) -> None:
    check_ids, node = VIOLATIONS[case]
    results = evaluate(CHECKS, node())
    assert [r.check.id for r in unexpected(results)] == check_ids.split(), report(results)


@dataclass(frozen=True)
class OwnedBy:
    """A node whose file at `path` has another owner."""

    node: RenderedNode
    path: str
    owner: str

    def stat(self, path: str) -> Stat | None:
        stat = self.node.stat(path)
        return Stat(stat.mode, self.owner) if stat and path == self.path else stat

    def read(self, path: str) -> bytes | None:
        return self.node.read(path)

    def glob(self, pattern: str) -> list[str]:
        return self.node.glob(pattern)

    def kubelet_args(self) -> list[str]:
        return self.node.kubelet_args()


def test_the_checker_flags_an_owner_and_a_missing_file() -> None:
    node = render_node(MINIMAL)
    owned = OwnedBy(node, "/run/hostbuild/kubelet/config.yaml", "kubelet:kubelet")
    assert outcomes(owned)["4.1.10"] == "fail"
    no_unit = RenderedNode({p: v for p, v in node.files.items() if p != UNIT})
    assert outcomes(no_unit)["4.1.1"] == "fail"


def test_kubelet_runs_with_the_unit_and_the_agent_flags() -> None:
    assert render_node(nodeconfig("full")).kubelet_args() == [
        "--config=/run/hostbuild/kubelet/config.yaml",
        "--kubeconfig=/var/lib/kubelet/kubeconfig",
        "--bootstrap-kubeconfig=/run/hostbuild/kubelet/bootstrap-kubeconfig",
        "--container-runtime-endpoint=unix:///run/containerd/containerd.sock",
        "--node-labels=example.com/team=storage,node.kubernetes.io/pool=general",
        "--hostname-override=worker-1", "--node-ip=10.0.0.21", "--v=2",
    ]  # fmt: skip
    unit = "[Service]\nExecStart=/usr/bin/kubelet --a \\\n  $EMPTY ${ONE} $TWO\n"
    env = parse_environment('# c\nONE="x \\"y\\" \\$z"\nTWO=--b --c\n')
    assert kubelet_command(unit, env) == ["--a", 'x "y" $z', "--b", "--c"]


class LocalFile:
    """testinfra's File, for a local path."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    @property
    def exists(self) -> bool:
        return self.path.exists()

    @property
    def mode(self) -> int:
        return self.path.stat().st_mode & 0o7777

    @property
    def user(self) -> str:
        return pwd.getpwuid(self.path.stat().st_uid).pw_name

    @property
    def group(self) -> str:
        return grp.getgrgid(self.path.stat().st_gid).gr_name

    @property
    def content(self) -> bytes:
        return self.path.read_bytes()


class LocalHost:
    """The part of testinfra's Host that HostNode uses, on this machine."""

    def file(self, path: str) -> LocalFile:
        return LocalFile(path)

    def run(self, command: str) -> Any:
        return run(["sh", "-c", command], check=False)


def test_host_node_reads_a_booted_node_through_testinfra(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("x")
    (tmp_path / "a.conf").chmod(0o600)
    node = HostNode(LocalHost(), ["--config=/x"])
    me = f"{pwd.getpwuid(os.getuid()).pw_name}:{grp.getgrgid(os.getgid()).gr_name}"
    assert node.stat(os.fspath(tmp_path / "a.conf")) == Stat(0o600, me)
    assert node.stat(os.fspath(tmp_path / "b.conf")) is None
    assert node.read(os.fspath(tmp_path / "a.conf")) == b"x"
    assert node.glob(f"{tmp_path}/*.conf") == [os.fspath(tmp_path / "a.conf")]
    assert node.glob(f"{tmp_path}/none.d/*") == []
    assert node.kubelet_args() == ["--config=/x"]
