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
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from growc.spec.document import Document, GrowcSpecError, Located, SpecModel, exact_int, load_document, plain_data

__all__ = [
    "SPEC_VERSION",
    "GrowthSpec",
    "InputSpec",
    "OutputSpec",
    "ParentSpec",
    "StepSpec",
    "TargetSpec",
    "TemplateSpec",
    "TraceSpec",
    "load_spec",
    "spec_json_schema",
]

SPEC_VERSION = 1
MAX_FACTOR = 64  # a larger factor in one step is a typo (and would not fit in memory)
MAX_TOTAL_FACTOR = 64  # the product of every step's factor: 64x wider is 4096x the weights
MAX_PARENTS = MAX_FACTOR  # a fusion step's factor is the number of parents
PositiveInt = Annotated[int, Field(ge=1)]
NonEmpty = Annotated[str, Field(min_length=1)]


class ParentSpec(SpecModel):
    """One parent network."""

    model: NonEmpty = Field(
        description="model reference: a built-in (wrn-D-K, cnn1d-W), torchvision:NAME or package.module:factory"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the model's factory")
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
    """The example input used to trace, propagate shapes and check outputs."""

    shape: list[PositiveInt] = Field(
        min_length=1, max_length=8, description="shape of the example input, batch first (at most 2**28 elements)"
    )
    dtype: Literal["float32", "float64", "float16", "bfloat16"] = Field(
        default="float32", description="dtype of the input and of the model"
    )


class TraceSpec(SpecModel):
    """Tracing options."""

    leaf_modules: list[NonEmpty] = Field(
        default_factory=list, description="dotted paths of submodules not to trace into"
    )
    mode: Literal["train", "eval"] = Field(
        default="train",
        description="the mode the models are traced in (Python-level `if self.training` branches are fixed then)",
    )


class TemplateSpec(SpecModel):
    """How the parents' weights become template banks."""

    sharing: Literal["layer", "shape", "shape_window"] = Field(
        default="layer", description="which weights share a bank: each its own, all of one shape, or windows"
    )
    per_bank: Annotated[int, Field(ge=1, le=1024)] = Field(default=2, description="templates per bank (K)")
    init: Literal["exact", "svd", "fresh"] = Field(
        default="exact", description="exact (function-preserving), svd (rank-K fit) or fresh (Kaiming templates)"
    )
    window: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=2, description="bank size for sharing: shape_window (unused otherwise)"
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
    method: Literal["mixture", "net2net", "random", "zero"] = Field(
        default="mixture",
        description="mixture: new coefficients over trained templates; net2net: replicas (function-preserving); "
        "random: fresh templates, random cross blocks; zero: fresh templates, zero blocks into the old units. "
        "A fusion step is always mixture",
    )
    cross_init: Literal["orthogonal", "zero", "random", "copy"] | None = Field(
        default=None, description="fusion steps: init of the new off-diagonal blocks (default orthogonal)"
    )
    cross_scale: Annotated[float, Field(ge=-1e6, le=1e6)] | None = Field(
        default=None, description="fusion steps: scale of the cross-block coefficients (default 1.0)"
    )
    cross_templates: Literal["own", "union"] | None = Field(
        default=None,
        description="fusion steps: the cross blocks mix the row parent's templates (own) or every parent's (union)",
    )
    head: Literal["sum", "mean"] | None = Field(
        default=None, description="fusion steps: the parents' logits add up (sum, default) or average (mean)"
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
    input: InputSpec = Field(description="the example input")
    trace: TraceSpec = Field(default_factory=TraceSpec, description="tracing options")
    templates: TemplateSpec = Field(default_factory=TemplateSpec, description="the template policy")
    growth: list[StepSpec] = Field(min_length=1, description="the growth steps, applied in order")
    output: OutputSpec | None = Field(default=None, description="the artifact folder (or growc grow --out)")

    _version = field_validator("growc", mode="before")(exact_int)

    def is_fusion(self, step: int) -> bool:
        """Whether step ``step`` fuses several parents (only the first step can)."""
        return step == 0 and len(self.parents) > 1

    def factors(self) -> list[int]:
        """Each step's factor, resolved (a fusion's is the number of parents; a target's from the width)."""
        return [step.factor for step in self.growth]  # resolved in load_spec

    def resolved(self) -> dict[str, Any]:
        """The spec with every default filled in, as plain data (what an artifact's spec.yaml holds)."""
        data = self.model_dump(mode="json")
        for parent in data["parents"]:
            if parent["weights"] is not None:
                parent["weights"] = str((self.base_dir / parent["weights"]).resolve())
        return data


def _number(value: float) -> str:
    try:
        return f"{value:g}"
    except OverflowError:
        text = str(value)
        return f"{text[:12]}...({len(text)} digits)"


def check_steps(spec: GrowthSpec, doc: Located) -> None:
    """Consistency of the steps (located errors); fills in each step's factor."""
    issues = []
    fusion_keys = ("cross_init", "cross_scale", "cross_templates", "head")
    if math.prod(spec.input.shape) > 2**28:
        issues.append(doc.issue(("input", "shape"), f"{math.prod(spec.input.shape):,} elements is more than 2**28"))
    if len(spec.parents) > MAX_PARENTS:
        issues.append(
            doc.issue(("parents",), f"{len(spec.parents)} parents is more than {MAX_PARENTS} (the largest factor)")
        )
    for i, parent in enumerate(spec.parents):
        for key, value in parent.kwargs.items():
            if (key.startswith("weights") or key.startswith("pretrained")) and value not in (None, False):
                issues.append(
                    doc.issue(
                        ("parents", i, "kwargs", key),
                        f"growc never downloads pretrained weights: leave kwargs.{key} out (growc sets every "
                        f"torchvision weights argument to null) and give the parent's weights file as "
                        f"parents[{i}].weights",
                    )
                )
    scale = 1  # the width so far, as a multiple of the parents'
    for i, step in enumerate(spec.growth):
        here = ("growth", i)
        fusion = spec.is_fusion(i)
        factor = step.factor
        if step.target is not None:
            kwarg = step.target.kwarg
            values = {repr(p.kwargs.get(kwarg)) for p in spec.parents}
            base = spec.parents[0].kwargs.get(kwarg)
            if len(values) != 1 or not isinstance(base, (int, float)) or isinstance(base, bool):
                issues.append(
                    doc.issue(
                        (*here, "target", "kwarg"),
                        f"every parent must set the number kwargs.{kwarg} for a target width (got "
                        f"{', '.join(sorted(values))})",
                    )
                )
                continue
            current = base * scale
            try:
                ratio = step.target.value / current
            except (OverflowError, ZeroDivisionError):
                ratio = math.inf
            if not 2 <= ratio <= MAX_FACTOR or abs(ratio - round(ratio)) > 1e-9:
                issues.append(
                    doc.issue(
                        (*here, "target", "value"),
                        f"target {_number(step.target.value)} is not an integer multiple (2 to {MAX_FACTOR}) of the "
                        f"current width {_number(current)}",
                    )
                )
                continue
            if factor is not None and factor != round(ratio):
                issues.append(
                    doc.issue(
                        (*here, "factor"),
                        f"factor {factor} disagrees with target (width {_number(current)} -> "
                        f"{_number(step.target.value)} is factor {round(ratio)}): give one of them",
                    )
                )
                continue
            factor = round(ratio)
        if fusion:
            n = len(spec.parents)
            if factor is not None and factor != n:
                where = (*here, "factor") if step.factor is not None else (*here, "target", "value")
                issues.append(
                    doc.issue(where, f"the first step fuses the {n} parents, so its factor is {n}, not {factor}")
                )
                continue
            factor = n
            if step.method != "mixture":
                issues.append(
                    doc.issue(
                        (*here, "method"),
                        f"a fusion step combines the parents by mixture; choose its new blocks with cross_init "
                        f"(method '{step.method}' applies to widening one model)",
                    )
                )
        else:
            for key in fusion_keys:
                if getattr(step, key) is not None:
                    issues.append(
                        doc.issue(
                            (*here, key),
                            f"{key} applies to a fusion step (the first step, with several parents); a widening "
                            "step's method decides its new blocks",
                            key=True,
                        )
                    )
            if factor is None:
                issues.append(doc.issue(here, "a widening step needs factor or target"))
                continue
        if scale * factor > MAX_TOTAL_FACTOR:
            issues.append(
                doc.issue(
                    (*here, "factor") if step.factor is not None else here,
                    f"the steps so far make the model {scale * factor}x wider than its parents: more than "
                    f"{MAX_TOTAL_FACTOR}x in all (about {MAX_TOTAL_FACTOR**2:,}x the weights) is refused",
                )
            )
            break
        scale *= factor
        step.factor = factor
    if spec.is_fusion(0):
        first = spec.growth[0]
        first.cross_init = first.cross_init or "orthogonal"
        first.cross_scale = 1.0 if first.cross_scale is None else first.cross_scale
        first.cross_templates = first.cross_templates or "own"
        first.head = first.head or "sum"
    if issues:
        raise GrowcSpecError(issues)


def load_spec(source: str | Path, *, text: str | None = None, file: str | None = None) -> GrowthSpec:
    """Load and validate a growth spec; raises :class:`~growc.spec.document.GrowcSpecError` with file:line:column.

    ``source`` is the YAML file (or, with ``text``, the name used in messages and for relative paths).
    """
    spec, doc = load_document(source, GrowthSpec, text=text, file=file)
    spec._doc = doc
    check_steps(spec, doc)
    return spec


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema of growth specs (``growc schema``), for editors' YAML validation."""
    return GrowthSpec.json_schema("https://growc.dev/schema/growth-spec-v1.json")


def spec_json_schema_text(kind: str = "spec") -> str:
    """The JSON Schema of growth specs (``kind="spec"``) or recipes (``"recipe"``) as text."""
    if kind == "recipe":
        from growc.spec.recipe import recipe_json_schema

        return json.dumps(recipe_json_schema(), indent=2) + "\n"
    return json.dumps(spec_json_schema(), indent=2) + "\n"
