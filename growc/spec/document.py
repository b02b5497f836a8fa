"""Reading YAML documents into typed schemas, with every error located at a file, line and column.

This is the machinery under growth specs (:mod:`growc.spec`) and recipes: :func:`load_document` parses YAML with
PyYAML's safe composer (no Python tags, no object construction), records where every key and value sits, validates
the result against a pydantic model (unknown keys rejected, strict types) and turns each validation error into a
:class:`GrowcSpecError` that names ``file:line:column``, the key path (``growth[0].factor``) and what was expected.
Duplicate keys, non-string keys, recursive aliases and oversized documents are errors too, never silently accepted.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from growc.errors import GrowcConfigError

__all__ = [
    "Document",
    "GrowcSpecError",
    "Located",
    "SpecIssue",
    "SpecModel",
    "exact_int",
    "load_document",
    "plain_data",
    "spec_path",
]

MAX_NODES = 100_000
MAX_BYTES = 16 << 20  # a spec or recipe is a few kilobytes
MAX_DEPTH = 64

Path_ = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


class SpecModel(BaseModel):
    """Base of every schema: unknown keys are errors and values are not coerced (``"3"`` is not an int)."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


class Document(SpecModel):
    """A top-level document (growth spec, recipe) that remembers where each of its values came from."""

    _doc: Located | None = PrivateAttr(default=None)

    @property
    def doc(self) -> Located:
        """Where each value came from (for errors found after loading, e.g. against the traced graph)."""
        return self._doc if self._doc is not None else Located(f"<{type(self).__name__}>", None)

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the document are resolved against (the document's own)."""
        return Path(self.doc.file).resolve().parent if self._doc is not None else Path.cwd()

    @classmethod
    def json_schema(cls, schema_id: str) -> dict[str, Any]:
        """The JSON Schema of this document type, for editors' YAML validation."""
        schema = cls.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = schema_id
        return schema


def exact_int(value: object) -> object:
    """A ``mode="before"`` check for fields whose schema compares by equality (``Literal[1]``): ``true`` and
    ``1.0`` equal 1 in Python but are not the integer 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected the integer 1, got {value!r}")
    return value


def plain_data(value: object, where: str = "") -> object:
    """Check that ``value`` is plain JSON-like data (what a resolved spec can write back unchanged)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if abs(value) >= 2**63:
            raise ValueError(f"{where or 'value'} {str(value)[:12]}... is too large")
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{where or 'value'} must be a finite number, got {value!r}")
        return value
    if isinstance(value, list):
        for i, item in enumerate(value):
            plain_data(item, f"{where}[{i}]")
        return value
    if isinstance(value, dict):
        for key, item in value.items():
            plain_data(item, f"{where}.{key}" if where else str(key))
        return value
    raise ValueError(
        f"{where or 'value'} must be plain data (null, boolean, number, string, list or mapping), "
        f"got {type(value).__name__} {value!r}"[:200]
    )


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a document: where it is and what is wrong."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return _one_line(f"{self.file}:{self.line}:{self.column}: {where}{self.message}")


def _one_line(text: str) -> str:
    """Escape line breaks and other unprintable characters: one issue is always one line."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class GrowcSpecError(GrowcConfigError):
    """A spec or recipe is not valid. ``issues`` lists every problem with its file, line and column; the message
    starts with the first one (``spec.yaml:12:14: growth[0].factor: ...``)."""

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.line, i.column))
        super().__init__("\n".join(str(i) for i in self.issues))


def spec_path(path: Path_) -> str:
    """``("growth", 0, "factor")`` -> ``growth[0].factor``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][\w-]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


@dataclass
class Located:
    """A parsed document: the plain data and the position of every value (``values``) and mapping key (``keys``)."""

    file: str
    data: Any
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    prefix: Path_ = ()  # a view of a part of the document (see sub)

    def sub(self, prefix: Path_) -> Located:
        """A view of the value at ``prefix`` (e.g. a growth spec inline in a recipe): paths are relative to it."""
        data = self.data
        for part in prefix:
            data = data[part] if isinstance(data, (dict, list)) else None
        return Located(self.file, data, self.values, self.keys, (*self.prefix, *prefix))

    def where(self, path: Path_, *, key: bool = False) -> tuple[int, int]:
        """Line and column of ``path`` (of its key with ``key``), or of its deepest ancestor the document has."""
        path = (*self.prefix, *path)
        if key and path in self.keys:
            return self.keys[path]
        for n in range(len(path), -1, -1):
            if path[:n] in self.values:
                return self.values[path[:n]]
        return (1, 1)

    def issue(self, path: Path_, message: str, *, key: bool = False) -> SpecIssue:
        line, column = self.where(path, key=key)
        return SpecIssue(self.file, line, column, spec_path((*self.prefix, *path)), message)

    def error(self, path: Path_, message: str, *, key: bool = False) -> GrowcSpecError:
        return GrowcSpecError([self.issue(path, message, key=key)])


def _mark(mark: Any) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


def _issue(file: str, mark: Any, message: str) -> GrowcSpecError:
    line, column = _mark(mark)
    return GrowcSpecError([SpecIssue(file, line, column, "", message)])


def _compose(text: str, file: str) -> yaml.Node:
    """The document's single YAML node tree; YAML and reader errors become located :class:`GrowcSpecError`."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as error:
        problem = f"{error.context} " if error.context else ""
        mark = error.problem_mark or error.context_mark
        raise _issue(file, mark, f"YAML syntax error: {problem}{error.problem}") from None
    except yaml.reader.ReaderError as error:
        before = text[: error.position]
        line, column = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        code = error.character if isinstance(error.character, int) else ord(error.character)
        message = f"character U+{code:04X} is not allowed in YAML ({error.reason})"
        raise GrowcSpecError([SpecIssue(file, line, column, "", message)]) from None
    except yaml.YAMLError as error:
        raise GrowcSpecError([SpecIssue(file, 1, 1, "", f"YAML error: {error}")]) from None
    except RecursionError:
        raise GrowcSpecError(
            [SpecIssue(file, 1, 1, "", f"the document nests deeper than {MAX_DEPTH} levels")]
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    if root is None:
        raise GrowcSpecError([SpecIssue(file, 1, 1, "", "the document is empty")])
    return root


class _Construct:
    """Builds plain data from a node tree, recording every value's and key's position in ``doc``; bounded in
    values (alias expansion) and depth, refusing recursive aliases, tags, non-string and duplicate keys."""

    def __init__(self, doc: Located) -> None:
        self.doc = doc
        self.constructor = yaml.constructor.SafeConstructor()
        self.count = 0
        self.active: set[int] = set()

    def fail(self, mark: Any, message: str) -> GrowcSpecError:
        return _issue(self.doc.file, mark, message)

    def build(self, node: yaml.Node, path: Path_) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.fail(node.start_mark, f"the document has more than {MAX_NODES} values (alias expansion?)")
        if len(path) > MAX_DEPTH:
            raise self.fail(node.start_mark, f"the document nests deeper than {MAX_DEPTH} levels")
        if id(node) in self.active:
            raise self.fail(node.start_mark, "a recursive alias (an anchor used inside itself)")
        self.doc.values[path] = _mark(node.start_mark)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node)
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _SEQ_TAG:
                    raise self.fail(node.start_mark, f"unsupported tag {node.tag!r} on a list")
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            return self.mapping(node, path)
        finally:
            self.active.discard(id(node))

    def scalar(self, node: yaml.ScalarNode) -> Any:
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as error:
            raise self.fail(node.start_mark, f"cannot read this value: {getattr(error, 'problem', error)}") from None
        except (ValueError, OverflowError) as error:
            raise self.fail(node.start_mark, f"cannot read this value: {error}") from None

    def mapping(self, node: yaml.Node, path: Path_) -> dict[str, Any]:
        if node.tag != _MAP_TAG:
            raise self.fail(node.start_mark, f"unsupported tag {node.tag!r} on a mapping")
        try:
            self.constructor.flatten_mapping(node)  # merge keys (<<: *anchor)
        except yaml.YAMLError as error:
            raise self.fail(getattr(error, "problem_mark", node.start_mark), f"bad merge key: {error}") from None
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.fail(key_node.start_mark, "a key must be a string, not a list or mapping")
            key = self.build(key_node, (*path, "\0key"))
            if not isinstance(key, str):
                raise self.fail(key_node.start_mark, f"a key must be a string, got {type(key).__name__} {key!r}")
            if key in out:
                first = self.doc.keys[(*path, key)]
                raise self.fail(key_node.start_mark, f"duplicate key {key!r} (first at line {first[0]})")
            self.doc.keys[(*path, key)] = _mark(key_node.start_mark)
            out[key] = self.build(value_node, (*path, key))
        self.doc.values.pop((*path, "\0key"), None)
        return out


def parse_yaml(text: str, file: str) -> Located:
    """Parse one YAML document into plain data with positions; raises :class:`GrowcSpecError` on any problem."""
    doc = Located(file, None)
    doc.data = _Construct(doc).build(_compose(text, file), ())
    return doc


def _model_at(model: type[BaseModel], path: Path_) -> type[BaseModel] | None:
    """The schema class that describes the mapping at ``path`` (for listing the keys it allows)."""
    current: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return None
        current = _first_model(fields[part].annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _first_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _issues_from(error: ValidationError, doc: Located, model: type[BaseModel]) -> list[SpecIssue]:
    issues: list[SpecIssue] = []
    for item in error.errors(include_url=False):
        # Keep the parts of the location the document has (pydantic adds union member names like 'int').
        path: Path_ = ()
        for part in item["loc"]:
            if (*path, part) in doc.values or (*path, part) in doc.keys:
                path = (*path, part)
            elif item["type"] in ("missing", "extra_forbidden") and part == item["loc"][-1]:
                path = (*path, part)
        kind = item["type"]
        if kind == "extra_forbidden":
            owner = _model_at(model, path[:-1])
            allowed = f" (allowed here: {', '.join(owner.model_fields)})" if owner is not None else ""
            issues.append(doc.issue(path, f"unknown key {path[-1]!r}{allowed}", key=True))
        elif kind == "missing":
            parent = path[:-1]
            owner = _model_at(model, parent)
            info = owner.model_fields.get(str(path[-1])) if owner is not None else None
            described = info.description if info is not None else None
            hint = f" ({described})" if described else ""
            line, column = doc.where(parent)
            issues.append(
                SpecIssue(doc.file, line, column, spec_path(path), f"missing required key '{path[-1]}'{hint}")
            )
        else:
            message = item["msg"]
            if kind == "model_type" or kind == "dict_type":
                message = f"expected a mapping (key: value lines), got {_short(item['input'])}"
            elif kind != "value_error":
                message = f"{message[0].lower()}{message[1:]}, got {_short(item['input'])}"
                owner = _model_at(model, path[:-1]) if path and isinstance(path[-1], str) else None
                info = owner.model_fields.get(str(path[-1])) if owner is not None else None
                if kind == "literal_error" and info is not None and info.description:
                    message += f" ({info.description})"
            else:
                message = message.removeprefix("Value error, ")
            issues.append(doc.issue(path, message))
    # One report per location: a union can fail the same value several ways.
    unique: dict[tuple[int, int, str], SpecIssue] = {}
    for issue in issues:
        unique.setdefault((issue.line, issue.column, issue.path), issue)
    return list(unique.values())


def load_document(
    source: str | Path, model: type[M], *, text: str | None = None, file: str | None = None
) -> tuple[M, Located]:
    """Parse and validate a YAML document against ``model``.

    Args:
        source: the file to read (or, with ``text``, only the name used in messages).
        model: the pydantic schema (a :class:`SpecModel`).
        text: the document itself, instead of reading ``source``.
        file: the name errors use (default: ``source`` as given).

    Returns:
        The validated model and the :class:`Located` document (for errors found later, at the same positions).
    """
    name = file if file is not None else str(source)
    if text is None:
        try:
            path = Path(source)
            if path.exists() and not path.is_file():
                raise GrowcSpecError([SpecIssue(name, 1, 1, "", "not a plain file (a folder, a pipe or a device)")])
            with open(path, "rb") as handle:
                raw = handle.read(MAX_BYTES + 1)
            if len(raw) > MAX_BYTES:
                raise GrowcSpecError([SpecIssue(name, 1, 1, "", f"the file is larger than {MAX_BYTES >> 20} MiB")])
        except OSError as error:
            raise GrowcSpecError([SpecIssue(name, 1, 1, "", f"cannot read the file: {error.strerror}")]) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise GrowcSpecError(
                [SpecIssue(name, 1, 1, "", f"the file is not UTF-8 text (byte {error.start})")]
            ) from None
    doc = parse_yaml(text, name)
    try:
        return model.model_validate(doc.data), doc
    except ValidationError as error:
        raise GrowcSpecError(_issues_from(error, doc, model)) from None
