"""The updater with waves: a TUF repository on 127.0.0.1, a fake node, the seed on its /var."""

from __future__ import annotations

import datetime
import json

import pytest

from builder.node import updatecli, updater
from builder.node.seed import SEED_FILE
from tests.unit.test_update_apply import Setup, setup
from tests.unit.updatefakes import make_image

__all__ = ["setup"]  # the fixture

T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
WAVES = [{"seed_below": 100, "start": "2026-03-01T12:00:00Z"},
         {"seed_below": 2048, "start": "2026-03-02T12:00:00Z"}]  # fmt: skip


def test_a_node_waits_for_its_wave_then_stages_the_version(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    setup.publish(make_image("0.1.0-3"), entries={"0.1.0-3": {"waves": WAVES}})
    node = setup.fake.node
    seed = node.root / SEED_FILE
    seed.parent.mkdir(parents=True, exist_ok=True)
    seed.write_text("1500\n")
    node.clock = lambda: T0 + datetime.timedelta(hours=23)
    assert updatecli.main(["check", "--json"], node) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["chosen"] is None and report["seed"] == 1500
    assert report["skipped"] == [{
        "version": "0.1.0-3",
        "reason": "wave 2 for seeds below 2048 starts at 2026-03-02T12:00:00Z "
                  "(this node's seed is 1500)",
        "eligible_at": "2026-03-02T12:00:00Z",
    }]  # fmt: skip
    ukis = setup.fake.ukis()
    assert updater.apply(node)["result"] == "nothing"
    assert not any(c.startswith(("zstd", "sfdisk --part")) for c in setup.fake.commands())
    assert setup.fake.ukis() == ukis and setup.state()["staged"] is None
    assert setup.state()["last_check"]["skipped"][0]["eligible_at"] == "2026-03-02T12:00:00Z"
    assert updatecli.main(["status"], node) == 0
    assert "seed:       1500 (of 0..2047: this node's place in waves)" in capsys.readouterr().out
    node.clock = lambda: T0 + datetime.timedelta(hours=24)
    result = updater.apply(node)
    assert (result["result"], result["version"]) == ("staged", "0.1.0-3")
    assert any(c.startswith("zstd") for c in setup.fake.commands())  # the slot was written
    assert seed.read_text() == "1500\n"  # kept


def test_a_node_without_a_seed_draws_one_and_reports_it(setup: Setup) -> None:
    setup.publish(make_image("0.1.0-3"))
    node = setup.fake.node
    assert updater.status(node)["seed"] is None
    report = updater.check(node)
    assert report["chosen"] == "0.1.0-3"  # no waves: taken whatever the seed
    kept = int((node.root / SEED_FILE).read_text())
    assert 0 <= kept < 2048
    assert report["seed"] == kept == updater.status(node)["seed"]


def pin(setup: Setup, **seed: int) -> None:
    """updates.json as rendered, with `waveSeed` if given."""
    updates = setup.fake.root / "run/hostbuild/updates.json"
    data = {k: v for k, v in json.loads(updates.read_text()).items() if k != "waveSeed"}
    updates.write_text(json.dumps({**data, **seed}))


def test_a_seed_pinned_by_the_nodeconfig_places_the_node_and_leaves_its_own_alone(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    setup.publish(make_image("0.1.0-3"), entries={"0.1.0-3": {"waves": WAVES}})
    node = setup.fake.node
    seed = node.root / SEED_FILE
    seed.parent.mkdir(parents=True, exist_ok=True)
    seed.write_text("1500\n")  # its own draw: wave 2, not started yet
    pin(setup, waveSeed=42)  # wave 1, started
    node.clock = lambda: T0 + datetime.timedelta(hours=1)
    status = updater.status(node)
    assert (status["seed"], status["seed_source"]) == (42, "nodeconfig")
    assert updatecli.main(["status"], node) == 0
    assert ("seed:       42 (of 0..2047: this node's place in waves, pinned by the NodeConfig's "
            "updates.waveSeed)") in capsys.readouterr().out  # fmt: skip
    report = updater.check(node)
    assert (report["chosen"], report["seed"]) == ("0.1.0-3", 42)
    assert seed.read_text() == "1500\n"
    pin(setup)  # the pin removed: back to its own seed
    status = updater.status(node)
    assert (status["seed"], status["seed_source"]) == (1500, "drawn")
    assert updater.check(node)["chosen"] is None


def test_a_pinned_seed_draws_none_and_a_bad_one_is_ignored(setup: Setup) -> None:
    setup.publish(make_image("0.1.0-3"))
    node = setup.fake.node
    pin(setup, waveSeed=7)
    assert updater.check(node)["seed"] == 7
    assert not (node.root / SEED_FILE).exists()
    pin(setup, waveSeed=2048)  # a hand-edited updates.json
    assert updater.read_config(node).wave_seed is None
    assert updater.status(node)["seed_source"] is None  # nothing drawn yet
    assert 0 <= updater.check(node)["seed"] < 2048
    assert updater.status(node)["seed_source"] == "drawn"
