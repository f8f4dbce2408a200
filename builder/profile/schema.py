"""Typed conversion of YAML data onto frozen dataclasses that collects every issue at once.

A field with `metadata={"internal": True}` is filled by the loader, never from YAML. Strings are
one line of printable characters (they end up in files, command lines and units) unless their
field has `metadata={"text": True}` (file content, free text), which allows tabs and line breaks.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from typing import Any

# shared with the node agent's NodeConfig checks (builder/node is standalone; this side imports it)
from builder.node.check import control_character, join_path, unknown_key_message

INVALID: Any = object()
"""Returned for a value that had issues; the caller's dataclass is then not built."""


def describe(value: object) -> str:
    """How a wrong value is named in a message: its repr and its YAML kind."""
    kind = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
        type(None): "empty",
    }.get(type(value), type(value).__name__)
    return f"{value!r} ({kind})" if not isinstance(value, (list, dict)) else kind


def type_name(tp: Any) -> str:
    """The user-facing name of an expected type."""
    origin = typing.get_origin(tp)
    if tp is str:
        return "a string"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "a boolean (true or false)"
    if tp is Any:
        return "any value"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in (list, tuple):
        return "a list"
    if origin in (dict, Mapping):
        return "a mapping"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp) if a is not type(None))
    return str(tp)


def yaml_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The dataclass fields that YAML may set."""
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def convert(
    tp: Any, value: Any, path: str, issues: list[tuple[str, str]], lines: bool = False
) -> Any:
    """Convert `value` to `tp`; append (path, message) for each problem and return INVALID.

    Strings with control characters are problems, but for line breaks and tabs with `lines`.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(tp, value, path, issues, lines)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _convert_dataclass(tp, value, path, issues)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        allowed = [m.value for m in tp]
        if value in allowed:
            return tp(value)
        issues.append(
            (path, f"{describe(value)} is not allowed; allowed: {', '.join(map(repr, allowed))}")
        )
        return INVALID
    if origin in (list, tuple):
        return _convert_list(tp, value, path, issues, lines)
    if origin in (dict, Mapping):
        return _convert_dict(tp, value, path, issues, lines)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and type(value) is str:
        if bad := control_character(value, lines):
            chars = "printable text, tabs and line breaks" if lines else "one line of printable"
            issues.append((path, f"{value!r} contains {bad}; allowed: {chars} characters"))
            return INVALID
        return value
    if tp is bool and type(value) is bool:
        return value
    hint = "; quote it" if tp is str and isinstance(value, (int, float)) else ""
    issues.append((path, f"expected {type_name(tp)}, got {describe(value)}{hint}"))
    return INVALID


def _convert_union(
    tp: Any, value: Any, path: str, issues: list[tuple[str, str]], lines: bool
) -> Any:
    options = typing.get_args(tp)
    if value is None and type(None) in options:
        return None
    candidates = [o for o in options if o is not type(None)]
    if len(candidates) == 1:
        return convert(candidates[0], value, path, issues, lines)
    for option in candidates:
        trial: list[tuple[str, str]] = []
        result = convert(option, value, path, trial, lines)
        if not trial:
            return result
        if option is str and isinstance(value, str):  # the right type, a wrong character
            issues += trial
            return INVALID
    issues.append((path, f"expected {type_name(tp)}, got {describe(value)}"))
    return INVALID


def _convert_list(
    tp: Any, value: Any, path: str, issues: list[tuple[str, str]], lines: bool
) -> Any:
    if not isinstance(value, list):
        issues.append((path, f"expected a list, got {describe(value)}"))
        return INVALID
    item_type = typing.get_args(tp)[0]
    items = [convert(item_type, v, join_path(path, i), issues, lines) for i, v in enumerate(value)]
    return INVALID if any(i is INVALID for i in items) else tuple(items)


def _convert_dict(
    tp: Any, value: Any, path: str, issues: list[tuple[str, str]], lines: bool
) -> Any:
    if not isinstance(value, dict):
        issues.append((path, f"expected a mapping, got {describe(value)}"))
        return INVALID
    _, value_type = typing.get_args(tp)
    result: dict[str, Any] = {}
    failed = False
    for key, item in value.items():
        if not isinstance(key, str):
            issues.append((join_path(path, str(key)), f"keys must be strings, got {describe(key)}"))
            continue
        if bad := control_character(key):
            issues.append((join_path(path, key), f"the key {key!r} contains {bad}; allowed: one "
                           "line of printable characters"))  # fmt: skip
            failed = True
        result[key] = convert(value_type, item, join_path(path, key), issues, lines)
    return INVALID if failed or any(v is INVALID for v in result.values()) else result


def _convert_dataclass(cls: type, value: Any, path: str, issues: list[tuple[str, str]]) -> Any:
    if not isinstance(value, dict):
        issues.append((path or "(top level)", f"expected a mapping, got {describe(value)}"))
        return INVALID
    fields = {f.name: f for f in yaml_fields(cls)}
    hints = typing.get_type_hints(cls)
    failed = False
    for key in value:
        if key not in fields:
            failed = True
            issues.append((join_path(path, str(key)), unknown_key_message(str(key), list(fields))))
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in value:
            no_default = field.default is dataclasses.MISSING
            if no_default and field.default_factory is dataclasses.MISSING:
                issues.append(
                    (join_path(path, name), f"missing required key ({type_name(hints[name])})")
                )
                failed = True
            continue
        lines = bool(field.metadata.get("text"))
        converted = convert(hints[name], value[name], join_path(path, name), issues, lines)
        failed = failed or converted is INVALID
        kwargs[name] = converted
    if failed:
        return INVALID
    return cls(**kwargs)
