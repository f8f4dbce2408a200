"""The VM stage's error: the harness and its QMP client raise it."""

from __future__ import annotations

from builder.errors import HostbuildError


class VmError(HostbuildError):
    """The VM did not reach the state we waited for, or QEMU failed."""
