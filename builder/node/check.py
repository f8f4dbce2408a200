"""Reading a YAML document while collecting every issue (`path: message`) instead of stopping."""

from __future__ import annotations

import base64
import binascii
import contextlib
import difflib
import re
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# C0 and C1 controls, DEL and the Unicode line and paragraph separators: what splits or ends a
# line in the files, command lines and units that strings end up in
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
CONTROL_NAMES = {"\n": "a line break", "\r": "a carriage return", "\t": "a tab"}
PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END \1-----")


@dataclass(frozen=True)
class Issue:
    """One problem at a dotted path of the NodeConfig."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidConfig(Exception):
    """Every problem found in a NodeConfig."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


T = TypeVar("T")


class Checker:
    """Reads one document, appending an Issue for every problem instead of stopping."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []

    def add(self, path: str, message: str) -> None:
        self.issues.append(Issue(path, message))

    def mapping(
        self, value: Any, path: str, allowed: Sequence[str], required: Sequence[str] = ()
    ) -> dict[Any, Any]:
        """The known keys of a mapping; unknown keys get did-you-mean, missing ones an issue."""
        if not isinstance(value, dict):
            self.add(path or "(top level)", f"expected a mapping, got {describe(value)}")
            return {}
        for key in value:
            if key not in allowed:
                self.add(join_path(path, str(key)), unknown_key_message(str(key), allowed))
        for key in required:
            if key not in value:
                self.add(join_path(path, key), "missing required key")
        return {k: v for k, v in value.items() if k in allowed}

    def string(
        self, value: Any, path: str, pattern: re.Pattern[str] | None = None, what: str = "",
        *, lines: bool = False, secret: bool = False,
    ) -> str:  # fmt: skip
        """A string; "" (and an issue) for another type or a control character.

        Only `lines` text (PEM, a kubeconfig) may hold line breaks and tabs; `secret` values are
        never echoed.
        """
        if not isinstance(value, str):
            hint = "; quote it" if isinstance(value, (int, float)) else ""
            self.add(path, f"expected a string, got {describe(value)}{hint}")
            return ""
        if bad := control_character(value, lines):
            allowed = "printable text, tabs and line breaks" if lines else "one line of printable"
            got = "" if secret else f", got {shorten(value)!r}"
            self.add(path, f"contains {bad}; allowed: {allowed} characters{got}")
            return ""
        if pattern is not None and not pattern.match(value):
            self.add(path, f"must be {what}, got {value!r}")
        return value

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            self.add(path, f"expected a boolean (true or false), got {describe(value)}")
            return False
        return value

    def items(self, value: Any, path: str, read: Callable[[Any, str], T]) -> tuple[T, ...]:
        if not isinstance(value, list):
            self.add(path, f"expected a list, got {describe(value)}")
            return ()
        return tuple(read(item, join_path(path, i)) for i, item in enumerate(value))

    def url(self, value: Any, path: str, schemes: Sequence[str] = ("https",)) -> str:
        text = self.string(value, path)
        kinds = " or ".join(f"{s}://" for s in schemes)
        if text and not text.isascii():  # JSON escapes of non-BMP characters are not TOML's
            self.add(path, f"must be an {kinds} URL in ASCII (a host in punycode, 'xn--...'; "
                     f"a path %-encoded), got {text!r}")  # fmt: skip
        elif text and not is_url(text, schemes):
            self.add(path, f"must be an {kinds} URL, got {text!r}")
        return text

    def pem(self, value: Any, path: str, kinds: Sequence[str], secret: bool = False) -> str:
        """PEM text whose blocks are all of `kinds` (base64 of PEM is accepted too)."""
        before = len(self.issues)
        text = self.string(value, path, lines=True, secret=secret)
        if len(self.issues) > before:
            return ""
        if text and "-----BEGIN" not in text:
            with contextlib.suppress(binascii.Error, UnicodeDecodeError):
                text = base64.b64decode(text, validate=True).decode()
                text = "" if control_character(text, lines=True) else text
        blocks = PEM_BLOCK.findall(text)
        good = bool(blocks) and all(k in kinds and _is_base64(body) for k, body in blocks)
        if value is not None and isinstance(value, str) and not good:
            want = " or ".join(f"'-----BEGIN {k}-----'" for k in kinds)
            got = "" if secret else f", got {shorten(value)!r}"
            self.add(path, f"must be PEM text with {want} blocks (or its base64){got}")
        return text.strip() + "\n" if good else ""


def control_character(text: str, lines: bool = False) -> str:
    """The first control character in `text`, named ('a line break (U+000A)'), or ""."""
    for match in CONTROL.finditer(text):
        char = match.group()
        if not (lines and char in "\t\n\r"):
            return f"{CONTROL_NAMES.get(char, 'a control character')} (U+{ord(char):04X})"
    return ""


def is_url(text: str, schemes: Sequence[str]) -> bool:
    """A URL of one of `schemes` with a host (and a valid port, if any), without whitespace."""
    try:
        parsed = urllib.parse.urlsplit(text)
        parsed.port  # noqa: B018 -- raises ValueError for a port that is not one
    except ValueError:  # e.g. 'https://[::1' (an unclosed IPv6 address)
        return False
    return parsed.scheme in schemes and bool(parsed.hostname) and not re.search(r"\s", text)


def kind_of(value: object) -> str:
    """The YAML kind of a value: 'a string', 'a mapping', 'empty'."""
    return {
        bool: "a boolean", int: "an integer", float: "a number", str: "a string",
        list: "a list", dict: "a mapping", type(None): "empty",
    }.get(type(value), type(value).__name__)  # fmt: skip


def describe(value: object) -> str:
    """How a wrong value is named in a message: its repr and its YAML kind."""
    kind = kind_of(value)
    return f"{value!r} ({kind})" if not isinstance(value, (list, dict)) else kind


def join_path(parent: str, key: str | int) -> str:
    """`spec.node.taints[0]`, `spec.node.labels['example.com/role']`."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    if not _IDENT.match(key):
        return f"{parent}[{key!r}]"
    return f"{parent}.{key}" if parent else key


def unknown_key_message(key: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    guess = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key {key!r}; {guess}allowed: {', '.join(sorted(allowed))}"


def shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_base64(body: str) -> bool:
    try:
        return bool(base64.b64decode("".join(body.split()), validate=True))
    except binascii.Error:
        return False


class AnyKey(tuple[str, ...]):
    """`allowed` for free-form mappings: every key is allowed."""

    def __contains__(self, key: object) -> bool:
        return True
