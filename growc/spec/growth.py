"""Growth specs: the YAML document that describes a growth (schema version 1).

A spec names the parents, the example input, the template policy, one or more growth steps and the output folder::

    growc: 1
    parents:
      - {model: wrn-16-2, kwargs: {num_classes: 10}}
      - {model: wrn-16-2, kwargs: {num_classes: 10}}
    input: {shape: [2, 3, 32, 32]}
    growth:
      - {cross_init: orthogonal}
    output: {folder: runs/wrn-16-4}

:func:`load_spec` validates a file (unknown keys, wrong types and inconsistent steps are errors with
``file:line:column``); :func:`growc.check_spec` then validates it against the traced graph. The reference of
every key is docs/specs.md; :func:`spec_json_schema` exports the JSON Schema editors use.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator

from growc.fx.trace import Capture
from growc.passes.config import (
    CrossInit,
    CrossTemplates,
    FuseConfig,
    Head,
    Init,
    Method,
    Sharing,
    TemplatizeConfig,
    WidenConfig,
)
from growc.spec.document import (
    Document,
    GrowcSpecError,
    Located,
    SpecIssue,
    SpecModel,
    exact_int,
    load_document,
    plain_data,
)

__all__ = [
    "SPEC_VERSION",
    "GrowthSpec",
    "InputSpec",
    "OutputSpec",
    "ParentSpec",
    "ResolvedStep",
    "StepSpec",
    "TargetSpec",
    "TemplateSpec",
    "TraceSpec",
    "check_steps",
    "load_spec",
    "resolve_spec",
    "spec_json_schema",
    "spec_json_schema_text",
]

SPEC_VERSION = 1
MAX_FACTOR = 64  # a larger factor in one step is a typo (and would not fit in memory)
MAX_TOTAL_FACTOR = 64  # the product of every step's factor: 64x wider is 4096x the weights
MAX_PARENTS = MAX_FACTOR  # a fusion step's factor is the number of parents
MAX_INPUTS = 16  # positional example inputs of a model
FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")
PositiveInt = Annotated[int, Field(ge=1)]
NonEmpty = Annotated[str, Field(min_length=1)]


class ParentSpec(SpecModel):
    """One parent network."""

    model: NonEmpty = Field(
        description="model reference: a built-in (wrn-D-K, cnn1d-W), torchvision:NAME, transformers:ClassName or "
        "package.module:factory"
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments of the model's factory; transformers:ClassName takes config (its config "
        "class's options) and pretrained (a local folder, relative to the spec file)",
    )
    weights: NonEmpty | None = Field(
        default=None,
        description="safetensors file with the parent's weights (plain or templatized state dict), relative to the "
        "spec file; null: random initialization seeded by seed + the parent's index",
    )

    @field_validator("kwargs")
    @classmethod
    def _plain_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        plain_data(value, "kwargs")
        return value


class InputSpec(SpecModel):
    """One example input, used to trace, propagate shapes and check outputs: standard normal (a float dtype), token
    ids in ``[0, vocab)`` (``int64`` with ``vocab``) or every element ``fill`` (e.g. an attention mask of ones)."""

    shape: list[PositiveInt] = Field(
        min_length=1, max_length=8, description="shape of the example input, batch first (at most 2**28 elements)"
    )
    dtype: Literal["float32", "float64", "float16", "bfloat16", "int64"] = Field(
        default="float32",
        description="dtype of the input; a float input's dtype is the model's too (int64: token ids or a mask)",
    )
    vocab: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = Field(
        default=None, description="int64: token ids drawn uniformly from [0, vocab), seeded by the spec's seed"
    )
    fill: Annotated[float, Field(ge=-1e9, le=1e9)] | None = Field(
        default=None, description="every element this value instead of a random draw (e.g. 1 for an attention mask)"
    )


def _input_form(value: Any) -> str:
    return "list" if isinstance(value, list) else "one"


#: ``input:`` is one input (a mapping) or a list of them (the model's positional inputs, in order)
Inputs = Annotated[
    Annotated[InputSpec, Tag("one")]
    | Annotated[list[InputSpec], Tag("list"), Field(min_length=1, max_length=MAX_INPUTS)],
    Discriminator(_input_form),
]


class TraceSpec(SpecModel):
    """Tracing options."""

    leaf_modules: list[NonEmpty] = Field(
        default_factory=list, description="dotted paths of submodules not to trace into"
    )
    mode: Literal["train", "eval"] = Field(
        default="train",
        description="the mode the models are traced in (Python-level `if self.training` branches are fixed then)",
    )
    capture: Capture = Field(
        default=TemplatizeConfig.capture,
        description="how the parents are captured: fx (symbolic tracing), export (torch.export) or auto (fx, and "
        "export when fx cannot trace the model: Hugging Face transformers models)",
    )
    dynamic: bool = Field(
        default=TemplatizeConfig.dynamic,
        description="export only: mark the batch dim (and the sequence dim of integer inputs) dynamic",
    )


class TemplateSpec(SpecModel):
    """How the parents' weights become template banks."""

    sharing: Sharing = Field(
        default=TemplatizeConfig.sharing,
        description="which weights share a bank: each its own, all of one shape, or windows",
    )
    per_bank: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=TemplatizeConfig.templates, description="templates per bank (K)"
    )
    init: Init = Field(
        default=TemplatizeConfig.init,
        description="exact (function-preserving), svd (rank-K fit) or fresh (Kaiming templates)",
    )
    window: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=TemplatizeConfig.window, description="bank size for sharing: shape_window (unused otherwise)"
    )
    layers: list[NonEmpty] | None = Field(
        default=None,
        description="glob patterns of the weights to templatize (names or module paths); null: every weight. "
        "Each pattern must match a weight of the traced model",
    )


class TargetSpec(SpecModel):
    """A target width, instead of a factor: ``factor = value / (the parents' kwargs[kwarg])``."""

    kwarg: NonEmpty = Field(description="the width keyword argument of the parents' factory, e.g. width")
    value: Annotated[float, Field(gt=0, le=1e9)] = Field(description="the width to reach")


class StepSpec(SpecModel):
    """One growth step. The first step with several parents fuses them; every other step widens one model."""

    factor: Annotated[int, Field(ge=2, le=MAX_FACTOR)] | None = Field(
        default=None,
        description="how many times wider (a fusion step: the number of parents, its default); or give target",
    )
    target: TargetSpec | None = Field(
        default=None, description="a target width instead of factor (with both, they must agree)"
    )
    method: Method = Field(
        default=WidenConfig.method,
        description="mixture: new coefficients over trained templates; net2net: replicas (function-preserving); "
        "random: fresh templates, random cross blocks; zero: fresh templates, zero blocks into the old units. "
        "A fusion step is always mixture",
    )
    # the fusion keys default to None ("not given": a widening step must not set them); a fusion step's
    # resolved values default to FuseConfig's (check_steps)
    cross_init: CrossInit | None = Field(
        default=None,
        description=f"fusion steps: init of the new off-diagonal blocks (default {FuseConfig.cross_init})",
    )
    cross_scale: Annotated[float, Field(ge=-1e6, le=1e6)] | None = Field(
        default=None,
        description=f"fusion steps: scale of the cross-block coefficients (default {FuseConfig.cross_scale})",
    )
    cross_templates: CrossTemplates | None = Field(
        default=None,
        description="fusion steps: the cross blocks mix the row parent's templates (own) or every parent's (union); "
        f"default {FuseConfig.cross_templates}",
    )
    head: Head | None = Field(
        default=None,
        description=f"fusion steps: the parents' logits add up (sum) or average (mean); default {FuseConfig.head}",
    )


class OutputSpec(SpecModel):
    """Where the artifact goes."""

    folder: NonEmpty = Field(description="the artifact folder, relative to the current directory")
    overwrite: bool = Field(default=False, description="replace the folder if it exists")


class GrowthSpec(Document):
    """A growth spec (version 1)."""

    growc: Literal[1] = Field(description="the spec version; this growc reads version 1")
    name: NonEmpty | None = Field(default=None, description="a name for reports")
    description: str | None = Field(default=None, description="free text")
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = Field(
        default=0, description="seeds parents' initialization, templatization and cross inits"
    )
    parents: list[ParentSpec] = Field(min_length=1, description="the parent networks (one architecture)")
    input: Inputs = Field(description="the example input, or a list of them: the model's positional inputs")
    trace: TraceSpec = Field(default_factory=TraceSpec, description="tracing options")
    templates: TemplateSpec = Field(default_factory=TemplateSpec, description="the template policy")
    growth: list[StepSpec] = Field(min_length=1, description="the growth steps, applied in order")
    output: OutputSpec | None = Field(default=None, description="the artifact folder (or growc grow --out)")

    _version = field_validator("growc", mode="before")(exact_int)

    @property
    def inputs(self) -> list[InputSpec]:
        """The example inputs, in order (one for the single-input form)."""
        return list(self.input) if isinstance(self.input, list) else [self.input]

    def input_path(self, i: int) -> tuple[str | int, ...]:
        """Where input ``i`` is in the document (for located errors)."""
        return ("input", i) if isinstance(self.input, list) else ("input",)

    @property
    def model_dtype(self) -> str:
        """The parents' dtype: the float inputs' dtype (float32 when every input is an integer one)."""
        return next((x.dtype for x in self.inputs if x.dtype in FLOAT_DTYPES), "float32")

    def pretrained_folder(self, index: int) -> Path | None:
        """Parent ``index``'s ``kwargs.pretrained`` folder (a ``transformers:`` model), relative to the spec file."""
        parent = self.parents[index]
        value = parent.kwargs.get("pretrained")
        if not parent.model.startswith("transformers:") or not isinstance(value, str) or not value:
            return None
        return self.base_dir / value

    def is_fusion(self, step: int) -> bool:
        """Whether step ``step`` fuses several parents (only the first step can)."""
        return step == 0 and len(self.parents) > 1

    def steps(self) -> tuple[ResolvedStep, ...]:
        """The growth steps with every default filled in (:func:`check_steps`; raises its located errors)."""
        return check_steps(self, self.doc)

    def factors(self) -> list[int]:
        """Each step's factor, resolved (a fusion's is the number of parents; a target's from the width)."""
        return [step.factor for step in self.steps()]

    def resolved(self) -> dict[str, Any]:
        """The spec with every default filled in, as plain data (what an artifact's spec.yaml holds)."""
        data = self.model_dump(mode="json")
        for x in data["input"] if isinstance(data["input"], list) else [data["input"]]:
            for key in ("vocab", "fill"):  # only where given: a float input's resolved form stays shape and dtype
                if x[key] is None:
                    del x[key]
        for i, parent in enumerate(data["parents"]):
            if parent["weights"] is not None:
                parent["weights"] = str((self.base_dir / parent["weights"]).resolve())
            folder = self.pretrained_folder(i)
            if folder is not None:
                parent["kwargs"]["pretrained"] = str(folder.resolve())
        return data


def _number(value: float) -> str:
    try:
        return f"{value:g}"
    except OverflowError:
        text = str(value)
        return f"{text[:12]}...({len(text)} digits)"


FUSION_KEYS = ("cross_init", "cross_scale", "cross_templates", "head")


@dataclass(frozen=True)
class ResolvedStep:
    """One growth step with every default filled in: what :func:`growc.compile_spec` runs.

    Exactly one of ``fuse`` (a fusion step: the first, with several parents) and ``widen`` is set; their values
    are the spec's, and where it gives none, :class:`~growc.passes.config.FuseConfig`'s and
    :class:`~growc.passes.config.WidenConfig`'s defaults.
    """

    index: int
    factor: int
    fuse: FuseConfig | None = None
    widen: WidenConfig | None = None
    target: TargetSpec | None = None

    @property
    def kind(self) -> Literal["fuse", "widen"]:
        return "fuse" if self.fuse is not None else "widen"

    @property
    def method(self) -> str:
        """The step's growth method (a fusion step's is always ``mixture``)."""
        return "mixture" if self.widen is None else self.widen.method

    def options(self) -> dict[str, Any]:
        """The step's options as keyword arguments of :func:`growc.fuse` (a fusion step) or :func:`growc.widen`."""
        config = self.fuse if self.fuse is not None else self.widen
        assert config is not None
        return config.as_dict()

    def filled(self, step: StepSpec) -> StepSpec:
        """A new ``step`` (the spec's own, unchanged) with this resolution's factor and fusion keys filled in."""
        update: dict[str, Any] = {"factor": self.factor}
        if self.fuse is not None:
            update.update(self.fuse.as_dict())
        return step.model_copy(update=update, deep=True)


def _document_issues(spec: GrowthSpec, doc: Located) -> list[SpecIssue]:
    """The spec-wide bounds: the example inputs, the number of parents, no pretrained-weights kwargs."""
    issues = _input_issues(spec, doc)
    if len(spec.parents) > MAX_PARENTS:
        issues.append(
            doc.issue(("parents",), f"{len(spec.parents)} parents is more than {MAX_PARENTS} (the largest factor)")
        )
    for i, parent in enumerate(spec.parents):
        issues += _kwargs_issues(parent, doc, i)
    return issues


def _input_issues(spec: GrowthSpec, doc: Located) -> list[SpecIssue]:
    """Each example input's size, and the keys its dtype needs (int64: vocab or fill)."""
    issues = []
    floats = set()
    for i, x in enumerate(spec.inputs):
        here = spec.input_path(i)
        if math.prod(x.shape) > 2**28:
            issues.append(doc.issue((*here, "shape"), f"{math.prod(x.shape):,} elements is more than 2**28"))
        if x.dtype == "int64":
            if x.vocab is None and x.fill is None:
                issues.append(
                    doc.issue(
                        (*here, "dtype"),
                        "an int64 input needs vocab (token ids in [0, vocab)) or fill (a constant, e.g. 1 for an "
                        "attention mask)",
                    )
                )
            elif x.vocab is not None and x.fill is not None:
                issues.append(doc.issue((*here, "fill"), "give vocab or fill, not both", key=True))
            elif x.fill is not None and x.fill != int(x.fill):
                issues.append(doc.issue((*here, "fill"), f"an int64 input's fill must be an integer, got {x.fill:g}"))
        else:
            floats.add(x.dtype)
            if x.vocab is not None:
                issues.append(
                    doc.issue((*here, "vocab"), f"vocab applies to int64 inputs (token ids), not {x.dtype}", key=True)
                )
    if len(floats) > 1:
        issues.append(
            doc.issue(
                ("input",),
                f"the float inputs have dtypes {', '.join(sorted(floats))}: they set the model's, so use one",
            )
        )
    return issues


def _kwargs_issues(parent: ParentSpec, doc: Located, i: int) -> list[SpecIssue]:
    """A parent's kwargs: no pretrained weights to download; a transformers model's config and local folder."""
    issues = []
    hf = parent.model.startswith("transformers:")
    for key, value in parent.kwargs.items():
        if hf and key == "pretrained":
            if not isinstance(value, str) or not value:
                issues.append(
                    doc.issue(
                        ("parents", i, "kwargs", key),
                        "pretrained is the path of a local folder (config.json and model.safetensors), relative "
                        "to the spec file: growc never downloads",
                    )
                )
            continue
        if hf and key == "config":
            if not isinstance(value, dict):
                issues.append(
                    doc.issue(
                        ("parents", i, "kwargs", key),
                        f"config is a mapping of {parent.model.partition(':')[2]}'s config options",
                    )
                )
            continue
        if (key.startswith("weights") or key.startswith("pretrained")) and value not in (None, False):
            issues.append(
                doc.issue(
                    ("parents", i, "kwargs", key),
                    f"growc never downloads pretrained weights: leave kwargs.{key} out (growc sets every "
                    f"torchvision weights argument to null) and give the parent's weights file as "
                    f"parents[{i}].weights",
                )
            )
    return issues


def _target_factor(spec: GrowthSpec, doc: Located, i: int, scale: int) -> tuple[int | None, list[SpecIssue]]:
    """Step ``i``'s factor from its target width at the current ``scale`` (None, with the issue, if it has none)."""
    step, here = spec.growth[i], ("growth", i)
    assert step.target is not None
    kwarg = step.target.kwarg
    values = {repr(p.kwargs.get(kwarg)) for p in spec.parents}
    base = spec.parents[0].kwargs.get(kwarg)
    if len(values) != 1 or not isinstance(base, (int, float)) or isinstance(base, bool):
        message = (
            f"every parent must set the number kwargs.{kwarg} for a target width (got {', '.join(sorted(values))})"
        )
        return None, [doc.issue((*here, "target", "kwarg"), message)]
    current = base * scale
    try:
        ratio = step.target.value / current
    except (OverflowError, ZeroDivisionError):
        ratio = math.inf
    if not 2 <= ratio <= MAX_FACTOR or abs(ratio - round(ratio)) > 1e-9:
        message = (
            f"target {_number(step.target.value)} is not an integer multiple (2 to {MAX_FACTOR}) of the current "
            f"width {_number(current)}"
        )
        return None, [doc.issue((*here, "target", "value"), message)]
    if step.factor is not None and step.factor != round(ratio):
        message = (
            f"factor {step.factor} disagrees with target (width {_number(current)} -> {_number(step.target.value)} "
            f"is factor {round(ratio)}): give one of them"
        )
        return None, [doc.issue((*here, "factor"), message)]
    return round(ratio), []


def _step_factor(spec: GrowthSpec, doc: Located, i: int, scale: int) -> tuple[int | None, list[SpecIssue]]:
    """Step ``i``'s factor (None when it has none) and the issues of its keys."""
    step, here = spec.growth[i], ("growth", i)
    factor = step.factor
    if step.target is not None:
        factor, issues = _target_factor(spec, doc, i, scale)
        if factor is None:
            return None, issues
    if spec.is_fusion(i):
        n = len(spec.parents)
        if factor is not None and factor != n:
            where = (*here, "factor") if step.factor is not None else (*here, "target", "value")
            return None, [doc.issue(where, f"the first step fuses the {n} parents, so its factor is {n}, not {factor}")]
        if step.method == "mixture":
            return n, []
        message = (
            "a fusion step combines the parents by mixture; choose its new blocks with cross_init (method "
            f"'{step.method}' applies to widening one model)"
        )
        return n, [doc.issue((*here, "method"), message)]
    issues = [
        doc.issue(
            (*here, key),
            f"{key} applies to a fusion step (the first step, with several parents); a widening step's method "
            "decides its new blocks",
            key=True,
        )
        for key in FUSION_KEYS
        if getattr(step, key) is not None
    ]
    if factor is None:
        issues.append(doc.issue(here, "a widening step needs factor or target"))
    return factor, issues


def _resolve_step(spec: GrowthSpec, i: int, factor: int) -> ResolvedStep:
    step = spec.growth[i]
    if spec.is_fusion(i):
        given = {key: getattr(step, key) for key in FUSION_KEYS if getattr(step, key) is not None}
        return ResolvedStep(i, factor, fuse=FuseConfig(**given), target=step.target)
    return ResolvedStep(i, factor, widen=WidenConfig(factor=factor, method=step.method), target=step.target)


def check_steps(spec: GrowthSpec, doc: Located) -> tuple[ResolvedStep, ...]:
    """The spec's growth steps, checked for consistency (every problem a located issue of one
    :class:`~growc.spec.document.GrowcSpecError`) and resolved into new :class:`ResolvedStep` objects: each
    factor from its target or the number of parents, a fusion step's keys from
    :class:`~growc.passes.config.FuseConfig`'s defaults. ``spec`` is not modified."""
    issues = _document_issues(spec, doc)
    steps = []
    scale = 1  # the width so far, as a multiple of the parents'
    for i, step in enumerate(spec.growth):
        factor, found = _step_factor(spec, doc, i, scale)
        issues += found
        if factor is None:
            continue
        if scale * factor > MAX_TOTAL_FACTOR:
            issues.append(
                doc.issue(
                    ("growth", i, "factor") if step.factor is not None else ("growth", i),
                    f"the steps so far make the model {scale * factor}x wider than its parents: more than "
                    f"{MAX_TOTAL_FACTOR}x in all (about {MAX_TOTAL_FACTOR**2:,}x the weights) is refused",
                )
            )
            break
        scale *= factor
        steps.append(_resolve_step(spec, i, factor))
    if issues:
        raise GrowcSpecError(issues)
    return tuple(steps)


def resolve_spec(spec: GrowthSpec, doc: Located) -> GrowthSpec:
    """A new spec: ``spec`` checked (:func:`check_steps`) with every step's factor and a fusion step's keys filled
    in, located at ``doc``. ``spec`` itself is not modified."""
    steps = check_steps(spec, doc)
    growth = [resolved.filled(step) for resolved, step in zip(steps, spec.growth, strict=True)]
    resolved_spec = spec.model_copy(update={"growth": growth}, deep=True)
    resolved_spec._doc = doc
    return resolved_spec


def load_spec(source: str | Path, *, text: str | None = None, file: str | None = None) -> GrowthSpec:
    """Load and validate a growth spec; raises :class:`~growc.spec.document.GrowcSpecError` with file:line:column.

    ``source`` is the YAML file (or, with ``text``, the name used in messages and for relative paths).
    """
    spec, doc = load_document(source, GrowthSpec, text=text, file=file)
    return resolve_spec(spec, doc)


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema of growth specs (``growc schema``), for editors' YAML validation."""
    return GrowthSpec.json_schema("https://growc.dev/schema/growth-spec-v1.json")


def spec_json_schema_text() -> str:
    """The JSON Schema of growth specs as text (what specs/growc.schema.json holds)."""
    return json.dumps(spec_json_schema(), indent=2) + "\n"
