"""Compiling growth specs: check a spec against the traced graph, run its steps, write and load artifacts.

* :func:`check_spec` builds and traces the parents and validates the spec against the graph (leaf paths exist,
  every ``templates.layers`` pattern selects a weight, the parents share one architecture, the example input runs,
  weights files match); every error points at the spec line. It returns the plan :func:`format_plan` prints.
* :func:`compile_spec` runs the steps in memory: the first step fuses the parents (MixtureGrowth) when there are
  several, every other step widens one model.
* :func:`grow` writes the artifact folder atomically: ``model.safetensors``, ``spec.yaml`` (resolved), ``report.json``,
  ``report.txt``, ``code.py`` and ``probe.safetensors`` (an input and the model's eval output on it).
* :func:`load` rebuilds the GraphModule from ``spec.yaml`` and loads the weights (safetensors: nothing unpickled),
  refusing a weights file whose keys, shapes, dtypes or bytes differ from what was written.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from torch import fx, nn

from growc.errors import GrowcDataError, GrowcError
from growc.fx.analysis import exactness_tolerance, propagate_shapes
from growc.fx.trace import trace
from growc.io import (
    artifact_format,
    atomic_directory,
    check_destination,
    load_into,
    load_state_dict,
    read_json,
    save_state_dict,
    save_tensors,
    sha256_file,
    write_json,
)
from growc.models.zoo import ModelBuildError, is_safe_reference, resolve_model, structure_only
from growc.spec.document import GrowcSpecError
from growc.spec.growth import GrowthSpec, load_spec

__all__ = [
    "GrowResult",
    "check_spec",
    "compile_spec",
    "example_input",
    "example_inputs",
    "format_plan",
    "format_report",
    "grow",
    "implied_size",
    "is_artifact",
    "load",
    "probe_inputs",
    "write_artifact",
]

ARTIFACT_FILES = ("model.safetensors", "spec.yaml", "report.json", "report.txt", "code.py", "probe.safetensors")
PROBE_TOLERANCE = 1e-4  # float32 and float64; a narrower dtype allows its exactness tolerance (probe_tolerance)
ARTIFACT_WHAT = "a growc artifact folder (a growc report.json)"


def probe_tolerance(dtype: torch.dtype) -> float:
    """How far (max relative) a rebuilt model's output on the probe may be from the saved one: 1e-4, or the dtype's
    exactness tolerance when that is larger (float16 7.8e-3, bfloat16 6.3e-2)."""
    return max(PROBE_TOLERANCE, exactness_tolerance(dtype))


def is_artifact(folder: Path) -> bool:
    """Whether ``folder`` is an artifact growc wrote (its report.json says so): the only folder grow replaces."""
    return artifact_format(folder) == "growc-artifact"


DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: the dtypes of example inputs: a model's (DTYPES) and token ids / masks
INPUT_DTYPES = {**DTYPES, "int64": torch.int64}


@dataclass
class GrowResult:
    """A compiled growth: the grown model, the example input (the first, with several), the report, and every
    example input (the model's positional inputs, in order)."""

    model: fx.GraphModule
    example: torch.Tensor
    report: dict[str, Any]
    inputs: tuple[torch.Tensor, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.inputs:
            self.inputs = (self.example,)


def _as_spec(spec: GrowthSpec | str | Path) -> GrowthSpec:
    return spec if isinstance(spec, GrowthSpec) else load_spec(spec)


def example_inputs(spec: GrowthSpec) -> tuple[torch.Tensor, ...]:
    """The spec's example inputs, in order, drawn from one generator seeded with ``seed``: standard normal for a
    float input, ``randint(0, vocab)`` for token ids, ``fill`` everywhere for a constant (a mask)."""
    generator = torch.Generator().manual_seed(spec.seed)
    inputs = []
    for x in spec.inputs:
        dtype = INPUT_DTYPES[x.dtype]
        if x.fill is not None:
            inputs.append(torch.full(x.shape, x.fill, dtype=dtype))
        elif x.vocab is not None:
            inputs.append(torch.randint(0, x.vocab, x.shape, generator=generator, dtype=dtype))
        else:
            inputs.append(torch.randn(x.shape, generator=generator).to(dtype))
    return tuple(inputs)


def example_input(spec: GrowthSpec) -> torch.Tensor:
    """The spec's (first) example input (:func:`example_inputs`)."""
    return example_inputs(spec)[0]


def probe_inputs(probe: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The example inputs a ``probe.safetensors`` holds: ``input``, or ``input.0``, ``input.1``, ... in order."""
    if "input" in probe:
        return (probe["input"],)
    inputs = []
    while f"input.{len(inputs)}" in probe:
        inputs.append(probe[f"input.{len(inputs)}"])
    return tuple(inputs)


def _probe_input_keys(n: int) -> list[str]:
    return ["input"] if n == 1 else [f"input.{i}" for i in range(n)]


def template_options(spec: GrowthSpec) -> dict[str, Any]:
    """The keyword arguments of :func:`growc.templatize` that the spec's template policy (and trace) sets."""
    from growc.passes.config import TemplatizeConfig

    t = spec.templates
    options: dict[str, Any] = {"sharing": t.sharing, "templates": t.per_bank, "init": t.init, "window": t.window}
    if spec.trace.capture != TemplatizeConfig.capture:
        options["capture"] = spec.trace.capture
    if spec.trace.dynamic != TemplatizeConfig.dynamic:
        options["dynamic"] = spec.trace.dynamic
    if spec.trace.leaf_modules:
        options["leaf_modules"] = list(spec.trace.leaf_modules)
    if t.layers is not None:
        options["layers"] = list(t.layers)
    return options


def build_parent(spec: GrowthSpec, index: int, *, weights: bool = True, trust_code: bool = True) -> nn.Module:
    """Parent ``index``: built from its reference under seed ``seed + index``, with its weights file loaded.

    A weights file of a templatized parent (keys under ``growc_banks.``) is loaded into the parent templatized with
    the spec's template policy. The caller's random state is left as it was. With ``trust_code=False`` only
    built-in and ``torchvision:`` references are accepted (``package.module:factory`` imports and runs code).
    """
    from growc.passes import templatize

    parent = spec.parents[index]
    doc = spec.doc
    if not trust_code and not is_safe_reference(parent.model):
        raise doc.error(
            ("parents", index, "model"),
            f"'{parent.model}' imports and runs code named by this file; load it with trust_code=True "
            "(growc show --trust-code) only if you trust where it came from",
        )
    kwargs = dict(parent.kwargs)
    folder = spec.pretrained_folder(index)
    if folder is not None:
        if not folder.is_dir():
            raise doc.error(
                ("parents", index, "kwargs", "pretrained"),
                f"the pretrained folder '{folder}' does not exist (or is not a folder): growc loads transformers "
                "models from a local folder only and never downloads",
            )
        kwargs["pretrained"] = str(folder)
    try:
        with torch.random.fork_rng(devices=[]), structure_only() if not weights else _nothing():
            torch.manual_seed(spec.seed + index)
            model = resolve_model(parent.model, **kwargs)
    except ModelBuildError as error:
        raise doc.error(("parents", index, "kwargs"), str(error)) from None
    except GrowcError as error:
        raise doc.error(("parents", index, "model"), str(error)) from None
    model = model.to(DTYPES[spec.model_dtype]).train(spec.trace.mode == "train")
    if not weights or parent.weights is None:
        return model
    path = spec.base_dir / parent.weights
    where = ("parents", index, "weights")
    try:
        tensors = load_state_dict(path)
    except GrowcError as error:
        raise doc.error(where, str(error)) from None
    target: nn.Module = model
    if any(k.startswith("growc_banks.") for k in tensors):
        target = templatize(model, example_inputs(spec), seed=spec.seed + index, verify=False, **template_options(spec))
    try:
        load_into(target, tensors, f"weights file '{path}'")
    except GrowcError as error:
        raise doc.error(where, str(error)) from None
    return target


def _nothing() -> Any:
    import contextlib

    return contextlib.nullcontext()


MAX_ELEMENTS = 2**31  # parameters and buffers of the grown network: 8 GiB of float32
MAX_BYTES = 8 << 30


def implied_size(spec: GrowthSpec, *, trust_code: bool = True) -> dict[str, Any]:
    """The sizes ``spec`` implies, computed before anything is allocated.

    Each parent is built on the meta device (shapes only: no memory, no initialization); the grown network is
    bounded by the parents' elements times the square of the total width factor (every step's factor multiplied:
    a convolution or linear layer ``f`` times wider has ``f**2`` times the weights) times ``templates.per_bank``
    (a weight may become that many templates). Returns ``parents`` (elements of each), ``factor``, ``grown`` (the
    bound, in elements) and ``bytes``; a parent whose factory cannot build on the meta device (or whose code is not
    trusted) is left out (``None``).
    """

    def key(parent: Any) -> str:
        return json.dumps([parent.model, parent.kwargs], sort_keys=True, default=str)

    # parents usually share one reference and kwargs: build each once. None: code not trusted, or a factory that
    # cannot build on the meta device (the real build's errors are located at its spec line)
    counts: dict[str, int | None] = {}
    for parent in spec.parents:
        name = key(parent)
        if name in counts:
            continue
        counts[name] = None
        if trust_code or is_safe_reference(parent.model):
            try:
                kwargs = dict(parent.kwargs)
                folder = spec.pretrained_folder(spec.parents.index(parent))
                if folder is not None:
                    kwargs["pretrained"] = str(folder)
                with torch.random.fork_rng(devices=[]), torch.device("meta"), structure_only():
                    model = resolve_model(parent.model, **kwargs)
                counts[name] = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
            except GrowcError:
                pass
    parents = [counts[key(p)] for p in spec.parents]
    factor = math.prod(step.factor or 1 for step in spec.growth)
    known = [n for n in parents if n is not None]
    biggest = max(known, default=0)
    grown = biggest * factor * factor * spec.templates.per_bank  # each weight may become per_bank templates
    size = torch.finfo(DTYPES[spec.model_dtype]).bits // 8
    return {"parents": parents, "factor": factor, "grown": grown, "bytes": grown * size}


def _check_size(spec: GrowthSpec, trust_code: bool) -> dict[str, Any]:
    size = implied_size(spec, trust_code=trust_code)
    for i, count in enumerate(size["parents"]):
        if count is not None and count > MAX_ELEMENTS:
            raise spec.doc.error(
                ("parents", i, "kwargs"),
                f"parent {i} ({spec.parents[i].model}) has {count:,} parameters and buffers: more than growc's bound "
                f"of {MAX_ELEMENTS:,}",
            )
    if size["grown"] > MAX_ELEMENTS or size["bytes"] > MAX_BYTES:
        raise spec.doc.error(
            ("growth",),
            f"the steps make the parents {size['factor']}x wider: up to {size['grown']:,} parameters and buffers "
            f"({size['bytes'] / 2**30:.1f} GiB of {spec.model_dtype}), more than growc's bound of {MAX_ELEMENTS:,} "
            f"({MAX_BYTES >> 30} GiB); nothing was allocated",
        )
    return size


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_spec(spec: GrowthSpec | str | Path) -> dict[str, Any]:
    """Validate ``spec`` against the traced parents; return the plan (parents, template policy, steps).

    Raises :class:`~growc.spec.document.GrowcSpecError` located at the offending spec value.
    """
    spec = _as_spec(spec)
    _check_size(spec, trust_code=True)
    return _validate(spec, [build_parent(spec, i) for i in range(len(spec.parents))])


def _validate(spec: GrowthSpec, parents: list[nn.Module]) -> dict[str, Any]:
    from growc.passes import layer_matches, templatable_weights

    doc = spec.doc
    xs = example_inputs(spec)
    where = ("input", "shape") if not isinstance(spec.input, list) else ("input",)
    plan_parents = []
    names: list[str] = []
    for i, model in enumerate(parents):
        plain = model if not isinstance(model, fx.GraphModule) else None
        if plain is not None:
            for j, path in enumerate(spec.trace.leaf_modules):
                try:
                    plain.get_submodule(path)
                except AttributeError:
                    raise doc.error(
                        ("trace", "leaf_modules", j), f"parent {i} ({spec.parents[i].model}) has no submodule '{path}'"
                    ) from None
        try:
            gm = (
                model
                if isinstance(model, fx.GraphModule)
                else trace(
                    model,
                    xs,
                    capture=spec.trace.capture,
                    dynamic=spec.trace.dynamic,
                    leaf_modules=spec.trace.leaf_modules,
                )
            )
            propagate_shapes(gm, xs)
        except GrowcError as error:
            shape = "of this shape" if len(xs) == 1 else "of these shapes"
            raise doc.error(where, f"parent {i} ({spec.parents[i].model}) fails on an input {shape}: {error}") from None
        if i == 0:
            names = (
                templatable_weights(gm)
                if plain is not None
                else [layer["weight"] for layer in gm.meta["growc"]["templatize"]["layers"]]
            )
        plan_parents.append(
            {
                "model": spec.parents[i].model,
                "kwargs": spec.parents[i].kwargs,
                "weights": spec.parents[i].weights,
                "templatized": plain is None,
                "params": _count(model),
            }
        )
    shapes = [{k: tuple(v.shape) for k, v in p.state_dict().items()} for p in parents]
    for i in range(1, len(parents)):
        if shapes[i] != shapes[0]:
            key = next(k for k in [*shapes[0], *shapes[i]] if shapes[i].get(k) != shapes[0].get(k))
            raise doc.error(
                ("parents", i),
                f"parent {i} is not parent 0's architecture: '{key}' has shape {shapes[i].get(key)}, parent 0's "
                f"{shapes[0].get(key)} (every parent must have the same layers and shapes)",
            )
    for j, pattern in enumerate(spec.templates.layers or []):
        if not any(layer_matches(name, pattern) for name in names):
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise doc.error(
                ("templates", "layers", j),
                f"pattern '{pattern}' matches no templatable weight of {spec.parents[0].model} ({len(names)}: {shown})",
            )
    selected = [
        n for n in names if spec.templates.layers is None or any(layer_matches(n, p) for p in spec.templates.layers)
    ]
    steps = []
    resolved = spec.steps()
    for step in resolved:
        entry: dict[str, Any] = {"step": step.index, "factor": step.factor}
        if step.fuse is not None:
            entry.update(kind="fuse", parents=len(spec.parents), **step.fuse.as_dict())
        else:
            entry.update(kind="widen", method=step.method)
        if step.target is not None:
            entry["target"] = {step.target.kwarg: step.target.value}
        steps.append(entry)
    width = math.prod(step.factor for step in resolved)
    return {
        "name": spec.name,
        "spec": spec.doc.file,
        "seed": spec.seed,
        "input": _plan_input(spec),
        "parents": plan_parents,
        "templates": {**spec.templates.model_dump(mode="json"), "weights": len(names), "selected": len(selected)},
        "steps": steps,
        "width_factor": width,
        "output": spec.output.folder if spec.output else None,
    }


def _plan_input(spec: GrowthSpec) -> dict[str, Any] | list[dict[str, Any]]:
    def entry(x: Any) -> dict[str, Any]:
        item: dict[str, Any] = {"shape": x.shape, "dtype": x.dtype}
        item.update({k: getattr(x, k) for k in ("vocab", "fill") if getattr(x, k) is not None})
        return item

    return [entry(x) for x in spec.input] if isinstance(spec.input, list) else entry(spec.input)


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as text: parents, template policy, steps."""
    lines = [f"growc plan for {plan['spec']}" + (f" ({plan['name']})" if plan["name"] else "")]
    shown = []
    for x in plan["input"] if isinstance(plan["input"], list) else [plan["input"]]:
        extra = "".join(f" {k}={x[k]:g}" for k in ("vocab", "fill") if k in x)
        shown.append(f"{x['shape']} {x['dtype']}{extra}")
    lines.append(f"input {', '.join(shown)}, seed {plan['seed']}")
    for i, p in enumerate(plan["parents"]):
        kwargs = ", ".join(f"{k}={v!r}" for k, v in p["kwargs"].items())
        weights = p["weights"] or "random init"
        kind = "templatized" if p["templatized"] else "plain"
        lines.append(f"parent {i}: {p['model']}({kwargs}) {kind}, {p['params']:,} parameters, weights: {weights}")
    t = plan["templates"]
    window = f" window={t['window']}" if t["sharing"] == "shape_window" else ""
    lines.append(
        f"templates: sharing={t['sharing']}{window} K={t['per_bank']} init={t['init']}; "
        f"{t['selected']} of {t['weights']} weights selected" + (f" by {t['layers']}" if t["layers"] else "")
    )
    for s in plan["steps"]:
        if s["kind"] == "fuse":
            lines.append(
                f"step {s['step']}: fuse {s['parents']} parents (x{s['factor']}): cross_init={s['cross_init']} "
                f"cross_scale={s['cross_scale']} cross_templates={s['cross_templates']} head={s['head']}"
            )
        else:
            lines.append(f"step {s['step']}: widen x{s['factor']} by {s['method']}")
    lines.append(f"total: {plan['width_factor']}x the parents' width -> {plan['output'] or '(no output folder)'}")
    return "\n".join(lines)


def compile_spec(
    spec: GrowthSpec | str | Path, *, verify: bool = True, weights: bool = True, trust_code: bool = True
) -> GrowResult:
    """Run the spec's growth steps in memory and return the grown model with its report.

    Args:
        spec: a loaded spec or a path to one.
        verify: validate the spec against the traced parents first (:func:`check_spec`) and let each pass check
            its output (exact steps raise on a mismatch); off when rebuilding for :func:`load`, whose weights come
            from the artifact.
        weights: load the parents' weights files (off: every parent randomly initialized, same structure).
        trust_code: accept ``package.module:factory`` references (they import and run code).
    """
    from growc.passes import fuse, materialize, widen

    spec = _as_spec(spec)
    size = _check_size(spec, trust_code)
    xs = example_inputs(spec)
    start = time.perf_counter()
    parents = [build_parent(spec, i, weights=weights, trust_code=trust_code) for i in range(len(spec.parents))]
    if verify:
        _validate(spec, parents)
    options = template_options(spec)
    gm: fx.GraphModule | None = None
    steps: list[dict[str, Any]] = []
    for step in spec.steps():
        i = step.index
        t0 = time.perf_counter()
        try:
            config = step.options()
            if step.kind == "fuse":
                gm = fuse(parents, xs, **config, seed=spec.seed, templatize_options=options, verify=verify)
            else:
                base = parents[0] if gm is None else gm
                gm = widen(base, xs, **config, seed=spec.seed + i, templatize_options=options, verify=verify)
            pass_report = gm.meta["growc"][step.kind]
        except GrowcSpecError:
            raise
        except (GrowcError, RuntimeError, MemoryError) as error:
            kind = "" if isinstance(error, GrowcError) else f"{type(error).__name__}: "
            raise spec.doc.error(("growth", i), f"step {i} failed: {kind}{error}") from None
        steps.append(
            {
                "step": i,
                "kind": step.kind,
                "factor": step.factor,
                "method": step.method,
                "cross_init": None if step.fuse is None else step.fuse.cross_init,
                "params": _count(gm),
                "fallbacks": len(pass_report.get("fallbacks", [])),
                "output": pass_report.get("output"),
                "seconds": round(time.perf_counter() - t0, 4),
                "report": pass_report,
            }
        )
    assert gm is not None
    gm.train(spec.trace.mode == "train")
    report = {
        "name": spec.name,
        "parents": [
            {"model": p.model, "kwargs": p.kwargs, "weights": p.weights, "params": _count(m)}
            for p, m in zip(spec.parents, parents, strict=True)
        ],
        "steps": steps,
        "params": {
            "parents": [_count(m) for m in parents],
            "grown": _count(gm),
            "materialized": _count(materialize(gm)) if verify else None,
        },
        "size": {k: size[k] for k in ("parents", "factor", "grown")},
        "seconds": round(time.perf_counter() - start, 4),
    }
    gm.meta["growc"]["grow"] = report
    return GrowResult(gm, xs[0], report, xs)


def _flat_outputs(out: Any, prefix: str = "output") -> dict[str, torch.Tensor]:
    """A model's output as named tensors: ``output`` for one tensor; ``output.KEY`` / ``output.I`` for the fields of
    a mapping (a transformers ``ModelOutput``) or a tuple, nested ones dotted further; ``None`` fields left out."""
    if isinstance(out, torch.Tensor):
        return {prefix: out.detach()}
    if isinstance(out, Mapping):
        items: Any = out.items()
    elif isinstance(out, (tuple, list)):
        items = enumerate(out)
    else:
        raise GrowcError(
            f"the grown model returns {type(out).__name__} at '{prefix}'; artifacts need tensors (or mappings and "
            "tuples of them)"
        )
    flat: dict[str, torch.Tensor] = {}
    for key, value in items:
        if value is not None:
            flat.update(_flat_outputs(value, f"{prefix}.{key}"))
    if not flat:
        raise GrowcError(f"the grown model's output '{prefix}' holds no tensor")
    return flat


def _eval_output(model: nn.Module, inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(*inputs)
    finally:
        model.train(was)
    return _flat_outputs(out)


def grow(
    spec: GrowthSpec | str | Path,
    out: str | Path | None = None,
    *,
    overwrite: bool | None = None,
) -> tuple[Path, GrowResult]:
    """Compile ``spec`` and write its artifact folder atomically; return the folder and the result.

    ``out`` overrides the spec's ``output.folder`` and ``overwrite`` its ``output.overwrite``. A failure (or an
    interrupt) leaves no folder and no partial file at the destination.
    """
    spec = _as_spec(spec)
    if out is None:
        if spec.output is None:
            raise spec.doc.error((), "no output folder: set output.folder in the spec or pass --out")
        out = spec.output.folder
    if overwrite is None:
        overwrite = spec.output.overwrite if spec.output else False
    dest = check_destination(out, overwrite=overwrite, replaceable=is_artifact, what=ARTIFACT_WHAT)
    result = compile_spec(spec)
    inputs = [
        {
            "model": p.model,
            "weights": str((spec.base_dir / p.weights).resolve()) if p.weights else None,
            "sha256": sha256_file(spec.base_dir / p.weights) if p.weights else None,
        }
        for p in spec.parents
    ]
    result.report = write_artifact(
        dest, spec, result.model, result.inputs, {"inputs": inputs, **result.report}, overwrite=overwrite
    )
    return dest, result


def write_artifact(
    dest: str | Path,
    spec: GrowthSpec,
    gm: fx.GraphModule,
    example: torch.Tensor | Sequence[torch.Tensor],
    report: dict[str, Any],
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``gm`` as an artifact folder of ``spec`` (atomically) and return the full report written.

    ``gm`` must be the graph :func:`compile_spec` builds from ``spec`` (with any weights, e.g. after training):
    :func:`load` rebuilds it from the resolved spec. ``example`` is the example input, or every one in order.
    """
    from growc.version import __version__

    dest = check_destination(dest, overwrite=overwrite, replaceable=is_artifact, what=ARTIFACT_WHAT)
    inputs = (example,) if isinstance(example, torch.Tensor) else tuple(example)
    outputs = _eval_output(gm, inputs)
    bad = sum(int((~torch.isfinite(t)).sum()) for t in outputs.values() if t.is_floating_point())
    if bad:
        raise GrowcDataError(
            f"the grown model's output on the example input holds {bad} NaN or infinite value(s): no artifact is "
            "written (check the parents' weights)"
        )
    with atomic_directory(dest, overwrite=overwrite, replaceable=is_artifact, what=ARTIFACT_WHAT) as tmp:
        meta = {"format": "growc-artifact", "growc": __version__}
        save_state_dict(gm, tmp / "model.safetensors", metadata=meta)
        probe = dict(zip(_probe_input_keys(len(inputs)), inputs, strict=True))
        save_tensors({**probe, **outputs}, tmp / "probe.safetensors", metadata=meta)
        header = (
            f"# growc {__version__}: the resolved spec of this artifact (every default filled in).\n"
            f"# growc.load() rebuilds the model from it; source: {spec.doc.file}\n"
        )
        (tmp / "spec.yaml").write_text(
            header + yaml.safe_dump(spec.resolved(), sort_keys=False, default_flow_style=None)
        )
        (tmp / "code.py").write_text(gm.code)
        full = {
            "format": "growc-artifact",
            "growc": __version__,
            "source": str(Path(spec.doc.file).resolve()) if Path(spec.doc.file).exists() else spec.doc.file,
            **report,
            "probe": {**_probe_shapes(inputs), "tolerance": probe_tolerance(DTYPES[spec.model_dtype])},
            "files": {name: {"sha256": sha256_file(tmp / name)} for name in ("model.safetensors", "probe.safetensors")},
        }
        write_json(tmp / "report.json", full)
        (tmp / "report.txt").write_text(format_report(full) + "\n")
    return full


def _probe_shapes(inputs: Sequence[Any]) -> dict[str, Any]:
    """The input shapes report.json's probe records: ``shape`` for one input, ``shapes`` for several."""
    shapes = [list(x.shape) for x in inputs]
    return {"shape": shapes[0]} if len(shapes) == 1 else {"shapes": shapes}


def _artifact_report(root: Path) -> dict[str, Any]:
    path = root / "report.json"
    report = read_json(path, "artifact report")
    if report.get("format") != "growc-artifact":
        raise GrowcError(f"'{path}' is not a growc artifact report")
    files = report.get("files")
    for name in ("model.safetensors", "probe.safetensors"):
        entry = files.get(name) if isinstance(files, dict) else None
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(digest, str) or len(digest) != 64:
            raise GrowcError(f"'{path}' has no SHA-256 for {name}: the artifact's integrity cannot be checked")
    return report


def _check_recorded(root: Path, report: dict[str, Any], spec: GrowthSpec, trust_code: bool) -> None:
    """Before anything is built: the steps and parent sizes report.json recorded must be the ones spec.yaml
    implies, and the weights file's header must fit growc's bounds."""
    where = f"'{root / 'spec.yaml'}' does not match '{root / 'report.json'}'"
    steps = report.get("steps")
    recorded = (
        [(s.get("kind"), s.get("factor")) for s in steps if isinstance(s, dict)] if isinstance(steps, list) else None
    )
    implied = [(step.kind, step.factor) for step in spec.steps()]
    if recorded != implied:
        raise GrowcError(
            f"{where}: the spec's steps (kind, factor) are {implied}, the report recorded {recorded}: the artifact "
            "was modified after growc grow wrote it"
        )
    size = _check_size(spec, trust_code)
    recorded_size = report.get("size")
    shown = recorded_size.get("parents") if isinstance(recorded_size, dict) else recorded_size
    probe = report.get("probe")
    implied_input = _probe_shapes(spec.inputs)
    recorded_input = {k: probe.get(k) for k in implied_input} if isinstance(probe, dict) else None
    if recorded_input != implied_input:
        key, value = next(iter(implied_input.items()))
        shown = recorded_input.get(key) if isinstance(recorded_input, dict) else None
        raise GrowcError(
            f"{where}: the spec's input {key} is {value}, the report recorded {shown!r}: "
            "the artifact was modified after growc grow wrote it"
        )
    if recorded_size is not None and (
        not isinstance(shown, list)
        or len(shown) != len(size["parents"])
        # None: a parent whose code is not trusted (refused with its spec line when it is built)
        or any(n is not None and n != r for n, r in zip(size["parents"], shown, strict=True))
    ):
        raise GrowcError(
            f"{where}: the spec's parents have {size['parents']} parameters and buffers, the report recorded "
            f"{shown!r}: the artifact was modified after growc grow wrote it"
        )
    if isinstance(recorded_size, dict) and "grown" in recorded_size and recorded_size["grown"] != size["grown"]:
        raise GrowcError(
            f"{where}: the spec bounds the grown network at {size['grown']:,} elements, the report recorded "
            f"{recorded_size['grown']!r} (templates or steps changed): the artifact was modified after growc grow "
            "wrote it"
        )
    weights = root / "model.safetensors"
    elements = 0
    try:
        with safe_open(weights, "pt") as handle:
            for key in handle.keys():
                elements += math.prod(handle.get_slice(key).get_shape())
    except (OSError, SafetensorError, ValueError) as error:
        raise GrowcError(f"weights file '{weights}' is not a valid safetensors file: {error}") from None
    if elements > MAX_ELEMENTS:
        raise GrowcError(
            f"weights file '{weights}' holds {elements:,} values: more than growc's bound of {MAX_ELEMENTS:,}"
        )


def load(folder: str | Path, *, verify: bool = True, trust_code: bool = False) -> fx.GraphModule:
    """Rebuild the grown GraphModule of an artifact folder and load its weights (no unpickling).

    The model is rebuilt from ``spec.yaml`` (structure only: parents randomly initialized, no passes' checks), then
    ``model.safetensors`` is loaded: a missing key, an extra key, a wrong shape or dtype, or bytes that differ from
    the ones ``growc grow`` wrote (SHA-256 in ``report.json``) raise ``GrowcError`` naming the problem. With
    ``verify`` the model's eval output on the saved probe input must equal the saved output (within
    :func:`probe_tolerance` of its dtype).

    An artifact whose parents are ``package.module:factory`` references would import and run that code: that needs
    ``trust_code=True``; built-ins, growc's model classes and ``torchvision:`` models do not.
    """
    root = Path(folder)
    if not root.is_dir():
        raise GrowcError(f"'{root}' is not a growc artifact folder (no such folder)")
    required = ("model.safetensors", "spec.yaml", "report.json", "probe.safetensors")
    missing = [name for name in required if not (root / name).is_file()]
    if missing:
        raise GrowcError(
            f"'{root}' is not a complete growc artifact: missing {', '.join(missing)} (or not a plain file)"
        )
    report = _artifact_report(root)
    weights = root / "model.safetensors"
    probe_path = root / "probe.safetensors"
    spec = load_spec(root / "spec.yaml")
    _check_recorded(root, report, spec, trust_code)  # bounds the build below before anything is allocated
    gm = compile_spec(spec, verify=False, weights=False, trust_code=trust_code).model  # structure only
    load_into(gm, load_state_dict(weights), f"weights file '{weights}'")  # names the key of any mismatch
    for name, path in (("model.safetensors", weights), ("probe.safetensors", probe_path)):
        if sha256_file(path) != report["files"][name]["sha256"]:
            raise GrowcError(
                f"{name} in '{root}' was modified after growc grow wrote it: its SHA-256 differs from the one in "
                "report.json (its keys, shapes and dtypes match the model; its bytes do not)"
            )
    gm.meta["growc"]["artifact"] = report
    if verify:
        _verify_probe(gm, spec, probe_path)
    return gm


def _verify_probe(gm: fx.GraphModule, spec: GrowthSpec, probe_path: Path) -> None:
    """The rebuilt model's eval outputs on the probe's inputs must be the saved outputs (keys, shapes, values)."""
    probe = load_state_dict(probe_path)
    input_keys = _probe_input_keys(len(spec.inputs))
    want = {k: v for k, v in probe.items() if k == "output" or k.startswith("output.")}
    extra = sorted(set(probe) - set(input_keys) - set(want))
    if extra or not want or any(k not in probe for k in input_keys):
        raise GrowcError(
            f"'{probe_path}' must hold exactly {', '.join(repr(k) for k in input_keys)} and the outputs ('output' or "
            f"'output.*'); it holds {', '.join(sorted(probe))}"
        )
    inputs = tuple(probe[k] for k in input_keys)
    for key, x, declared in zip(input_keys, inputs, spec.inputs, strict=True):
        if list(x.shape) != list(declared.shape) or x.dtype != INPUT_DTYPES[declared.dtype]:
            raise GrowcError(
                f"'{probe_path}' holds {'an input' if key == 'input' else key} of shape {list(x.shape)} and dtype "
                f"{x.dtype}; the spec's is "
                f"{declared.shape} {declared.dtype}"
            )
    got = _eval_output(gm, inputs)
    if sorted(got) != sorted(want):
        raise GrowcError(
            f"the rebuilt model outputs {', '.join(sorted(got))}; the probe saved {', '.join(sorted(want))}"
        )
    tolerance = probe_tolerance(DTYPES[spec.model_dtype])
    for key, saved in want.items():
        if got[key].shape != saved.shape:
            raise GrowcError(
                f"the rebuilt model outputs shape {list(got[key].shape)}"
                + (f" at '{key}'" if key != "output" else "")
                + f"; the probe saved {list(saved.shape)}"
            )
        scale = saved.float().abs().max().clamp_min(1e-12) if saved.numel() else torch.tensor(1.0)
        error = (got[key].float() - saved.float()).abs().max() / scale if saved.numel() else torch.tensor(0.0)
        if not error <= tolerance:
            raise GrowcError(
                f"the rebuilt model's output{'' if key == 'output' else f' {key!r}'} on the probe input differs from "
                f"the saved one (max rel {float(error):.3e} > {tolerance:g}): the artifact does not reproduce with "
                "this growc/torch"
            )


def format_report(report: dict[str, Any]) -> str:
    """A human summary of a grow report: parents, steps with their checks, parameter counts.

    Any JSON shape prints (a report.json is read from disk): a missing value or one of the wrong type shows as ``?``.
    """
    missing = object()

    def text(value: Any) -> str:  # a scalar, printable and short; anything else is '?'
        if value is missing or not isinstance(value, (str, int, float, type(None))):
            return "?"
        shown = str(value)[:200]
        return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in shown)

    def number(value: Any, spec: str) -> str:
        return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"

    def items(value: Any) -> list[Any]:
        return value if isinstance(value, list) else []

    def fields(value: Any) -> dict[str, Any]:
        return value if isinstance(value, dict) else {}

    report = fields(report)
    name = f" ({text(report['name'])})" if report.get("name") else ""
    lines = [f"growc grow{name}: growc {text(report.get('growc', '?'))}"]
    for i, p in enumerate(items(report.get("parents"))):
        p = fields(p)
        weights = text(p["weights"]) if p.get("weights") else "random init"
        lines.append(
            f"parent {i}: {text(p.get('model', missing))} {number(p.get('params'), ',')} parameters, weights: {weights}"
        )
    for s in items(report.get("steps")):
        s = fields(s)
        factor = text(s.get("factor", missing))
        what = (
            f"fuse x{factor} (cross_init={text(s.get('cross_init', missing))})"
            if s.get("kind") == "fuse"
            else f"widen x{factor} by {text(s.get('method', missing))}"
        )
        check = ""
        if s.get("output"):
            o = fields(s["output"])
            check = f"; output vs {text(o.get('against', 'parents'))}: max rel {number(o.get('max_rel'), '.2e')}"
        lines.append(
            f"step {text(s.get('step', missing))}: {what}: {number(s.get('params'), ',')} parameters, "
            f"{text(s.get('fallbacks', missing))} fallback op(s), {number(s.get('seconds'), '.2f')} s{check}"
        )
    params = fields(report.get("params"))
    parents = params.get("parents")
    counts = " + ".join(number(n, ",") for n in parents) if isinstance(parents, list) else "?"
    materialized = params.get("materialized")
    lines.append(
        f"parameters: parents {counts} -> grown {number(params.get('grown'), ',')}"
        + (f" (materialized {number(materialized, ',')})" if materialized is not None else "")
    )
    return "\n".join(lines)
