"""The ``widen`` pass: one model grows ``factor`` times wider, by MixtureGrowth or by a baseline operator.

Every method runs the fusion machinery of :mod:`growc.passes.fuse` (same lifts, same exact fallback), with the
model as parent 0 and ``factor - 1`` derived parents, so baselines compare like with like:

* ``net2net``: the new channels replicate the old ones and every weight reading the replicated channels is
  divided by the factor (Net2Net's widening). Function-preserving, in train mode too unless the graph draws
  random numbers (dropout, stochastic depth), where the replicas draw their own masks.
* ``zero``: the new channels get fresh weights (Kaiming templates, orthogonal coefficients), and every block from
  new channels to old ones, and the head's new columns, is zero: the old channels never see the new ones.
  Function-preserving.
* ``random``: fresh new channels and random cross blocks (uniform in [-1, 1]); logits summed. Not preserving:
  the random-growth baseline.
* ``mixture``: the new channels' weights are *new coefficient rows over the model's own templates* (orthogonal to
  the rows the banks hold), and so are the cross blocks; logits summed. MixtureGrowth with one parent.

The factor composes: ``widen(widen(m, x, factor=2), x, factor=2)`` is four times as wide, with the first
growth's templates and coefficients carried through (multi-step growth, 0.25 -> 0.5 -> 1).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn

from growc.errors import GrowcConfigError, GrowcPassError
from growc.fx.analysis import check_finite_state
from growc.fx.checks import check_example_inputs, check_growth_size, check_module, check_seed, is_templatized
from growc.fx.pipeline import finish_pass
from growc.runtime.init import fresh_bank, orthogonal_row
from growc.runtime.layers import GRID_TYPES, MIXED_TYPES

from .config import SEED, VERIFY, FusionConfig, Method, TemplatizeConfig, WidenConfig
from .fuse import fuse_owned, verify_fusion
from .templatize import templatize

__all__ = ["fusion_config", "widen"]


def _fresh(model: fx.GraphModule, generator: torch.Generator) -> fx.GraphModule:
    """A copy whose banks are re-initialized the reference's way (:func:`growc.runtime.init.fresh_bank`: Kaiming
    templates with growc's fan-in rule, orthogonal coefficients)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for bank in out.growc_banks.values():
            templates, coefficients = fresh_bank(
                bank.kind, bank.weight_shape, bank.num_templates, bank.num_layers, generator, torch.float32
            )
            bank.templates.copy_(templates.view(bank.templates.shape))
            bank.coefficients.copy_(coefficients)
    return out


def _add_orthogonal_row(bank: nn.Module) -> int:
    """A new row of ``bank``, orthogonal to every row it holds; its index."""
    (index,) = bank.add_rows(orthogonal_row("widen(method='mixture')", bank.coefficients).row[None])
    return index


def _on_own_templates(model: fx.GraphModule) -> fx.GraphModule:
    """A copy that shares ``model``'s banks and whose every layer reads a new (orthogonal) row of them."""
    memo: dict[int, Any] = {id(bank): bank for bank in model.growc_banks.values()}
    out = copy.deepcopy(model, memo)
    for module in out.modules():
        if isinstance(module, MIXED_TYPES):
            module.index = _add_orthogonal_row(module.bank)
        elif isinstance(module, GRID_TYPES):
            module.set_blocks(
                [[[(bank, _add_orthogonal_row(bank)) for bank, _ in terms] for terms in row] for row in module.blocks]
            )
    return out


def fusion_config(config: WidenConfig, seed: int) -> FusionConfig:
    """How a widening by ``config.method`` drives the fusion engine (see the module docstring): ``net2net``
    copies the coefficients without noise, divides the interior blocks by the factor and averages the logits;
    ``mixture`` adds orthogonal rows and sums; ``random`` draws random cross blocks and sums; ``zero`` draws
    random blocks except those into parent 0 (zero) and reads out through parent 0 alone."""
    factor = config.factor
    if config.method == "net2net":
        return FusionConfig(cross_init="copy", head="mean", seed=seed, copy_noise=0.0, interior_scale=1.0 / factor)
    if config.method == "mixture":
        return FusionConfig(cross_init="orthogonal", head="sum", seed=seed)
    if config.method == "random":
        return FusionConfig(cross_init="random", head="sum", seed=seed)
    zero_into_old = tuple(((0, j), "zero") for j in range(1, factor))
    return FusionConfig(cross_init="random", head="first", seed=seed, block_inits=zero_into_old)


def _parents(base: fx.GraphModule, config: WidenConfig, seed: int) -> list[fx.GraphModule]:
    """Parent 0 (``base``) and the ``factor - 1`` parents the method derives from it."""
    count = config.factor - 1
    if config.method == "net2net":
        return [base] + [copy.deepcopy(base) for _ in range(count)]
    if config.method == "mixture":
        return [base] + [_on_own_templates(base) for _ in range(count)]
    generator = torch.Generator().manual_seed(seed)
    return [base] + [_fresh(base, generator) for _ in range(count)]


def widen(
    model: nn.Module,
    example_inputs: Sequence[Any],
    *,
    factor: int = WidenConfig.factor,
    method: Method = WidenConfig.method,
    seed: int = SEED,
    templatize_options: dict[str, Any] | None = None,
    verify: bool = VERIFY,
) -> fx.GraphModule:
    """Return ``model`` grown ``factor`` times wider by ``method`` (see the module docstring).

    ``model`` may be plain (templatized first with ``templatize_options``), templatized, or already grown; it is
    never modified. ``gm.meta["growc"]["widen"]`` holds the fusion report plus ``method``, ``factor`` and, with
    ``verify``, the output against ``model`` (``net2net`` and ``zero`` must match it: a difference above
    :func:`growc.fx.analysis.exactness_tolerance` of the model's dtype raises).
    """
    check_module("widen", model)
    config = WidenConfig(factor=factor, method=method)
    seed = check_seed(seed)
    options = TemplatizeConfig.from_options("widen", templatize_options)
    example_inputs = check_example_inputs("widen", example_inputs)
    check_finite_state(model, "widen")
    check_growth_size("widen", f"factor={config.factor}", config.factor * config.factor, model)
    base = (
        copy.deepcopy(model)
        if is_templatized(model)
        else templatize(model, example_inputs, seed=seed, verify=verify, **options.kwargs())
    )
    if config.method == "mixture" and not len(getattr(base, "growc_banks", ())):
        raise GrowcConfigError(
            "widen: method 'mixture' mixes the model's templates, and it has none (templatize selected no weight: "
            "check templates.layers); choose method net2net, random or zero, or select layers to templatize"
        )
    params_before = sum(p.numel() for p in base.parameters())
    # the parents are widen's own copies (base is one, or a new templatization): handed over, not copied again
    fusion = fuse_owned(_parents(base, config, seed), example_inputs, fusion_config(config, seed))
    gm = fusion.module
    report: dict[str, Any] = {
        "method": config.method,
        "factor": config.factor,
        "seed": seed,
        "templatize": None if is_templatized(model) else options.report(),
        "trace": base.meta.get("growc", {}).get("trace", {}),  # how the parents were captured
        "lifts": fusion.lifts,
        "fallbacks": fusion.fallbacks,
        "params": {"before": params_before, "after": sum(p.numel() for p in gm.parameters())},
    }
    finish_pass(gm, "widen", report)
    if verify:
        _check_output(config, base, gm, example_inputs, report)
    return gm


def _check_output(
    config: WidenConfig, base: fx.GraphModule, gm: fx.GraphModule, example_inputs: tuple[Any, ...], report: dict
) -> None:
    """The widened model against the model (``report["output"]``); a preserving method that changed the
    function raises :class:`GrowcPassError`."""
    exact = config.preserving
    output = verify_fusion([base], gm, example_inputs, "first", where="widen", exact=exact)
    output["against"] = "the model"
    report["output"] = output
    if exact and "note" not in output and not output["max_rel"] <= output["tolerance"]:
        raise GrowcPassError(
            f"widen(method={config.method!r}) changed the model's function: max rel error {output['max_rel']:.3e} > "
            f"{output['tolerance']:.3g}"
        )
