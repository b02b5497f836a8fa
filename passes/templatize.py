"""The ``templatize`` pass: rewrite every weighted op into a template-mixed op over shared banks.

What it does to the graph:

* finds every weight a weighted op uses: ``call_module`` nodes of ``nn.Conv1d/2d/3d`` and ``nn.Linear`` (and
  subclasses that keep their ``forward``), ``get_attr`` nodes of a parameter consumed as the weight of a
  functional conv/linear, by a matmul, by a leaf module or by an opaque (autowrapped) function, the
  Conv/Linear submodules inside leaf modules, and raw weight parameters of leaf modules (e.g.
  ``nn.MultiheadAttention.in_proj_weight``), which a ``torch.nn.utils.parametrize`` parametrization covers.
  Tied weights (one ``nn.Parameter`` reached by several paths) are found by identity and become one bank row;
* groups the weights into banks by the sharing policy: ``layer`` (one bank per weight), ``shape`` (one bank per
  key ``(kind, weight shape, groups)``) or ``shape_window`` (consecutive weights of a key, in graph order, in
  windows of ``window``: the reference's ImageNet variant);
* initialises each bank (``exact``: identity basis, bit-exact, K raised to the layer count when smaller;
  ``svd``: truncated uncentred SVD with predicted and measured error; ``fresh``: Kaiming-normal templates and
  orthogonal coefficients, the reference's init for training from scratch);
* swaps each weighted module for a :mod:`growc.runtime.layers` mixed layer (same target, so the node keeps its name),
  each ``get_attr`` for a ``call_module`` of a :class:`~growc.runtime.layers.MixedWeight` under ``growc_weights`` and
  parametrizes each raw leaf weight with one; the banks are registered once under ``growc_banks``. Rewritten
  nodes carry ``node.meta["growc"]``.

Weights that cannot be templated without changing the function or that are not weights of a weighted op (a
parameter also used by an op that is not a weighted op, already parametrized weights, ConvTranspose, embedding
tables and recurrent weights inside leaves) are left as they are and listed under ``skipped`` with the reason.
A model with a parametrized leaf parameter saves through its state dict (growc's artifacts do), not by pickling
the whole module: ``torch.nn.utils.parametrize`` forbids that.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.nn.utils import parametrize

from growc.errors import GrowcConfigError, GrowcDataError, GrowcPassError
from growc.fx.analysis import (
    check_finite_state,
    computation_dtype,
    exactness_tolerance,
    max_abs_rel_error,
    propagate_shapes,
)
from growc.fx.checks import (
    SIZE_FACTOR,
    check_example_inputs,
    check_module,
    check_seed,
    checked_outputs,
    format_bytes,
    size_bound,
)
from growc.fx.export import Dynamic, captured_by_export, is_aten_graph
from growc.fx.graphs import attribute_owner, graph_module
from growc.fx.pipeline import finish_pass
from growc.fx.registry import WeightedFunction, rule_for
from growc.fx.trace import Capture, trace
from growc.runtime.init import fan_in as _fan_in  # the fan-in rule (matmul weights are [..., in, out])
from growc.runtime.init import kaiming_templates, orthogonal_coefficients
from growc.runtime.layers import (
    GENERATED_TYPES,
    MixedConv1d,
    MixedConv2d,
    MixedConv3d,
    MixedLinear,
    MixedWeight,
    TemplateBank,
)
from growc.runtime.markers import strip_step_markers

from .config import SEED, VERIFY, Init, Sharing, TemplatizeConfig

__all__ = ["EXACT_TOLERANCE", "layer_matches", "templatable_weights", "templatize"]

#: ``init="exact"`` with ``verify=True`` raises when the output's max-norm relative error exceeds
#: :func:`growc.fx.analysis.exactness_tolerance` of the model's dtype; this is its float32 value.
EXACT_TOLERANCE = exactness_tolerance(torch.float32)


_PLAIN: dict[type[nn.Module], tuple[str, type[nn.Module]]] = {
    nn.Conv1d: ("conv1d", MixedConv1d),
    nn.Conv2d: ("conv2d", MixedConv2d),
    nn.Conv3d: ("conv3d", MixedConv3d),
    nn.Linear: ("linear", MixedLinear),
}
_NOT_OPAQUE_MODULES = ("torch", "operator", "_operator", "builtins", "math", "einops")
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.RMSNorm)
_NOT_WEIGHTS: tuple[tuple[tuple[type[nn.Module], ...], str], ...] = (
    ((nn.Embedding, nn.EmbeddingBag), "embedding table: a lookup, not a weighted op"),
    ((nn.RNNBase,), "recurrent weights are not templated (the module keeps flat references to them)"),
    ((nn.modules.conv._ConvTransposeNd,), "ConvTranspose is not templated"),
    (_NORMS, "normalization parameters stay per layer, never templated"),
)
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks")


def _plain_kind(module: nn.Module) -> tuple[str, type[nn.Module]] | None:
    """The kind of a module whose weight can be swapped for a generated one without changing its computation."""
    for base, entry in _PLAIN.items():
        if isinstance(module, base) and type(module).forward is base.forward:
            if hasattr(base, "_conv_forward") and type(module)._conv_forward is not base._conv_forward:
                return None
            return entry
    return None


def _skip_reason(module: nn.Module) -> str | None:
    """Why a plain Conv/Linear module's weight is left as is (None: it is templated)."""
    if parametrize.is_parametrized(module, "weight"):
        return "weight is parametrized (torch.nn.utils.parametrize); left as is"
    if not isinstance(module._parameters.get("weight"), nn.Parameter):
        return "weight is not an nn.Parameter"
    if not module.weight.is_floating_point():
        return f"weight dtype {module.weight.dtype} is not floating point"
    if module.weight.numel() == 0:
        return f"zero-sized weight {tuple(module.weight.shape)}: nothing to template"
    if any(getattr(module, hooks, None) for hooks in _HOOKS):
        return "the module has hooks, which a replacement module would not run; left as is"
    return None


def _role(name: str) -> str:
    """A weight's role: its path with block indices wildcarded (``layer1.0.conv1.weight`` -> ``layer1.*.conv1...``)."""
    return re.sub(r"(?<=\.)\d+(?=\.)|^\d+(?=\.)", "*", name)


@dataclass
class _Weight:
    """One weight parameter and every place the graph uses it."""

    param: nn.Parameter
    name: str
    kind: str
    groups: int
    order: int
    module_sites: dict[str, None] = field(default_factory=dict)  # call_module targets of plain weighted modules
    inner_sites: dict[tuple[str, str], None] = field(default_factory=dict)  # (leaf target, path in the leaf)
    leaf_sites: dict[tuple[str, str], None] = field(default_factory=dict)  # (leaf target, raw parameter name)
    attr_nodes: list[fx.Node] = field(default_factory=list)  # get_attr nodes

    @property
    def key(self) -> tuple[Any, ...]:
        """Weights share a bank only when all of this agrees."""
        p = self.param
        return (self.kind, tuple(p.shape), self.groups, p.dtype, p.device, p.requires_grad)


def _leaf_param_reason(owner: nn.Module, attr: str, p: nn.Parameter, aliases: int) -> str | None:
    """Why a raw parameter inside a leaf module is not templated (None: it is, through a parametrization)."""
    if p.dim() < 2:
        return "not a weight (fewer than 2 dimensions)"
    if attr == "bias" or attr.endswith("_bias"):
        return "a bias: biases stay per layer, never templated"
    for classes, reason in _NOT_WEIGHTS:
        if isinstance(owner, classes):
            return reason
    if attr == "original" or parametrize.is_parametrized(owner, attr):
        return "already parametrized (torch.nn.utils.parametrize); left as is"
    if not p.is_floating_point():
        return f"dtype {p.dtype} is not floating point"
    if p.numel() == 0:
        return f"zero-sized weight {tuple(p.shape)}: nothing to template"
    if aliases > 1:
        return f"reached through {aliases} names inside the leaf module; left as is"
    return None


def _parametrize(owner: nn.Module, attr: str, generator: MixedWeight) -> None:
    """Make ``owner.<attr>`` the generated weight through ``torch.nn.utils.parametrize``.

    The original parameter is dropped (an empty, non-persistent buffer stands in for it), so the state dict and
    ``parameters()`` hold the bank only: no second copy, no unused parameter. The original tensor is never
    touched (it may be the pass's input's: ``register_parametrization`` would ``set_`` it).
    """
    original = owner._parameters[attr]
    placeholder = original.new_empty(0)
    owner._parameters[attr] = nn.Parameter(placeholder, requires_grad=original.requires_grad)
    parametrize.register_parametrization(owner, attr, generator, unsafe=True)
    plist = owner.parametrizations[attr]
    del plist._parameters["original"]
    plist.register_buffer("original", placeholder, persistent=False)


def _is_opaque(node: fx.Node) -> bool:
    if node.op == "call_module":
        return True  # a leaf: its code is not in the graph
    if node.op == "call_function":
        module = getattr(node.target, "__module__", None) or ""
        return module.split(".")[0] not in _NOT_OPAQUE_MODULES
    return False


def _attr_use(node: fx.Node, user: fx.Node, ndim: int) -> tuple[str, int] | None:
    """``(kind, groups)`` when ``user`` consumes the parameter ``node`` as a weight, else None."""
    rule = rule_for(user) if user.op == "call_function" else None
    if isinstance(rule, WeightedFunction):  # the registry's functional weighted ops (torch and ATen alike)
        use = rule.weight_use(user, node)
        if use is not None and use[0] == "matmul" and ndim < 2:
            return None
        if use is not None or rule.weight_kind != "matmul":
            return use
    if ndim < 2:
        return None
    if _is_opaque(user):
        return ("param", 1)
    return None


def _describe(user: fx.Node) -> str:
    target = getattr(user.target, "__name__", str(user.target))
    return f"node '{user.name}' ({user.op} {target})"


class _Collector:
    """What :func:`_collect` gathers while it walks the graph: the weights, their use sites, and what is blocked."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.names: dict[int, str] = {}
        for name, p in gm.named_parameters(remove_duplicate=False):
            self.names.setdefault(id(p), name)
        self.banked = {id(p) for m in gm.modules() if isinstance(m, TemplateBank) for p in m.parameters()}
        self.weights: dict[int, _Weight] = {}
        self.skipped: dict[str, str] = {}  # target -> reason
        self.blocked: dict[int, list[str]] = {}
        self.seen_leaves: set[str] = set()

    def add(self, p: nn.Parameter, kind: str, groups: int, order: int) -> _Weight:
        w = self.weights.get(id(p))
        if w is None:
            w = self.weights[id(p)] = _Weight(p, self.names[id(p)], kind, groups, order)
        return w

    def block(self, p: nn.Parameter, where: str, target: str, reason: str | None) -> None:
        self.blocked.setdefault(id(p), []).append(where)
        if reason is not None and p.dim() >= 2:
            self.skipped.setdefault(target, reason)

    def module_node(self, node: fx.Node, order: int) -> None:
        """A ``call_module``: a plain weighted module's weight, or the weights inside a leaf module."""
        target = str(node.target)
        module = self.gm.get_submodule(target)
        if isinstance(module, GENERATED_TYPES) or target in self.seen_leaves:
            return
        self.seen_leaves.add(target)  # a module called several times is one set of sites
        plain = _plain_kind(module)
        if plain is None:
            _collect_leaf(self.gm, target, module, order, self.add, self.block, self.banked)
            return
        reason = _skip_reason(module)
        if reason is None:
            self.add(module.weight, plain[0], getattr(module, "groups", 1), order).module_sites[target] = None
        else:
            for p in module.parameters():
                self.block(p, f"module '{target}'", f"{target}.weight", reason)

    def attr_node(self, node: fx.Node, order: int) -> None:
        """A ``get_attr`` of a parameter: a weight when every use consumes it as one."""
        value = _fetch(self.gm, str(node.target))
        if not isinstance(value, nn.Parameter) or id(value) in self.banked:
            return
        name = self.names[id(value)]
        uses = [(u, _attr_use(node, u, value.dim())) for u in node.users]
        accepted = [use for _, use in uses if use is not None]
        if "bias" in str(node.target).rpartition(".")[2] and accepted and accepted[0][0] in ("param", "matmul"):
            self.block(value, "its name", name, "a bias (by its name): biases stay per layer, never templated")
        elif accepted and value.numel() == 0:
            self.block(value, "its size", name, f"zero-sized weight {tuple(value.shape)}: nothing to template")
        elif accepted and len(accepted) == len(uses) and value.is_floating_point():
            kind, groups = accepted[0]
            self.add(value, kind, groups, order).attr_nodes.append(node)
        else:
            rejected = "; ".join(_describe(u) for u, use in uses if use is None) or "nothing"
            self.block(value, rejected, name, f"used by {rejected}, not as the weight of a weighted op")

    def result(self) -> tuple[list[_Weight], list[dict[str, str]]]:
        """The weights no other use blocks, in graph order, and what was skipped and why."""
        result = []
        for pid, w in self.weights.items():
            if pid in self.blocked:
                reason = "also used by an op that is not a weighted op: " + "; ".join(self.blocked[pid])
                self.skipped[w.name] = reason
            else:
                result.append(w)
                self.skipped.pop(w.name, None)
        result.sort(key=lambda w: w.order)
        return result, [{"target": t, "reason": r} for t, r in self.skipped.items()]


def _collect(gm: fx.GraphModule) -> tuple[list[_Weight], list[dict[str, str]]]:
    """Every weight parameter the graph uses as a weight, with its use sites; plus what was skipped and why."""
    collector = _Collector(gm)
    for order, node in enumerate(gm.graph.nodes):
        if node.op == "call_module":
            collector.module_node(node, order)
        elif node.op == "get_attr":
            collector.attr_node(node, order)
    return collector.result()


def _collect_leaf(
    gm: fx.GraphModule,
    target: str,
    module: nn.Module,
    order: int,
    add: Callable[[nn.Parameter, str, int, int], _Weight],
    block: Callable[[nn.Parameter, str, str, str | None], None],
    banked: set[int],
) -> None:
    """Weights inside a leaf module: Conv/Linear submodules (swapped) and raw weight parameters (parametrized)."""
    inner_weights: set[int] = set()
    for sub_name, sub in module.named_modules(remove_duplicate=False):  # every alias path of a submodule
        plain = _plain_kind(sub) if sub_name else None
        if plain is not None and _skip_reason(sub) is None:
            w = add(sub.weight, plain[0], getattr(sub, "groups", 1), order)
            w.inner_sites[(target, sub_name)] = None
            inner_weights.add(id(sub.weight))
    aliases: dict[int, int] = {}
    for _, p in module.named_parameters(remove_duplicate=False):
        aliases[id(p)] = aliases.get(id(p), 0) + 1
    for pname, p in module.named_parameters():
        if id(p) in inner_weights or id(p) in banked:
            continue
        owner_path, _, attr = pname.rpartition(".")
        reason = _leaf_param_reason(module.get_submodule(owner_path), attr, p, aliases[id(p)])
        if reason is None:
            add(p, "param", 1, order).leaf_sites[(target, pname)] = None
        else:
            block(p, f"leaf module '{target}' ({type(module).__name__})", f"{target}.{pname}", reason)


def _fetch(gm: nn.Module, target: str) -> Any:
    return getattr(*attribute_owner(gm, target))


def _set(root: nn.Module, target: str, value: nn.Module) -> None:
    setattr(*attribute_owner(root, target), value)


def _mixed_like(source: nn.Module, bank: TemplateBank, row: int) -> nn.Module:
    mixed = _plain_kind(source)[1](bank, row, source)  # type: ignore[index, call-arg]
    mixed.train(source.training)
    return mixed


def _drop_replaced(gm: nn.Module, replaced: set[int]) -> None:
    """Unregister every remaining reference to a templatized parameter (owners of get_attr weights, aliases)."""
    for module in list(gm.modules()):
        if isinstance(module, TemplateBank):
            continue
        for name, p in list(module._parameters.items()):
            if p is not None and id(p) in replaced:
                del module._parameters[name]


def _group(weights: list[_Weight], sharing: str, window: int) -> list[list[_Weight]]:
    if sharing == "layer":
        return [[w] for w in weights]
    by_key: dict[tuple[Any, ...], list[_Weight]] = {}
    for w in weights:
        key = w.key if sharing == "shape" else (*w.key, _role(w.name))
        by_key.setdefault(key, []).append(w)
    if sharing == "shape":
        return list(by_key.values())
    return [ws[i : i + window] for ws in by_key.values() for i in range(0, len(ws), window)]


def layer_matches(name: str, pattern: str) -> bool:
    """Whether a ``layers`` glob pattern selects weight ``name`` (matched as is, or as its module path)."""
    names = (name, name.removesuffix(".weight")) if name.endswith(".weight") else (name,)
    return any(fnmatch.fnmatchcase(n, pattern) for n in names)


def templatable_weights(model: nn.Module, *, leaf_modules: Sequence[type[nn.Module] | str] = ()) -> list[str]:
    """Names of the weights :func:`templatize` would convert, in graph order (what ``layers`` patterns select from)."""
    gm = model if isinstance(model, fx.GraphModule) else trace(model, leaf_modules=leaf_modules)
    return [w.name for w in _collect(gm)[0]]


def _select(
    weights: list[_Weight], skipped: list[dict[str, str]], patterns: Sequence[str]
) -> tuple[list[_Weight], list[dict[str, str]]]:
    """Keep the weights a ``layers`` pattern matches; every pattern must match at least one weight."""
    if isinstance(patterns, str) or not all(isinstance(p, str) and p for p in patterns):
        raise GrowcConfigError(f"layers must be a list of non-empty glob patterns, got {patterns!r}")
    for pattern in patterns:
        if not any(layer_matches(w.name, pattern) for w in weights):
            available = ", ".join(w.name for w in weights[:8]) + (", ..." if len(weights) > 8 else "")
            raise GrowcConfigError(
                f"layers pattern {pattern!r} matches no templatable weight (the model has {len(weights)}: {available})"
            )
    selected = [any(layer_matches(w.name, p) for p in patterns) for w in weights]
    reason = f"not selected by layers={list(patterns)}"
    dropped = [{"target": w.name, "reason": reason} for w, keep in zip(weights, selected, strict=True) if not keep]
    return [w for w, keep in zip(weights, selected, strict=True) if keep], skipped + dropped


def _init_bank(
    stacked: Tensor, shape: tuple[int, ...], fan_in: int, init: str, k: int, generator: torch.Generator, where: str
) -> tuple[Tensor, Tensor, dict[str, Any], list[float]]:
    """Templates ``[K, D]``, coefficients ``[L, K]`` (CPU, ``stacked``'s dtype), the bank's report entries and the
    predicted per-layer relative errors, for the weights ``stacked`` ``[L, D]``. Only the SVD runs in float64;
    ``exact`` copies the weights bit for bit."""
    num_layers, _dim = stacked.shape
    dtype = stacked.dtype
    info: dict[str, Any] = {"templates_requested": k}
    predicted_layers = [0.0] * num_layers
    if init == "exact":
        k_eff = max(k, num_layers)
        if k_eff != k:
            info["note"] = f"K raised from {k} to {k_eff}: an exact identity basis needs one template per layer"
        templates = torch.cat([stacked, kaiming_templates(k_eff - num_layers, shape, fan_in, generator, dtype)])
        coefficients = torch.zeros(num_layers, k_eff, dtype=dtype)
        coefficients[:, :num_layers] = torch.eye(num_layers, dtype=dtype)
        info.update(templates=k_eff, basis="identity", predicted_error=0.0)
    elif init == "svd":
        try:
            u, s, vh = torch.linalg.svd(stacked.to(torch.float64), full_matrices=False)
        except RuntimeError as error:  # torch.linalg.LinAlgError included
            raise GrowcPassError(
                f"templatize(init='svd'): the SVD of {where} failed: {str(error).splitlines()[0]}; init='exact' "
                "needs no SVD"
            ) from error
        r = min(k, s.numel())
        extra = kaiming_templates(k - r, shape, fan_in, generator, dtype)
        templates = torch.cat([(s[:r, None] * vh[:r]).to(dtype), extra])
        coefficients = torch.zeros(num_layers, k, dtype=dtype)
        coefficients[:, :r] = u[:, :r].to(dtype)
        energy = s**2
        total = float(energy.sum())
        info.update(
            templates=k,
            basis="svd",
            predicted_error=math.sqrt(float(energy[r:].sum()) / total) if total > 0 else 0.0,
            singular_values=s.tolist()[:16],
        )
        # row l of the residual is sum_{j >= r} U[l, j] s_j v_j, so its squared norm is sum_{j >= r} U[l, j]^2 s_j^2
        residual = (u[:, r:] ** 2 * energy[r:]).sum(dim=1)
        row_norms = (u**2 * energy).sum(dim=1)
        predicted_layers = [
            math.sqrt(float(res / norm)) if norm > 0 else 0.0 for res, norm in zip(residual, row_norms, strict=True)
        ]
        if k > s.numel():
            info["note"] = (
                f"only min(layers, size) = {s.numel()} singular directions: {k - s.numel()} extra Kaiming "
                "template(s) with zero coefficients"
            )
    else:  # fresh: growc.runtime.init.fresh_bank's draws, in its order
        templates = kaiming_templates(k, shape, fan_in, generator, dtype)
        coefficients = orthogonal_coefficients(num_layers, k, generator, dtype)
        info.update(templates=k, basis="fresh")
    return templates, coefficients, info, predicted_layers


def _relative_errors(diff: Tensor, ref: Tensor) -> tuple[list[float], float]:
    """Relative Frobenius errors ``||diff_l|| / ||ref_l||`` of each row and of the whole stack (two norm calls)."""
    diff_sq = torch.linalg.vector_norm(diff, dim=1).double() ** 2
    ref_sq = torch.linalg.vector_norm(ref, dim=1).double() ** 2

    def ratio(d: float, r: float) -> float:
        return (d / r) ** 0.5 if r > 0 else d**0.5

    rows = [ratio(float(d), float(r)) for d, r in zip(diff_sq, ref_sq, strict=True)]
    return rows, ratio(float(diff_sq.sum()), float(ref_sq.sum()))


def _verify(model: nn.Module, gm: nn.Module, example_inputs: Sequence[Any], train: bool, init: str) -> dict[str, Any]:
    mode = "train" if train else "eval"
    (reference,), output = checked_outputs(
        "templatize", [("the model", model)], ("templatized model", gm), example_inputs, train, exact=init == "exact"
    )
    tolerance = exactness_tolerance(computation_dtype([model], reference))
    try:
        max_abs, max_rel = max_abs_rel_error(reference, output)
    except ValueError as error:  # the outputs' structures or shapes differ
        return {"max_abs": math.inf, "max_rel": math.inf, "mode": mode, "tolerance": tolerance, "error": str(error)}
    return {"max_abs": max_abs, "max_rel": max_rel, "mode": mode, "tolerance": tolerance}


def _check_bank_sizes(groups: list[list[_Weight]], templates: int, init: str) -> None:
    """Refuse, before allocating anything, banks whose templates would exceed :data:`SIZE_FACTOR` times the
    weights they replace (or 1 GiB): a mistyped ``templates``, not a model."""
    sizes = []
    for group in groups:
        p = group[0].param
        dim, layers = p.numel(), len(group)
        k = max(templates, layers) if init == "exact" else templates
        sizes.append(
            (k * dim * p.element_size(), dim * layers * p.element_size(), max(dim, layers if init == "exact" else 1))
        )
    need = sum(s[0] for s in sizes)
    base = sum(s[1] for s in sizes)
    bound = size_bound(base)
    if need > bound:
        useful = max(s[2] for s in sizes)
        raise GrowcDataError(
            f"templatize: templates={templates} would allocate {format_bytes(need)} of templates for {len(groups)} "
            f"bank(s), more than growc's bound of {format_bytes(bound)} ({SIZE_FACTOR} x the {format_bytes(base)} of "
            "weights they replace, and at least 1 GiB); a bank needs at most as many templates as its weight has "
            f"elements (more are linearly dependent) or as it has layers (init='exact'): at most {useful} here"
        )


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _unique(container: nn.Module, base: str) -> str:
    key, i = base, 1
    while key in container._modules:
        i += 1
        key = f"{base}_{i}"
    return key


def _check_arguments(
    model: nn.Module, example_inputs: Sequence[Any], sharing: str, init: str, templates: int, window: int, seed: int
) -> tuple[int, int, int, tuple[Any, ...]]:
    """templatize's argument checks; returns ``templates``, ``window``, ``seed`` and ``example_inputs`` checked.
    The options are checked by :class:`~growc.passes.config.TemplatizeConfig` (one set of rules and messages)."""
    check_module("templatize", model)
    config = TemplatizeConfig(sharing=sharing, templates=templates, init=init, window=window)
    templates, window = config.templates, config.window
    seed = check_seed(seed)
    example_inputs = check_example_inputs("templatize", example_inputs)
    check_finite_state(model, "templatize")
    return templates, window, seed, example_inputs


def _selected(gm: fx.GraphModule, layers: Sequence[str] | None) -> tuple[list[_Weight], list[dict[str, str]]]:
    """The weights :func:`templatize` converts (those ``layers`` selects, when given) and the skipped ones."""
    weights, skipped = _collect(gm)
    if layers is not None:
        weights, skipped = _select(weights, skipped, layers)
    return weights, skipped


def _copy_for_rewrite(model: nn.Module, traced: fx.GraphModule, layers: Sequence[str] | None) -> fx.GraphModule:
    """A GraphModule over a copy of ``model`` and ``traced``'s graph, without step markers.

    Everything is copied except the weights about to be replaced (they are only read, never written): the result
    shares no mutable state with ``model`` and the copy does not pay for the bulk of the bytes.
    """
    replaced, _ = _selected(traced, layers)
    memo: dict[int, Any] = {id(w.param): w.param for w in replaced}
    # an export capture holds modules the model does not (raised or mode-aware ones): copy the capture instead
    root = copy.deepcopy(traced if traced is not model and captured_by_export(traced) else model, memo)
    gm = graph_module(root, copy.deepcopy(traced.graph), traced.__class__.__name__)
    strip_step_markers(gm.graph)  # finish_pass puts them back where banks are
    gm.meta = copy.deepcopy(traced.meta)
    return gm


@dataclass
class _Built:
    """One bank made for a group of weights: its name, the bank, its report entry and each row's errors."""

    name: str
    bank: TemplateBank
    group: list[_Weight]
    report: dict[str, Any]
    predicted: list[float]
    measured: list[float]


def _build_bank(
    banks: nn.ModuleDict, group: list[_Weight], init: str, templates: int, generator: torch.Generator
) -> _Built:
    """Initialise the bank of ``group``, register it in ``banks`` and measure how well it reproduces the weights."""
    first = group[0].param
    shape = tuple(first.shape)
    stacked = torch.stack([w.param.detach().reshape(-1).cpu() for w in group])
    fan_in = _fan_in(group[0].kind, shape)
    bank_name = _unique(banks, f"bank{len(banks)}")
    where = f"bank '{bank_name}' (layers {', '.join(repr(w.name) for w in group)})"
    t, a, info, predicted_layers = _init_bank(stacked, shape, fan_in, init, templates, generator, where)
    bank = TemplateBank(
        t.reshape(-1, *shape).to(first.device), a.to(first.device), kind=group[0].kind, groups=group[0].groups
    )
    bank.requires_grad_(first.requires_grad)
    banks[bank_name] = bank
    with torch.no_grad():
        diff = bank.weights().reshape(len(group), -1).cpu() - stacked
    measured_layers, measured_bank = _relative_errors(diff, stacked)
    if init != "fresh":
        info["measured_error"] = measured_bank
    report = {
        "name": bank_name,
        "kind": group[0].kind,
        "weight_shape": list(shape),
        "groups": group[0].groups,
        "layers": [w.name for w in group],
        **info,
    }
    return _Built(bank_name, bank, group, report, predicted_layers, measured_layers)


def _install_row(
    gm: fx.GraphModule, w: _Weight, bank: TemplateBank, row: int, by_target: dict[str, list[fx.Node]]
) -> list[fx.Node]:
    """Make every use of weight ``w`` read row ``row`` of ``bank``; returns the nodes that now do."""
    tagged: list[fx.Node] = []
    for target in w.module_sites:
        _set(gm, target, _mixed_like(gm.get_submodule(target), bank, row))
        tagged += by_target[target]
    made: dict[int, nn.Module] = {}  # one mixed module per source module, set at each of its paths
    for leaf_target, inner in w.inner_sites:
        leaf = gm.get_submodule(leaf_target)
        source = leaf.get_submodule(inner)
        mixed = made.get(id(source)) or made.setdefault(id(source), _mixed_like(source, bank, row))
        _set(leaf, inner, mixed)
        tagged += by_target[leaf_target]
    for leaf_target, pname in w.leaf_sites:
        owner_path, _, attr = pname.rpartition(".")
        owner = gm.get_submodule(leaf_target).get_submodule(owner_path)
        _parametrize(owner, attr, MixedWeight(bank, row, f"{leaf_target}.{pname}"))
        tagged += by_target[leaf_target]
    mixed_weights = gm.get_submodule("growc_weights")
    for node in w.attr_nodes:
        key = _unique(mixed_weights, str(node.target).replace(".", "_"))
        mixed_weights[key] = MixedWeight(bank, row, str(node.target))
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(f"growc_weights.{key}")
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        tagged.append(new)
    return tagged


def _install(gm: fx.GraphModule, built: _Built, by_target: dict[str, list[fx.Node]]) -> list[dict[str, Any]]:
    """Swap every weight of ``built``'s group for its row of the bank; returns the layers' report entries."""
    layer_reports = []
    for row, w in enumerate(built.group):
        meta = {"pass": "templatize", "bank": built.name, "row": row, "weight": w.name}
        for node in _install_row(gm, w, built.bank, row, by_target):
            node.meta.setdefault("growc", {}).setdefault("templatize", []).append(meta)
        layer_reports.append(
            {
                **meta,
                "kind": w.kind,
                "shape": list(built.report["weight_shape"]),
                "predicted_error": built.predicted[row],
                "relative_error": built.measured[row],
            }
        )
    return layer_reports


def _install_banks(
    gm: fx.GraphModule, groups: list[list[_Weight]], init: str, templates: int, generator: torch.Generator
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Build each group's bank (in order: the random draws follow it) and install it; returns the bank and layer
    report entries. ``growc_banks`` and ``growc_weights`` are registered up front (``graph.call_module`` checks that
    its target exists) and removed again when they stay empty."""
    for container in ("growc_banks", "growc_weights"):
        if not hasattr(gm, container):
            gm.add_module(container, nn.ModuleDict())
    banks = gm.get_submodule("growc_banks")
    by_target: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            by_target.setdefault(str(node.target), []).append(node)
    bank_reports: list[dict[str, Any]] = []
    layer_reports: list[dict[str, Any]] = []
    for group in groups:
        built = _build_bank(banks, group, init, templates, generator)
        bank_reports.append(built.report)
        layer_reports += _install(gm, built, by_target)
    for container in ("growc_banks", "growc_weights"):
        if not len(gm.get_submodule(container)):
            delattr(gm, container)
    return bank_reports, layer_reports


def _notes(bank_reports: list[dict[str, Any]], init: str) -> list[str]:
    notes = [f"{b['name']}: {b['note']}" for b in bank_reports if "note" in b]
    if init == "svd" and any(b["predicted_error"] > 1e-3 for b in bank_reports):
        notes.append(
            "a rank-K fit of layers that were never trained to share templates loses accuracy: fine-tune the "
            "templatized model before use"
        )
    return notes


def _checked_output(
    model: nn.Module, gm: fx.GraphModule, example_inputs: Sequence[Any], train: bool, init: str
) -> dict[str, Any]:
    """The output difference (see :func:`_verify`); with ``init="exact"`` one above the tolerance raises."""
    output = _verify(model, gm, example_inputs, train, init)
    if init == "exact" and not output["max_rel"] <= output["tolerance"]:
        raise GrowcPassError(
            f"templatize(init='exact') changed the model's function: max rel error {output['max_rel']:.3e} > "
            f"{output['tolerance']:.3g}{' (' + output['error'] + ')' if 'error' in output else ''}. Please "
            "report this model; pass leaf_modules=[...] for the submodule involved to work around it."
        )
    return output


def templatize(
    model: nn.Module,
    example_inputs: Sequence[Any],
    *,
    sharing: Sharing = TemplatizeConfig.sharing,
    templates: int = TemplatizeConfig.templates,
    init: Init = TemplatizeConfig.init,
    seed: int = SEED,
    window: int = TemplatizeConfig.window,
    leaf_modules: Sequence[type[nn.Module] | str] = TemplatizeConfig.leaf_modules,
    autowrap_functions: Sequence[Callable[..., Any]] = TemplatizeConfig.autowrap_functions,
    concrete_args: dict[str, Any] | None = TemplatizeConfig.concrete_args,
    verify: bool = VERIFY,
    layers: Sequence[str] | None = TemplatizeConfig.layers,
    capture: Capture = TemplatizeConfig.capture,
    dynamic: Dynamic = TemplatizeConfig.dynamic,
) -> fx.GraphModule:
    """Return a new GraphModule in which every weight is generated from a bank of templates.

    Args:
        model: any ``nn.Module`` (traced with :func:`growc.trace`) or a ``GraphModule``; never modified.
        example_inputs: positional inputs, used for shape analysis (meta tensors) and the output check.
        sharing: ``"layer"``, ``"shape"`` or ``"shape_window"`` (banks of ``window`` consecutive layers of one
            role: same key and same path up to block indices, e.g. ``layer1.*.conv1``).
        templates: K, templates per bank (``exact`` raises it to the bank's layer count when smaller).
        init: ``"exact"`` (function-preserving, bit-exact), ``"svd"`` (rank-K fit) or ``"fresh"`` (Kaiming
            templates, orthogonal coefficients).
        seed: seeds every random draw (extra templates, fresh init).
        window: bank size for ``shape_window``.
        leaf_modules, autowrap_functions, concrete_args, capture, dynamic: capture options, see
            :func:`growc.trace` (``capture="auto"`` traces with fx and uses ``torch.export`` where fx cannot).
        verify: run ``model`` and the result once on ``example_inputs`` and report the difference (in the mode
            the graph was traced in: eval for an eval-mode model, train mode on copies with one seed otherwise);
            with ``init="exact"`` a difference above :func:`growc.fx.analysis.exactness_tolerance` of the model's
            dtype (:data:`EXACT_TOLERANCE` in float32) raises ``GrowcPassError``; a non-finite output of the model
            raises ``GrowcDataError``.
        layers: optional glob patterns (``fnmatch``; ``*`` also matches dots) over weight names
            (``layer1.0.conv1.weight``) or their module paths (``layer1.0.conv1``): only matching weights are
            templatized, the rest stay plain and are listed in ``skipped``. A pattern that matches no weight raises
            ``GrowcConfigError``.

    Returns:
        The templatized GraphModule. ``gm.meta["growc"]["templatize"]`` holds the report: ``banks`` (kind,
        weight shape, groups, layers, K, predicted and measured relative error), ``layers`` (predicted and
        measured error each), ``skipped`` (with reasons), ``params`` before/after, ``shapes`` (analysis),
        ``notes``, and ``output`` (max abs/rel difference, and the tolerance of the model's dtype).

    Raises:
        GrowcDataError: a parameter, normalization statistic or example input holding NaN or infinity (or on the
            meta device), another buffer holding NaN, or banks beyond growc's size bound (:data:`SIZE_FACTOR`).
        GrowcConfigError: an option of the wrong type or range, or a model that fails on its example inputs.
    """
    templates, window, seed, example_inputs = _check_arguments(
        model, example_inputs, sharing, init, templates, window, seed
    )
    if isinstance(model, fx.GraphModule) and (captured_by_export(model) or not is_aten_graph(model)):
        traced = model
    else:
        traced = trace(
            model,
            example_inputs,
            capture=capture,
            dynamic=dynamic,
            leaf_modules=leaf_modules,
            autowrap_functions=autowrap_functions,
            concrete_args=concrete_args,
        )
    gm = _copy_for_rewrite(model, traced, layers)
    shapes = propagate_shapes(gm, example_inputs)
    weights, skipped = _selected(gm, layers)
    groups = _group(weights, sharing, window)
    _check_bank_sizes(groups, templates, init)
    generator = torch.Generator().manual_seed(seed)
    bank_reports, layer_reports = _install_banks(gm, groups, init, templates, generator)
    _drop_replaced(gm, {id(w.param) for w in weights})
    report: dict[str, Any] = {
        "sharing": sharing,
        "templates": templates,
        "init": init,
        "seed": seed,
        "window": window if sharing == "shape_window" else None,
        "banks": bank_reports,
        "layers": layer_reports,
        "skipped": skipped,
        "params": {"before": _count(model), "after": _count(gm)},
        "shapes": shapes,
        "trace": gm.meta.get("growc", {}).get("trace", {}),
        "notes": _notes(bank_reports, init),
    }
    finish_pass(gm, "templatize", report)
    if verify:
        # an unlifted torch.export module cannot switch modes: check against its adopted graph (same function)
        reference = traced if traced is not model and not captured_by_export(model) else model
        report["output"] = _checked_output(reference, gm, example_inputs, traced.training, init)
    return gm
