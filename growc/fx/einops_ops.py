"""einops under capture: which of its calls :func:`growc.trace` records as one op, and their op rules.

fx cannot trace *into* einops (its functions dispatch on the tensor's type, and an ``fx.Proxy`` is no tensor einops
knows), so :class:`growc.fx.trace.GrowcTracer` records each call of :data:`EINOPS_FUNCTIONS` as one
``call_function`` node (fx autowrap: called as ``einops.rearrange(...)`` or by a global name after ``from einops
import rearrange``, in the root's ``forward`` and in every called module's) and keeps the layers of
:data:`EINOPS_LAYERS` as leaves (``call_module``). ``torch.export`` traces through einops instead: there it lowers to
ATen views, permutes and reductions, which have rules of their own.

The rules here read the op's pattern with einops' own parser (:class:`einops.parsing.ParsedExpression`), ellipsis
expanded against the input's rank, and ask where the input's channel axis goes:

* **alone** on the right (``b c h w -> b h w c``): the channel axis moves there, coupled, and fusion re-emits the
  op on the fused tensor with the parent axis moved (like ``permute``);
* the **outermost member** of a merged group on the right (``b c h w -> b (c h w)``): the output axis holds the
  input's channels in blocks (like ``flatten``), and fusion re-emits the op, the parent axis tracked to the group;
* anywhere else (inside a group on the left, merged as an inner member, reduced away): no channel rule, the groups
  around the op are blocked, and fusion takes the exact per-parent fallback.

Fusion re-emits an op unchanged only when none of its axis lengths (``h=4``) names the parent axis (the fused axis
is n times longer); otherwise, and for ``einsum``, ``pack`` and ``unpack``, the op runs once per parent (exact).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import einops
from einops.layers.torch import Rearrange as RearrangeLayer
from einops.layers.torch import Reduce as ReduceLayer
from einops.parsing import AnonymousAxis, ParsedExpression, _ellipsis
from torch import fx, nn

from growc.fx.registry import (
    ChannelContext,
    FuseContext,
    FuseValue,
    OpRule,
    ValueKind,
    op_label,
    register_builtin,
    tensor_info,
)

__all__ = [
    "EINOPS_FUNCTIONS",
    "EINOPS_LAYERS",
    "EINOPS_MODULES",
    "EinopsCall",
    "EinopsOpaque",
    "EinopsPattern",
    "EinopsRule",
    "einops_call",
    "parse_pattern",
]

#: einops' functions :func:`growc.trace` records as one ``call_function`` node each
EINOPS_FUNCTIONS: tuple[Any, ...] = (
    einops.rearrange,
    einops.reduce,
    einops.repeat,
    einops.einsum,
    einops.pack,
    einops.unpack,
)
#: einops' layers :func:`growc.trace` keeps as leaves (``call_module``)
EINOPS_LAYERS: tuple[type[nn.Module], ...] = (RearrangeLayer, ReduceLayer)
#: namespaces whose einops functions fx patches while tracing (for ``einops.rearrange(...)`` calls)
EINOPS_MODULES: tuple[ModuleType, ...] = (einops,)

#: how each input axis of a pattern side is made of elementary axes (names; ``…i`` for ellipsis axes)
Groups = tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class EinopsPattern:
    """A pattern ``left -> right`` for an input of known rank: per input axis (``left``) and per output axis
    (``right``) the elementary axes it is made of, in order (outermost first), the ellipsis expanded."""

    left: Groups
    right: Groups

    def where(self, axis: int) -> tuple[str, int] | None:
        """Where the input's ``axis`` goes: ``("moved", j)`` when it is elementary and alone at output axis ``j``,
        ``("merged", j)`` when it is the outermost member of the merged group ``j``; None otherwise (part of a
        composite input axis, an inner member of a merged group, split, or reduced away)."""
        if not 0 <= axis < len(self.left) or len(self.left[axis]) != 1:
            return None
        name = self.left[axis][0]
        for j, group in enumerate(self.right):
            if name in group:
                if group == (name,):
                    return ("moved", j)
                return ("merged", j) if group[0] == name else None
        return None

    def name(self, axis: int) -> str | None:
        """The elementary name of the input's ``axis`` (None for a composite or anonymous axis)."""
        group = self.left[axis] if 0 <= axis < len(self.left) else ()
        return group[0] if len(group) == 1 else None


def _groups(expression: ParsedExpression, ellipsis: int, anonymous: list[int]) -> Groups:
    out: list[tuple[str, ...]] = []
    dots = tuple(f"…{i}" for i in range(ellipsis))
    for group in expression.composition:
        if group == _ellipsis:  # a top-level ellipsis: one axis per ellipsis dim
            out.extend((d,) for d in dots)
            continue
        names: list[str] = []
        for axis in group:
            if axis == _ellipsis:
                names.extend(dots)
            elif isinstance(axis, AnonymousAxis):  # every anonymous axis is its own (``3`` in ``repeat``)
                anonymous[0] += 1
                names.append(f"#{anonymous[0]}")
            else:
                names.append(str(axis))
        out.append(tuple(names))
    return tuple(out)


def parse_pattern(pattern: Any, rank: int) -> EinopsPattern | None:
    """``pattern`` (``"b c h w -> b (h w) c"``) parsed by einops for an input of ``rank`` axes; None when it is
    not a string pattern einops accepts for that rank."""
    if not isinstance(pattern, str) or pattern.count("->") != 1:
        return None
    left_text, right_text = pattern.split("->")
    try:
        left, right = ParsedExpression(left_text), ParsedExpression(right_text)
    except einops.EinopsError:
        return None
    if left.has_ellipsis_parenthesized:
        return None  # einops rejects it too
    ellipsis = rank - (len(left.composition) - 1) if left.has_ellipsis else 0
    if ellipsis < 0 or (not left.has_ellipsis and len(left.composition) != rank):
        return None
    anonymous = [0]
    return EinopsPattern(_groups(left, ellipsis, anonymous), _groups(right, ellipsis, anonymous))


@dataclass(frozen=True)
class EinopsCall:
    """One einops call of a graph: the tensor it reads, its pattern, its axis lengths, the other graph values it
    reads (sizes as graph nodes), and for a layer the module."""

    tensor: Any
    pattern: Any
    lengths: Mapping[str, Any]
    others: tuple[fx.Node, ...]
    module: nn.Module | None


def einops_call(node: fx.Node, module: nn.Module | None = None) -> EinopsCall | None:
    """The einops call of a ``rearrange``/``reduce``/``repeat`` node (``module``: the layer of a ``call_module``
    node); None when it is not called in einops' convention (``f(tensor, pattern, [reduction,] **lengths)``)."""
    if module is not None:
        if len(node.args) != 1 or node.kwargs:
            return None
        lengths = dict(getattr(module, "axes_lengths", {}) or {})
        return EinopsCall(node.args[0], getattr(module, "pattern", None), lengths, (), module)
    names = ("tensor", "pattern", "reduction") if node.target is einops.reduce else ("tensor", "pattern")
    if len(node.args) > len(names):
        return None
    bound = dict(zip(names, node.args, strict=False))
    lengths = {}
    for key, value in node.kwargs.items():
        if key in names:
            if key in bound:
                return None
            bound[key] = value
        else:
            lengths[key] = value
    if "tensor" not in bound or "pattern" not in bound:
        return None
    others = tuple(n for n in node.all_input_nodes if n is not bound["tensor"])
    return EinopsCall(bound["tensor"], bound["pattern"], lengths, others, None)


class EinopsRule(OpRule):
    """``einops.rearrange``, ``reduce`` or ``repeat`` (``op``), and the ``Rearrange``/``Reduce`` layers: the
    channel rule and the fuse lift derived from the parsed pattern (see the module docstring). ``repeat`` passes
    channels only when the channel axis stays alone (a repeated channel is no permutation)."""

    calls = ("function", "module")
    lift_text = "re-emitted on the fused tensor, the parent axis tracked through the pattern, unless a length names it"

    def __init__(self, op: str) -> None:
        self.op = op
        self.kind = f"einops {op}"
        merged = "" if op == "repeat" else "; outermost of a merged group: holds them in blocks"
        self.channel_text = (
            f"from the pattern: a channel axis alone on the right moves there, coupled{merged}; else blocks"
        )

    def _call(self, node: fx.Node, module: nn.Module | None) -> tuple[EinopsCall, EinopsPattern] | None:
        call = einops_call(node, module)
        if call is None or not isinstance(call.tensor, fx.Node) or tensor_info(call.tensor) is None:
            return None
        pattern = parse_pattern(call.pattern, len(tensor_info(call.tensor).shape))
        return None if pattern is None else (call, pattern)

    def _where(self, pattern: EinopsPattern, axis: int | None) -> tuple[str, int] | None:
        where = None if axis is None else pattern.where(axis)
        if where is not None and self.op == "repeat" and where[0] != "moved":
            return None
        return where

    def channels(self, node: fx.Node, ctx: ChannelContext, inputs: Sequence[fx.Node]) -> None:
        """Couple the channel axis to where the pattern moves it, contain it in a merged group, or block."""
        module = ctx.module(node) if node.op == "call_module" else None
        found = self._call(node, module)
        info = tensor_info(node)
        if found is None or info is None:
            ctx.opaque(node, inputs)
            return
        call, pattern = found
        x = call.tensor
        where = self._where(pattern, ctx.axis_of(x))
        if where is None:
            ctx.opaque(node, inputs)
            return
        how, j = where
        channels = tensor_info(x).shape[ctx.axis_of(x)]
        block = info.shape[j] // channels if channels and j < len(info.shape) else 0
        if block == 0 or block * channels != info.shape[j]:
            ctx.opaque(node, inputs)
            return
        out = ctx.new(node, j)
        if how == "moved" or block == 1:
            ctx.couple(ctx.dim(x), out, op_label(node))
        else:
            ctx.contain(out, ctx.dim(x), 0, block, op_label(node))

    def lift(self, node: fx.Node, ctx: FuseContext) -> FuseValue | None:
        """Re-emit the op on the tensor fused along the parent axis when the pattern keeps that axis alone or
        outermost of a merged group and no axis length names it; None (the exact fallback) otherwise."""
        module = ctx.module(node) if node.op == "call_module" else None
        found = self._call(node, module)
        if found is None:
            return None
        call, pattern = found
        value = ctx.value(call.tensor)
        if value.kind != ValueKind.FUSED or any(ctx.value(n).kind != ValueKind.SHARED for n in call.others):
            return None
        where = self._where(pattern, value.axis)
        if where is None or pattern.name(value.axis) in call.lengths:
            return None
        if module is not None:
            return ctx.direct_module(node, module, value.node, where[1])
        args, kwargs = ctx.map_args(node, lambda v: v.node)
        return FuseValue(ValueKind.FUSED, ctx.emit_like(node, args, kwargs), where[1])

    def __repr__(self) -> str:
        return f"EinopsRule({self.op!r})"


class EinopsOpaque(OpRule):
    """``einops.einsum``, ``pack``, ``unpack``: recorded as one graph op each, with no channel rule (the groups
    they read and write are blocked) and the exact per-parent fallback."""

    kind = "einops (opaque)"
    calls = ("function",)

    def __repr__(self) -> str:
        return "EinopsOpaque()"


register_builtin(EinopsRule("rearrange"), "function", (einops.rearrange,))
register_builtin(EinopsRule("reduce"), "function", (einops.reduce,))
register_builtin(EinopsRule("repeat"), "function", (einops.repeat,))
register_builtin(EinopsOpaque(), "function", (einops.einsum, einops.pack, einops.unpack))
register_builtin(EinopsRule("rearrange"), "module", (RearrangeLayer,))
register_builtin(EinopsRule("reduce"), "module", (ReduceLayer,))
