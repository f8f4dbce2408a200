"""The coordinator's drain hook: what it calls before a node reboots and once it is back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class NodeRef:
    """A node as the coordinator knows it: its FleetLock id, group and Kubernetes node name."""

    id: str
    group: str
    node_name: str | None = None


class DrainError(Exception):
    """A drain that did not finish: the coordinator refuses the reboot and records `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Drainer(Protocol):
    """Drains a node before its reboot and uncordons it once it is healthy again."""

    def drain(self, node: NodeRef) -> None:
        """Cordon and evict; raise DrainError when the node may not reboot."""

    def uncordon(self, node: NodeRef) -> None:
        """Let the node take pods again."""
