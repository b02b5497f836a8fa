"""Growth specs: schema, defaults, step rules, and errors located at file:line:column (tables and fuzzing)."""

from __future__ import annotations

import json
import os
import re
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from growc.spec.document import GrowcSpecError
from growc.spec.growth import GrowthSpec, load_spec, resolve_spec, spec_json_schema, spec_json_schema_text

ROOT = Path(__file__).resolve().parents[1]

VALID = """\
growc: 1
parents:
  - {model: cnn1d-4, kwargs: {num_classes: 3}}
  - {model: cnn1d-4, kwargs: {num_classes: 3}}
input: {shape: [2, 1, 40]}
growth:
  - {cross_init: zero}
"""


def _error(text: str) -> str:
    with pytest.raises(GrowcSpecError) as info:
        load_spec("spec.yaml", text=text)
    return str(info.value)


def test_a_minimal_spec_gets_every_default() -> None:
    spec = load_spec("spec.yaml", text=VALID)
    assert isinstance(spec, GrowthSpec)
    assert spec.seed == 0 and spec.input.dtype == "float32" and spec.trace.mode == "train"
    assert (spec.templates.sharing, spec.templates.per_bank, spec.templates.init) == ("layer", 2, "exact")
    step = spec.growth[0]
    assert (step.factor, step.method, step.cross_init, step.cross_scale, step.cross_templates, step.head) == (
        2,
        "mixture",
        "zero",
        1.0,
        "own",
        "sum",
    )
    assert spec.output is None


def test_resolving_a_spec_shares_nothing_with_the_spec_it_came_from() -> None:
    spec = load_spec("spec.yaml", text=VALID)
    resolved = resolve_spec(spec, spec.doc)
    assert resolved is not spec and resolved.parents is not spec.parents and resolved.growth is not spec.growth
    resolved.parents[0].kwargs["width"] = 999
    resolved.growth[0].factor = 7
    assert spec.parents[0].kwargs.get("width") != 999 and spec.growth[0].factor != 7


def test_target_width_resolves_the_factor_through_every_step() -> None:
    text = """\
growc: 1
parents: [{model: growc.models:CNN1d, kwargs: {width: 8}}]
input: {shape: [2, 1, 40]}
growth:
  - {factor: 2}
  - {target: {kwarg: width, value: 64}}
"""
    spec = load_spec("s.yaml", text=text)
    assert [s.factor for s in spec.growth] == [2, 4]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            VALID.replace("input: {shape: [2, 1, 40]}", "input: {shape: [2, 1, 40], dtyp: float32}"),
            "spec.yaml:5:28: input.dtyp: unknown key 'dtyp' (allowed here: shape, dtype, vocab, fill)",
        ),
        (
            VALID.replace("[2, 1, 40]", "[2, '1', 40]"),
            "spec.yaml:5:20: input.shape[1]: input should be a valid integer, got '1'",
        ),
        (
            VALID.replace("[2, 1, 40]", "[2, 0, 40]"),
            "spec.yaml:5:20: input.shape[1]: input should be greater than or equal to 1, got 0",
        ),
        (
            VALID.replace("growc: 1", "growc: 2"),
            "spec.yaml:1:8: growc: input should be 1, got 2 (the spec version; this growc reads version 1)",
        ),
        (
            VALID.replace("input: {shape: [2, 1, 40]}\n", ""),
            "spec.yaml:1:1: input: missing required key 'input' (the example input, or a list of them: the model's "
            "positional inputs)",
        ),
        (
            VALID.replace("{cross_init: zero}", "{cross_init: zeros}"),
            "spec.yaml:7:18: growth[0].cross_init: input should be 'orthogonal', 'zero', 'random' or 'copy', "
            "got 'zeros'",
        ),
        (
            VALID.replace("{cross_init: zero}", "{factor: 3}"),
            "spec.yaml:7:14: growth[0].factor: the first step fuses the 2 parents, so its factor is 2, not 3",
        ),
        (
            VALID.replace("{cross_init: zero}", "{method: net2net}"),
            "spec.yaml:7:14: growth[0].method: a fusion step combines the parents by mixture; choose its new blocks "
            "with cross_init (method 'net2net' applies to widening one model)",
        ),
        (
            VALID + "  - {factor: 2, head: mean}\n",
            "spec.yaml:8:17: growth[1].head: head applies to a fusion step (the first step, with several parents); "
            "a widening step's method decides its new blocks",
        ),
        (VALID + "  - {method: zero}\n", "spec.yaml:8:5: growth[1]: a widening step needs factor or target"),
        (
            VALID.replace("cnn1d-4, kwargs: {num_classes: 3}", "x:CNN1d, kwargs: {width: 4}")
            + "  - {factor: 3, target: {kwarg: width, value: 16}}\n",
            "spec.yaml:8:14: growth[1].factor: factor 3 disagrees with target (width 8 -> 16 is factor 2): give one of "
            "them",
        ),
        (
            VALID + "  - {target: {kwarg: width, value: 8}}\n",
            "spec.yaml:8:22: growth[1].target.kwarg: every parent must set the number kwargs.width for a target "
            "width (got None)",
        ),
        (
            VALID.replace("cnn1d-4, kwargs: {num_classes: 3}", "x:CNN1d, kwargs: {width: 4}")
            + "  - {target: {kwarg: width, value: 12}}\n",
            "spec.yaml:8:36: growth[1].target.value: target 12 is not an integer multiple (2 to 64) of the current "
            "width 8",
        ),
        (VALID.replace("growc: 1\n", "growc: 1\ngrowc: 1\n"), "spec.yaml:2:1: duplicate key 'growc' (first at line 1)"),
        (VALID + "1: x\n", "spec.yaml:8:1: a key must be a string, got int 1"),
        (VALID + "seed: !!python/object:os.system {}\n", "spec.yaml:8:7: unsupported tag"),
        (VALID + "seed: !custom 3\n", "spec.yaml:8:7: cannot read this value: could not determine a constructor"),
        (
            VALID + "seed: [1,\n",
            "spec.yaml:9:1: YAML syntax error: while parsing a flow node expected the node content",
        ),
        (VALID + "seed: 1.5\n", "spec.yaml:8:7: seed: input should be a valid integer, got 1.5"),
        (VALID + "seed: true\n", "spec.yaml:8:7: seed: input should be a valid integer, got True"),
        (VALID.replace("growc: 1", "growc: true"), "spec.yaml:1:8: growc: expected the integer 1, got True"),
        (VALID.replace("growc: 1", "growc: 1.0"), "spec.yaml:1:8: growc: expected the integer 1, got 1.0"),
        (
            VALID.replace("{num_classes: 3}}\ninput", "{num_classes: 3, when: 2020-01-02}}\ninput"),
            "spec.yaml:4:30: parents[1].kwargs: kwargs.when must be plain data (null, boolean, number, string, list or "
            "mapping), got date",
        ),
        (
            VALID.replace("cnn1d-4, kwargs: {num_classes: 3}}", "'torchvision:resnet18', kwargs: {weights: DEFAULT}}"),
            "spec.yaml:3:55: parents[0].kwargs.weights: growc never downloads pretrained weights: leave "
            "kwargs.weights out (growc sets every torchvision weights argument to null) and give the parent's weights "
            "file as parents[0].weights",
        ),
        ("- 1\n- 2\n", "spec.yaml:1:1: expected a mapping (key: value lines), got [1, 2]"),
        ("", "spec.yaml:1:1: the document is empty"),
        ("a: &a [*a]\n", "spec.yaml:1:4: a recursive alias (an anchor used inside itself)"),
        (
            VALID + "extra: &x {a: 1}\nmore: {<<: *x, b: 2}\n",
            "spec.yaml:8:1: extra: unknown key 'extra' (allowed here: growc, name",
        ),
    ],
)
def test_errors_name_file_line_column_and_what_was_expected(text: str, message: str) -> None:
    assert _error(text).startswith(message)


def test_every_problem_is_reported_in_line_order() -> None:
    text = VALID.replace("[2, 1, 40]", "[2, x, 40]").replace("growc: 1", "growc: 1\nsed: 3")
    lines = _error(text).splitlines()
    assert (
        lines[0] == "spec.yaml:2:1: sed: unknown key 'sed' (allowed here: " + ", ".join(GrowthSpec.model_fields) + ")"
    )
    assert lines[1] == "spec.yaml:6:20: input.shape[1]: input should be a valid integer, got 'x'"
    assert len(lines) == 2


def test_a_billion_laughs_document_is_refused_before_it_expands() -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    message = _error("\n".join(levels) + "\n")
    assert "values (alias expansion?)" in message and message.startswith("spec.yaml:")


def test_a_file_that_is_not_utf8_or_missing_is_a_located_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"growc: 1\nname: \xff\n")
    with pytest.raises(GrowcSpecError, match=r"bad.yaml:1:1: the file is not UTF-8 text \(byte 15\)"):
        load_spec(bad)
    with pytest.raises(GrowcSpecError, match=r"nope.yaml:1:1: cannot read the file: No such file or directory"):
        load_spec(tmp_path / "nope.yaml")


def test_the_shipped_json_schema_is_the_generated_one() -> None:
    shipped = (ROOT / "specs" / "growc.schema.json").read_text()
    assert shipped == spec_json_schema_text(), "run: growc schema --out specs/growc.schema.json"
    schema = spec_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"growc", "parents", "input", "growth"}
    assert schema["properties"]["growc"]["const"] == 1


def test_every_key_of_the_schema_is_in_the_spec_reference() -> None:
    reference = (ROOT / "docs" / "specs.md").read_text()
    schema = spec_json_schema()
    models = [schema, *schema["$defs"].values()]
    for model in models:
        for key in model.get("properties", {}):
            assert f"`{key}`" in reference, f"docs/specs.md does not document '{key}'"


# ---------------------------------------------------------------------------------------------------- fuzzing

LOCATED = re.compile(r"^fuzz\.yaml:(\d+):(\d+): \S")

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_KEYS = sorted({key for model in GrowthSpec.model_json_schema()["$defs"].values() for key in model["properties"]})


def _paths(data: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_documents(draw: st.DrawFn) -> str:
    """A valid spec with random values replaced, keys added or removed, then dumped to YAML."""
    data = yaml.safe_load(VALID)
    data["templates"] = {"sharing": "shape", "layers": ["features.*"]}
    for parent in data["parents"]:
        parent["kwargs"]["width"] = 4
    data["growth"].append({"factor": 2, "method": "net2net"})
    data["growth"].append({"target": {"kwarg": "width", "value": 16}})
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(data)))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "add", "delete"]))
        if not path:
            if action == "replace":
                data = draw(_values)
            continue
        if action == "replace":
            parent[path[-1]] = draw(_values)
        elif action == "delete":
            del parent[path[-1]]
        else:
            target = parent[path[-1]]
            if isinstance(target, dict):
                target[draw(st.sampled_from(_KEYS) | st.text(max_size=6))] = draw(_values)
            elif isinstance(target, list):
                target.append(draw(_values))
        if not isinstance(data, (dict, list)):
            break
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=draw(st.sampled_from([None, True, False])))


@st.composite
def broken_text(draw: st.DrawFn) -> str:
    """Valid YAML text with characters inserted, deleted or replaced (syntax errors, odd indentation, tags)."""
    text = draw(st.sampled_from([VALID, (ROOT / "specs" / "cnn1d-8-widen-twice.yaml").read_text()]))
    alphabet = st.sampled_from(list(":-[]{},&*!|>'\"#%@`? \t\n") + list(string.ascii_letters + string.digits))
    for _ in range(draw(st.integers(1, 5))):
        i = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        chunk = draw(st.text(alphabet=alphabet, min_size=1, max_size=4))
        if action == "insert":
            text = text[:i] + chunk + text[i:]
        elif action == "delete":
            text = text[:i] + text[i + len(chunk) :]
        else:
            text = text[:i] + chunk + text[i + len(chunk) :]
    return text


def _check_only_located_spec_errors(text: str) -> None:
    try:
        spec = load_spec("fuzz.yaml", text=text)
    except GrowcSpecError as error:
        lines = str(error).splitlines()
        assert lines and len(lines) == len(error.issues)
        last_line = text.count("\n") + 2
        for line in lines:
            match = LOCATED.match(line)
            assert match, f"not located: {line!r}"
            assert 1 <= int(match.group(1)) <= last_line and int(match.group(2)) >= 1, line
    else:
        assert isinstance(spec, GrowthSpec)
        json.dumps(spec.resolved())  # a valid spec always resolves to plain data


@given(mutated_documents())
def test_fuzzed_documents_raise_only_located_spec_errors(text: str) -> None:
    _check_only_located_spec_errors(text)


@given(broken_text())
def test_fuzzed_yaml_text_raises_only_located_spec_errors(text: str) -> None:
    _check_only_located_spec_errors(text)


@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_located_spec_errors(text: str) -> None:
    _check_only_located_spec_errors(text)


def test_a_pipe_a_folder_or_an_endless_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    for name in ("fifo", "folder"):
        with pytest.raises(GrowcSpecError, match=rf"{name}:1:1: not a plain file \(a folder, a pipe or a device\)"):
            load_spec(tmp_path / name)
    with pytest.raises(GrowcSpecError, match=r"zero:1:1: not a plain file"):
        load_spec("/dev/zero")
    (tmp_path / "big.yaml").write_bytes(b"#" * (17 << 20))
    with pytest.raises(GrowcSpecError, match=r"big.yaml:1:1: the file is larger than 16 MiB"):
        load_spec(tmp_path / "big.yaml")
