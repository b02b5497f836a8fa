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
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import fx, nn

from growc.errors import GrowcConfigError, GrowcPassError
from growc.fx.analysis import check_finite_state
from growc.fx.checks import check_example_inputs, check_growth_size, check_module, check_seed, is_templatized
from growc.fx.pipeline import finish_pass
from growc.runtime.bank import TemplateBank
from growc.runtime.layers import GRID_TYPES, MixedWeight
from growc.runtime.layers import MixedLayer as _Mixed

from .fuse import _Fuser, _svd, _verify, fuse_templated
from .templatize import _templatize_options, templatize

__all__ = ["widen"]

Method = Literal["mixture", "net2net", "random", "zero"]
PRESERVING = ("net2net", "zero")


def _fresh(model: fx.GraphModule, generator: torch.Generator) -> fx.GraphModule:
    """A copy whose banks are re-initialized the reference's way: Kaiming templates, orthogonal coefficients."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for bank in out.growc_banks.values():
            shape = bank.weight_shape
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
            templates = torch.randn(bank.templates.shape, generator=generator) * math.sqrt(2.0 / max(fan_in, 1))
            bank.templates.copy_(templates)
            coefficients = torch.empty(bank.coefficients.shape)
            nn.init.orthogonal_(coefficients, generator=generator)
            bank.coefficients.copy_(coefficients)
    return out


def _orthogonal_row(bank: TemplateBank) -> int:
    existing = bank.coefficients.detach().to("cpu", torch.float64)
    _, _, vh = _svd("widen(method='mixture')", existing)
    return bank.add_rows(vh[-1][None])[0]


def _on_own_templates(model: fx.GraphModule) -> fx.GraphModule:
    """A copy that shares ``model``'s banks and whose every layer reads a new (orthogonal) row of them."""
    memo: dict[int, Any] = {id(bank): bank for bank in model.growc_banks.values()}
    out = copy.deepcopy(model, memo)
    for module in out.modules():
        if isinstance(module, (_Mixed, MixedWeight)):
            module.index = _orthogonal_row(module.bank)
        elif isinstance(module, GRID_TYPES):
            module.set_blocks(
                [[[(bank, _orthogonal_row(bank)) for bank, _ in terms] for terms in row] for row in module.blocks]
            )
    return out


def widen(
    model: nn.Module,
    example_inputs: Sequence[Any],
    *,
    factor: int = 2,
    method: Method = "mixture",
    seed: int = 0,
    templatize_options: dict[str, Any] | None = None,
    verify: bool = True,
) -> fx.GraphModule:
    """Return ``model`` grown ``factor`` times wider by ``method`` (see the module docstring).

    ``model`` may be plain (templatized first with ``templatize_options``), templatized, or already grown.
    ``gm.meta["growc"]["widen"]`` holds the fusion report plus ``method``, ``factor`` and, with ``verify``, the
    output against ``model`` (``net2net`` and ``zero`` must match it: a difference above
    :func:`growc.fx.analysis.exactness_tolerance` of the model's dtype raises).
    """
    check_module("widen", model)
    if method not in ("mixture", "net2net", "random", "zero"):
        raise GrowcConfigError(f"method must be 'mixture', 'net2net', 'random' or 'zero', got {method!r}")
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
        raise GrowcConfigError(f"factor must be an integer >= 2, got {factor!r}")
    seed = check_seed(seed)
    options = _templatize_options("widen", templatize_options)
    example_inputs = check_example_inputs("widen", example_inputs)
    check_finite_state(model, "widen")
    check_growth_size("widen", f"factor={factor}", factor * factor, model)
    base = (
        copy.deepcopy(model)
        if is_templatized(model)
        else templatize(model, example_inputs, seed=seed, verify=verify, **options)
    )
    if method == "mixture" and not len(getattr(base, "growc_banks", ())):
        raise GrowcConfigError(
            "widen: method 'mixture' mixes the model's templates, and it has none (templatize selected no weight: "
            "check templates.layers); choose method net2net, random or zero, or select layers to templatize"
        )
    params_before = sum(p.numel() for p in base.parameters())
    generator = torch.Generator().manual_seed(seed)
    if method == "net2net":
        parents = [base] + [copy.deepcopy(base) for _ in range(factor - 1)]
        cross_init, head = "copy", "mean"
    elif method == "mixture":
        parents = [base] + [_on_own_templates(base) for _ in range(factor - 1)]
        cross_init, head = "orthogonal", "sum"
    else:
        parents = [base] + [_fresh(base, generator) for _ in range(factor - 1)]
        cross_init, head = ("random", "sum") if method == "random" else ("random", "first")

    def configure(fuser: _Fuser) -> None:
        if method == "net2net":
            fuser.copy_noise = 0.0
            fuser.interior_scale = 1.0 / factor
        if method == "zero":
            fuser.cross_by_block = {(0, j): "zero" for j in range(1, factor)}

    gm, fuser = fuse_templated(
        parents,
        example_inputs,
        cross_init=cross_init,
        cross_scale=1.0,
        cross_templates="own",
        head=head,
        seed=seed,
        configure=configure,
    )
    report: dict[str, Any] = {
        "method": method,
        "factor": factor,
        "seed": seed,
        "templatize": None if is_templatized(model) else options,
        "lifts": fuser.lifts,
        "fallbacks": fuser.fallbacks,
        "params": {"before": params_before, "after": sum(p.numel() for p in gm.parameters())},
    }
    finish_pass(gm, "widen", report)
    if verify:
        output = _verify([base], gm, example_inputs, "first", where="widen", exact=method in PRESERVING)
        output["against"] = "the model"
        report["output"] = output
        if method in PRESERVING and "note" not in output and not output["max_rel"] <= output["tolerance"]:
            raise GrowcPassError(
                f"widen(method={method!r}) changed the model's function: max rel error {output['max_rel']:.3e} > "
                f"{output['tolerance']:.3g}"
            )
    return gm
