"""Training recipes: the YAML document ``growc train`` runs (same conventions and errors as growth specs).

A recipe has three phases: ``parents`` (how each parent is trained), ``grow`` (a growth spec, inline or by path,
whose parents are the trained ones) and ``grown`` (continued training of the grown network, with its own
schedule); plus the data set, the checkpoint cadence and the output folder. docs/recipes.md has every key.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from growc.spec.data import DataSpec, synthetic_size_problem
from growc.spec.document import Document, GrowcSpecError, SpecModel, exact_int, load_document
from growc.spec.growth import GrowthSpec, ParentSpec, StepSpec, TemplateSpec, TraceSpec, load_spec, resolve_spec

__all__ = [
    "OptimizerSpec",
    "PhaseSpec",
    "RecipeSpec",
    "ScheduleSpec",
    "growth_spec",
    "load_recipe",
    "recipe_json_schema",
    "recipe_json_schema_text",
    "sample_shape",
]

NonNegative = Annotated[float, Field(ge=0, le=1e6)]  # bounds also reject inf and nan


class OptimizerSpec(SpecModel):
    """The optimizer of a training phase. Weight decay never applies to template coefficients."""

    name: Literal["sgd", "adamw"] = Field(default="sgd", description="SGD with momentum, or AdamW")
    lr: Annotated[float, Field(gt=0, le=1e3)] = Field(default=0.1, description="the peak learning rate")
    momentum: Annotated[float, Field(ge=0, lt=1)] = Field(default=0.9, description="sgd: momentum")
    nesterov: bool = Field(default=False, description="sgd: Nesterov momentum")
    weight_decay: NonNegative = Field(
        default=5e-4, description="on templates, plain weights, biases and norms; never on coefficients"
    )


class ScheduleSpec(SpecModel):
    """The learning-rate schedule, per step: linear warmup from 0, then cosine (or constant) down to min_lr."""

    kind: Literal["cosine", "constant"] = Field(default="cosine", description="cosine decay or a constant rate")
    warmup_epochs: NonNegative = Field(default=0.0, description="linear warmup length in epochs (may be fractional)")
    min_lr: NonNegative = Field(default=0.0, description="the rate at the end of a cosine schedule")


class PhaseSpec(SpecModel):
    """A training phase."""

    epochs: Annotated[int, Field(ge=0)] = Field(description="epochs of this phase")
    batch_size: Annotated[int, Field(ge=1)] = Field(default=128, description="global batch size (split over ranks)")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="the optimizer")
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec, description="the learning-rate schedule")


class GrowSection(SpecModel):
    """The growth: a growth spec file (``spec``), or its parents, trace, templates and growth inline."""

    spec: Annotated[str, Field(min_length=1)] | None = Field(
        default=None, description="a growth spec file (relative to the recipe); its parents' weights are replaced"
    )
    parents: list[ParentSpec] | None = Field(default=None, description="inline: the parent models (weights: null)")
    trace: TraceSpec = Field(default_factory=TraceSpec, description="inline: tracing options")
    templates: TemplateSpec = Field(default_factory=TemplateSpec, description="inline: the template policy")
    growth: list[StepSpec] | None = Field(default=None, description="inline: the growth steps")


class RunOutputSpec(SpecModel):
    """Where a run goes. A run folder is resumed, never replaced."""

    folder: Annotated[str, Field(min_length=1)] = Field(description="the run folder, relative to the current directory")


class CheckpointSpec(SpecModel):
    """How often the running phase is checkpointed (a phase's end always is)."""

    every: Annotated[int, Field(ge=1)] = Field(default=1, description="checkpoint every N epochs")


class RecipeSpec(Document):
    """A training recipe (version 1)."""

    growc: Literal[1] = Field(description="the spec version; this growc reads version 1")
    name: Annotated[str, Field(min_length=1)] | None = Field(default=None, description="a name for reports")
    description: str | None = Field(default=None, description="free text")
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = Field(
        default=0, description="seeds the parents, the growth, batch order, augmentation and dropout"
    )
    data: DataSpec = Field(description="the data set")
    parents: PhaseSpec = Field(description="training of each parent")
    grow: GrowSection = Field(description="the growth (a growth spec inline or by path)")
    grown: PhaseSpec = Field(description="continued training of the grown network")
    eval_batch_size: Annotated[int, Field(ge=1)] = Field(default=512, description="batch size of evaluation")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="checkpoint cadence")
    output: RunOutputSpec = Field(description="the run folder (or growc train --out)")

    _version = field_validator("growc", mode="before")(exact_int)


def sample_shape(data: DataSpec) -> tuple[int, ...]:
    """The shape of one example of ``data`` (known before loading it)."""
    return {
        "mnist1d": (1, 40),
        "digits": (1, 8, 8),
        "cifar10": (3, 32, 32),
        "cifar100": (3, 32, 32),
        "imagefolder": (3, data.image_size, data.image_size),
        "synthetic": tuple(data.shape),
    }[data.name]


def growth_spec(recipe: RecipeSpec) -> GrowthSpec:
    """The recipe's growth as a growth spec (example input from the data's shape, errors at the recipe's lines)."""
    doc = recipe.doc
    section = recipe.grow
    shape = [2, *sample_shape(recipe.data)]
    if section.spec is not None:
        inline = [k for k in ("parents", "growth") if getattr(section, k) is not None]
        if inline:
            raise doc.error(("grow", inline[0]), "give grow.spec or an inline growth, not both", key=True)
        # the recipe's seed rules its runs (e.g. one run per seed from one growth spec)
        spec = load_spec(recipe.base_dir / section.spec).model_copy(update={"seed": recipe.seed})
        if len(spec.inputs) != 1:
            raise doc.error(
                ("grow", "spec"),
                f"the growth spec has {len(spec.inputs)} inputs; a recipe trains on {recipe.data.name} examples, "
                "one input",
            )
        if list(spec.inputs[0].shape[1:]) != shape[1:]:
            raise doc.error(
                ("grow", "spec"),
                f"the growth spec's input shape {spec.inputs[0].shape} does not fit {recipe.data.name} examples of "
                f"shape {list(shape[1:])}",
            )
        return spec
    for key in ("parents", "growth"):
        if getattr(section, key) is None:
            raise doc.error(("grow",), f"missing required key '{key}' (or give grow.spec: a growth spec file)")
    data: dict[str, Any] = {
        "growc": 1,
        "name": recipe.name,
        "seed": recipe.seed,
        "parents": [p.model_dump() for p in section.parents or []],
        "input": {"shape": shape},
        "trace": section.trace.model_dump(),
        "templates": section.templates.model_dump(),
        "growth": [s.model_dump() for s in section.growth or []],
    }
    spec = GrowthSpec.model_validate(data)
    located = doc.sub(("grow",))
    for i, parent in enumerate(spec.parents):
        if parent.weights is not None:
            raise located.error(("parents", i, "weights"), "a recipe trains its parents: weights must be null")
    return resolve_spec(spec, located)


def load_recipe(source: str | Path, *, text: str | None = None, file: str | None = None) -> RecipeSpec:
    """Load and validate a recipe; raises :class:`~growc.spec.document.GrowcSpecError` with file:line:column."""
    recipe, doc = load_document(source, RecipeSpec, text=text, file=file)
    recipe._doc = doc
    issues = []
    for phase in ("parents", "grown"):
        spec = getattr(recipe, phase)
        if spec.schedule.warmup_epochs > spec.epochs and spec.epochs > 0:
            issues.append(
                doc.issue(
                    (phase, "schedule", "warmup_epochs"),
                    f"warmup ({spec.schedule.warmup_epochs:g} epochs) is longer than the phase ({spec.epochs})",
                )
            )
        if spec.schedule.min_lr > spec.optimizer.lr:
            issues.append(doc.issue((phase, "schedule", "min_lr"), "min_lr is above the peak lr"))
    if recipe.parents.epochs == 0:
        issues.append(doc.issue(("parents", "epochs"), "the parents must train for at least one epoch"))
    too_large = synthetic_size_problem(recipe.data) if recipe.data.name == "synthetic" else None
    if too_large is not None:
        issues.append(doc.issue(("data", "samples"), too_large))
    if issues:
        raise GrowcSpecError(issues)
    growth_spec(recipe)  # the growth part is checked as early as the rest
    return recipe


def recipe_json_schema() -> dict[str, Any]:
    """The JSON Schema of recipes (``growc schema --recipe``)."""
    return RecipeSpec.json_schema("https://growc.dev/schema/recipe-v1.json")


def recipe_json_schema_text() -> str:
    """The JSON Schema of recipes as text (what specs/recipes/growc.recipe.schema.json holds)."""
    return json.dumps(recipe_json_schema(), indent=2) + "\n"


def lr_at(step: int, total: int, per_epoch: int, phase: PhaseSpec) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of a phase of ``total`` steps."""
    peak, low = phase.optimizer.lr, phase.schedule.min_lr
    warm = round(phase.schedule.warmup_epochs * per_epoch)
    if step < warm:
        return peak * (step + 1) / warm
    if phase.schedule.kind == "constant" or total <= warm:
        return peak
    progress = (step - warm) / max(1, total - warm)
    return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * progress))
