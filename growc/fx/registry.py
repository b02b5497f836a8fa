"""The op-rule registry: what growc knows about each op, read by channel analysis and by fusion alike.

Every op growc understands has one entry here: a torch function or any Python callable (``call_function``
nodes), a tensor method name (``call_method``), or an ``nn.Module`` type (``call_module``; looked up by the most
specific registered class in the module's MRO). The entry's :class:`OpRule` states two things:

* its **channel rule** (:meth:`OpRule.channels`): how each input's channel axis maps to the output's, which
  parameter dimensions are coupled to them, and what is blocked, told to a :class:`ChannelContext` (the builder
  of :func:`growc.analyze_channels`);
* its **fuse lift** (:meth:`OpRule.lift`): how the op runs on tensors fused along a parent axis, emitted through
  a :class:`FuseContext` (the fuser of :func:`growc.fuse`); ``None`` means the exact per-parent fallback.

``channels`` and ``fuse`` only walk the graph, look each node's rule up (:func:`rule_for`) and call it; nothing
else decides an op's axes. Users teach growc a new op with :func:`register_op` (a handle, also a context manager,
takes it back; so does :func:`unregister_op`); :func:`op_rules` is a read-only view of the table growc uses, and
:func:`rules_table` renders it as the markdown table of ``docs/ops.md``.

A rule reads a node's arguments in the calling convention of the built-in ops of its kind (``flatten(x,
start_dim, end_dim)``, ``cat(tensors, dim)``, ``sum(x, dim, keepdim)``, ...): register an op under a kind only when
it is called like them.
"""

from __future__ import annotations

import copy
import enum
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.node import map_aggregate
from torch.nn.utils import parametrize

from growc.errors import GrowcConfigError
from growc.fx.analysis import TensorInfo
from growc.runtime.layers import GENERATED_TYPES, GRID_TYPES, MIXED_TYPES

__all__ = [
    "Cat",
    "ChannelContext",
    "Combined",
    "Elementwise",
    "Flatten",
    "FuseContext",
    "FuseValue",
    "LayerNorm",
    "Norm",
    "OpEntry",
    "OpHandle",
    "OpRule",
    "Opaque",
    "PerChannel",
    "Permute",
    "Pool",
    "Reduce",
    "Reshape",
    "Unary",
    "ValueKind",
    "Weighted",
    "WeightedFunction",
    "has_state",
    "has_tensor",
    "is_registered_leaf",
    "op_label",
    "op_rules",
    "register_builtin",
    "register_op",
    "rule_for",
    "rules_table",
    "tensor_info",
    "unregister_op",
    "wrapped_functions",
    "write_docs",
]

Dim = tuple[str, str, int]  # ("tensor" | "param", name, axis)


# ---- values of the fused graph ---------------------------------------------------------------------------------


class ValueKind(str, enum.Enum):
    """What a value of the fused graph is: one tensor all parents share, the parents' tensors concatenated along
    one axis, or one tensor per parent."""

    SHARED = "S"
    FUSED = "F"
    PER_PARENT = "P"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


@dataclass
class FuseValue:
    """A value of the fused graph: ``SHARED`` by all parents, ``FUSED`` along ``axis``, or ``PER_PARENT``."""

    kind: ValueKind
    node: Any = None
    axis: int = -1
    parts: list[Any] = field(default_factory=list)
    summed: bool = False  # a SHARED value that is already the parents' sum (a side-by-side head's output)

    def __post_init__(self) -> None:
        self.kind = ValueKind(self.kind)


def tensor_info(node: Any) -> TensorInfo | None:
    """The propagated :class:`TensorInfo` of a node (None for non-nodes and non-tensor values)."""
    info = node.meta.get("growc_shape") if isinstance(node, fx.Node) else None
    return info if isinstance(info, TensorInfo) else None


def has_tensor(info: Any) -> bool:
    """Whether a propagated shape pytree holds a tensor anywhere."""
    if isinstance(info, TensorInfo):
        return True
    if isinstance(info, (list, tuple)):
        return any(has_tensor(i) for i in info)
    if isinstance(info, dict):
        return any(has_tensor(i) for i in info.values())
    return False


def has_state(module: nn.Module) -> bool:
    """Whether ``module``'s output depends on per-parent state: parameters, buffers, or growc's generated weights
    (a mixed layer references its bank without owning it, so ``parameters()`` does not see it)."""
    return any(True for _ in (*module.parameters(), *module.buffers())) or any(
        isinstance(m, GENERATED_TYPES) or parametrize.is_parametrized(m) for m in module.modules()
    )


def op_label(node: fx.Node) -> str:
    """A node's op as channel analysis and the fuse report name it: the module path, the method name or the
    function's ``__name__``."""
    if node.op in ("call_module", "call_method"):
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


# ---- the narrow interfaces rules talk to ----------------------------------------------------------------------


class ChannelContext(Protocol):
    """What a channel rule may ask of :func:`growc.analyze_channels`' builder."""

    def module(self, node: fx.Node) -> nn.Module:
        """The submodule a ``call_module`` node calls."""

    def axis_of(self, node: fx.Node) -> int | None:
        """The channel axis already found for ``node``'s tensor."""

    def dim(self, node: fx.Node) -> Dim | None:
        """``node``'s channel dimension (None without a channel axis)."""

    def new(self, node: fx.Node, axis: int | None) -> Dim | None:
        """Set ``node``'s channel axis; its channel dimension."""

    def couple(self, a: Dim | None, b: Dim | None, op: str) -> None:
        """Couple two dimensions (one channel group), the edge labelled ``op``."""

    def block(self, dim: Dim | None, reason: str) -> None:
        """Mark the group of ``dim`` not permutable, for ``reason``."""

    def param(self, name: str, axis: int) -> Dim:
        """The dimension ``axis`` of the parameter or buffer ``name``."""

    def contain(self, container: Dim | None, part: Dim | None, offset: int, block: int, op: str) -> None:
        """``part``'s channel ``c`` is elements ``[offset + c*block, offset + (c+1)*block)`` of ``container``."""

    def produced(self, dim: Dim | None, op: str) -> None:
        """``op`` writes the group of ``dim`` (a weighted op's output)."""

    def consumed(self, dim: Dim | None, op: str) -> None:
        """``op`` reads the group of ``dim`` through its weight."""

    def weighted(self, node: fx.Node, inputs: Sequence[fx.Node]) -> None:
        """``node`` is a weighted op (a stem when its input is shared; a head when it reaches an output)."""

    def opaque(self, node: fx.Node, inputs: Sequence[fx.Node], name: str | None = None) -> None:
        """No channel rule applies: block what ``node`` reads and writes, naming ``name`` (default: the op)."""


class FuseContext(Protocol):
    """What a fuse lift may ask of :func:`growc.fuse`'s fuser."""

    n: int
    graph: fx.Graph

    def value(self, arg: fx.Node) -> FuseValue:
        """The fused graph's value for a parent node."""

    def module(self, node: fx.Node) -> nn.Module:
        """Parent 0's submodule a ``call_module`` node calls."""

    def parent_modules(self, node: fx.Node) -> list[nn.Module]:
        """Every parent's submodule a ``call_module`` node calls."""

    def parts(self, value: FuseValue) -> list[Any]:
        """The n parents' nodes of ``value``."""

    def fused(self, value: FuseValue, axis: int) -> fx.Node:
        """``value`` fused along ``axis`` (concatenating its parts when needed)."""

    def map_args(self, node: fx.Node, convert: Callable[[FuseValue], Any]) -> tuple[Any, Any]:
        """``node``'s args and kwargs with each node replaced by ``convert`` of its value."""

    def emit_like(self, node: fx.Node, args: Any, kwargs: Any) -> fx.Node:
        """A new node with ``node``'s op and target."""

    def direct_module(self, node: fx.Node, module: nn.Module, arg: fx.Node, axis: int) -> FuseValue:
        """A copy of ``module`` installed at ``node``'s target, called on ``arg``: a value fused along ``axis``."""

    def install(self, node: fx.Node, module: nn.Module, lift: str) -> str:
        """Install a lifted ``module`` at ``node``'s target, recording the lift ``lift`` in the report."""

    def lift_weighted(self, node: fx.Node, module: nn.Module) -> FuseValue:
        """The grid lift of a template-mixed (or grid) layer."""


# ---- rules -----------------------------------------------------------------------------------------------------


class OpRule:
    """A rule kind: :meth:`channels` for channel analysis, :meth:`lift` for fusion. The base rule is opaque."""

    kind = "opaque"
    channel_text = "none: blocks the groups it reads and writes"
    lift_text = "exact per-parent fallback"
    calls: tuple[str, ...] = ("function", "method", "module")  # how an op of this kind may be called

    def channels(self, node: fx.Node, ctx: ChannelContext, inputs: Sequence[fx.Node]) -> None:
        """Tell ``ctx`` the axes of ``node`` (whose tensor ``inputs`` have propagated shapes)."""
        ctx.opaque(node, inputs)

    def lift(self, node: fx.Node, ctx: FuseContext) -> FuseValue | None:
        """Emit ``node`` on fused operands through ``ctx``; None takes the exact per-parent fallback."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Opaque(OpRule):
    """No rule: channel groups around it are blocked; fusion runs it once per parent (exact)."""


@dataclass
class _Operands:
    """A function node's tensor operands and their fused-graph values."""

    tensor_args: list[fx.Node]
    values: list[FuseValue]
    fused: list[FuseValue]
    info: TensorInfo | None
    simple: bool  # an output shape, a fused operand, and every node input a tensor

    @property
    def axis(self) -> int:
        return self.fused[0].axis

    @property
    def rank(self) -> int:
        return len(self.info.shape)  # type: ignore[union-attr]


def _operands(node: fx.Node, ctx: FuseContext) -> _Operands:
    tensor_args = [a for a in node.all_input_nodes if has_tensor(a.meta.get("growc_shape"))]
    values = [ctx.value(a) for a in tensor_args]
    fused = [v for v in values if v.kind == ValueKind.FUSED]
    info = tensor_info(node)
    simple = info is not None and bool(fused) and len(node.all_input_nodes) == len(tensor_args)
    return _Operands(tensor_args, values, fused, info, simple)


def _module_operand(node: fx.Node, ctx: FuseContext) -> tuple[FuseValue, int] | None:
    """A module call's one tensor operand (no keywords) when it is not shared, and its rank."""
    args = [a for a in node.args if isinstance(a, fx.Node)]
    if len(args) != 1 or node.kwargs:
        return None
    first = ctx.value(args[0])
    if first.kind == ValueKind.SHARED:
        return None
    info = tensor_info(args[0])
    return first, len(info.shape) if info else 0


def _emit_same(node: fx.Node, ctx: FuseContext, axis: int) -> FuseValue:
    args, kwargs = ctx.map_args(node, lambda v: v.node)
    return FuseValue(ValueKind.FUSED, ctx.emit_like(node, args, kwargs), axis)


class Unary(OpRule):
    """Per-channel (elementwise on one tensor, e.g. activations, dropout): output channels are input channels."""

    kind = "unary"
    channel_text = "output axis = input axis, coupled"
    lift_text = "direct on the fused tensor"

    def channels(self, node: fx.Node, ctx: ChannelContext, inputs: Sequence[fx.Node]) -> None:
        x = inputs[0] if inputs else None
        if node.op == "call_module":
            ok = x is not None and tensor_info(x).shape == tensor_info(node).shape
        else:
            ok = len(inputs) == 1
        if ok:
            ctx.couple(ctx.dim(x), ctx.new(node, ctx.axis_of(x)), op_label(node))
        else:
            ctx.opaque(node, inputs)

    def lift(self, node: fx.Node, ctx: FuseContext) -> FuseValue | None:
        if node.op == "call_module":
            operand = _module_operand(node, ctx)
            if operand is None or operand[0].kind != ValueKind.FUSED:
                return None
            return ctx.direct_module(node, ctx.module(node), operand[0].node, operand[0].axis)
        ops = _operands(node, ctx)
        if not ops.simple or len(ops.values) != 1:
            return None
        return _emit_same(node, ctx, ops.axis)


class Elementwise(OpRule):
    """Elementwise with broadcasting (``add``, ``mul``, ...): operands aligned from the right; an operand that
    broadcasts over the channels (a ``[B, 1, H, W]`` mask, a scalar) is not coupled."""

    kind = "elementwise"
    calls = ("function", "method")
    channel_text = "operands aligned from the right and coupled; broadcast operands not coupled"
    lift_text = "broadcast: operands fused along the aligned axis, shared broadcast operands as they are"

    def channels(self, node: fx.Node, ctx: ChannelContext, inputs: Sequence[fx.Node]) -> None:
        name = op_label(node)
        info = tensor_info(node)
        rank = len(info.shape)
        axis = None
        for arg in inputs:  # the output's channel axis: that of an operand spanning it
            a = ctx.axis_of(arg)
            if a is not None:
                aligned = a + rank - len(tensor_info(arg).shape)
                if tensor_info(arg).shape[a] == info.shape[aligned]:
                    axis = aligned
                    break
        out = ctx.new(node, axis)
        if axis is None:
            return
        for arg in inputs:
            aligned = axis - (rank - len(tensor_info(arg).shape))
            if aligned < 0 or tensor_info(arg).shape[aligned] == 1:
                continue  # broadcast over the channels: not coupled
            if ctx.axis_of(arg) == aligned:
                ctx.couple(ctx.dim(arg), out, name)
            else:  # neither side's channels may be permuted alone: the op mixes them with the other's positions
                ctx.block(out, f"{name} mixes a tensor whose channels are on another axis")
                ctx.block(ctx.dim(arg), f"{name} mixes it with a tensor whose channels are on another axis")

    def lift(self, node: fx.Node, ctx: FuseContext) -> FuseValue | None:
        ops = _operands(node, ctx)
        if not ops.simple or len(ops.values) not in (1, 2):
            return None
        first_fused = next(a for a in ops.tensor_args if ctx.value(a).kind == ValueKind.FUSED)
        axis = ctx.value(first_fused).axis + ops.rank - len(tensor_info(first_fused).shape)
        if not all(_broadcast_ok(ctx, a, axis, ops.rank) for a in ops.tensor_args):
            return None

        def convert(arg: Any) -> Any:
            if not isinstance(arg, fx.Node):
                return arg
            value, info = ctx.value(arg), tensor_info(arg)
            if info is None:  # a Python number
                return value.node
            aligned = axis - (ops.rank - len(info.shape))
            if value.kind == ValueKind.SHARED and (aligned < 0 or info.shape[aligned] == 1):
                return value.node
            return ctx.fused(value, aligned)

        args, kwargs = map_aggregate(node.args, convert), map_aggregate(node.kwargs, convert)
        return FuseValue(ValueKind.FUSED, ctx.emit_like(node, args, kwargs), axis)


def _broadcast_ok(ctx: FuseContext, arg: fx.Node, axis: int, rank: int) -> bool:
    """A per-parent operand that broadcasts over the parent axis (size 1, or no such axis) cannot be
    concatenated along it: such ops take the exact fallback."""
    info = tensor_info(arg)
    if info is None or ctx.value(arg).kind == ValueKind.SHARED:
        return True
    aligned = axis - (rank - len(info.shape))
    return aligned >= 0 and info.shape[aligned] != 1


class Pool(OpRule):
    """Per-channel over spatial axes (pooling): needs channels on axis 1 of a tensor of rank >= 3."""

    kind = "pool"
    channel_text = "axis 1 -> axis 1 (rank >= 3), coupled"
    lift_text = "direct on the tensor fused along axis 1"

    def channels(self, node: fx.Node, ctx: ChannelContext, inputs: Sequence[fx.Node]) -> None:
        x = inputs[0] if inputs else None
        if x is not None and ctx.axis_of(x) == 1 and len(tensor_info(node).shape) >= 3:
            ctx.couple(ctx.dim(x), ctx.new(node, 1), op_label(node))
        else:
            ctx.opaque(node, inputs)

    def lift(self, node: fx.Node, ctx: FuseContext) -> FuseValue | None:
        if node.op == "call_module":
            operand = _module_operand(node, ctx)
            module = ctx.module(node)
            if operand is None or operand[1] < 3 or getattr(module, "return_indices", False):
                return None
            return ctx.direct_module(node, module, ctx.fused(operand[0], 1), 1)
        ops = _operands(node, ctx)
        if not ops.simple or len(ops.values) != 1 or ops.rank < 3:
            return None
        args, kwargs = ctx.map_args(node, lambda v: ctx.fused(v, 1))
        return FuseValue(ValueKind.FUSED, ctx.emit_like(node, args, kwargs), 1)


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


class Reduce(OpRule):
    """A reduction over constant ``dim`` (``sum(x, dim, keepdim)``): channels pass when not reduced."""

    kind = "reduce"
    calls = ("function", "method")
    channel_text = "channel axis kept (shifted past reduced dims) unless reduced"
    lift_text = "reduce: the parent axis tracked, never reduced over"

    def channels(self, node: fx.Node, ctx: ChannelContext, inputs: Sequence[fx.Node]) -> None:
        if not inputs:
            ctx.opaque(node, inputs)
            return
        x = inputs[0]
        dims, keepdim = _arg(node, 1, "dim", None), _arg(node, 2, "keepdim", False)
        axis = ctx.axis_of(x)
        dims = [dims] if isinstance(dims, int) else dims
        if axis is not None and isinstance(dims, (list, tuple)) and all(isinstance(d, int) for d in dims):
            dims = [d % len(tensor_info(x).shape) for d in dims]
            if axis not in dims:
                new_axis = axis if keepdim else axis - sum(d < axis for d in dims)
                ctx.couple(ctx.dim(x), ctx.new(node, new_axis), op_label(node))
                return
        ctx.opaque(node, inputs, op_label(node))

    def lift(self, node: fx.Node, ctx: FuseContext) -> FuseValue | None:
        ops = _operands(node, ctx)
        if not ops.simple:
            return None
        value, rank_in = ops.values[0], len(tensor_info(ops.tensor_args[0]).shape)
        dims, keepdim = _arg(node, 1, "dim", None), _arg(node, 2, "keepdim", False)
        if value.kind != ValueKind.FUSED or dims is None or not isinstance(keepdim, bool):
            return None
        dims = [dims] if isinstance(dims, int) else list(dims)
        if not all(isinstance(d, int) for d in dims):
            return None
        dims = [d % rank_in for d in dims]
        if value.axis in dims:
            return None
        return _emit_same(node, ctx, value.axis if keepdim else value.axis - sum(d < value.axis for d in dims))


def flatten_axis(axis: int, start: int, end: int, rank: int) -> int | None:
    """Where ``axis`` goes under ``flatten(start, end)``; None when it is inside the range but not outermost."""
    start, end = start % rank, end % rank
    if axis < start:
        return axis
    if axis == start:
        return start
    if axis > end:
        return axis - (end - start)
    return None


class Flatten(OpRule):
    """``flatten(x, start_dim, end_dim)`` (and ``nn.Flatten``): axes outside the range move; channels at the
    range's start hold the input's group in blocks."""

    kind = "flatten"
    channel_text = "axes outside the range shift; the range's first axis holds its channels in blocks"
    lift_text = "flatten: the parent axis tracked when outermost in the range"

    @staticmethod
    def _range(node: fx.Node, module: nn.Module | None) -> tuple[Any, Any]:
        if module is not None:
            return module.start_dim, module.end_dim
        return _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)

    def channels(self, node: fx.Node, ctx: ChannelContext, inputs: Sequence[fx.Node]) -> None:
        module = ctx.module(node) if node.op == "call_module" else None
        x = inputs[0] if inputs else None
        if x is None:
            ctx.opaque(node, inputs)
            return
        start, end = self._range(node, module)
        name = op_label(node)
        axis = ctx.axis_of(x)
        shape = tensor_info(x).shape
        if axis is None or not isinstance(start, int) or not isinstance(end, int):
            ctx.opaque(node, [x], name)
            return
        start, end = start % len(shape), end % len(shape)
        if axis < start or axis > end:
            ctx.couple(ctx.dim(x), ctx.new(node, axis if axis < start else axis - (end - start)), name)
        elif axis == start:
            block = math.prod(shape[axis + 1 : end + 1])
            out = ctx.new(node, start)
            if block == 1:
                ctx.couple(ctx.dim(x), out, name)
            else:
                ctx.contain(out, ctx.dim(x), 0, block, name)
        else:
            ctx.opaque(node, [x], name)

    def lift(self, node: fx.Node, ctx: FuseContext) -> FuseValue | None:
        if node.op == "call_module":
            operand = _module_operand(node, ctx)
            if operand is None or operand[0].kind != ValueKind.FUSED:
                return None
            module = ctx.module(node)
            axis = flatten_axis(operand[0].axis, module.start_dim, module.end_dim, operand[1])
            return None if axis is None else ctx.direct_module(node, module, operand[0].node, axis)
        ops = _operands(node, ctx)
        if not ops.simple or ops.values[0].kind != ValueKind.FUSED:
            return None
        start, end = self._range(node, None)
        if not isinstance(start, int) or not isinstance(end, int):
            return None
        axis = flatten_axis(ops.values[0].axis, start, end, len(tensor_info(ops.tensor_args[0]).shape))
        return None if axis is None else _emit_same(node, ctx, axis)


class Reshape(OpRule):
    """``view``/``reshape``: no channel rule (the groups around it are blocked); fusion keeps the parents
    contiguous when the dims before the parent axis keep their product."""

    kind = "reshape"
    calls = ("function", "method")
    channel_text = "none: blocks the groups it reads and writes"
    lift_text = "reshape: the parent axis' size times n, when the dims before it keep their product"

    def lift(self, node: fx.Node, ctx: FuseContext) -> FuseValue | None:
        ops = _operands(node, ctx)
        if ops.info is None or len(ops.values) != 1 or not ops.fused:  # sizes may be shared nodes
            return None
        value = ops.values[0]
        shape_in, shape_out = tensor_info(ops.tensor_args[0]).shape, ops.info.shape
        before = math.prod(shape_in[: value.axis])
        # the batch axis must stay as it is: an example batch of 1 makes axis 0 look free to merge, but at other
        # batch sizes a reshape that moves the parent axis next to the batch interleaves parents and samples
        candidates = [
            a
            for a in range(1, len(shape_out))
            if math.prod(shape_out[:a]) == before and shape_out[a] > 1 and shape_out[0] == shape_in[0]
        ]
        shape_args = list(node.args[1:]) if node.op == "call_method" else list(node.args[1])
        if len(shape_args) == 1 and isinstance(shape_args[0], (list, tuple)):
            shape_args = list(shape_args[0])
        if not candidates or len(shape_args) != len(shape_out) or node.kwargs:
            return None
        axis = candidates[0]
        if value.axis == 0 or math.prod(shape_out[axis:]) != math.prod(shape_in[value.axis :]):
            return None
        if any(isinstance(e, int) and e == -1 for e in shape_args[:axis]):
            return None
        entries = []
        for i, entry in enumerate(shape_args):
            if isinstance(entry, fx.Node):
                if ctx.value(entry).kind != ValueKind.SHARED:
                    return None
                entry = ctx.value(entry).node
            if i == axis and entry != -1:
                entry = (
                    entry * ctx.n if isinstance(entry, int) else ctx.graph.call_function(operator.mul, (entry, ctx.n))
                )
            entries.append(entry)
        new = ctx.graph.call_function(torch.reshape, (value.node, tuple(entries)))
        return FuseValue(ValueKind.FUSED, new, axis)


class Permute(OpRule):
    """``permute`` (``transpose=False``) or ``transpose``/``swapaxes`` (``transpose=True``) with constant dims:
    the channel axis moves with its dim."""

    def __init__(self, transpose: bool = False) -> None:
        self.transpose = transpose
        self.kind = "transpose" if transpose else "permute"

    channel_text = "the channel axis moves to its new position, coupled"
    calls = ("function", "method")
    lift_text = "direct, the parent axis moved"

    def moved(self, node: fx.Node, axis: int, rank: int) -> int | None:
        """Where ``axis`` goes (None: the dims are not constants)."""
        method = node.op == "call_method"
        if self.transpose:
            pair = node.args[1:3]
            if len(pair) == 2 and all(isinstance(d, int) for d in pair):
                a, b = (d % rank for d in pair)
                return b if axis == a else a if axis == b else axis
            return None
        if node.kwargs or len(node.args) < 2:
            return None
        dims = node.args[1:] if method else node.args[1]
        if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
            dims = dims[0]
        if len(dims) == rank and all(isinstance(d, int) for d in dims):
            return [d % rank for d in dims].index(axis)
        return None

    def channels(self, node: fx.Node, ctx: ChannelContext, inputs: Sequence[fx.Node]) -> None:
        x = inputs[0] if inputs else None
        axis = ctx.axis_of(x) if x is not None else None
        moved = None
        if len(inputs) == 1 and axis is not None:
            moved = self.moved(node, axis, len(tensor_info(node).shape))
        if moved is None:
            ctx.opaque(node, inputs)
        else:
            ctx.couple(ctx.dim(x), ctx.new(node, moved), op_label(node))

    def lift(self, node: fx.Node, ctx: FuseContext) -> FuseValue | None:
        ops = _operands(node, ctx)
        if not ops.simple:
            return None
        moved = self.moved(node, ops.axis, ops.rank)
        if moved is None or len(ops.values) != 1:
            return None
        return _emit_same(node, ctx, moved)

    def __repr__(self) -> str:
        return f"Permute(transpose={self.transpose})"


class Cat(OpRule):
    """``cat(tensors, dim)``: along the channel axis the output holds each input's group at its offset; along
    another axis the inputs' channels are coupled."""

    kind = "cat"
    calls = ("function",)
    channel_text = "along channels: holds each input's group at its offset; else inputs coupled"
    lift_text = "cat, re-ordered so each parent's segment stays contiguous"

    def channels(self, node: fx.Node, ctx: ChannelContext, inputs: Sequence[fx.Node]) -> None:
        name = op_label(node)
        rank = len(tensor_info(node).shape)
        dim = _arg(node, 1, "dim", 0) % rank
        axes = {ctx.axis_of(a) for a in inputs}
        if len(axes) != 1 or None in axes:
            ctx.opaque(node, inputs, name)
            return
        (axis,) = axes
        out = ctx.new(node, axis)
        if dim != axis:
            for arg in inputs:
                ctx.couple(ctx.dim(arg), out, name)
            return
        offset = 0
        for arg in inputs:
            ctx.contain(out, ctx.dim(arg), offset, 1, name)
            offset += tensor_info(arg).shape[axis]

    def lift(self, node: fx.Node, ctx: FuseContext) -> FuseValue | None:
        ops = _operands(node, ctx)
        if not ops.simple or len(node.args) < 1:
            return None
        axis = ops.axis
        dim = _arg(node, 1, "dim", 0) % ops.rank
        values = [ctx.value(a) for a in node.args[0]]
        if dim != axis:
            merged = ctx.graph.call_function(torch.cat, ([ctx.fused(v, axis) for v in values],), {"dim": dim})
            return FuseValue(ValueKind.FUSED, merged, axis)
        ordered = [part for i in range(ctx.n) for part in (ctx.parts(v)[i] for v in values)]
        return FuseValue(ValueKind.FUSED, ctx.graph.call_function(torch.cat, (ordered,), {"dim": axis}), axis)


def _concatenated(module: nn.Module, modules: list[nn.Module], lifted: nn.Module, dim: int = 0) -> nn.Module:
    """``lifted`` holding the parents' direct parameters and buffers concatenated along ``dim`` (the largest
    ``num_batches_tracked``), in ``module``'s train/eval mode."""
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if tensor is None:
                continue
            stack = [getattr(m, name) for m in modules]
            if name == "num_batches_tracked":
                lifted.register_buffer(name, max(stack, key=lambda t: int(t)).detach().clone())
                continue
            joined = torch.cat([t.detach() for t in stack], dim)
            if isinstance(tensor, nn.Parameter):
                setattr(lifted, name, nn.Parameter(joined, requires_grad=tensor.requires_grad))
            else:
                lifted.register_buffer(name, joined)
    lifted.train(module.training)
    return lifted


class PerChannel(OpRule):
    """A module with per-channel state: every direct parameter and buffer's dim 0 is the channel dim of ``axis``
    (e.g. a ``[C]`` scale on ``[B, C, H, W]``). Fusion concatenates the parents' state; ``sized`` names integer
    attributes that count channels (multiplied by n in the fused copy)."""

    kind = "per-channel state"
    calls = ("module",)
    channel_text = "output axis = input axis; every parameter/buffer dim 0 coupled"
    lift_text = "parameters and buffers concatenated, on the tensor fused along the channel axis"

    def __init__(self, axis: int = 1, sized: Iterable[str] = ()) -> None:
        self.axis = axis
        self.sized = tuple(sized)

    def _axis(self, rank: int) -> int:
        return self.axis % rank if rank else self.axis

    def channels(self, node: fx.Node, ctx: ChannelContext, inputs: Sequence[fx.Node]) -> None:
        x = inputs[0] if inputs else None
        axis = self._axis(len(tensor_info(node).shape))
        if x is None or ctx.axis_of(x) != axis:
            ctx.opaque(node, inputs)
            return
        self.couple_state(node, ctx, self._out(node, ctx, x, axis))

    @staticmethod
    def _out(node: fx.Node, ctx: ChannelContext, x: fx.Node | None, axis: int) -> Dim | None:
        out = ctx.new(node, axis)
        ctx.couple(ctx.dim(x) if x is not None else None, out, op_label(node))
        return out

    def couple_state(self, node: fx.Node, ctx: ChannelContext, out: Dim | None) -> None:
        """Couple each direct parameter and buffer's dim 0 to ``out``."""
        module = ctx.module(node)
        for name, _ in (*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)):
            if name != "num_batches_tracked":
                ctx.couple(out, ctx.param(f"{node.target}.{name}", 0), op_label(node))

    def lifted(self, node: fx.Node, ctx: FuseContext) -> nn.Module | None:
        """The fused module (None: the parents' modules disagree and fusion falls back)."""
        module, modules = ctx.module(node), ctx.parent_modules(node)
        lifted = copy.deepcopy(module)
        for attr in self.sized:
            setattr(lifted, attr, getattr(module, attr) * ctx.n)
        return _concatenated(module, modules, lifted)

    def lift(self, node: fx.Node, ctx: FuseContext) -> FuseValue | None:
        operand = _module_operand(node, ctx)
        if node.op != "call_module" or operand is None or operand[1] < 2:
            return None
        axis = self._axis(operand[1])
        lifted = self.lifted(node, ctx)
        if lifted is None:
            return None
        target = ctx.install(node, lifted, f"{type(ctx.module(node)).__name__} concatenated")
        return FuseValue(ValueKind.FUSED, ctx.graph.call_module(target, (ctx.fused(operand[0], axis),)), axis)

    def __repr__(self) -> str:
        return f"PerChannel(axis={self.axis}, sized={self.sized})"


class Norm(PerChannel):
    """BatchNorm, InstanceNorm, GroupNorm: per-channel parameters and running statistics on axis 1; GroupNorm
    with groups other than 1 or C blocks its group; fusion concatenates the state (GroupNorm: n*G groups)."""

    kind = "norm"
    channel_text = "axis 1 -> axis 1; weight, bias, running stats dim 0 coupled (GroupNorm: blocked unless G in 1, C)"
    lift_text = "parameters and running statistics concatenated (GroupNorm: n*G groups)"

    def __init__(self) -> None:
        super().__init__(axis=1)

    def channels(self, node: fx.Node, ctx: ChannelContext, inputs: Sequence[fx.Node]) -> None:
        x = inputs[0] if inputs else None
        if x is not None and ctx.axis_of(x) != 1:
            ctx.opaque(node, inputs)
            return
        out = self._out(node, ctx, x, 1)
        self.couple_state(node, ctx, out)
        module = ctx.module(node)
        if isinstance(module, nn.GroupNorm) and module.num_groups not in (1, module.num_channels):
            ctx.block(out, f"GroupNorm {node.target} normalizes channels in groups")

    def lifted(self, node: fx.Node, ctx: FuseContext) -> nn.Module | None:
        module, modules = ctx.module(node), ctx.parent_modules(node)
        config = [(m.eps, getattr(m, "momentum", None), getattr(m, "affine", None)) for m in modules]
        if any(c != config[0] for c in config):
            return None
        if isinstance(module, nn.GroupNorm):
            lifted = nn.GroupNorm(module.num_groups * ctx.n, module.num_channels * ctx.n, module.eps, module.affine)
        else:
            lifted = copy.deepcopy(module)
            lifted.num_features = module.num_features * ctx.n
        return _concatenated(module, modules, lifted)

    def lift(self, node: fx.Node, ctx: FuseContext) -> FuseValue | None:
        operand = _module_operand(node, ctx)
        module = ctx.module(node)
        batched = 3 if isinstance(module, nn.modules.instancenorm._InstanceNorm) else 2
        if operand is None or operand[1] < batched:
            return None
        return super().lift(node, ctx)

    def __repr__(self) -> str:
        return "Norm()"


class LayerNorm(OpRule):
    """LayerNorm over the last axis only: channels on the last axis, weight and bias coupled. It normalizes over
    the channels, so fusion cannot concatenate it: the exact per-parent fallback."""

    kind = "layer norm"
    calls = ("module",)
    channel_text = "last axis -> last axis (one normalized dim); weight, bias coupled"
    lift_text = "exact per-parent fallback (it normalizes over the fused axis)"

    def channels(self, node: fx.Node, ctx: ChannelContext, inputs: Sequence[fx.Node]) -> None:
        module = ctx.module(node)
        x = inputs[0] if inputs else None
        rank = len(tensor_info(node).shape)
        if x is None or ctx.axis_of(x) != rank - 1 or len(module.normalized_shape) != 1:
            ctx.opaque(node, inputs)
            return
        out = ctx.new(node, rank - 1)
        ctx.couple(ctx.dim(x), out, op_label(node))
        for name, _ in module.named_parameters(recurse=False):
            ctx.couple(out, ctx.param(f"{node.target}.{name}", 0), op_label(node))


_LIFTED_WEIGHTED = (*MIXED_TYPES[:4], *GRID_TYPES)


class Weighted(OpRule):
    """A weighted op whose ``weight`` is ``[out, in, ...]`` (Conv, Linear, growc's mixed and grid layers):
    output channels couple to weight dim 0 (and bias), input channels to weight dim 1; depthwise convs pass
    channels through, other grouped convs block. Fusion lifts growc's mixed/grid layers to a grid of blocks;
    other modules take the exact fallback."""

    channel_text = "out axis couples weight dim 0 and bias; in axis couples weight dim 1 (depthwise: in = out)"
    calls = ("module",)
    lift_text = "weighted grid (stem, grid, grouped, head) for mixed/grid layers; else exact fallback"

    def __init__(self, linear: bool) -> None:
        self.linear = linear
        self.kind = "weighted (linear)" if linear else "weighted (conv)"

    def channels(self, node: fx.Node, ctx: ChannelContext, inputs: Sequence[fx.Node]) -> None:
        ctx.weighted(node, inputs)
        x = inputs[0] if inputs else None
        if x is None:
            ctx.opaque(node, inputs)
            return
        module, target = ctx.module(node), str(node.target)
        out = ctx.new(node, len(tensor_info(node).shape) - 1 if self.linear else 1)
        weight = f"{target}.weight"
        ctx.couple(out, ctx.param(weight, 0), target)
        if getattr(module, "bias", None) is not None:
            ctx.couple(out, ctx.param(f"{target}.bias", 0), target)
        ctx.produced(out, target)
        x_dim = ctx.dim(x)
        if ctx.axis_of(x) != (len(tensor_info(x).shape) - 1 if self.linear else 1):
            ctx.block(x_dim, f"read by {target} on another axis")
            return
        groups = 1 if self.linear else module.groups
        if groups == 1:
            ctx.couple(x_dim, ctx.param(weight, 1), target)
            ctx.consumed(x_dim, target)
        elif groups == module.in_channels == module.out_channels:  # depthwise: channel c in -> channel c out
            ctx.couple(x_dim, out, target)
        else:
            ctx.block(x_dim, f"grouped conv {target}")
            ctx.block(out, f"grouped conv {target}")

    def lift(self, node: fx.Node, ctx: FuseContext) -> FuseValue | None:
        module = ctx.module(node)
        if node.op != "call_module" or not isinstance(module, _LIFTED_WEIGHTED):
            return None
        if len(node.args) != 1 or node.kwargs:  # called with a keyword: the exact fallback
            return None
        return ctx.lift_weighted(node, module)

    def __repr__(self) -> str:
        return f"Weighted(linear={self.linear})"


class WeightedFunction(OpRule):
    """A functional weighted op (``F.linear``, ``F.conv2d``, ``torch.matmul``, ``aten.linear``, ``aten.addmm``,
    ...): the parameter at argument ``weight`` is a weight :func:`growc.templatize` generates from templates
    (``weight_kind`` ``linear``/``conv1d``/``conv2d``/``conv3d``: ``[out, in, ...]``; ``matmul``: ``[..., in,
    out]``; ``groups`` is the position of a conv's ``groups``). Channels are not traced through it and fusion
    runs it per parent; a weighted *module* (what capture makes of a standard layer's op) is lifted to a grid."""

    calls = ("function",)
    channel_text = "none: blocks the groups it reads and writes (a Linear/Conv module's rule couples them)"
    lift_text = "exact per-parent fallback"

    def __init__(self, weight_kind: str, weight: int, groups: int | None = None) -> None:
        self.weight_kind, self.weight, self.groups = weight_kind, weight, groups
        self.kind = f"weighted function ({weight_kind})"

    def weight_use(self, node: fx.Node, param: fx.Node) -> tuple[str, int] | None:
        """``(weight kind, groups)`` when ``node`` reads ``param`` as its weight and nowhere else, else None."""
        name = "other" if self.weight_kind == "matmul" else "weight"
        weight = node.args[self.weight] if len(node.args) > self.weight else node.kwargs.get(name)
        others = [a for i, a in enumerate(node.args) if i != self.weight]
        others += [v for k, v in node.kwargs.items() if k != name]
        if weight is not param or param in others:
            return None
        groups = 1
        if self.groups is not None:
            groups = node.args[self.groups] if len(node.args) > self.groups else node.kwargs.get("groups", 1)
        return (self.weight_kind, groups) if isinstance(groups, int) else None

    def __repr__(self) -> str:
        return f"WeightedFunction({self.weight_kind!r}, weight={self.weight}, groups={self.groups})"


class Combined(OpRule):
    """One rule's channel analysis with another's fuse lift."""

    def __init__(self, channels: OpRule, lift: OpRule) -> None:
        self.channel_rule, self.lift_rule = channels, lift
        self.kind = f"{channels.kind} / {lift.kind}"
        self.calls = tuple(c for c in channels.calls if c in lift.calls)
        self.channel_text, self.lift_text = channels.channel_text, lift.lift_text

    def channels(self, node: fx.Node, ctx: ChannelContext, inputs: Sequence[fx.Node]) -> None:
        self.channel_rule.channels(node, ctx, inputs)

    def lift(self, node: fx.Node, ctx: FuseContext) -> FuseValue | None:
        return self.lift_rule.lift(node, ctx)

    def __repr__(self) -> str:
        return f"Combined({self.channel_rule!r}, {self.lift_rule!r})"


#: rule kinds by the names :func:`register_op` accepts
KINDS: dict[str, Callable[[], OpRule]] = {
    "unary": Unary,
    "elementwise": Elementwise,
    "pool": Pool,
    "reduce": Reduce,
    "flatten": Flatten,
    "reshape": Reshape,
    "permute": Permute,
    "transpose": lambda: Permute(transpose=True),
    "cat": Cat,
    "per-channel": PerChannel,
    "norm": Norm,
    "layer norm": LayerNorm,
    "linear": lambda: Weighted(linear=True),
    "conv": lambda: Weighted(linear=False),
    "opaque": Opaque,
}


# ---- the table ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpEntry:
    """One registered op: its target, how it is called (``function``, ``method``, ``module``), its rule, and
    whether growc itself registered it."""

    target: Any
    call: str
    rule: OpRule
    builtin: bool

    @property
    def name(self) -> str:
        """The op's qualified name (``torch.relu``, ``Tensor.add``, ``torch.nn.ReLU``)."""
        return _display(self.target, self.call)


def _display(target: Any, call: str) -> str:
    if call == "method":
        return f"Tensor.{target}"
    if call == "module":
        module = target.__module__
        if module.startswith("torch.nn.modules") and getattr(nn, target.__qualname__, None) is target:
            module = "torch.nn"
        return f"{module}.{target.__qualname__}"
    if isinstance(target, torch._ops.OpOverload):
        return f"torch.ops.{target}"
    name = getattr(target, "__name__", repr(target))
    for prefix, namespace in (("torch.nn.functional", F), ("torch", torch)):
        if getattr(namespace, name, None) is target:
            return f"{prefix}.{name}"
    module = getattr(target, "__module__", None) or ""
    module = {"_operator": "operator"}.get(module, module)
    return f"{module}.{name}" if module else name


def _call_of(target: Any) -> str:
    if isinstance(target, str):
        return "method"
    if isinstance(target, type) and issubclass(target, nn.Module):
        return "module"
    if callable(target):
        return "function"
    raise GrowcConfigError(
        f"register_op: target must be a callable, a tensor method name or an nn.Module type, got {target!r}"
    )


_RULES: dict[tuple[str, Any], OpEntry] = {}
_SHADOWED: dict[tuple[str, Any], list[OpEntry]] = {}  # entries a registration replaced, restored on unregister


def _builtin(rule: OpRule, call: str, targets: Iterable[Any]) -> None:
    for target in targets:
        _RULES[(call, target)] = OpEntry(target, call, rule, builtin=True)


def register_builtin(rule: OpRule, call: str, targets: Iterable[Any]) -> None:
    """Add built-in entries (``call``: ``"function"``, ``"method"`` or ``"module"``) from a module of growc's own
    that defines rules outside this one (``growc.fx.einops_ops``); they are listed in :func:`rules_table`."""
    if call not in ("function", "method", "module"):
        raise GrowcConfigError(f"register_builtin: call must be function, method or module, got {call!r}")
    _builtin(rule, call, targets)


def _is_stochastic_depth(target: Any) -> bool:
    return getattr(target, "__name__", "") == "stochastic_depth" and "torchvision" in getattr(target, "__module__", "")


_STOCHASTIC_DEPTH = Combined(Opaque(), Unary())
#: ops matched by a predicate, not by identity (optional dependencies growc does not import)
_MATCHERS: tuple[tuple[str, Callable[[Any], bool], OpRule], ...] = (
    ("torchvision.ops.stochastic_depth", _is_stochastic_depth, _STOCHASTIC_DEPTH),
)

_builtin(
    Unary(),
    "module",
    (
        nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU,
        nn.ELU, nn.Mish, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
        nn.AlphaDropout,
    ),
)  # fmt: skip
_builtin(
    Unary(),
    "function",
    (
        torch.relu, F.relu, F.relu6, F.gelu, F.silu, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.hardswish,
        F.hardsigmoid, F.leaky_relu, F.elu, F.mish, F.softplus, F.dropout, operator.neg, torch.neg, torch.abs,
        torch.exp, torch.sqrt, torch.square,
    ),
)  # fmt: skip
_builtin(Unary(), "method", ("relu", "sigmoid", "tanh", "neg", "abs", "exp", "sqrt", "square", "contiguous", "clone"))
_builtin(
    Elementwise(),
    "function",
    (
        operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul, torch.div,
        operator.iadd, operator.imul,
    ),
)  # fmt: skip
_builtin(Elementwise(), "method", ("add", "sub", "mul", "div", "add_", "mul_"))
_builtin(
    Pool(),
    "module",
    (
        nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
        nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
        nn.AdaptiveMaxPool3d,
    ),
)  # fmt: skip
_builtin(
    Pool(),
    "function",
    (
        F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
        F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
        F.adaptive_max_pool3d, torch.max_pool1d, torch.max_pool2d, torch.avg_pool1d, torch.adaptive_avg_pool1d,
    ),
)  # fmt: skip
_builtin(Reduce(), "function", (torch.mean, torch.sum))
_builtin(Reduce(), "method", ("mean", "sum", "amax", "amin"))
_builtin(Flatten(), "function", (torch.flatten,))
_builtin(Flatten(), "method", ("flatten",))
_builtin(Flatten(), "module", (nn.Flatten,))
_builtin(Reshape(), "function", (torch.reshape,))
_builtin(Reshape(), "method", ("view", "reshape"))
_builtin(Permute(), "function", (torch.permute,))
_builtin(Permute(), "method", ("permute",))
_builtin(Permute(transpose=True), "function", (torch.transpose, torch.swapaxes))
_builtin(Permute(transpose=True), "method", ("transpose", "swapaxes"))
_builtin(Cat(), "function", (torch.cat, torch.concat))
_builtin(Norm(), "module", (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm))
_builtin(LayerNorm(), "module", (nn.LayerNorm,))
_builtin(Weighted(linear=True), "module", (nn.Linear, MIXED_TYPES[3], GRID_TYPES[3]))
_builtin(Weighted(linear=False), "module", (nn.Conv1d, nn.Conv2d, nn.Conv3d, *MIXED_TYPES[:3], *GRID_TYPES[:3]))

# ---- ATen ops (graphs captured by torch.export): the same kinds, ATen's calling conventions match -------------------

_ATEN = torch.ops.aten


def _overloads(*names: str) -> list[Any]:
    """``aten.<op>.<overload>`` objects for ``"op.overload"`` names (``"relu.default"``)."""
    found = []
    for name in names:
        op, _, overload = name.partition(".")
        packet = getattr(_ATEN, op)
        found.append(getattr(packet, overload))
    return found


_builtin(
    Unary(),
    "function",
    _overloads(
        "relu.default", "relu_.default", "gelu.default", "silu.default", "silu_.default", "sigmoid.default",
        "tanh.default", "hardswish.default", "hardswish_.default", "hardsigmoid.default", "leaky_relu.default",
        "elu.default", "mish.default", "softplus.default", "hardtanh.default", "hardtanh_.default", "neg.default",
        "abs.default", "exp.default", "sqrt.default", "rsqrt.default", "erf.default", "log.default",
        "clone.default", "alias.default", "detach.default", "contiguous.default", "pow.Tensor_Scalar",
        "to.dtype", "_to_copy.default", "dropout.default",
    ),
)  # fmt: skip
_builtin(
    Elementwise(),
    "function",
    _overloads(
        "add.Tensor", "sub.Tensor", "mul.Tensor", "div.Tensor", "add_.Tensor", "mul_.Tensor", "sub_.Tensor",
        "div_.Tensor", "add.Scalar", "mul.Scalar", "sub.Scalar", "div.Scalar", "rsub.Scalar", "maximum.default",
        "minimum.default",
    ),
)  # fmt: skip
_builtin(
    Pool(),
    "function",
    _overloads(
        "max_pool1d.default", "max_pool2d.default", "max_pool3d.default", "avg_pool1d.default",
        "avg_pool2d.default", "avg_pool3d.default", "adaptive_avg_pool1d.default", "adaptive_avg_pool2d.default",
        "adaptive_avg_pool3d.default",
    ),
)  # fmt: skip
_builtin(Reduce(), "function", _overloads("mean.dim", "sum.dim_IntList", "amax.default", "amin.default"))
_builtin(Flatten(), "function", _overloads("flatten.using_ints"))
_builtin(Reshape(), "function", _overloads("view.default", "reshape.default", "_unsafe_view.default"))
_builtin(Permute(), "function", _overloads("permute.default"))
_builtin(Permute(transpose=True), "function", _overloads("transpose.int", "swapaxes.default"))
_builtin(Cat(), "function", _overloads("cat.default", "concat.default"))

# functional weighted ops: what templatize generates weights for (their modules are Weighted)
for _target, _rule in (
    *((f, WeightedFunction("linear", 1)) for f in (F.linear, torch._C._nn.linear, *_overloads("linear.default"))),
    *(
        (f, WeightedFunction(f"conv{d}d", 1, 6))
        for d, fs in (
            (1, (F.conv1d, torch.conv1d, *_overloads("conv1d.default", "conv1d.padding"))),
            (2, (F.conv2d, torch.conv2d, *_overloads("conv2d.default", "conv2d.padding"))),
            (3, (F.conv3d, torch.conv3d, *_overloads("conv3d.default", "conv3d.padding"))),
        )
        for f in fs
    ),
    *(
        (f, WeightedFunction("matmul", 1))
        for f in (operator.matmul, torch.matmul, torch.mm, torch.bmm, *_overloads("matmul.default", "mm.default"))
    ),
    *((f, WeightedFunction("matmul", 1)) for f in _overloads("bmm.default")),
    *((f, WeightedFunction("matmul", 2)) for f in (torch.addmm, *_overloads("addmm.default"))),
):
    _builtin(_rule, "function", (_target,))

_OPAQUE = Opaque()


def _entry_for(call: str, target: Any) -> OpEntry | None:
    if call == "module":
        for cls in type(target).__mro__:  # the most specific registered class
            entry = _RULES.get(("module", cls))
            if entry is not None:
                return entry
        return None
    try:
        return _RULES.get((call, target))
    except TypeError:  # an unhashable callable
        return None


def rule_for(node: fx.Node, module: nn.Module | None = None) -> OpRule:
    """The rule of a ``call_function``/``call_method`` node, or of ``module`` for a ``call_module`` node; an op
    without an entry is :class:`Opaque`."""
    if node.op == "call_module":
        entry = _entry_for("module", module)
    else:
        entry = _entry_for("method" if node.op == "call_method" else "function", node.target)
        if entry is None and node.op == "call_function":
            for _, matches, rule in _MATCHERS:
                if matches(node.target):
                    return rule
    return entry.rule if entry is not None else _OPAQUE


def op_rules() -> Mapping[tuple[str, Any], OpEntry]:
    """A read-only view of the table growc uses, keyed by ``(call, target)`` with ``call`` one of
    ``"function"``, ``"method"``, ``"module"`` (user registrations included, live)."""
    return MappingProxyType(_RULES)


def _as_rule(rule: OpRule | str) -> OpRule:
    if isinstance(rule, OpRule):
        return rule
    if isinstance(rule, str) and rule in KINDS:
        return KINDS[rule]()
    raise GrowcConfigError(
        f"register_op: rule must be an OpRule or one of {', '.join(repr(k) for k in KINDS)}, got {rule!r}"
    )


class OpHandle:
    """A registration: :meth:`unregister` (or leaving its ``with`` block) takes it back."""

    def __init__(self, key: tuple[str, Any]) -> None:
        self.key = key
        self.entry = _RULES[key]

    def unregister(self) -> None:
        """Remove this registration, restoring the entry it replaced (if any); idempotent. A registration that a
        later one shadows is taken out from under it, so unregistering in any order ends at the built-in."""
        stack = _SHADOWED.get(self.key, [])
        if _RULES.get(self.key) is self.entry:
            if stack:
                _RULES[self.key] = stack.pop()
            else:
                del _RULES[self.key]
        else:
            _SHADOWED[self.key] = stack = [entry for entry in stack if entry is not self.entry]
        if not stack:
            _SHADOWED.pop(self.key, None)

    def __enter__(self) -> OpHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.unregister()


def register_op(
    target: Any, rule: OpRule | str, *, lift: OpRule | str | None = None, replace: bool = False
) -> OpHandle:
    """Teach growc an op: ``target`` (a callable, a tensor method name, or an ``nn.Module`` type) follows ``rule``.

    Args:
        target: a Python function or torch function (``call_function`` nodes; a plain Python function is also
            autowrapped by :func:`growc.trace`, so it becomes one graph node), a tensor method name (``"foo"`` for
            ``x.foo(...)``), or a module type (its instances, and those of subclasses not registered themselves,
            become leaves of :func:`growc.trace`).
        rule: an :class:`OpRule` or a kind name: ``"unary"``, ``"elementwise"``, ``"pool"``, ``"reduce"``,
            ``"flatten"``, ``"reshape"``, ``"permute"``, ``"transpose"``, ``"cat"``, ``"per-channel"``,
            ``"norm"``, ``"layer norm"``, ``"linear"``, ``"conv"``, ``"opaque"``.
        lift: another rule's fuse lift (the channel rule stays ``rule``'s), e.g. ``lift="opaque"`` for the
            exact per-parent fallback.
        replace: allow replacing an existing entry (a built-in one included; it comes back on unregister).

    Returns:
        An :class:`OpHandle`: ``handle.unregister()``, or use it as a context manager.

    Raises:
        GrowcConfigError: a bad target or rule, or ``target`` already registered without ``replace=True``.
    """
    call = _call_of(target)
    chosen = _as_rule(rule)
    if lift is not None:
        chosen = Combined(chosen, _as_rule(lift))
    if call not in chosen.calls:
        raise GrowcConfigError(
            f"register_op: a {chosen.kind!r} rule applies to ops called as {' or '.join(chosen.calls)}, "
            f"not to {_display(target, call)} (a {call})"
        )
    key = (call, target)
    if key in _RULES:
        if not replace:
            raise GrowcConfigError(
                f"register_op: {_display(target, call)} already has a rule ({_RULES[key].rule!r}); pass replace=True"
            )
        _SHADOWED.setdefault(key, []).append(_RULES[key])
    _RULES[key] = OpEntry(target, call, chosen, builtin=False)
    return OpHandle(key)


def unregister_op(target: Any) -> None:
    """Remove the latest registration of ``target`` (restoring the entry it replaced); built-in entries that
    were never replaced cannot be removed."""
    key = (_call_of(target), target)
    entry = _RULES.get(key)
    if entry is None or entry.builtin:
        raise GrowcConfigError(f"unregister_op: {_display(target, key[0])} has no user registration")
    OpHandle(key).unregister()


def is_registered_leaf(module: nn.Module) -> bool:
    """Whether a user registration (not a built-in one) gives ``module`` its rule: :func:`growc.trace` keeps
    such modules as leaves."""
    entry = _entry_for("module", module)
    return entry is not None and not entry.builtin


def wrapped_functions() -> tuple[Callable[..., Any], ...]:
    """The user-registered callables :func:`growc.trace` autowraps (recorded as one ``call_function`` node)."""
    return tuple(e.target for (call, _), e in _RULES.items() if call == "function" and not e.builtin)


def rules_table() -> str:
    """The built-in rules as a markdown table (the one in ``docs/ops.md``), one row per rule and call kind."""
    rows: dict[tuple[str, str], list[str]] = {}
    rules: dict[tuple[str, str], OpRule] = {}
    for (call, _), entry in _RULES.items():
        if entry.builtin:
            key = (repr(entry.rule), call)
            rows.setdefault(key, []).append(entry.name)
            rules[key] = entry.rule
    for name, _, rule in _MATCHERS:
        rows.setdefault((repr(rule), "function"), []).append(name)
        rules[(repr(rule), "function")] = rule
    lines = ["| Kind | Called as | Ops | Channel rule | Fuse lift |", "| --- | --- | --- | --- | --- |"]
    for key, names in rows.items():
        rule = rules[key]
        ops = ", ".join(f"`{n}`" for n in names)
        lines.append(f"| {rule.kind} | {key[1]} | {ops} | {rule.channel_text} | {rule.lift_text} |")
    return "\n".join(lines) + "\n"


_TABLE = re.compile(r"(<!-- rules-table -->\n)(.*?)(<!-- /rules-table -->)", flags=re.S)


def write_docs(path: str | Path) -> bool:
    """Rewrite the table between ``docs/ops.md``'s ``<!-- rules-table -->`` markers from :func:`rules_table`;
    whether the file changed."""
    page = Path(path).read_text()
    new = _TABLE.sub(lambda m: m.group(1) + rules_table() + m.group(3), page)
    if new != page:
        Path(path).write_text(new)
    return new != page
