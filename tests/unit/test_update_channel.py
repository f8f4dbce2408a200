"""The channel manifest and the choice rules: which version a node takes, and why not others."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest

from builder.node.channel import (
    ChannelError,
    Running,
    choose,
    kubelet_skew,
    parse_manifest,
    parse_version,
)

HASH = "ab" * 32


def payload(name: str) -> dict[str, Any]:
    return {"target": f"worker-standin/{name}", "size": 100, "sha256": HASH,
            "compressed_size": 50, "compressed_sha256": HASH}  # fmt: skip


def version(v: str, **kw: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "version": v, "roothash": HASH, "layout": 2, "kubelet_minor": "1.35",
        "upgrade_from": None,
        "files": {r: payload(f"{v}/{r}") for r in ("root", "verity", "uki")},
    }  # fmt: skip
    entry.update(kw)
    return entry


def manifest(*versions: Any, image_id: str = "worker-standin") -> dict[str, Any]:
    return {"format": 1, "channel": "stable", "image_id": image_id, "versions": list(versions)}


RUNNING = Running("worker-standin", "0.1.0-2", "1.35")
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def decide(data: dict[str, Any], running: Running = RUNNING, failed: tuple[str, ...] = ()
           ) -> tuple[str | None, list[tuple[str, str]]]:  # fmt: skip
    decision = choose(parse_manifest(data, "stable"), running, failed, seed=0, now=NOW)
    return (decision.chosen.version if decision.chosen else None), list(decision.skipped)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("0.1.0-2", "0.1.0-10"),  # numbers, not strings
        ("0.1.9-9", "0.1.10-1"),
        ("0.9.9-9", "0.10.0-1"),
        ("9.9.9-9", "10.0.0-0"),
        ("1.2.3-4", "1.2.4-1"),
    ],
)
def test_versions_compare_numerically(a: str, b: str) -> None:
    assert parse_version(a) < parse_version(b)


@pytest.mark.parametrize("bad", ["0.1.0", "0.1", "v0.1.0-1", "0.1.0-1-2", "01.1.0-1", "0.1.0-a"])
def test_malformed_versions_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a version X.Y.Z-N"):
        parse_version(bad)


def test_upgrade_from_may_omit_the_build() -> None:
    assert parse_version("0.1.0", build=False) == (0, 1, 0, 0)
    assert parse_version("0.1.0", build=False) < parse_version("0.1.0-1")


def test_the_newest_newer_version_is_chosen() -> None:
    data = manifest(version("0.1.0-1"), version("0.1.0-3"), version("0.1.0-10"), version("0.1.0-2"))
    assert decide(data) == ("0.1.0-10", [])


def test_nothing_newer_means_nothing_chosen_and_nothing_reported() -> None:
    assert decide(manifest(version("0.1.0-1"), version("0.1.0-2"))) == (None, [])
    assert decide(manifest()) == (None, [])


def test_upgrade_from_excludes_nodes_that_are_too_old() -> None:
    data = manifest(version("0.2.0-1", upgrade_from="0.1.0-3"), version("0.1.0-3"))
    assert decide(data) == ("0.1.0-3", [
        ("0.2.0-1", "it updates only from 0.1.0-3 or later (this node runs 0.1.0-2)"),
    ])  # fmt: skip
    assert decide(data, Running("worker-standin", "0.1.0-3", "1.35"))[0] == "0.2.0-1"
    # upgrade_from equal to the running version admits it; X.Y.Z admits every build of it
    assert decide(manifest(version("0.2.0-1", upgrade_from="0.1.0-2")))[0] == "0.2.0-1"
    assert decide(manifest(version("0.2.0-1", upgrade_from="0.1.0")))[0] == "0.2.0-1"
    assert decide(manifest(version("0.2.0-1", upgrade_from="0.1.1")))[0] is None


def test_a_version_failed_on_this_node_is_never_chosen() -> None:
    data = manifest(version("0.1.0-3"), version("0.1.0-4"))
    assert decide(data, failed=("0.1.0-4",)) == ("0.1.0-3", [
        ("0.1.0-4", "it failed on this node before (see 'hostbuild-node update status')"),
    ])  # fmt: skip
    assert decide(data, failed=("0.1.0-4", "0.1.0-3"))[0] is None


def test_other_layouts_are_not_taken() -> None:
    assert decide(manifest(version("0.1.0-3", layout=1), version("0.1.0-4", layout=3))) == (None, [
        ("0.1.0-4", "it is for disk layout 3, this node has layout 2"),
        ("0.1.0-3", "it is for disk layout 1, this node has layout 2"),
    ])  # fmt: skip


def test_other_images_are_not_taken() -> None:
    assert decide(manifest(version("0.1.0-3"), image_id="worker")) == (None, [
        ("0.1.0-3", "it is an image of 'worker', this node runs 'worker-standin'"),
    ])  # fmt: skip


@pytest.mark.parametrize(
    ("running", "new", "ok"),
    [
        ("1.35", "1.35", True),
        ("1.35", "1.36", True),
        ("1.35", "1.34", True),
        ("1.35", "1.37", False),
        ("1.35", "1.33", False),
        ("1.35", "2.35", False),
        (None, "1.36", True),  # the running image has no kubelet
        ("1.35", None, True),  # nor has the new one
    ],
)
def test_kubelet_moves_at_most_one_minor(running: str | None, new: str | None, ok: bool) -> None:
    assert (kubelet_skew(running, new) is None) is ok
    data = manifest(version("0.1.0-3", kubelet_minor=new))
    chosen, skipped = decide(data, Running("worker-standin", "0.1.0-2", running))
    assert (chosen == "0.1.0-3") is ok
    if not ok:
        assert skipped == [
            ("0.1.0-3", f"kubelet would move from {running} to {new}, more than one minor")
        ]


def test_every_reason_is_given_and_the_first_acceptable_version_below_wins() -> None:
    data = manifest(
        version("0.3.0-1", layout=1, kubelet_minor="1.37", upgrade_from="0.2.0"),
        version("0.2.0-1"),
        version("0.1.0-5"),
    )
    chosen, skipped = decide(data, failed=("0.2.0-1",))
    assert chosen == "0.1.0-5"
    assert skipped == [
        ("0.3.0-1", "it updates only from 0.2.0 or later (this node runs 0.1.0-2); "
                    "it is for disk layout 1, this node has layout 2; "
                    "kubelet would move from 1.35 to 1.37, more than one minor"),
        ("0.2.0-1", "it failed on this node before (see 'hostbuild-node update status')"),
    ]  # fmt: skip


def test_a_malformed_entry_is_kept_out_and_reported_not_fatal() -> None:
    bad_hash = version("0.1.0-9", roothash="XYZ")
    no_files = version("0.1.0-8")
    del no_files["files"]["uki"]
    data = manifest(bad_hash, no_files, version("0.1.0-3"), "junk", version("0.1.0-3"))
    parsed = parse_manifest(data, "stable")
    assert [e.version for e in parsed.entries] == ["0.1.0-3"]
    chosen, skipped = decide(data)
    assert chosen == "0.1.0-3"
    assert skipped == [
        ("0.1.0-9", "unreadable entry: roothash must be 64 lowercase hex digits, got 'XYZ'"),
        ("0.1.0-8", "unreadable entry: files must name exactly root, verity, uki, got "
                    "['root', 'verity']"),
        ("versions[3]", "unreadable entry: not a JSON object"),
    ]  # fmt: skip
    assert ("0.1.0-3", "listed twice") in parsed.invalid


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"size": 0}, "files.root.size must be a positive integer, got 0"),
        ({"compressed_size": "5"}, "files.root.compressed_size must be a positive integer"),
        ({"sha256": "AB" * 32}, "files.root.sha256 must be 64 lowercase hex digits"),
        ({"target": "/etc/passwd"}, "files.root.target must be a relative target path"),
        ({"target": "a/../../b"}, "files.root.target must be a relative target path"),
    ],
)
def test_payload_fields_are_checked(change: dict[str, Any], message: str) -> None:
    entry = version("0.1.0-3")
    entry["files"]["root"].update(change)
    assert message in parse_manifest(manifest(entry), "stable").invalid[0][1]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "the manifest is not a JSON object, got list"),
        ({**manifest(), "format": 2}, "format 2 is not supported (this node reads 1)"),
        ({**manifest(), "channel": "beta"}, "the manifest is for channel 'beta', not 'stable'"),
        ({**manifest(), "image_id": ""}, "image_id must be a non-empty string, got ''"),
        ({**manifest(), "versions": {}}, "versions must be a list, got dict"),
    ],
)
def test_a_manifest_of_the_wrong_shape_is_refused(data: Any, message: str) -> None:
    with pytest.raises(ChannelError) as e:
        parse_manifest(copy.deepcopy(data), "stable")
    assert str(e.value) == message
