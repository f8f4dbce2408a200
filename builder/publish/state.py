"""The publish record in the build's manifest (`publish.aws`), saved atomically after each step.

The record is what makes a publish resumable: the snapshot being uploaded (with how far the
upload got), the AMI of every region, and what was shared and written to SSM.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from builder.build.manifest import read_manifest, write_manifest

logger = logging.getLogger(__name__)


class PublishState:
    """`manifest.json`'s `publish.aws` mapping; `save()` rewrites the manifest atomically."""

    def __init__(self, directory: Path, *, dry_run: bool = False) -> None:
        self.directory = directory
        self.dry_run = dry_run
        self._manifest = read_manifest(directory)
        publish = self._manifest.setdefault("publish", {})
        self.aws: dict[str, Any] = publish.setdefault("aws", {})
        if dry_run:  # a dry run pretends nothing was published and never writes
            self.aws = {}

    @property
    def snapshot(self) -> dict[str, Any] | None:
        snapshot: dict[str, Any] | None = self.aws.get("snapshot")
        return snapshot

    def set_snapshot(self, **fields: Any) -> dict[str, Any]:
        """Replace the snapshot record and save it."""
        self.aws["snapshot"] = dict(fields)
        self.save()
        return self.aws["snapshot"]  # type: ignore[no-any-return]

    def update_snapshot(self, **fields: Any) -> None:
        self.aws.setdefault("snapshot", {}).update(fields)
        self.save()

    def images(self) -> dict[str, dict[str, Any]]:
        images: dict[str, dict[str, Any]] = self.aws.setdefault("images", {})
        return images

    def set_image(self, region: str, **fields: Any) -> None:
        self.images()[region] = dict(fields)
        self.save()

    def forget_image(self, region: str) -> None:
        if self.images().pop(region, None) is not None:
            self.save()

    def set(self, key: str, value: Any) -> None:
        self.aws[key] = value
        self.save()

    def record(self) -> dict[str, Any]:
        """A copy of the record, for results."""
        return copy.deepcopy(self.aws)

    def save(self) -> None:
        if self.dry_run:
            return
        self._manifest["publish"]["aws"] = self.aws
        write_manifest(self.directory, self._manifest)
        logger.debug("recorded publish state in %s", self.directory / "manifest.json")
