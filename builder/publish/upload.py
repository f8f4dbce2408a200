"""The parallel block upload into a pending snapshot: bounded workers, a deadline, checkpoints.

Blocks below `resume_below` were written into the same snapshot by an interrupted run: they are
read and hashed again (the completion checksum covers every block) but not sent.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.exceptions

from builder.errors import HostbuildError
from builder.publish.blocks import (
    BLOCK_SIZE,
    b64,
    block_count,
    data_blocks,
    data_extents,
    digest,
    is_zero,
    read_block,
)

logger = logging.getLogger(__name__)

# Right after StartSnapshot the snapshot may not be visible to PutSnapshotBlock yet.
NOT_YET_VISIBLE = "ResourceNotFoundException"
VISIBILITY_RETRIES = (1.0, 2.0, 4.0, 8.0)


@dataclass
class UploadStats:
    blocks_total: int = 0  # the whole volume
    blocks_data: int = 0  # blocks overlapping allocated extents (the others are holes: not read)
    blocks_sent: int = 0
    blocks_zero: int = 0  # allocated but all zeros: read, not sent
    blocks_resumed: int = 0  # already in the snapshot from an interrupted run: read, not sent
    bytes_read: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0

    @property
    def blocks_done(self) -> int:
        return self.blocks_sent + self.blocks_zero + self.blocks_resumed

    @property
    def blocks_hole(self) -> int:
        return self.blocks_total - self.blocks_data

    def as_dict(self) -> dict[str, Any]:
        return {
            "blocks_total": self.blocks_total, "blocks_hole": self.blocks_hole,
            "blocks_data": self.blocks_data, "blocks_sent": self.blocks_sent,
            "blocks_zero": self.blocks_zero, "blocks_resumed": self.blocks_resumed,
            "bytes_read": self.bytes_read, "bytes_sent": self.bytes_sent,
            "seconds": round(self.seconds, 3),
        }  # fmt: skip


@dataclass
class UploadResult:
    digests: dict[int, bytes]  # the non-zero blocks, by index
    stats: UploadStats
    watermark: int  # every data block below this index is in the snapshot


@dataclass
class Upload:
    """Upload the data blocks of `raw` into `snapshot_id` with `workers` parallel requests."""

    ebs: Any
    snapshot_id: str
    raw: Path
    workers: int
    deadline: float  # seconds for the whole upload
    resume_below: int = 0
    on_progress: Callable[[UploadStats], None] = lambda stats: None
    on_checkpoint: Callable[[int], None] = lambda watermark: None
    checkpoint_every: float = 2.0
    stats: UploadStats = field(default_factory=UploadStats)

    def run(self) -> UploadResult:
        fd = os.open(self.raw, os.O_RDONLY)
        try:
            return self._run(fd)
        finally:
            os.close(fd)

    def _run(self, fd: int) -> UploadResult:
        size = os.fstat(fd).st_size
        indices = data_blocks(data_extents(fd, size))
        self.stats = stats = UploadStats(blocks_total=block_count(size), blocks_data=len(indices))
        digests: dict[int, bytes] = {}
        done: set[int] = set()
        position = 0  # indices[:position] are all done

        def watermark() -> int:
            nonlocal position
            while position < len(indices) and indices[position] in done:
                position += 1
            return indices[position] if position < len(indices) else stats.blocks_total

        def account(future: Future[tuple[int, bytes | None, bool]]) -> None:
            index, block_digest, sent = future.result()
            done.add(index)
            stats.bytes_read += min(BLOCK_SIZE, size - index * BLOCK_SIZE)
            if block_digest is None:
                stats.blocks_zero += 1
                return
            digests[index] = block_digest
            if sent:
                stats.blocks_sent += 1
                stats.bytes_sent += BLOCK_SIZE
            else:
                stats.blocks_resumed += 1

        start = time.monotonic()
        last_checkpoint = start
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ebs-put")
        pending: set[Future[tuple[int, bytes | None, bool]]] = set()
        queue = iter(indices)
        try:
            while True:
                while len(pending) < 2 * self.workers and (index := next(queue, None)) is not None:
                    pending.add(pool.submit(self._block, fd, index))
                if not pending:
                    break
                remaining = start + self.deadline - time.monotonic()
                if remaining <= 0:
                    raise HostbuildError(
                        f"the upload into {self.snapshot_id} did not finish within "
                        f"{self.deadline:.0f}s ({stats.blocks_done} of {stats.blocks_data} blocks)",
                        hint="run the same command again to resume it",
                    )
                finished, pending = wait(pending, min(remaining, 0.25), FIRST_COMPLETED)
                for future in finished:
                    account(future)
                stats.seconds = time.monotonic() - start
                self.on_progress(stats)
                if time.monotonic() - last_checkpoint >= self.checkpoint_every:
                    self.on_checkpoint(watermark())
                    last_checkpoint = time.monotonic()
        except BaseException:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            for future in pending:
                if future.done() and not future.cancelled() and future.exception() is None:
                    account(future)
            self.on_checkpoint(watermark())
            logger.info("upload stopped after %d of %d blocks; resumable from block %d",
                        stats.blocks_done, stats.blocks_data, watermark())  # fmt: skip
            raise
        finally:
            pool.shutdown(wait=True)
        stats.seconds = time.monotonic() - start
        self.on_progress(stats)
        return UploadResult(digests, stats, watermark())

    def _block(self, fd: int, index: int) -> tuple[int, bytes | None, bool]:
        data = read_block(fd, index)
        if is_zero(data):
            return index, None, False
        block_digest = digest(data)
        if index < self.resume_below:
            return index, block_digest, False
        self._put(index, data, block_digest)
        return index, block_digest, True

    def _put(self, index: int, data: bytes, block_digest: bytes) -> None:
        for delay in (*VISIBILITY_RETRIES, None):
            try:
                self.ebs.put_snapshot_block(
                    SnapshotId=self.snapshot_id, BlockIndex=index, BlockData=data,
                    DataLength=BLOCK_SIZE, Checksum=b64(block_digest), ChecksumAlgorithm="SHA256",
                )  # fmt: skip
                return
            except botocore.exceptions.ClientError as e:
                code = e.response.get("Error", {}).get("Code")
                if code != NOT_YET_VISIBLE or delay is None:
                    raise
                logger.debug("block %d: %s not visible yet, retrying", index, self.snapshot_id)
                time.sleep(delay)
