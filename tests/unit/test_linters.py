"""Linters run as tests: ruff, mypy (strict), shellcheck and dib-lint over the elements."""

from __future__ import annotations

import ast
import os
import shutil
import sys
from pathlib import Path

import pytest

from builder.run import base_environment, run
from tests.conftest import REPO

BIN = Path(sys.executable).parent
ELEMENTS = REPO / "elements"


def scripts() -> list[Path]:
    found = [
        p for p in ELEMENTS.glob("*/*.d/*")
        if p.is_file() and (os.access(p, os.X_OK) or p.parent.name == "environment.d")
    ]  # fmt: skip
    assert found, "the glob found no element scripts"
    return sorted(found)


def lint(*argv: str | Path) -> None:
    env = base_environment()
    env["PATH"] = f"{BIN}:{env['PATH']}"
    result = run(argv, env=env, cwd=REPO, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_check() -> None:
    lint(BIN / "ruff", "check", "builder", "tests")


def test_ruff_format() -> None:
    lint(BIN / "ruff", "format", "--check", "builder", "tests")


def test_mypy_strict() -> None:
    lint(BIN / "mypy", "--no-error-summary")


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_elements() -> None:
    lint("shellcheck", "--severity=style", *scripts())


def test_dib_lint_elements(tmp_path: Path) -> None:
    env = base_environment()
    env.update(PATH=f"{BIN}:{env['PATH']}", ELEMENTS_DIR="elements", LIB_DIR=os.fspath(tmp_path))
    result = run([BIN / "dib-lint"], env=env, cwd=REPO, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_phase_scripts_follow_dib_conventions() -> None:
    names = [p.name for p in scripts() if p.parent.name != "environment.d"]
    assert len(names) == len(set(names)), "hook file names must be unique across elements"
    for script in scripts():
        text = script.read_text()
        if script.parent.name == "environment.d":
            continue
        assert text.startswith("#!/bin/bash\n"), script
        assert "set -eu\nset -o pipefail\n" in text, script
        assert 'if [ "${DIB_DEBUG_TRACE:-0}" -gt 0 ]; then' in text, script
        assert 10 <= int(script.name[:2]) <= 90 or script.name.startswith("99-"), script
        assert len(text.splitlines()) <= 60, f"{script} is over 60 lines"
    for element in ELEMENTS.iterdir():
        assert (element / "README.rst").is_file(), f"{element.name} has no README.rst"


def test_modules_stay_small() -> None:
    for module in (REPO / "builder").rglob("*.py"):
        assert len(module.read_text().splitlines()) <= 800, f"{module} is over 800 lines"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    marker = "<!-- test-command -->\n```sh\n"
    assert marker in readme
    command = readme.split(marker, 1)[1].split("\n```", 1)[0].strip()
    assert command in (REPO / ".ci" / "run").read_text().splitlines()


def test_builder_has_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for path in (REPO / "builder").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {
            node.module
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom)
            and node.module is not None
            and node.module.startswith("builder.")
        }
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        assert module not in path, "import cycle: " + " -> ".join([*path, module])
        if module in done:
            return
        for dependency in sorted(graph.get(module, ())):
            visit(dependency, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
