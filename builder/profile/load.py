"""Loading a profile: `extends:` inheritance, deep merge, typed conversion and every rule.

Loading collects every problem, from every file of the `extends` chain, as `file: path: message`.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import Issue, ProfileError
from builder.node.check import join_path, kind_of
from builder.node.yamlsafe import YamlError, load_yaml
from builder.profile.checks import check_profile, check_versions
from builder.profile.model import Profile, SecureBoot
from builder.profile.schema import INVALID, convert, yaml_fields

PROFILES_DIR = Path(os.environ.get("HOSTBUILD_PROFILES", Path(__file__).parents[2] / "profiles"))
MAX_PROFILE = 1 << 20  # profiles are a few KiB; this bounds reading a wrong file (or /dev/zero)


def display(path: Path) -> str:
    """A path as messages show it: as the user gave it (`a/../` tidied away), but a file of
    hostbuild's own profiles/ relative to the working directory when below it."""
    if path.is_absolute() and path.resolve().is_relative_to(PROFILES_DIR.resolve()):
        try:
            return os.fspath(path.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            pass
    return os.path.normpath(path)


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
    """The `extends` chain, base first; cycles and unreadable files become issues.

    A problem with a file that `extends` pulled in is reported against the `extends` that named
    it, so the message names both files.
    """
    layers: list[_Layer] = []
    path = find_profile(ref)
    seen: list[tuple[Path, Path]] = []
    parent: Any = None
    while True:
        resolved = path.resolve()
        if any(resolved == r for r, _ in seen):
            cycle = " -> ".join(display(p) for p in [*(p for _, p in seen), path])
            issues.append(Issue(display(layers[-1].path), "extends", f"cycle in extends: {cycle}"))
            break
        seen.append((resolved, path))
        data = _read_profile(path)
        if isinstance(data, _Problem):
            if not layers:
                issues.append(Issue(display(path), data.path, data.message))
            elif isinstance(data, _Missing):
                names = ", ".join(p.stem for p in list_profiles())
                message = f"no profile {display(path)!r}; profiles: {names}"
                issues.append(Issue(display(layers[-1].path), "extends", message))
            else:
                problem = f"{data.path}: {data.message}" if data.path else data.message
                message = f"{parent!r} names {display(path)}, which is not a profile: {problem}"
                issues.append(Issue(display(layers[-1].path), "extends", message))
            break
        layers.append(_Layer(path, data))
        parent = data.pop("extends", None)
        if parent is None:
            break
        if not isinstance(parent, str) or not parent.strip():
            issues.append(Issue(display(path), "extends", "expected a profile name or path"))
            break
        path = find_profile(parent, relative_to=path)
    return list(reversed(layers))


@dataclass(frozen=True)
class _Problem:
    path: str
    message: str


class _Missing(_Problem):
    pass


def _read_profile(path: Path) -> dict[str, Any] | _Problem:
    """The top-level mapping of one profile file, or what is wrong with the file."""
    try:
        mode = path.stat().st_mode  # before opening: a FIFO would block
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            return _Problem("", f"{kind}, not a profile file (NAME.yaml)")
        with path.open("rb") as f:
            raw = f.read(MAX_PROFILE + 1)
    except FileNotFoundError:
        names = ", ".join(p.stem for p in list_profiles())
        return _Missing("", f"no such profile; profiles: {names}")
    except OSError as e:
        return _Problem("", f"cannot be read: {e.strerror}")
    if len(raw) > MAX_PROFILE:
        return _Problem("", f"over {MAX_PROFILE // 1024} KiB: too big for a profile")
    try:
        data = load_yaml(raw)
    except YamlError as e:
        return _Problem(e.path, e.message)
    if data is None:
        return {}
    if not isinstance(data, dict):
        return _Problem("", f"expected a mapping at the top level, got {kind_of(data)}")
    return data


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
        if profile.secure_boot is not None:
            bases = {
                f.name: _origin_of(f"secure_boot.{f.name}", origins, leaf).parent.absolute()
                for f in yaml_fields(SecureBoot)
            }
            secure_boot = dataclasses.replace(profile.secure_boot, bases=bases)
            profile = dataclasses.replace(profile, secure_boot=secure_boot)
        located += [
            Issue(display(_origin_of(p, origins, leaf)), p, m) for p, m in check_profile(profile)
        ]
        located += [Issue(display(leaf), p, m) for p, m in check_versions(profile)]
    if located:
        raise ProfileError(located)
    assert isinstance(profile, Profile)
    return profile
