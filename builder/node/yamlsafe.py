"""YAML as hostbuild reads it from users: UTF-8 only, each key once, bounded depth and aliases.

Shared by NodeConfigs (on the node) and profiles (the build host imports it). Every problem is a
`YamlError` that says where (line and column, or the dotted path of a duplicate key) and why.
"""

from __future__ import annotations

from typing import Any

import yaml

from .check import join_path, shorten

# what a document may expand to through aliases: a NodeConfig or a profile has a few hundred
# values, and an alias bomb (each level naming the one below twice) would make every walk over
# the loaded data take exponential time
MAX_VALUES = 100_000
# how deep mappings and lists may nest: a kubeconfig goes 4 deep, and PyYAML's composer (like
# every walk over the data) recurses, so 10000 '[' would end in RecursionError
MAX_DEPTH = 50
MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlError(Exception):
    """A document that cannot be read; `path` is the dotted path it concerns, if any."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader: at most MAX_DEPTH levels, and a value it cannot make is located."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                problem = f"mappings and lists nest deeper than {MAX_DEPTH} levels"
                raise yaml.composer.ComposerError(None, None, problem, mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except ValueError as e:  # a date like 2024-02-30, an int of 5000 digits, '!!float x'
            kind = node.tag.rpartition(":")[2]
            reason = str(e).split(";")[0]  # not Python's advice on sys.set_int_max_str_digits
            problem = f"{shorten(str(node.value))!r} is not a valid {kind} ({reason}); quote it"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None


def load_yaml(data: bytes | str) -> Any:
    """The one document in `data`; raises YamlError naming the line, column or path at fault."""
    text = decode_utf8(data) if isinstance(data, bytes) else data
    try:
        loader = _Loader(text)  # the reader checks every character at once
    except yaml.YAMLError as e:
        raise YamlError(describe_yaml_error(e, text)) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_node(loader, node, "", {}, set())
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise YamlError(describe_yaml_error(e, text)) from None
    finally:
        loader.dispose()


def decode_utf8(data: bytes) -> str:
    """`data` as UTF-8 (a byte order mark is dropped); YamlError names the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        start = data.rfind(b"\n", 0, e.start) + 1
        column = len(data[start : e.start].decode("utf-8", errors="replace")) + 1
        raise YamlError(
            f"not UTF-8: byte 0x{data[e.start]:02x} at line {line}, column {column} is not "
            "valid UTF-8 (save the file as UTF-8)"
        ) from None


def describe_yaml_error(e: yaml.YAMLError, text: str) -> str:
    """`not valid YAML at line L, column C: problem` on one line."""
    if isinstance(e, yaml.reader.ReaderError):
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        char = e.character if isinstance(e.character, int) else ord(e.character)
        return (
            f"not valid YAML at line {line}, column {column}: character U+{char:04X} is not "
            "allowed in YAML (control characters may only be written as escapes)"
        )
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    if context and problem.startswith("but "):  # "expected a single document ..., but found ..."
        problem = f"{context}, {problem}"
    return f"not valid YAML{where}: {problem}"


def _check_node(
    loader: yaml.SafeLoader, node: yaml.Node, path: str, sizes: dict[int, int], open_: set[int]
) -> int:
    """How many values `node` expands to; raises on duplicate keys, recursion, too many values."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_:
        raise YamlError(
            f"line {node.start_mark.line + 1}: an alias refers to a node that contains it "
            "(recursive structures are not allowed)",
            path,
        )
    open_.add(id(node))
    size = 1
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            size += _check_node(loader, item, join_path(path, i), sizes, open_)
    elif isinstance(node, yaml.MappingNode):
        first: dict[Any, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = None if key_node.tag == MERGE_TAG else _key_of(loader, key_node)
            if key is not None and key in first:
                lines = sorted({first[key].start_mark.line + 1, key_node.start_mark.line + 1})
                where = f"lines {lines[0]} and {lines[1]}" if len(lines) > 1 else f"line {lines[0]}"
                raise YamlError(
                    f"duplicate key {key!r} ({where}); a key may appear once in a "
                    "mapping (YAML would keep only the last)",
                    join_path(path, str(key)),
                )
            if key is not None:
                first[key] = key_node
            label = "<<" if key_node.tag == MERGE_TAG else "?" if key is None else str(key)
            size += _check_node(loader, key_node, path, sizes, open_)
            size += _check_node(loader, value_node, join_path(path, label), sizes, open_)
    open_.discard(id(node))
    if size > MAX_VALUES:
        raise YamlError(
            f"holds more than {MAX_VALUES} values (an alias counts each time it is used); a "
            f"document may hold at most {MAX_VALUES}",
            path,
        )
    sizes[id(node)] = size
    return size


def _key_of(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    """A scalar key's value (None for a complex key: it is not compared)."""
    if not isinstance(node, yaml.ScalarNode):
        return None
    key = loader.construct_object(node)
    try:
        hash(key)
    except TypeError:
        return None
    return key
