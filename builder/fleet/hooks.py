"""What the coordinator calls around a node's reboot: drain before the slot, uncordon after."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class NodeRef:
    """A node as FleetLock names it (its app-specific machine id and group), and maybe by name."""

    id: str
    group: str
    node_name: str | None


class DrainError(Exception):
    """The node could not be drained; the coordinator refuses its lock."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DrainHook(Protocol):
    """Empties a node before it reboots and makes it schedulable again once it is back healthy."""

    def drain(self, node: NodeRef) -> None: ...

    def uncordon(self, node: NodeRef) -> None: ...
