"""Waves on the node: the `waves` list of a channel entry, the seed on /var, and the choice."""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from builder.node.channel import Running, choose, parse_manifest
from builder.node.seed import load_seed, read_seed
from builder.node.updatestate import UpdateError
from builder.node.waves import SEEDS, format_time, not_started, parse_time, parse_waves, wave_of
from tests.unit.test_update_channel import manifest, version

UTC = datetime.UTC
T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RUNNING = Running("worker-standin", "0.1.0-2", "1.35")


def at(hours: float) -> datetime.datetime:
    return T0 + datetime.timedelta(hours=hours)


def waves(*pairs: tuple[int, float]) -> list[dict[str, Any]]:
    """`(seed_below, hours after T0)` pairs as a manifest's waves list."""
    return [{"seed_below": n, "start": format_time(at(h))} for n, h in pairs]


THREE = waves((20, 0), (512, 4), (2048, 24))


def test_waves_parse_to_seed_bounds_and_utc_times() -> None:
    parsed = parse_waves(THREE)
    assert [(w.seed_below, w.start) for w in parsed] == [(20, at(0)), (512, at(4)), (2048, at(24))]
    assert [w.as_dict() for w in parsed] == THREE
    assert parse_waves(None) == ()
    assert parse_waves([{"seed_below": 2048, "start": "2026-03-01T12:00:00+00:00"}])[0].start == T0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "waves must be a non-empty list of waves or absent, got []"),
        ({"0": "x"}, "waves must be a non-empty list"),
        (["x"], "waves[0] must be an object with seed_below and start, got 'x'"),
        ([{"seed_below": 2048}], "waves[0] must be an object with seed_below and start, got"),
        ([{"seed_below": 2048, "start": format_time(T0), "percent": 1}], "got ['percent', 'seed"),
        ([{"seed_below": 0, "start": "2026-03-01T12:00:00Z"}], "waves[0].seed_below must be an "
         "integer 1..2048, got 0"),
        ([{"seed_below": 2049, "start": "2026-03-01T12:00:00Z"}], "1..2048, got 2049"),
        ([{"seed_below": True, "start": "2026-03-01T12:00:00Z"}], "1..2048, got True"),
        ([{"seed_below": "20", "start": "2026-03-01T12:00:00Z"}], "1..2048, got '20'"),
        ([{"seed_below": 2048, "start": "2026-03-01"}], "waves[0].start must be an RFC 3339 time"),
        ([{"seed_below": 2048, "start": "soon"}], "waves[0].start must be an RFC 3339 time"),
        ([{"seed_below": 2048, "start": 1772366400}], "waves[0].start must be an RFC 3339 time"),
        ([{"seed_below": 2048, "start": "2026-03-01T12:00:00"}], "(offset Z or +00:00)"),
        ([{"seed_below": 2048, "start": "2026-03-01T13:00:00+01:00"}], "(offset Z or +00:00)"),
        (waves((512, 0), (512, 4), (2048, 8)), "waves[1].seed_below 512 is not above the "
         "previous wave's 512 (seeds increase from wave to wave)"),
        (waves((512, 4), (2048, 4)), "waves[1].start 2026-03-01T16:00:00Z is not after the "
         "previous wave's 2026-03-01T16:00:00Z"),
        (waves((512, 4), (2048, 2)), "start times increase from wave to wave"),
        (waves((20, 0), (2047, 4)), "waves: the last wave's seed_below is 2047, it must be 2048 "
         "so that every seed is in a wave"),
        (waves(*((n, n) for n in range(1, 66))), "waves has 65 waves, at most 64 are allowed"),
    ],
)  # fmt: skip
def test_bad_waves_say_where_and_what_is_allowed(data: Any, message: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_waves(data)
    assert message in str(e.value)


def test_parse_time_takes_z_and_zero_offsets_only() -> None:
    assert parse_time("2026-03-01T12:00:00Z", "t") == T0
    assert parse_time("2026-03-01T12:00:00.5+00:00", "t") == T0 + datetime.timedelta(seconds=0.5)
    with pytest.raises(ValueError, match="^t must be"):
        parse_time("2026-03-01T12:00:00-00:30", "t")


@pytest.mark.parametrize(
    ("seed", "number", "bound"),
    [(0, 1, 20), (19, 1, 20), (20, 2, 512), (511, 2, 512), (512, 3, 2048), (2047, 3, 2048)],
)
def test_a_seed_is_in_the_first_wave_whose_bound_is_above_it(
    seed: int, number: int, bound: int
) -> None:
    found, wave = wave_of(parse_waves(THREE), seed)
    assert (found, wave.seed_below) == (number, bound)


def test_a_seed_out_of_range_has_no_wave() -> None:
    for seed in (-1, SEEDS):
        with pytest.raises(ValueError, match=r"not in 0\.\.2047"):
            wave_of(parse_waves(THREE), seed)


def test_not_started_until_the_start_of_its_wave() -> None:
    parsed = parse_waves(THREE)
    assert not_started((), 2047, at(-100)) is None  # no waves: at once
    assert not_started(parsed, 19, at(0)) is None  # the start itself counts
    held = not_started(parsed, 20, at(3.99))
    assert held == (
        "wave 2 for seeds below 512 starts at 2026-03-01T16:00:00Z (this node's seed is 20)",
        at(4),
    )
    assert not_started(parsed, 20, at(4)) is None


def decide(data: dict[str, Any], seed: int, now: datetime.datetime) -> dict[str, Any]:
    return choose(parse_manifest(data, "stable"), RUNNING, (), seed=seed, now=now).describe()


@pytest.mark.parametrize(
    ("seed", "hours", "chosen"),
    [
        (0, -1, None), (0, 0, "0.1.0-3"),  # the first wave, before and at its start
        (19, 0, "0.1.0-3"), (20, 0, None), (20, 3, None), (20, 4, "0.1.0-3"),
        (2047, 23.9, None), (2047, 24, "0.1.0-3"), (1000, 1000, "0.1.0-3"),
    ],
)  # fmt: skip
def test_a_version_is_taken_once_the_wave_of_the_seed_started(
    seed: int, hours: float, chosen: str | None
) -> None:
    result = decide(manifest(version("0.1.0-3", waves=THREE)), seed, at(hours))
    assert result["chosen"] == chosen
    assert result["seed"] == seed
    if chosen is None:
        (skipped,) = result["skipped"]
        assert skipped["version"] == "0.1.0-3"
        assert skipped["reason"].startswith("wave ")
        assert parse_time(skipped["eligible_at"], "eligible_at") > at(hours)
    else:
        assert result["skipped"] == []


def test_the_skipped_entry_names_the_wave_and_when_it_becomes_eligible() -> None:
    result = decide(manifest(version("0.1.0-3", waves=THREE)), 600, at(1))
    assert result == {
        "chosen": None, "seed": 600,
        "skipped": [{
            "version": "0.1.0-3",
            "reason": "wave 3 for seeds below 2048 starts at 2026-03-02T12:00:00Z "
                      "(this node's seed is 600)",
            "eligible_at": "2026-03-02T12:00:00Z",
        }],
    }  # fmt: skip


def test_a_version_without_waves_is_taken_at_once_by_every_seed() -> None:
    for seed in (0, 1024, 2047):
        assert decide(manifest(version("0.1.0-3")), seed, at(-1000))["chosen"] == "0.1.0-3"


def test_a_newer_version_in_a_later_wave_leaves_an_older_open_one_to_take() -> None:
    data = manifest(version("0.1.0-3"), version("0.1.0-4", waves=THREE))
    result = decide(data, 1500, at(5))
    assert result["chosen"] == "0.1.0-3"
    assert [s["version"] for s in result["skipped"]] == ["0.1.0-4"]
    assert result["skipped"][0]["eligible_at"] == "2026-03-02T12:00:00Z"
    assert decide(data, 1500, at(24))["chosen"] == "0.1.0-4"


def test_a_version_refused_for_another_reason_has_no_eligible_time() -> None:
    entry = version("0.1.0-3", waves=THREE, upgrade_from="0.1.0-3")
    (skipped,) = decide(manifest(entry), 1500, at(5))["skipped"]
    assert "eligible_at" not in skipped
    assert skipped["reason"].startswith("wave 3 for seeds below 2048 starts at")
    assert "it updates only from 0.1.0-3 or later" in skipped["reason"]


def test_bad_waves_make_the_entry_unreadable_and_it_is_not_taken() -> None:
    data = manifest(version("0.1.0-3", waves=waves((20, 0), (1000, 1))))
    parsed = parse_manifest(data, "stable")
    assert parsed.entries == ()
    result = decide(data, 0, at(100))
    assert result["chosen"] is None
    assert result["skipped"] == [{
        "version": "0.1.0-3",
        "reason": "unreadable entry: waves: the last wave's seed_below is 1000, it must be "
                  "2048 so that every seed is in a wave",
    }]  # fmt: skip


# the seed file


def test_a_seed_is_drawn_once_and_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "var/lib/hostbuild/update/seed"
    draws: list[int] = []

    def draw(n: int) -> int:
        draws.append(n)
        return 1234

    assert read_seed(path) is None
    with caplog.at_level(logging.INFO, "builder.node.seed"):
        assert load_seed(path, draw) == 1234
    assert draws == [SEEDS]
    assert path.read_text() == "1234\n"
    assert (path.stat().st_mode & 0o777) == 0o644
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert load_seed(path, draw) == 1234 and read_seed(path) == 1234
    assert draws == [SEEDS]  # not drawn again
    assert not list(path.parent.glob(".*.tmp"))


def test_the_random_draw_is_in_range(tmp_path: Path) -> None:
    seeds = {load_seed(tmp_path / f"seed{i}") for i in range(50)}
    assert all(0 <= s < SEEDS for s in seeds)
    assert len(seeds) > 1  # drawn, not fixed: 50 draws of 2048 agree with chance 2048**-49


@pytest.mark.parametrize(
    "content", [b"", b"2048\n", b"-1\n", b"12a\n", b"\xff\xfe", b"00012\n", b"1 2\n", b"\xd9\xa3\n"]
)
def test_a_bad_seed_is_replaced_and_logged(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "seed"
    path.write_bytes(content)
    assert read_seed(path) is None
    with caplog.at_level(logging.INFO, "builder.node.seed"):
        assert load_seed(path, lambda n: 7) == 7
    assert path.read_text() == "7\n"
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(f"update seed in {path} replaced by a new draw, 7: ")


def test_a_seed_with_spaces_around_it_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "seed"
    path.write_bytes(b" 2047 \n")
    assert load_seed(path, lambda n: 0) == 2047


def test_a_seed_that_cannot_be_kept_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "seed"
    path.mkdir()  # reading it fails (IsADirectoryError); so does replacing it
    with pytest.raises(UpdateError) as e:
        load_seed(path, lambda n: 7)
    assert e.value.kind == "system" and "keeping the update seed in" in str(e.value)


def test_a_seed_that_cannot_be_read_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "seed"
    path.write_text("5\n")
    real = Path.read_bytes

    def denied(self: Path) -> bytes:
        if self == path:
            raise PermissionError(13, "Permission denied", os.fspath(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    assert load_seed(path, lambda n: 9) == 9
    monkeypatch.undo()
    assert path.read_text() == "9\n"
    assert "Permission denied" in caplog.records[-1].getMessage()
