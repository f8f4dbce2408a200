"""`hostbuild nodeconfig`: the node agent's own validation and rendering, run on the build host."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from builder.build.elements import config_files, kubelet_config
from builder.errors import HostbuildError, Issue, IssuesError
from builder.node.check import InvalidConfig
from builder.node.model import NodeConfig
from builder.node.nodeconfig import parse_text
from builder.node.render import RUN, install_outputs, render_outputs
from builder.node.sources import Platform, SourceError, extract_nodeconfig, read_capped
from builder.profile.model import Profile

logger = logging.getLogger(__name__)
CONTAINERD_CONFIG = "/etc/containerd/config.toml"


class NodeConfigError(IssuesError):
    """Every problem found in a NodeConfig file, reported together (exit code 2)."""

    subject = "the NodeConfig"


def load_nodeconfig(path: Path) -> NodeConfig:
    """Read and validate a NodeConfig (or user-data holding one) as the node agent would."""
    name = os.fspath(path)  # as the user gave it
    try:
        data = extract_nodeconfig(read_capped(path))
    except OSError as e:
        raise NodeConfigError([Issue(name, "", f"cannot be read: {e.strerror}")]) from None
    except SourceError as e:
        raise NodeConfigError([Issue(name, "", str(e))]) from None
    if data is None:
        raise NodeConfigError([Issue(name, "", "multi-part user-data without a NodeConfig part")])
    try:
        return parse_text(data)
    except InvalidConfig as e:
        raise NodeConfigError([Issue(name, i.path, i.message) for i in e.issues]) from None


def render_nodeconfig(config: NodeConfig, root: Path, profile: Profile | None) -> list[str]:
    """Render below `root` as the node would (over the profile's kubelet configuration)."""
    base: dict[str, Any] = {}
    containerd = None
    if profile is not None:
        if profile.kubelet is not None:
            base = kubelet_config(profile.kubelet)
        image = {f.path: f.content for f in config_files(profile, build=1)}
        if CONTAINERD_CONFIG in image:
            containerd = image[CONTAINERD_CONFIG].decode()
    warnings: list[str] = []
    outputs = render_outputs(config, base, Platform(), (), containerd, warnings)
    for warning in warnings:
        logger.warning("%s", warning)
    try:
        install_outputs(outputs, root / RUN.lstrip("/"))
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        raise HostbuildError(
            f"cannot render into {os.fspath(root)}: {where}{e.strerror}",
            hint="give --render a directory you can write to",
        ) from None
    return sorted(f"{RUN}/{rel}" for rel in outputs)
