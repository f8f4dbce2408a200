"""YAML as hostbuild reads it from users: UTF-8, unique keys, bounded aliases, located errors."""

from __future__ import annotations

import pytest

from builder.node.yamlsafe import MAX_DEPTH, MAX_VALUES, YamlError, load_yaml


def error_of(data: bytes | str) -> tuple[str, str]:
    with pytest.raises(YamlError) as caught:
        load_yaml(data)
    return caught.value.path, caught.value.message


def test_plain_documents_load_as_safe_load_would() -> None:
    assert load_yaml(b"a: 1\nb: [x, {c: true}]\n") == {"a": 1, "b": ["x", {"c": True}]}
    assert load_yaml(b"") is None
    assert load_yaml("\ufeffa: 1\n".encode()) == {"a": 1}  # a byte order mark is fine


def test_merge_keys_may_override_what_they_merge() -> None:
    data = load_yaml(b"base: &b {x: 1, y: 2}\nchild:\n  <<: *b\n  x: 3\n")
    assert data["child"] == {"x": 3, "y": 2}


def test_duplicate_keys_name_the_key_its_path_and_both_lines() -> None:
    assert error_of(b"a:\n  - {k: 1}\n  - k: 1\n    j: 2\n    k: 3\n") == (
        "a[1].k",
        "duplicate key 'k' (lines 3 and 5); a key may appear once in a mapping "
        "(YAML would keep only the last)",
    )
    assert error_of(b"{k: 1, k: 2}")[1].startswith("duplicate key 'k' (line 1);")
    assert load_yaml(b"1: a\n'1': b\n") == {1: "a", "1": "b"}  # different keys


def test_not_utf8_names_the_byte_line_and_column() -> None:
    assert error_of(b"a: 1\nb: caf\xe9\n") == (
        "",
        "not UTF-8: byte 0xe9 at line 2, column 7 is not valid UTF-8 (save the file as UTF-8)",
    )
    assert error_of("a: 1\n".encode("utf-16"))[1].startswith("not UTF-8: byte 0xff at line 1,")


def test_raw_control_characters_are_located_on_one_line() -> None:
    assert error_of("a: 1\nb: x\x1by\n") == (
        "",
        "not valid YAML at line 2, column 5: character U+001B is not allowed in YAML "
        "(control characters may only be written as escapes)",
    )


def test_more_than_one_document() -> None:
    assert error_of(b"a: 1\n---\nb: 2\n")[1] == (
        "not valid YAML at line 2, column 1: expected a single document in the stream, "
        "but found another document"
    )


def test_recursive_aliases_are_refused() -> None:
    assert error_of(b"a: &a [1, *a]\n") == (
        "a[1]",
        "line 1: an alias refers to a node that contains it (recursive structures are not allowed)",
    )


def test_an_alias_bomb_is_refused_at_once() -> None:
    levels = ["l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    path, message = error_of("\n".join(levels) + "\n")  # 10**10 values if expanded
    assert path == "l4"
    assert message == (
        f"holds more than {MAX_VALUES} values (an alias counts each time it is used); a "
        f"document may hold at most {MAX_VALUES}"
    )
    assert len(load_yaml("\n".join(levels[:4]) + "\n")["l3"]) == 10  # shared, but small: fine


def test_deep_nesting_is_refused_before_anything_recurses() -> None:
    assert load_yaml("a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1))
    for depth in (MAX_DEPTH, 100_000):  # PyYAML's composer alone would hit RecursionError
        assert error_of("a: " + "[" * depth + "]" * depth) == (
            "",
            f"not valid YAML at line 1, column {MAX_DEPTH + 3}: mappings and lists nest deeper "
            f"than {MAX_DEPTH} levels",
        )


def test_a_value_yaml_cannot_make_is_located_not_a_crash() -> None:
    assert error_of("since: 2024-01-31\nuntil: [1, 2024-02-30]\n") == (
        "",
        "not valid YAML at line 2, column 12: '2024-02-30' is not a valid timestamp (day is out "
        "of range for month); quote it",
    )
    path, message = error_of("n: " + "1" * 5000)
    assert (
        message.startswith("not valid YAML at line 1, column 4: '111") and "4300 digits" in message
    )
    assert "sys.set_int_max_str_digits" not in message
    expected = "'x' is not a valid float (could not convert string to float: 'x'); quote it"
    assert error_of("n: !!float x")[1].endswith(expected)
