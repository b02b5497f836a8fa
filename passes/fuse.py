"""The ``fuse`` pass: n parents of one architecture become one wider network (MixtureGrowth).

The rule (``shared/BRIEF.md`` section 3): a *fused tensor* is the parents' corresponding tensors concatenated
along one axis, parent-major; tensors that depend on no weight (the inputs) are shared, not duplicated. Every
op of parent 0's graph is lifted so that, with new blocks at zero, the fused graph computes exactly the
concatenation of the parents' results:

* template-mixed weighted op, fused -> fused: an n x n grid of blocks (:class:`~growc.runtime.layers.GridConv2d`, ...):
  the diagonal is each parent's own bank row, each off-diagonal block a *new* coefficient row over existing
  templates (the row parent's bank: ``cross_templates="own"``, the reference's; or one new row in every
  parent's bank, summed: ``"union"``), initialised by ``cross_init``;
* shared -> fused (stem): blocks stacked along outputs; fused -> graph output (head): blocks side by side along
  inputs and biases summed (``head="sum"``: logits are ``parent_1(x) + ... + parent_n(x)``) or averaged
  (``"mean"``: the logit-average ensemble);
* grouped and depthwise convs: ``groups`` multiplied by n, no cross blocks;
* BatchNorm and InstanceNorm: parameters and running statistics concatenated; GroupNorm with n*G groups;
* elementwise ops, pooling over non-channel axes, dropout: applied to the fused tensor directly (a shared
  operand that spans the channel axis is repeated per parent); ``flatten`` and reductions track the parent axis;
  channel ``cat`` is re-ordered so each parent's segment stays contiguous;
* every other op: the **exact fallback**: the fused operands are split into the n parents' tensors, the op runs
  once per parent (a call_module with each parent's own module) and the results stay per parent until an op
  with a direct lift needs them fused. Fallbacks are listed by name in the report; they are exact, never
  silently wrong.

The graph outputs are merged: a fused tensor reaching an output is summed (or averaged) over parents. Plain
parents are templatized first (``templatize_options``, default: ``layer`` sharing, K = 2, ``exact``).
"""

from __future__ import annotations

import copy
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.node import map_aggregate
from torch.nn.utils import parametrize

from growc.errors import GrowcConfigError, GrowcDataError, GrowcError, GrowcPassError
from growc.fx.analysis import (
    TensorInfo,
    computation_dtype,
    exactness_tolerance,
    max_abs_rel_error,
    nonfinite_tree,
    propagate_shapes,
)
from growc.fx.checks import (
    check_example_inputs,
    check_growth_size,
    check_parents,
    check_seed,
    checked_outputs,
    is_templatized,
)
from growc.fx.pipeline import finish_pass
from growc.fx.trace import attribute_owner, graph_module
from growc.runtime.layers import (
    GENERATED_TYPES,
    GRID_TYPES,
    GridConv1d,
    GridConv2d,
    GridConv3d,
    GridLinear,
    MixedConv1d,
    MixedConv2d,
    MixedConv3d,
    MixedLinear,
    TemplateBank,
    Term,
)
from growc.runtime.markers import strip_step_markers

from .templatize import _templatize_options, templatize

__all__ = ["fuse", "fuse_templated"]

CrossInit = Literal["orthogonal", "zero", "random", "copy"]

_GRID_OF: dict[type[nn.Module], type[nn.Module]] = {
    MixedConv1d: GridConv1d,
    MixedConv2d: GridConv2d,
    MixedConv3d: GridConv3d,
}
_CONV_DIM = {1: MixedConv1d, 2: MixedConv2d, 3: MixedConv3d}


def _plain_conv_type(module: nn.Module) -> type[nn.Module]:
    return _CONV_DIM[module._dim]


def _as_grid(layer: nn.Module) -> list[list[list[Term]]]:
    """A parent's weighted layer as a grid of blocks: a mixed layer is a 1 x 1 grid of its own bank row."""
    if isinstance(layer, GRID_TYPES):
        return layer.blocks
    return [[[(layer.bank, layer.index)]]]


_UNARY_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU, nn.ELU,
    nn.Mish, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)  # fmt: skip
_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
_PER_CHANNEL_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
_UNARY_FUNCTIONS = {
    torch.relu, F.relu, F.relu6, F.gelu, F.silu, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.hardswish,
    F.hardsigmoid, F.leaky_relu, F.elu, F.mish, F.softplus, F.dropout, operator.neg, torch.neg, torch.abs,
    torch.exp, torch.sqrt, torch.square,
}  # fmt: skip
_UNARY_METHODS = {"relu", "sigmoid", "tanh", "neg", "abs", "exp", "sqrt", "square", "contiguous", "clone"}
_BINARY_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul, torch.div,
    operator.iadd, operator.imul,
}  # fmt: skip
_BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "mul_"}
_POOL_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.adaptive_max_pool3d, torch.max_pool1d, torch.max_pool2d, torch.avg_pool1d, torch.adaptive_avg_pool1d,
}  # fmt: skip
_REDUCE = {torch.mean: "mean", torch.sum: "sum"}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}


@dataclass
class _Value:
    """A value of the fused graph: ``S`` shared by all parents, ``F`` fused along ``axis``, ``P`` one per parent."""

    kind: str
    node: Any = None
    axis: int = -1
    parts: list[Any] = field(default_factory=list)
    summed: bool = False  # an S value that is already the parents' sum (a side-by-side head's output)


def _tensor_info(node: fx.Node) -> TensorInfo | None:
    info = node.meta.get("growc_shape")
    return info if isinstance(info, TensorInfo) else None


def _has_tensor(info: Any) -> bool:
    if isinstance(info, TensorInfo):
        return True
    if isinstance(info, (list, tuple)):
        return any(_has_tensor(i) for i in info)
    if isinstance(info, dict):
        return any(_has_tensor(i) for i in info.values())
    return False


class _Fuser:
    def __init__(
        self,
        parents: list[fx.GraphModule],
        *,
        cross_init: str,
        cross_scale: float,
        cross_templates: str,
        head: str,
        generator: torch.Generator,
    ) -> None:
        self.parents = parents
        self.n = len(parents)
        self.cross_init = cross_init
        self.cross_scale = cross_scale
        self.cross_templates = cross_templates
        self.head = head
        self.generator = generator
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.env: dict[fx.Node, _Value] = {}
        self.fallbacks: list[dict[str, str]] = []
        self.lifts: list[dict[str, Any]] = []
        self.banks = nn.ModuleDict()
        self.per_parent = nn.ModuleDict({f"p{i}": nn.Module() for i in range(self.n)})
        self.bank_names: dict[int, str] = {}
        self.weighted: dict[tuple[str, str], str] = {}  # (parent target, lift) -> installed fused module
        self.cross_by_block: dict[tuple[int, int], str] = {}  # per (row parent, column parent) cross init
        self.interior_scale = 1.0  # net2net widening divides the replicated inputs' weights by n
        self.copy_noise = 0.01
        self.biases: dict[str, nn.Parameter] = {}
        for i, parent in enumerate(parents):
            for name, bank in getattr(parent, "growc_banks", nn.ModuleDict()).items():
                if id(bank) in self.bank_names:  # parents sharing templates (single-parent widening)
                    continue
                key = f"p{i}_{name}"
                self.banks[key] = bank
                self.bank_names[id(bank)] = key
        self.root.add_module("growc_banks", self.banks)
        self.root.add_module("growc_parents", self.per_parent)
        self.nodes = [list(p.graph.nodes) for p in parents]

    # ---- conversions between value kinds -------------------------------------------------------------------

    def parts(self, value: _Value) -> list[Any]:
        if value.kind == "S":
            return [value.node] * self.n
        if value.kind == "P":
            return value.parts
        if not value.parts:
            chunks = self.graph.call_function(torch.chunk, (value.node, self.n), {"dim": value.axis})
            # contiguous: a parent's op may depend on strides (``view``), and a chunk is a strided view
            value.parts = [
                self.graph.call_method("contiguous", (self.graph.call_function(operator.getitem, (chunks, i)),))
                for i in range(self.n)
            ]
        return value.parts

    def fused(self, value: _Value, axis: int) -> fx.Node:
        if value.kind == "F" and value.axis == axis:
            return value.node
        return self.graph.call_function(torch.cat, (self.parts(value),), {"dim": axis})

    # ---- module registration -------------------------------------------------------------------------------

    def add_fused_module(self, target: str, module: nn.Module) -> str:
        """Install ``module`` at the parents' path ``target`` (the fused model keeps the parents' layout)."""
        owner, attr = attribute_owner(self.root, target, create=True)
        if attr in owner._modules:  # a module called several times: one lifted module
            return target
        owner.add_module(attr, module)
        return target

    def parent_module_target(self, i: int, target: str) -> str:
        container = self.per_parent[f"p{i}"]
        name = target.replace(".", "_")
        if name not in container._modules:
            container.add_module(name, self.parents[i].get_submodule(target))
        return f"growc_parents.p{i}.{name}"

    def parent_attr_target(self, i: int, target: str) -> str:
        container = self.per_parent[f"p{i}"]
        name = "attr_" + target.replace(".", "_")
        if not hasattr(container, name):
            value = getattr(*attribute_owner(self.parents[i], target))
            if isinstance(value, nn.Parameter):
                container.register_parameter(name, value)
            elif isinstance(value, Tensor):
                container.register_buffer(name, value)
            else:
                setattr(container, name, value)
        return f"growc_parents.p{i}.{name}"

    # ---- the walk ------------------------------------------------------------------------------------------

    def run(self) -> fx.GraphModule:
        for index, node in enumerate(self.nodes[0]):
            self.index = index
            handler = getattr(self, f"op_{node.op}")
            value = self.env[node] = handler(node)
            for new in [value.node] if value.kind != "P" else value.parts:
                if isinstance(new, fx.Node):
                    new.meta.setdefault("growc", {}).setdefault("fuse", {}).setdefault("source", node.name)
                    new.meta["growc"]["fuse"].setdefault("kind", value.kind if value.kind != "F" else f"F{value.axis}")
        return graph_module(self.root, self.graph, "Fused")

    def op_placeholder(self, node: fx.Node) -> _Value:
        new = self.graph.placeholder(str(node.target))
        new.args = node.args  # a default value, if any
        new.meta.update(node.meta)
        return _Value("S", new)

    def op_get_attr(self, node: fx.Node) -> _Value:
        # each parent's own node at this position: fx names captured tensors by a counter (_tensor_constantN)
        targets = [self.parent_attr_target(i, str(self.nodes[i][self.index].target)) for i in range(self.n)]
        return self.per_parent_result(node, [self.graph.get_attr(t) for t in targets])

    def op_output(self, node: fx.Node) -> _Value:
        def merge(arg: Any) -> Any:
            if not isinstance(arg, fx.Node):
                return arg
            value = self.env[arg]
            if not _has_tensor(arg.meta.get("growc_shape")):
                return self.parts(value)[0]
            if value.kind == "S":
                if value.summed or self.head != "sum":  # a head is already the sum; a mean of equals is the value
                    return value.node
                return self.graph.call_function(operator.mul, (value.node, self.n))  # n equal parents' outputs
            parts = self.parts(value)
            total = parts[0]
            if self.head == "first":
                return total
            for part in parts[1:]:
                total = self.graph.call_function(operator.add, (total, part))
            if self.head == "mean":
                total = self.graph.call_function(operator.truediv, (total, self.n))
            return total

        return _Value("S", self.graph.output(map_aggregate(node.args[0], merge)))

    def op_call_module(self, node: fx.Node) -> _Value:
        module = self.parents[0].get_submodule(str(node.target))
        if isinstance(module, (*_GRID_OF, MixedLinear, *GRID_TYPES)):
            if len(node.args) != 1 or node.kwargs:  # called with a keyword: the exact fallback
                return self.fallback(node)
            return self.lift_weighted(node, module)
        args = [a for a in node.args if isinstance(a, fx.Node)]
        if not _has_state(module) and all(self.env[a].kind == "S" for a in node.all_input_nodes):
            target = self.add_fused_module(str(node.target), copy.deepcopy(module))
            args_, kwargs_ = self.map_args(node, lambda v: v.node)
            return _Value("S", self.graph.call_module(target, args_, kwargs_))
        first = self.env[args[0]] if args else None
        only_first_is_tensor = len(args) == 1 and not node.kwargs
        if first is not None and first.kind != "S" and only_first_is_tensor:
            info = _tensor_info(args[0])
            rank = len(info.shape) if info else 0
            if isinstance(module, _UNARY_MODULES) and first.kind == "F":
                return self.direct_module(node, module, first.node, first.axis)
            if isinstance(module, _POOL_MODULES) and rank >= 3 and not getattr(module, "return_indices", False):
                return self.direct_module(node, module, self.fused(first, 1), 1)
            if isinstance(module, nn.Flatten) and first.kind == "F":
                axis = self.flatten_axis(first.axis, module.start_dim, module.end_dim, rank)
                if axis is not None:
                    return self.direct_module(node, module, first.node, axis)
            batched = rank >= 3 if isinstance(module, nn.modules.instancenorm._InstanceNorm) else rank >= 2
            if isinstance(module, (*_PER_CHANNEL_NORMS, nn.GroupNorm)) and batched:
                lifted = self.lift_norm(node, module)
                if lifted is not None:
                    target = self.add_fused_module(str(node.target), lifted)
                    new = self.graph.call_module(target, (self.fused(first, 1),))
                    self.lifts.append(
                        {"node": node.name, "target": str(node.target), "lift": f"{type(module).__name__} concatenated"}
                    )
                    return _Value("F", new, 1)
        return self.fallback(node)

    def op_call_function(self, node: fx.Node) -> _Value:
        return self.lift_function(node, node.target, method=False)

    def op_call_method(self, node: fx.Node) -> _Value:
        return self.lift_function(node, node.target, method=True)

    # ---- direct lifts --------------------------------------------------------------------------------------

    def direct_module(self, node: fx.Node, module: nn.Module, arg: fx.Node, axis: int) -> _Value:
        target = self.add_fused_module(str(node.target), copy.deepcopy(module))
        return _Value("F", self.graph.call_module(target, (arg,)), axis)

    def map_args(self, node: fx.Node, convert: Callable[[_Value], Any]) -> tuple[Any, Any]:
        def one(arg: Any) -> Any:
            return convert(self.env[arg]) if isinstance(arg, fx.Node) else arg

        return map_aggregate(node.args, one), map_aggregate(node.kwargs, one)

    def emit_like(self, node: fx.Node, args: Any, kwargs: Any) -> fx.Node:
        return self.graph.create_node(node.op, node.target, args, kwargs)

    def lift_function(self, node: fx.Node, target: Any, *, method: bool) -> _Value:
        tensor_args = [a for a in node.all_input_nodes if _has_tensor(a.meta.get("growc_shape"))]
        values = [self.env[a] for a in tensor_args]
        if all(v.kind == "S" for v in values) and not any(self.env[a].kind != "S" for a in node.all_input_nodes):
            args, kwargs = self.map_args(node, lambda v: v.node)
            return _Value("S", self.emit_like(node, args, kwargs))
        info = _tensor_info(node)
        fused_values = [v for v in values if v.kind == "F"]
        reshape = (method and target in ("view", "reshape")) or (not method and target is torch.reshape)
        if reshape and info is not None and len(values) == 1 and fused_values:  # sizes may be shared nodes
            lifted = self.lift_reshape(node, values[0], _tensor_info(tensor_args[0]), info)
            if lifted is not None:
                return lifted
        if info is not None and fused_values and len(node.all_input_nodes) == len(tensor_args):
            axis = fused_values[0].axis
            rank = len(info.shape)
            unary = (
                (target in _UNARY_METHODS) if method else (target in _UNARY_FUNCTIONS or _is_stochastic_depth(target))
            )
            binary = (target in _BINARY_METHODS) if method else (target in _BINARY_FUNCTIONS)
            if unary and len(values) == 1:
                args, kwargs = self.map_args(node, lambda v: v.node)
                return _Value("F", self.emit_like(node, args, kwargs), axis)
            if binary and len(values) in (1, 2):
                first_fused = next(a for a in tensor_args if self.env[a].kind == "F")
                out_axis = self.env[first_fused].axis + rank - len(_tensor_info(first_fused).shape)
                if all(self.broadcast_ok(a, out_axis, rank) for a in tensor_args):
                    return self.lift_binary(node, out_axis, rank)
            if not method and target in _POOL_FUNCTIONS and len(values) == 1 and rank >= 3:
                args, kwargs = self.map_args(node, lambda v: self.fused(v, 1))
                return _Value("F", self.emit_like(node, args, kwargs), 1)
            if (method and target == "flatten") or (not method and target is torch.flatten):
                lifted = self.lift_flatten(node, values[0], rank_in=len(_tensor_info(tensor_args[0]).shape))
                if lifted is not None:
                    return lifted
            moved = _moved_axis(node, target, method, axis, rank)
            if moved is not None and len(values) == 1:
                args, kwargs = self.map_args(node, lambda v: v.node)
                return _Value("F", self.emit_like(node, args, kwargs), moved)
            if (not method and target in (torch.cat, torch.concat)) and len(node.args) >= 1:
                return self.lift_cat(node, axis)
            if (method and target in _REDUCE_METHODS) or (not method and target in _REDUCE):
                lifted = self.lift_reduce(node, values[0], len(_tensor_info(tensor_args[0]).shape))
                if lifted is not None:
                    return lifted
        return self.fallback(node)

    def broadcast_ok(self, arg: fx.Node, axis: int, rank: int) -> bool:
        """A per-parent operand that broadcasts over the parent axis (size 1, or no such axis) cannot be
        concatenated along it: such ops take the exact fallback."""
        info = _tensor_info(arg)
        if info is None or self.env[arg].kind == "S":
            return True
        aligned = axis - (rank - len(info.shape))
        return aligned >= 0 and info.shape[aligned] != 1

    def lift_binary(self, node: fx.Node, axis: int, rank: int) -> _Value:
        """Elementwise with broadcasting: every operand fused along the output's ``axis`` (aligned from the
        right), except a shared operand that broadcasts over that axis (a ``[B, 1, H, W]`` mask, a scalar)."""

        def convert(value: _Value, arg: fx.Node) -> fx.Node:
            info = _tensor_info(arg)
            if info is None:  # a Python number
                return value.node
            aligned = axis - (rank - len(info.shape))
            if value.kind == "S" and (aligned < 0 or info.shape[aligned] == 1):
                return value.node
            return self.fused(value, aligned)

        def one(arg: Any) -> Any:
            return convert(self.env[arg], arg) if isinstance(arg, fx.Node) else arg

        args = map_aggregate(node.args, one)
        kwargs = map_aggregate(node.kwargs, one)
        return _Value("F", self.emit_like(node, args, kwargs), axis)

    @staticmethod
    def flatten_axis(axis: int, start: int, end: int, rank: int) -> int | None:
        start, end = start % rank, end % rank
        if axis < start:
            return axis
        if axis == start:
            return start
        if axis > end:
            return axis - (end - start)
        return None  # the parent axis is inside the flattened range but not outermost

    def lift_flatten(self, node: fx.Node, value: _Value, rank_in: int) -> _Value | None:
        if value.kind != "F":
            return None
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        if not isinstance(start, int) or not isinstance(end, int):
            return None
        axis = self.flatten_axis(value.axis, start, end, rank_in)
        if axis is None:
            return None
        args, kwargs = self.map_args(node, lambda v: v.node)
        return _Value("F", self.emit_like(node, args, kwargs), axis)

    def lift_reshape(self, node: fx.Node, value: _Value, info_in: TensorInfo, info_out: TensorInfo) -> _Value | None:
        """``view``/``reshape`` keeps the parents contiguous when the dims before the parent axis keep their
        product: the fused target shape is the parents' with that axis' size times n (or ``-1`` left to infer)."""
        if value.kind != "F":
            return None
        shape_in, shape_out = info_in.shape, info_out.shape
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
            entry = self.env[entry].node if isinstance(entry, fx.Node) else entry
            if isinstance(entry, fx.Node) and self.env_kind(shape_args[i]) != "S":
                return None
            if i == axis and entry != -1:
                entry = (
                    entry * self.n
                    if isinstance(entry, int)
                    else self.graph.call_function(operator.mul, (entry, self.n))
                )
            entries.append(entry)
        new = self.graph.call_function(torch.reshape, (value.node, tuple(entries)))
        return _Value("F", new, axis)

    def env_kind(self, arg: Any) -> str:
        return self.env[arg].kind if isinstance(arg, fx.Node) else "S"

    def lift_reduce(self, node: fx.Node, value: _Value, rank_in: int) -> _Value | None:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if value.kind != "F" or dims is None or not isinstance(keepdim, bool):
            return None
        dims = [dims] if isinstance(dims, int) else list(dims)
        if not all(isinstance(d, int) for d in dims):
            return None
        dims = [d % rank_in for d in dims]
        if value.axis in dims:
            return None
        axis = value.axis if keepdim else value.axis - sum(d < value.axis for d in dims)
        args, kwargs = self.map_args(node, lambda v: v.node)
        return _Value("F", self.emit_like(node, args, kwargs), axis)

    def lift_cat(self, node: fx.Node, axis: int) -> _Value:
        inputs = node.args[0]
        info = _tensor_info(node)
        rank = len(info.shape)
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        dim = dim % rank
        values = [self.env[a] for a in inputs]
        if dim != axis:
            merged = self.graph.call_function(torch.cat, ([self.fused(v, axis) for v in values],), {"dim": dim})
            return _Value("F", merged, axis)
        ordered = [part for i in range(self.n) for part in (self.parts(v)[i] for v in values)]
        return _Value("F", self.graph.call_function(torch.cat, (ordered,), {"dim": axis}), axis)

    # ---- normalization -------------------------------------------------------------------------------------

    def lift_norm(self, node: fx.Node, module: nn.Module) -> nn.Module | None:
        modules = [p.get_submodule(str(node.target)) for p in self.parents]
        config = [(m.eps, getattr(m, "momentum", None), getattr(m, "affine", None)) for m in modules]
        if any(c != config[0] for c in config):
            return None
        if isinstance(module, nn.GroupNorm):
            lifted = nn.GroupNorm(module.num_groups * self.n, module.num_channels * self.n, module.eps, module.affine)
        else:
            lifted = copy.deepcopy(module)
            lifted.num_features = module.num_features * self.n
        with torch.no_grad():
            for name, tensor in list(module.named_parameters(recurse=False)) + list(
                module.named_buffers(recurse=False)
            ):
                if tensor is None:
                    continue
                stack = [getattr(m, name) for m in modules]
                if name == "num_batches_tracked":
                    value = max(stack, key=lambda t: int(t))
                    lifted.register_buffer(name, value.detach().clone())
                    continue
                joined = torch.cat([t.detach() for t in stack])
                if isinstance(tensor, nn.Parameter):
                    setattr(lifted, name, nn.Parameter(joined, requires_grad=tensor.requires_grad))
                else:
                    lifted.register_buffer(name, joined)
        lifted.train(module.training)
        return lifted

    # ---- weighted ops --------------------------------------------------------------------------------------

    def new_row(self, bank: TemplateBank, copy_row: int, init: str) -> tuple[int, dict[str, Any]]:
        existing = bank.coefficients.detach().to("cpu", torch.float64)
        k = existing.shape[1]
        info: dict[str, Any] = {"bank": self.bank_names[id(bank)], "init": init}
        if init == "zero":
            row = torch.zeros(k, dtype=torch.float64)
        elif init == "random":
            row = (torch.rand(k, generator=self.generator, dtype=torch.float64) * 2 - 1) * self.cross_scale
        elif init == "copy":
            noise = torch.randn(k, generator=self.generator, dtype=torch.float64) * self.copy_noise
            row = existing[copy_row] * self.cross_scale + noise
        else:  # orthogonal: the last right-singular vector of every row the bank already has
            _, s, vh = _svd("fuse(cross_init='orthogonal')", existing)
            rank = int((s > s.max() * 1e-10).sum()) if s.numel() else 0
            row = vh[-1] * self.cross_scale
            info["orthogonal"] = rank < k
            if rank >= k:
                info["note"] = (
                    f"K={k} templates and {existing.shape[0]} rows of rank {rank}: no direction is orthogonal to "
                    "all of them; used the least-aligned one (the last right-singular vector)"
                )
        (index,) = bank.add_rows(row[None])
        info["row"] = index
        return index, info

    def lift_weighted(self, node: fx.Node, module: nn.Module) -> _Value:
        """A template-mixed layer (or an already grown grid, for multi-step growth) becomes a grid of grids."""
        target = str(node.target)
        layers = [p.get_submodule(target) for p in self.parents]
        (arg,) = node.args
        value = self.env[arg]
        linear = isinstance(module, (MixedLinear, GridLinear))
        axis = (len(_tensor_info(arg).shape) - 1) if linear else 1
        groups = 1 if linear else module.groups
        n = self.n
        grids = [_as_grid(layer) for layer in layers]
        users = list(node.users)
        is_head = value.kind != "S" and len(users) == 1 and users[0].op == "output" and groups == 1
        kind = "stem" if value.kind == "S" else "head" if is_head else "grouped" if groups != 1 else "grid"
        if kind == "stem" and groups != 1:
            return self.fallback(node)
        out_axis = (len(_tensor_info(node).shape) - 1) if linear else 1
        if (target, kind) in self.weighted:  # a module called again with the same lift: the same fused module
            new = self.graph.call_module(self.weighted[(target, kind)], (self.weighted_input(value, kind, axis),))
            return _Value("S", new, summed=True) if kind == "head" else _Value("F", new, out_axis)
        report: dict[str, Any] = {"node": node.name, "target": target, "lift": kind}
        parent_scale = getattr(module, "scale", 1.0)
        bias_params = [layer.bias for layer in layers]
        in_size, out_size, new_groups, scale = n, n, groups, parent_scale
        if kind in ("stem", "grouped"):  # parents stacked along outputs, no cross blocks
            blocks = [row for grid in grids for row in grid]
            bias = self.joined_bias(target, bias_params)
            in_size = 1 if kind == "stem" else n
            new_groups = groups * (n if kind == "grouped" else 1)
        elif kind == "head":  # parents side by side along inputs
            cross: list[dict[str, Any]] = []
            row: list[list[Term]] = list(grids[0][0])
            for j in range(1, n):
                if self.head == "first":  # only parent 0 reads out: the others' columns are new zero rows
                    row += [
                        self.cross_block(grids[j][0][c], j, 0, "zero", cross, [0, j]) for c in range(len(grids[j][0]))
                    ]
                else:
                    row += grids[j][0]
            blocks = [row]
            report["cross"] = cross
            bias = self.summed_bias(bias_params)
            out_size = 1
            scale = parent_scale / n if self.head == "mean" else parent_scale
        else:  # interior: the parents on the diagonal, new coefficient rows off it
            cross = []
            blocks = []
            for i in range(n):
                for r, parent_row in enumerate(grids[i]):
                    row = []
                    for j in range(n):
                        if i == j:
                            row += parent_row
                            continue
                        init = self.cross_by_block.get((i, j), self.cross_init)
                        for c in range(len(parent_row)):
                            where = [i * len(grids[i]) + r, j * len(parent_row) + c]
                            sources = (
                                [grids[p][r][c] for p in range(n)]
                                if self.cross_templates == "union"
                                else [parent_row[c]]
                            )
                            terms: list[Term] = []
                            for source in sources:
                                terms += self.cross_block(source, i, j, init, cross, where)
                            row.append(terms)
                    blocks.append(row)
            report["cross"] = cross
            bias = self.joined_bias(target, bias_params)
            scale = parent_scale * self.interior_scale
        if linear:
            grid = GridLinear(
                blocks,
                bias,
                in_features=module.in_features * in_size,
                out_features=module.out_features * out_size,
                scale=scale,
            )
        else:
            grid = _GRID_OF[_plain_conv_type(module)](
                blocks,
                bias,
                module,
                in_channels=module.in_channels * in_size,
                out_channels=module.out_channels * out_size,
                groups=new_groups,
                scale=scale,
            )
        grid.train(module.training)
        installed = target if not any(t == target for t, _ in self.weighted) else f"{target}_{kind}"
        self.weighted[(target, kind)] = self.add_fused_module(installed, grid)
        new = self.graph.call_module(self.weighted[(target, kind)], (self.weighted_input(value, kind, axis),))
        new.meta["growc"] = {"fuse": {"lift": kind}}
        report["blocks"] = [[[f"{self.bank_names[id(b)]}[{r}]" for b, r in terms] for terms in row] for row in blocks]
        self.lifts.append(report)
        if kind == "head":
            return _Value("S", new, summed=True)
        return _Value("F", new, out_axis)

    def weighted_input(self, value: _Value, kind: str, axis: int) -> fx.Node:
        return value.node if kind == "stem" else self.fused(value, axis)

    def cross_block(
        self, source: list[Term], i: int, j: int, init: str, report: list[dict[str, Any]], where: list[int]
    ) -> list[Term]:
        """A new coefficient row over the templates of ``source``'s first term (the row parent's bank)."""
        bank, row = source[0]
        index, info = self.new_row(bank, row, init)
        report.append({"block": where, **info})
        return [(bank, index)]

    def joined_bias(self, target: str, biases: list[nn.Parameter | None]) -> nn.Parameter | None:
        """The parents' biases concatenated: one Parameter per parent module, however often it is lifted."""
        if biases[0] is None:
            return None
        if target not in self.biases:
            joined = torch.cat([b.detach() for b in biases])
            self.biases[target] = nn.Parameter(joined, requires_grad=biases[0].requires_grad)
        return self.biases[target]

    def summed_bias(self, biases: list[nn.Parameter | None]) -> nn.Parameter | None:
        if biases[0] is None:
            return None
        if self.head == "first":  # only parent 0 reads out
            return nn.Parameter(biases[0].detach().clone(), requires_grad=biases[0].requires_grad)
        total = torch.stack([b.detach() for b in biases]).sum(0)
        if self.head == "mean":
            total = total / self.n
        return nn.Parameter(total, requires_grad=biases[0].requires_grad)

    # ---- the exact fallback --------------------------------------------------------------------------------

    def fallback(self, node: fx.Node) -> _Value:
        """Split the fused operands into the parents' tensors, run the op once per parent, keep per parent."""
        outputs = []
        for i in range(self.n):
            args, kwargs = self.map_args(node, lambda v, i=i: self.parts(v)[i])
            target = self.parent_module_target(i, str(node.target)) if node.op == "call_module" else node.target
            outputs.append(self.graph.create_node(node.op, target, args, kwargs, name=f"{node.name}_p{i}"))
        name = getattr(node.target, "__name__", str(node.target))
        if node.op == "call_module":
            name = type(self.parents[0].get_submodule(str(node.target))).__name__
        self.fallbacks.append({"node": node.name, "op": node.op, "target": name})
        result = self.per_parent_result(node, outputs)
        module = self.parents[0].get_submodule(str(node.target)) if node.op == "call_module" else None
        inplace = _is_inplace(node) or getattr(module, "inplace", False) is True
        if inplace and node.args and isinstance(node.args[0], fx.Node):
            # the parents' op wrote into its first operand, but ours wrote into per-parent copies: from now on
            # that operand *is* the per-parent result
            self.env[node.args[0]] = result
        return result

    def per_parent_result(self, node: fx.Node, outputs: list[fx.Node]) -> _Value:
        if not _has_tensor(node.meta.get("growc_shape")):
            return _Value("S", outputs[0])  # parents share shapes, so a non-tensor result is the same for all
        return _Value("P", parts=outputs)


def _svd(where: str, coefficients: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The full SVD of a bank's coefficient rows (float64, CPU), its failures a :class:`GrowcPassError`."""
    try:
        return torch.linalg.svd(coefficients, full_matrices=True)
    except RuntimeError as error:  # torch.linalg.LinAlgError included
        raise GrowcPassError(
            f"{where}: the SVD of a bank's {tuple(coefficients.shape)} coefficients failed: "
            f"{str(error).splitlines()[0]}"
        ) from error


def _moved_axis(node: fx.Node, target: Any, method: bool, axis: int, rank: int) -> int | None:
    """Where ``axis`` goes under a ``permute``/``transpose``/``swapaxes`` node (None for other ops)."""
    name = target if method else getattr(target, "__name__", "")
    if name == "permute" and (method or target is torch.permute):
        if node.kwargs or len(node.args) < 2:
            return None
        dims = node.args[1:] if method else node.args[1]
        if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
            dims = dims[0]
        if len(dims) == rank and all(isinstance(d, int) for d in dims):
            return [d % rank for d in dims].index(axis)
    if name in ("transpose", "swapaxes") and (method or target in (torch.transpose, torch.swapaxes)):
        pair = node.args[1:3]
        if len(pair) == 2 and all(isinstance(d, int) for d in pair):
            a, b = (d % rank for d in pair)
            return b if axis == a else a if axis == b else axis
    return None


def _has_state(module: nn.Module) -> bool:
    """Whether ``module``'s output depends on per-parent state: parameters, buffers, or growc's generated weights
    (a mixed layer references its bank without owning it, so ``parameters()`` does not see it)."""
    return any(True for _ in (*module.parameters(), *module.buffers())) or any(
        isinstance(m, GENERATED_TYPES) or parametrize.is_parametrized(m) for m in module.modules()
    )


def _is_inplace(node: fx.Node) -> bool:
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    return (
        (isinstance(name, str) and name.endswith("_") and not name.endswith("__"))
        or node.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv)
        or node.kwargs.get("inplace") is True
    )


def _is_stochastic_depth(target: Any) -> bool:
    return getattr(target, "__name__", "") == "stochastic_depth" and "torchvision" in getattr(target, "__module__", "")


def _signature(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """Each node's op and target, with the module's type and hyperparameters (``extra_repr``) and the node's
    constant arguments: parents must agree on all of it, not only on shapes."""

    def constants(node: fx.Node) -> str:
        return repr(map_aggregate((node.args, node.kwargs), lambda a: "*" if isinstance(a, fx.Node) else a))

    out = []
    for n in gm.graph.nodes:
        if n.op == "call_module":
            module = gm.get_submodule(str(n.target))
            config = re.sub(r", row=\d+", "", module.extra_repr())  # which bank row a mixed layer reads may differ
            out.append((n.op, f"{n.target} ({type(module).__name__}: {config}) {constants(n)}"))
        elif n.op == "get_attr":
            value = getattr(gm.get_submodule(str(n.target).rpartition(".")[0]), str(n.target).rpartition(".")[2])
            name = str(n.target)
            if name.rpartition(".")[2].startswith("_tensor_constant"):  # numbered by the tracer: compare contents
                name = (
                    f"tensor constant {tuple(value.shape)} {value.dtype}" if isinstance(value, Tensor) else "constant"
                )
            out.append((n.op, name))
        else:
            out.append((n.op, f"{n.target} {constants(n)}"))
    return out


def _state_shapes(gm: fx.GraphModule) -> dict[str, tuple[int, ...]]:
    """State-dict shapes, less banks (compared through the layers that use them) and tracer-numbered constants
    (compared by position in :func:`_signature`)."""
    return {
        k: tuple(v.shape)
        for k, v in gm.state_dict().items()
        if "growc_banks" not in k and not k.rpartition(".")[2].startswith("_tensor_constant")
    }


def _check_same_architecture(parents: list[fx.GraphModule]) -> None:
    first = parents[0]
    reference = _signature(first)
    shapes = _state_shapes(first)
    for i, parent in enumerate(parents[1:], start=1):
        nodes = _signature(parent)
        for position, (a, b) in enumerate(zip(reference, nodes, strict=False)):
            if a != b:
                raise GrowcError(
                    f"parent {i} differs from parent 0 at node #{position}: {b[0]} {b[1]!r} vs {a[0]} {a[1]!r}; "
                    "fuse needs parents of one architecture"
                )
        if len(nodes) != len(reference):
            raise GrowcError(f"parent {i} has {len(nodes)} graph nodes, parent 0 has {len(reference)}")
        other = _state_shapes(parent)
        if other.keys() != shapes.keys():
            extra = sorted(other.keys() ^ shapes.keys())[:3]
            raise GrowcError(f"parent {i} and parent 0 hold different parameters and buffers (e.g. {extra})")
        for key, shape in shapes.items():
            if other.get(key) != shape:
                raise GrowcError(f"parent {i}'s '{key}' has shape {other.get(key)}, parent 0's {shape}")
        layout, other_layout = _state_layout(first), _state_layout(parent)
        for key, (dtype, device) in layout.items():
            if key in other_layout and other_layout[key] != (dtype, device):
                raise GrowcError(
                    f"parent {i}'s '{key}' is {other_layout[key][0]} on {other_layout[key][1]}, parent 0's {dtype} on "
                    f"{device}: fuse needs parents of one dtype on one device"
                )


def _state_layout(gm: nn.Module) -> dict[str, tuple[str, str]]:
    """Each state-dict entry's dtype and device (banks included: parents may hold differently named ones)."""
    return {
        k: (str(v.dtype).removeprefix("torch."), str(v.device))
        for k, v in gm.state_dict().items()
        if not k.rpartition(".")[2].startswith("_tensor_constant")
    }


def fuse(
    parents: Sequence[nn.Module],
    example_inputs: Sequence[Any],
    *,
    cross_init: CrossInit = "orthogonal",
    cross_scale: float = 1.0,
    cross_templates: Literal["own", "union"] = "own",
    head: Literal["sum", "mean"] = "sum",
    seed: int = 0,
    templatize_options: dict[str, Any] | None = None,
    verify: bool = True,
) -> fx.GraphModule:
    """Fuse n >= 2 parents of one architecture into one wider GraphModule (see the module docstring).

    Args:
        parents: plain models (templatized first with ``templatize_options``) or templatized GraphModules;
            never modified.
        example_inputs: positional inputs for shape analysis and the output check.
        cross_init: new off-diagonal blocks: ``"orthogonal"`` (the last right-singular vector of the bank's
            existing coefficients, times ``cross_scale``; the report says when no orthogonal direction exists),
            ``"zero"`` (function-preserving), ``"random"`` (uniform in [-1, 1] times ``cross_scale``) or
            ``"copy"`` (the row parent's own coefficients times ``cross_scale``, plus N(0, 0.01²) noise).
        cross_templates: ``"own"`` (a new row in the row parent's bank) or ``"union"`` (one in every parent's
            bank, summed).
        head: ``"sum"`` (logits add up) or ``"mean"`` (they average).
        seed: seeds random cross inits and the parents' templatization.
        verify: compare the fused model with the parents' sum (or mean) on ``example_inputs`` in eval mode.

    Returns:
        The fused GraphModule; ``gm.meta["growc"]["fuse"]`` holds the report (lifts with their block layout,
        cross blocks with their init, fallbacks by node and op, parameter counts, output check).
    """
    parents = list(parents)
    if len(parents) < 2:
        raise GrowcConfigError(f"fuse needs at least 2 parents, got {len(parents)}")
    for i, parent in enumerate(parents):
        if not isinstance(parent, nn.Module):
            raise GrowcConfigError(f"fuse: parent {i} is not an nn.Module but {type(parent).__name__}")
    if cross_init not in ("orthogonal", "zero", "random", "copy"):
        raise GrowcConfigError(f"cross_init must be 'orthogonal', 'zero', 'random' or 'copy', got {cross_init!r}")
    if cross_templates not in ("own", "union"):
        raise GrowcConfigError(f"cross_templates must be 'own' or 'union', got {cross_templates!r}")
    if head not in ("sum", "mean"):
        raise GrowcConfigError(f"head must be 'sum' or 'mean', got {head!r}")
    if isinstance(cross_scale, bool) or not isinstance(cross_scale, (int, float)) or not math.isfinite(cross_scale):
        raise GrowcConfigError(f"cross_scale must be a finite number, got {cross_scale!r}")
    seed = check_seed(seed, span=len(parents))
    options = _templatize_options("fuse", templatize_options)
    example_inputs = check_example_inputs("fuse", example_inputs)
    check_parents("fuse", parents)
    n = len(parents)
    check_growth_size("fuse", f"{n} parents", n * n, parents[0])
    templated = [
        copy.deepcopy(p)
        if is_templatized(p)
        else templatize(p, example_inputs, seed=seed + i, verify=verify, **options)
        for i, p in enumerate(parents)
    ]
    parent_params = [sum(p.numel() for p in t.parameters()) for t in templated]
    gm, fuser = fuse_templated(
        templated,
        example_inputs,
        cross_init=cross_init,
        cross_scale=float(cross_scale),
        cross_templates=cross_templates,
        head=head,
        seed=seed,
    )
    report: dict[str, Any] = {
        "parents": len(parents),
        "cross_init": cross_init,
        "cross_scale": cross_scale,
        "cross_templates": cross_templates,
        "head": head,
        "seed": seed,
        "templatize": options if not all(is_templatized(p) for p in parents) else None,
        "lifts": fuser.lifts,
        "fallbacks": fuser.fallbacks,
        "params": {"parents": parent_params, "fused": sum(p.numel() for p in gm.parameters())},
    }
    finish_pass(gm, "fuse", report)
    if verify:
        exact = cross_init == "zero"
        report["output"] = output = _verify(templated, gm, example_inputs, head, where="fuse", exact=exact)
        if exact and "note" not in output and not output["max_rel"] <= output["tolerance"]:
            raise GrowcPassError(
                f"fuse(cross_init='zero') is not the parents' {head}: max rel error {output['max_rel']:.3e} > "
                f"{output['tolerance']:.3g}. Please report this model; the ops involved can be made leaves "
                "(templatize_options={'leaf_modules': [...]}) to take the per-parent fallback."
            )
    return gm


def fuse_templated(
    templated: list[fx.GraphModule],
    example_inputs: tuple[Any, ...],
    *,
    cross_init: str,
    cross_scale: float,
    cross_templates: str,
    head: str,
    seed: int,
    configure: Callable[[_Fuser], None] | None = None,
) -> tuple[fx.GraphModule, _Fuser]:
    """The fusion itself, on templatized parents this call may consume (their banks become the result's)."""
    for parent in templated:
        strip_step_markers(parent.graph)
        parent.recompile()
    _check_same_architecture(templated)
    propagate_shapes(templated[0], example_inputs)
    fuser = _Fuser(
        templated,
        cross_init=cross_init,
        cross_scale=cross_scale,
        cross_templates=cross_templates,
        head=head,
        generator=torch.Generator().manual_seed(seed),
    )
    if configure is not None:
        configure(fuser)
    return fuser.run(), fuser


_RESULT = {"fuse": "fused model", "widen": "widened model"}


def _verify(
    parents: list[nn.Module],
    gm: nn.Module,
    example_inputs: tuple[Any, ...],
    head: str,
    *,
    where: str,
    exact: bool,
) -> dict[str, Any]:
    """The fused model against the parents' sum (mean, or parent 0 alone), in the mode the graphs were traced in.
    ``tolerance`` is the exactness bound of the parents' dtype (:func:`growc.fx.analysis.exactness_tolerance`)."""
    train = parents[0].training
    readers = parents[:1] if head == "first" else parents
    labels = ["the model"] if where == "widen" else [f"parent {i}" for i in range(len(readers))]
    outputs, fused = checked_outputs(
        where, list(zip(labels, readers, strict=True)), (_RESULT[where], gm), example_inputs, train, exact=exact
    )
    expected = outputs[0]
    for out in outputs[1:]:
        expected = torch.utils._pytree.tree_map(operator.add, expected, out)
    if head == "mean":
        expected = torch.utils._pytree.tree_map(lambda t: t / len(parents), expected)
    problem = nonfinite_tree(expected) if len(outputs) > 1 else None
    if problem is not None:
        dtype = str(computation_dtype(readers, expected)).removeprefix("torch.")
        raise GrowcDataError(
            f"{where}: the parents' {head} on the example inputs {problem} (an overflow in {dtype}), though each "
            "parent's output is finite: the output check cannot compare non-finite values; pass verify=False to skip it"
        )
    max_abs, max_rel = max_abs_rel_error(expected, fused)
    against = "parent 0" if head == "first" else f"parents' {head}"
    result = {"against": against, "max_abs": max_abs, "max_rel": max_rel, "mode": "train" if train else "eval"}
    result["tolerance"] = exactness_tolerance(computation_dtype(readers, expected))
    random_ops = [
        n.name
        for n in gm.graph.nodes
        if "dropout" in str(n.target).lower()
        or "stochastic_depth" in getattr(n.target, "__name__", "")
        or (n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), nn.modules.dropout._DropoutNd))
    ]
    if train and random_ops:
        result["note"] = (
            f"the parents were traced in train mode and the graph draws random numbers ({', '.join(random_ops[:3])}"
            f"{', ...' if len(random_ops) > 3 else ''}): fused and parents draw differently, so this compares "
            "samples, not functions; trace the parents in eval mode (model.eval()) for an exact check"
        )
    return result
