"""A one-line upload progress display on a terminal's stderr (blocks and bytes per second)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from builder.publish.upload import UploadStats

MIB = 1024 * 1024


class ProgressLine:
    """Redraws one line at most every `interval` seconds; silent when disabled."""

    def __init__(self, enabled: bool, stream: TextIO = sys.stderr, interval: float = 0.2) -> None:
        self.enabled = enabled
        self.stream = stream
        self.interval = interval
        self._last = 0.0
        self._drawn = False

    def update(self, stats: UploadStats) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < self.interval:
            return
        self._last = now
        seconds = max(stats.seconds, 1e-6)
        rate = stats.bytes_sent / MIB / seconds
        percent = 100 * stats.blocks_done / max(stats.blocks_data, 1)
        self.stream.write(
            f"\r  upload {percent:5.1f}%  {stats.blocks_done}/{stats.blocks_data} blocks  "
            f"{stats.bytes_sent / MIB:8.1f} MiB sent  {rate:6.1f} MiB/s  "
            f"{stats.blocks_sent / seconds:6.0f} blocks/s "
        )
        self.stream.flush()
        self._drawn = True

    def close(self, stats: UploadStats) -> None:
        """Draw the final figures and end the line."""
        self._last = 0.0
        self.update(stats)
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
