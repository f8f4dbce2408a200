"""Block scanning and the parallel upload, with a small in-memory EBS client."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from builder.errors import HostbuildError
from builder.publish.blocks import aggregate_checksum, data_blocks, data_extents
from builder.publish.upload import Upload
from tests.awsmock import BLOCK, MIB, nonzero_blocks, pattern


class FakeEbs:
    """PutSnapshotBlock into a dict; checks each block's checksum as AWS does."""

    def __init__(self, fail_at: int | None = None, delay: float = 0.0) -> None:
        self.blocks: dict[int, bytes] = {}
        self.calls = 0
        self.fail_at = fail_at
        self.delay = delay
        self.lock = threading.Lock()

    def put_snapshot_block(self, **params: Any) -> dict[str, Any]:
        with self.lock:
            self.calls += 1
            if self.fail_at is not None and self.calls >= self.fail_at:
                raise ConnectionError("injected")
        time.sleep(self.delay)
        data = params["BlockData"]
        assert len(data) == params["DataLength"] == BLOCK
        assert base64.b64decode(params["Checksum"]) == hashlib.sha256(data).digest()
        with self.lock:
            self.blocks[params["BlockIndex"]] = data
        return {}


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    with path.open("wb") as f:
        f.truncate(32 * MIB + 1000)  # the last block is partial
        for offset, data in [(0, pattern(BLOCK // 2, 1)), (5 * MIB, pattern(3 * BLOCK, 2)),
                             (9 * MIB, bytes(2 * BLOCK)), (32 * MIB, b"tail")]:  # fmt: skip
            f.seek(offset)
            f.write(data)
    return path


def test_data_extents_cover_the_data_and_skip_the_holes(raw: Path) -> None:
    with raw.open("rb") as f:
        extents = data_extents(f.fileno(), raw.stat().st_size)
    blocks = data_blocks(extents)
    assert set(nonzero_blocks(raw)) <= set(blocks)  # every data block is visited
    assert len(blocks) <= 1 + 3 + 2 + 1 + 4  # few others (file systems allocate in pages or more)


@pytest.mark.parametrize("workers", [1, 16])
def test_upload_sends_exactly_the_nonzero_blocks(raw: Path, workers: int) -> None:
    ebs = FakeEbs()
    result = Upload(ebs, "snap-1", raw, workers=workers, deadline=30).run()
    expected = nonzero_blocks(raw)
    assert ebs.blocks == expected
    assert ebs.calls == len(expected) == result.stats.blocks_sent
    assert result.stats.bytes_sent == len(expected) * BLOCK
    assert result.stats.blocks_total == 65
    digests = b"".join(hashlib.sha256(expected[i]).digest() for i in sorted(expected))
    checksum = base64.b64encode(hashlib.sha256(digests).digest()).decode()
    assert aggregate_checksum(result.digests[i] for i in sorted(result.digests)) == checksum
    assert result.watermark == 65


def test_a_failing_worker_stops_the_upload_and_checkpoints_the_watermark(raw: Path) -> None:
    ebs = FakeEbs(fail_at=4)
    marks: list[int] = []
    with pytest.raises(ConnectionError):
        Upload(ebs, "snap-1", raw, workers=1, deadline=30, on_checkpoint=marks.append).run()
    # three blocks went through, in order: everything below the fourth data block is written
    assert sorted(ebs.blocks) == sorted(nonzero_blocks(raw))[:3]
    assert marks[-1] == sorted(nonzero_blocks(raw))[3]

    resumed = FakeEbs()
    result = Upload(resumed, "snap-1", raw, workers=4, deadline=30, resume_below=marks[-1]).run()
    assert sorted(resumed.blocks) == sorted(nonzero_blocks(raw))[3:]
    assert result.stats.blocks_resumed == 3
    assert len(result.digests) == len(nonzero_blocks(raw))  # the checksum still covers all


def test_upload_deadline(raw: Path) -> None:
    with pytest.raises(HostbuildError) as error:
        Upload(FakeEbs(delay=0.5), "snap-1", raw, workers=1, deadline=0.2).run()
    assert error.value.message.startswith("the upload into snap-1 did not finish within 0s")
    assert error.value.hint == "run the same command again to resume it"
