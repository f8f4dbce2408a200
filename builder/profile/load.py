"""Loading a profile: `extends:` inheritance, deep merge, typed conversion and every rule.

Loading collects every problem, from every file of the `extends` chain, as `file: path: message`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import Issue, ProfileError
from builder.node.check import join_path
from builder.node.yamlsafe import YamlError, load_yaml
from builder.profile.checks import check_profile, check_versions
from builder.profile.model import Profile
from builder.profile.schema import INVALID, convert

PROFILES_DIR = Path(os.environ.get("HOSTBUILD_PROFILES", Path(__file__).parents[2] / "profiles"))


def display(path: Path) -> str:
    """A path as messages show it: relative to the working directory when below it."""
    try:
        return os.fspath(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return os.fspath(path)


def find_profile(ref: str, relative_to: Path | None = None) -> Path:
    """A profile file from a name in profiles/ (or next to `relative_to`) or a path."""
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        base = relative_to.parent if relative_to and not Path(ref).is_absolute() else Path()
        return base / ref
    for directory in ([relative_to.parent] if relative_to else []) + [PROFILES_DIR]:
        candidate = directory / f"{ref}.yaml"
        if candidate.exists():
            return candidate
    return PROFILES_DIR / f"{ref}.yaml"


def list_profiles() -> list[Path]:
    return sorted(PROFILES_DIR.glob("*.yaml"))


@dataclass
class _Layer:
    path: Path
    data: dict[str, Any]


def _read_layers(ref: str, issues: list[Issue]) -> list[_Layer]:
    """The `extends` chain, base first; cycles and unreadable files become issues."""
    layers: list[_Layer] = []
    path = find_profile(ref)
    seen: list[Path] = []
    while True:
        resolved = path.resolve()
        if resolved in seen:
            cycle = " -> ".join(display(p) for p in [*seen, resolved])
            issues.append(Issue(display(layers[-1].path), "extends", f"cycle in extends: {cycle}"))
            break
        seen.append(resolved)
        try:
            data = load_yaml(path.read_bytes())
        except FileNotFoundError:
            names = ", ".join(p.stem for p in list_profiles())
            if layers:
                message = f"no profile {display(path)!r}; profiles: {names}"
                issues.append(Issue(display(layers[-1].path), "extends", message))
            else:
                issues.append(Issue(display(path), "", f"no such profile; profiles: {names}"))
            break
        except YamlError as e:
            issues.append(Issue(display(path), e.path, e.message))
            break
        if data is None:
            data = {}
        if not isinstance(data, dict):
            issues.append(Issue(display(path), "", "expected a mapping at the top level"))
            break
        layers.append(_Layer(path, data))
        parent = data.pop("extends", None)
        if parent is None:
            break
        if not isinstance(parent, str):
            issues.append(Issue(display(path), "extends", "expected a profile name or path"))
            break
        path = find_profile(parent, relative_to=path)
    return list(reversed(layers))


def _merge(base: Any, over: Any) -> Any:
    """Deep merge: mappings merge key by key, anything else (lists too) is replaced.

    A key written `name+` appends its list to the inherited `name` instead.
    """
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            if isinstance(key, str) and key.endswith("+") and isinstance(value, list):
                inherited = base.get(key[:-1], [])
                key, value = key[:-1], (inherited if isinstance(inherited, list) else []) + value
            merged[key] = _merge(base.get(key), value)
        return merged
    return _merge({}, over) if isinstance(over, dict) else over


def _origins(data: Any, path: str, file: Path, out: dict[str, Path]) -> None:
    out[path] = file
    if isinstance(data, dict):
        for key, value in data.items():
            _origins(value, join_path(path, str(key).removesuffix("+")), file, out)


def _origin_of(path: str, origins: dict[str, Path], default: Path) -> Path:
    """The file that set `path` (or its nearest parent that was set)."""
    while path:
        if path in origins:
            return origins[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return default


def load_profile(ref: str) -> Profile:
    """Load, merge and validate a profile; raise ProfileError listing every problem."""
    issues: list[Issue] = []
    layers = _read_layers(ref, issues)
    if issues:
        raise ProfileError(issues)
    merged: dict[str, Any] = {}
    origins: dict[str, Path] = {}
    for layer in layers:
        merged = _merge(merged, layer.data)
        _origins(layer.data, "", layer.path, origins)
    leaf = layers[-1].path
    raw: list[tuple[str, str]] = []
    profile = convert(Profile, merged, "", raw)
    located = [Issue(display(_origin_of(p, origins, leaf)), p, m) for p, m in raw]
    if profile is not INVALID:
        chain = tuple(layer.path for layer in layers)
        profile = dataclasses.replace(profile, name=leaf.stem, path=leaf, chain=chain)
        located += [
            Issue(display(_origin_of(p, origins, leaf)), p, m) for p, m in check_profile(profile)
        ]
        located += [Issue(display(leaf), p, m) for p, m in check_versions(profile)]
    if located:
        raise ProfileError(located)
    assert isinstance(profile, Profile)
    return profile
