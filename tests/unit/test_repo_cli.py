"""`hostbuild repo` through click's runner: exit codes and outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import Cli
from tests.updaterepo import make_build, tree


def init(run_cli: Cli, tmp_path: Path, *args: str) -> Path:
    path = tmp_path / "repo"
    result = run_cli("-q", "repo", "init", os.fspath(path), *args)
    assert result.exit_code == 0, result.output
    return path


def test_init_names_each_key_and_its_custody(run_cli: Cli, tmp_path: Path) -> None:
    path = init(run_cli, tmp_path, "--expiry-timestamp", "6h")
    keys = {p.name.split("-")[0]: p for p in (tmp_path / "keys").glob("*.pem")}
    result = run_cli("-q", "repo", "init", os.fspath(tmp_path / "second"), "--json",
                     "--keys", os.fspath(tmp_path / "k2"))  # fmt: skip
    assert result.exit_code == 0
    record = json.loads(result.stdout)
    assert record["expiry"] == {"root": "365d", "targets": "90d", "snapshot": "7d",
                                "timestamp": "1d"}  # fmt: skip
    assert [Path(p).parent for paths in record["keys"].values() for p in paths] == [
        tmp_path / "k2"
    ] * 4
    assert json.loads((path / "hostbuild-repo.json").read_text())["expiry"]["timestamp"] == "6h"
    assert sorted(keys) == ["root", "snapshot", "targets", "timestamp"]


def test_init_output(run_cli: Cli, tmp_path: Path) -> None:
    result = run_cli("-q", "repo", "init", os.fspath(tmp_path / "repo"))
    assert result.exit_code == 0
    keys = {p.name.split("-")[0]: p for p in (tmp_path / "keys").glob("*.pem")}
    assert result.output == (
        f"created {tmp_path / 'repo'}\n"
        f"root (365d, threshold 1, offline: move them off this machine): {keys['root']}\n"
        f"targets (90d, threshold 1, offline: move them off this machine): {keys['targets']}\n"
        f"snapshot (7d, threshold 1, online): {keys['snapshot']}\n"
        f"timestamp (1d, threshold 1, online): {keys['timestamp']}\n"
    )


def test_init_twice_is_an_error_with_a_hint(run_cli: Cli, tmp_path: Path) -> None:
    path = init(run_cli, tmp_path)
    result = run_cli("-q", "repo", "init", os.fspath(path))
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {path} exists and is not empty; hostbuild repo init never overwrites a "
        "repository\n"
        "(choose a new directory, or change this one with rotate-key, refresh or add)\n"
    )


def test_bad_durations_are_usage_errors(run_cli: Cli, tmp_path: Path) -> None:
    result = run_cli("repo", "init", os.fspath(tmp_path / "r"), "--expiry-root", "1y")
    assert result.exit_code == 2
    assert "Invalid value for '--expiry-root': '1y' is not a duration" in result.output
    assert not (tmp_path / "r").exists()


def test_status_json_shape(run_cli: Cli, tmp_path: Path) -> None:
    path = init(run_cli, tmp_path)
    assert run_cli("-q", "repo", "add", os.fspath(path), "--image",
                   os.fspath(make_build(tmp_path / "b1"))).exit_code == 0  # fmt: skip
    result = run_cli("repo", "status", os.fspath(path), "--json")
    assert result.exit_code == 0
    status = json.loads(result.stdout)
    assert sorted(status) == ["channels", "consistent_snapshot", "repository", "roles",
                              "targets", "warnings"]  # fmt: skip
    assert status["channels"] == {
        "stable": {"image_id": "worker-standin", "versions": ["0.1.0-1"], "latest": "0.1.0-1"}
    }
    assert status["targets"] == 4
    assert status["warnings"] == []
    timestamp = status["roles"]["timestamp"]
    assert sorted(timestamp) == ["expires", "expires_in_seconds", "keys", "offline", "period",
                                 "threshold", "version"]  # fmt: skip
    assert (timestamp["version"], timestamp["period"], timestamp["threshold"]) == (2, "1d", 1)
    assert timestamp["offline"] is False and status["roles"]["root"]["offline"] is True
    assert timestamp["keys"][0]["path"].startswith(os.fspath(tmp_path / "keys"))


def test_status_warns_of_missing_online_keys(run_cli: Cli, tmp_path: Path) -> None:
    path = init(run_cli, tmp_path)
    result = run_cli("repo", "status", os.fspath(path), "--keys", os.fspath(tmp_path / "none"))
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split() == ["ROLE", "VERSION", "EXPIRES", "PERIOD", "KEYS", "KEY", "FILES"]
    assert lines[1].split()[:2] == ["root", "1"] and lines[1].endswith("offline")
    assert lines[3].endswith("MISSING")
    assert lines[5] == "no channels yet (hostbuild repo add DIR --image OUTPUT --channel NAME)"
    assert lines[6:] == [
        f"warning: snapshot has 0 of its 1 signing key(s) in {tmp_path / 'none'}: refresh cannot "
        "sign it here",
        f"warning: timestamp has 0 of its 1 signing key(s) in {tmp_path / 'none'}: refresh cannot "
        "sign it here",
    ]


def test_refresh_rotate_add_publish(run_cli: Cli, tmp_path: Path) -> None:
    path = init(run_cli, tmp_path)
    result = run_cli("-q", "repo", "refresh", os.fspath(path), "--if-expiring-within", "12h")
    assert (result.exit_code, result.output) == (0, "signed: nothing was due\n")
    result = run_cli("-q", "repo", "refresh", os.fspath(path))
    assert (result.exit_code, result.output) == (0, "signed: snapshot v2, timestamp v2\n")
    result = run_cli("-q", "repo", "rotate-key", os.fspath(path), "snapshot", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["signed"] == {"root": 2, "snapshot": 3, "timestamp": 3}
    build = make_build(tmp_path / "b1")
    result = run_cli("-q", "repo", "add", os.fspath(path), "--image", os.fspath(build))
    assert result.output == ("added worker-standin 0.1.0-1 to channel 'stable': targets v2, "
                             "snapshot v4, timestamp v4\n")  # fmt: skip
    result = run_cli("-q", "repo", "add", os.fspath(path), "--image", os.fspath(build))
    assert result.output == "worker-standin 0.1.0-1 is on channel 'stable' already: unchanged\n"
    www = tmp_path / "www"
    result = run_cli("-q", "repo", "publish", os.fspath(path), "--to", os.fspath(www))
    assert result.output == f"{www}: 13 file(s) copied, 0 already there\n"
    assert (www / "metadata" / "2.root.json").is_file()
    assert not (www / "hostbuild-repo.json").exists()


def test_add_refused_exits_1_naming_the_file(run_cli: Cli, tmp_path: Path) -> None:
    path = init(run_cli, tmp_path)
    build = make_build(tmp_path / "b1", layout=1)
    before = tree(path)
    result = run_cli("-q", "repo", "add", os.fspath(path), "--image", os.fspath(build))
    assert result.exit_code == 1
    payload = build / "worker-standin-0.1.0-1.update" / "payload.json"
    assert result.output == (
        f"Error: {payload}: layout 1 is not one the nodes can install (supported: 2)\n"
        "(build the image with a hostbuild whose disk layout the nodes support)\n"
    )
    assert tree(path) == before
