"""growc.spec.document: YAML parsed into plain data with the position of every value and key, located errors, and
schemas that refuse unknown keys and coercion. Independent of what a growth spec or recipe contains."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from growc.spec.document import (
    GrowcSpecError,
    SpecIssue,
    SpecModel,
    exact_int,
    load_document,
    parse_yaml,
    plain_data,
    spec_path,
)


class Inner(SpecModel):
    size: int = Field(ge=1)


class Outer(SpecModel):
    name: str
    items: list[Inner] = Field(default_factory=list)


def _error(text: str) -> str:
    with pytest.raises(GrowcSpecError) as info:
        parse_yaml(text, "doc.yaml")
    return str(info.value)


def test_every_value_and_key_has_its_line_and_column() -> None:
    doc = parse_yaml("name: a\nitems:\n  - {size: 3}\n  - size: 4\n", "doc.yaml")
    assert doc.data == {"name": "a", "items": [{"size": 3}, {"size": 4}]}
    assert doc.values[("name",)] == (1, 7)
    assert doc.keys[("items",)] == (2, 1)
    assert doc.values[("items", 0, "size")] == (3, 12)
    assert doc.keys[("items", 1, "size")] == (4, 5)
    assert doc.where(("items", 1, "size", "missing")) == (4, 11)  # the deepest ancestor the document has
    sub = doc.sub(("items", 1))
    assert sub.data == {"size": 4} and sub.where(("size",)) == (4, 11)
    assert str(sub.issue(("size",), "too big")) == "doc.yaml:4:11: items[1].size: too big"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 1\na: 2\n", "doc.yaml:2:1: duplicate key 'a' (first at line 1)"),
        ("a: &x [*x]\n", "doc.yaml:1:4: a recursive alias (an anchor used inside itself)"),
        ("? [1, 2]\n: 3\n", "doc.yaml:1:3: a key must be a string, not a list or mapping"),
        ("1: 2\n", "doc.yaml:1:1: a key must be a string, got int 1"),
        ("a: !!python/object {}\n", "doc.yaml:1:4: unsupported tag 'tag:yaml.org,2002:python/object' on a mapping"),
        ("a: !custom [1]\n", "doc.yaml:1:4: unsupported tag '!custom' on a list"),
        ("a: [1, 2\n", "doc.yaml:2:1: YAML syntax error"),
        ("", "doc.yaml:1:1: the document is empty"),
        ("a: 1\n---\nb: 2\n", "doc.yaml:2:1: YAML syntax error"),
        ("a: \x07\n", "doc.yaml:1:4: character U+0007 is not allowed in YAML"),
        ("a: !!int 99999999999999999999999999e9999\n", "doc.yaml:1:4: cannot read this value"),
        ("<<: 3\n", "doc.yaml:1:5: bad merge key"),
    ],
)
def test_bad_yaml_is_one_located_error(text: str, message: str) -> None:
    assert _error(text).startswith(message)


def test_merge_keys_and_anchors_expand_into_plain_data() -> None:
    doc = parse_yaml("base: &b {size: 2}\nitem:\n  <<: *b\n  name: x\n", "doc.yaml")
    assert doc.data == {"base": {"size": 2}, "item": {"size": 2, "name": "x"}}


def test_alias_expansion_and_depth_are_bounded() -> None:
    laughs = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefg", "bcdefgh", strict=True)
    )
    assert "values (alias expansion?)" in _error(laughs)
    assert "nests deeper than" in _error("a: " + "[" * 300 + "]" * 300 + "\n")


def test_a_schema_refuses_unknown_keys_and_coercion_at_their_position() -> None:
    with pytest.raises(GrowcSpecError) as info:
        load_document("doc.yaml", Outer, text="name: a\nitems:\n  - {size: '3'}\n  - {size: 0, extra: 1}\n")
    lines = str(info.value).splitlines()
    assert len(lines) == 3 and [i.line for i in info.value.issues] == [3, 4, 4]
    assert lines[0].startswith("doc.yaml:3:12: items[0].size:")
    assert any(line.startswith("doc.yaml:4:15: items[1].extra:") for line in lines)


def test_load_document_reads_plain_utf8_files_only(tmp_path: Path) -> None:
    path = tmp_path / "doc.yaml"
    path.write_text("name: a\n")
    model, doc = load_document(path, Outer)
    assert model == Outer(name="a") and doc.file == str(path)
    path.write_bytes(b"name: \xff\n")
    with pytest.raises(GrowcSpecError, match=r"doc.yaml:1:1: the file is not UTF-8 text \(byte 6\)"):
        load_document(path, Outer)
    with pytest.raises(GrowcSpecError, match=r"not a plain file"):
        load_document(tmp_path, Outer)
    with pytest.raises(GrowcSpecError, match=r"cannot read the file: No such file or directory"):
        load_document(tmp_path / "missing.yaml", Outer)


def test_paths_issues_and_plain_data() -> None:
    assert spec_path(("growth", 0, "factor")) == "growth[0].factor"
    assert spec_path(("kwargs", "a b")) == "kwargs['a b']"
    assert str(SpecIssue("f", 1, 2, "p", "bad\nvalue")) == "f:1:2: p: bad\\nvalue"  # always one line
    error = GrowcSpecError([SpecIssue("f", 3, 1, "", "later"), SpecIssue("f", 1, 1, "", "first")])
    assert str(error) == "f:1:1: first\nf:3:1: later"
    assert plain_data({"a": [1, 2.5, None, True, "x"]}) == {"a": [1, 2.5, None, True, "x"]}
    for bad, message in ((float("nan"), "finite"), (2**63, "too large"), (object(), "plain data")):
        with pytest.raises(ValueError, match=message):
            plain_data({"k": bad})
    assert exact_int(1) == 1
    for bad in (True, 1.0):
        with pytest.raises(ValueError, match="expected the integer 1"):
            exact_int(bad)
