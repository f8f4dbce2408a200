"""When the update timer's tick checks: interval, a per-node jitter, boot, backoff."""

from __future__ import annotations

import datetime

from builder.node.schedule import RETRY, draw, next_check, record_run, retry_delay

T0 = datetime.datetime(2026, 3, 2, 12, 0, tzinfo=datetime.UTC)
HOUR, JITTER = 3600, 900


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def test_draw_is_deterministic_bounded_and_spread() -> None:
    draws = [draw(f"machine-{i}", JITTER) for i in range(2000)]
    assert draws == [draw(f"machine-{i}", JITTER) for i in range(2000)]
    assert min(draws) >= 0 and max(draws) <= JITTER
    buckets = {d * 10 // (JITTER + 1) for d in draws}
    assert buckets == set(range(10)), "a fleet is spread over the whole jitter"
    assert draw("machine-1", 0) == 0


def test_the_first_check_of_a_boot_is_at_boot_plus_a_jitter() -> None:
    due = next_check(None, HOUR, JITTER, "m1", "boot-1", T0)
    assert due.at == at(draw("m1 boot boot-1", JITTER)) and due.why == "first check since boot"
    assert not due.reached(T0 - datetime.timedelta(seconds=1))
    # a run recorded in an earlier boot does not count
    earlier = record_run(None, at(-60), "boot-0", None)
    assert next_check(earlier, HOUR, JITTER, "m1", "boot-1", T0) == due
    # without a boot time nothing holds the check back
    unknown = next_check(None, HOUR, JITTER, "m1", "boot-1", None)
    assert unknown.at is None and unknown.reached(T0)


def test_after_a_good_run_the_interval_and_a_jitter_drawn_for_that_run() -> None:
    record = record_run(None, T0, "boot-1", None)
    due = next_check(record, HOUR, JITTER, "m1", "boot-1", at(-600))
    assert at(HOUR) <= due.at <= at(HOUR + JITTER)  # type: ignore[operator]
    assert due.at == at(HOUR + draw(f"m1 check {record['time']}", JITTER))
    assert due.why == "interval"
    others = {next_check(record, HOUR, JITTER, f"m{i}", "boot-1", T0).at for i in range(50)}
    assert len(others) > 40, "nodes that checked at the same moment check next apart"
    assert next_check(record, HOUR, 0, "m1", "boot-1", T0).at == at(HOUR)


def test_failed_runs_back_off_up_to_the_interval() -> None:
    record = None
    delays = []
    for n in range(1, 7):
        record = record_run(record, T0, "boot-1", "unreachable: down")
        assert record["failures"] == n and record["result"] == "error"
        due = next_check(record, HOUR, JITTER, "m1", "boot-1", at(-600))
        delays.append((due.at - T0).total_seconds())  # type: ignore[operator]
    assert delays == [RETRY, 2 * RETRY, 4 * RETRY, 8 * RETRY, HOUR, HOUR]
    assert retry_delay(1000, HOUR) == HOUR
    ok = record_run(record, T0, "boot-1", None)
    assert ok["failures"] == 0 and ok["result"] == "ok"
    # a new boot counts failures afresh
    assert record_run(record, T0, "boot-2", "unreachable: down")["failures"] == 1
