"""The raw image as EBS blocks: which blocks hold data, their bytes and their checksums.

Holes are found with SEEK_DATA/SEEK_HOLE and never read; allocated blocks that are all zeros
are read but not sent (a snapshot block that was never written reads as zeros).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
from collections.abc import Iterable

BLOCK_SIZE = 512 * 1024  # fixed by the EBS direct APIs
ZEROS = bytes(BLOCK_SIZE)


def block_count(size: int) -> int:
    return -(-size // BLOCK_SIZE)


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The (start, end) byte ranges of `fd` that hold data; all of it if holes are unknown."""
    extents: list[tuple[int, int]] = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after offset
                break
            if e.errno == errno.EINVAL:  # the file system cannot say: treat all as data
                return [(0, size)]
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        extents.append((start, end))
        offset = end
    return extents


def data_blocks(extents: Iterable[tuple[int, int]]) -> list[int]:
    """Indices of the blocks that overlap a data extent, ascending."""
    indices: set[int] = set()
    for start, end in extents:
        indices.update(range(start // BLOCK_SIZE, block_count(end)))
    return sorted(indices)


def read_block(fd: int, index: int) -> bytes:
    """Block `index`, zero-padded to BLOCK_SIZE at the end of the image."""
    data = os.pread(fd, BLOCK_SIZE, index * BLOCK_SIZE)
    return data if len(data) == BLOCK_SIZE else data.ljust(BLOCK_SIZE, b"\0")


def is_zero(data: bytes) -> bool:
    return data == ZEROS


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def aggregate_checksum(digests: Iterable[bytes]) -> str:
    """CompleteSnapshot's LINEAR SHA256: the digest of the block digests in index order."""
    return b64(hashlib.sha256(b"".join(digests)).digest())
