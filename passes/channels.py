"""Channel analysis: which axis of every tensor carries channels, and which channel dimensions are coupled.

An analysis pass (it returns data and leaves the graph as it is, apart from the shape annotations of
:func:`growc.propagate_shapes`). For every tensor of a traced graph it finds:

* its channel axis (1 for NC… tensors out of convs and per-channel ops, the last axis for Linear features), from
  propagated shapes, never from module attributes;
* whether it is **shared** (depends on no weight: the inputs and what is computed from them alone);
* the weighted ops that are **stems** (shared input -> channels) and **heads** (channels -> a graph output with
  no weighted op in between).

Channel dimensions (a tensor's channel axis, a parameter's output or input dimension) that must be permuted
together to keep the function are **coupled**; the connected components are the channel groups, kept in a
``networkx`` graph (nodes are dimensions, edges name the op that couples them), like a pruning dependency graph.
A ``cat`` along channels *contains* its inputs' groups at offsets, a ``flatten`` contains its input's group in
blocks. A broadcast operand (a ``[B, 1, H, W]`` mask, a scalar) is not coupled to the channels it broadcasts
over. An op without a known rule never passes channels through: the groups it reads or writes are marked
blocked with the op's name, as are groups that reach a graph output, the inputs, or a grouped conv.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import torch
from torch import fx, nn

from growc.fx.analysis import TensorInfo, propagate_shapes
from growc.runtime.layers import GRID_TYPES, MIXED_TYPES

from .fuse import (
    _BINARY_FUNCTIONS,
    _BINARY_METHODS,
    _POOL_FUNCTIONS,
    _POOL_MODULES,
    _REDUCE,
    _REDUCE_METHODS,
    _UNARY_FUNCTIONS,
    _UNARY_METHODS,
    _UNARY_MODULES,
    _has_state,
    _moved_axis,
)

__all__ = ["ChannelAnalysis", "ChannelGroup", "analyze_channels"]

Dim = tuple[str, str, int]  # ("tensor" | "param", name, axis)


@dataclass
class ChannelGroup:
    """Coupled channel dimensions: permuting one of them consistently means permuting all."""

    index: int
    size: int
    dims: list[Dim]
    producers: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    contained_in: list[tuple[int, int, int]] = field(default_factory=list)  # (group, offset, block)
    holds: list[int] = field(default_factory=list)  # groups this one is made of (by a channel cat or a flatten)

    @property
    def permutable(self) -> bool:
        """Whether permuting the group alone keeps the function. A group made of others (the output of a channel
        cat, a flatten) is not: its order is its parts' order, so permute the parts."""
        return not self.blocked and not self.holds

    @property
    def params(self) -> list[tuple[str, int]]:
        return [(name, axis) for kind, name, axis in self.dims if kind == "param"]


@dataclass
class ChannelAnalysis:
    """The result of :func:`analyze_channels`."""

    channel_axis: dict[str, int | None]
    shared: set[str]
    stems: list[str]
    heads: list[str]
    groups: list[ChannelGroup]
    graph: nx.Graph

    def group_of(self, node: str) -> ChannelGroup | None:
        axis = self.channel_axis.get(node)
        if axis is None:
            return None
        key = ("tensor", node, axis)
        return next((g for g in self.groups if key in g.dims), None)

    def placements(self, group: ChannelGroup) -> list[tuple[int, int, int]]:
        """Every group that holds ``group`` (transitively), as ``(group, offset, block)``: channel ``c`` of
        ``group`` is elements ``[offset + c*block, offset + (c+1)*block)`` of the holder's dimension."""
        out: list[tuple[int, int, int]] = []
        stack = [(outer, offset, block) for outer, offset, block in group.contained_in]
        while stack:
            outer, offset, block = stack.pop()
            out.append((outer, offset, block))
            for outer2, offset2, block2 in self.groups[outer].contained_in:
                stack.append((outer2, offset2 + offset * block2, block * block2))
        return out

    def permutation_slices(self, group: ChannelGroup) -> list[tuple[str, int, int, int]]:
        """``(param, axis, offset, block)`` for every parameter dimension that holds ``group`` inside a larger
        group (after a channel ``cat`` or a ``flatten``): to permute ``group``, permute those slices too."""
        return [
            (name, axis, offset, block)
            for g, offset, block in self.placements(group)
            for name, axis in self.groups[g].params
        ]

    def summary(self) -> str:
        lines = [f"stems: {', '.join(self.stems) or '-'}", f"heads: {', '.join(self.heads) or '-'}"]
        lines.append(f"{len(self.groups)} channel groups:")
        for g in self.groups:
            if g.permutable:
                state = "permutable"
            elif g.blocked:
                state = "blocked: " + "; ".join(sorted(set(g.blocked)))
            else:
                state = "made of groups " + ", ".join(str(h) for h in sorted(set(g.holds)))
            lines.append(
                f"  group {g.index}: {g.size} channels, {len(g.dims)} dims, produced by "
                f"{', '.join(g.producers) or '-'}, read by {', '.join(g.consumers) or '-'} ({state})"
            )
        return "\n".join(lines)

    def to_dot(self) -> str:
        """Graphviz DOT: one cluster per channel group, coupling edges labelled by op, containment dashed."""
        out = ["graph channels {", "  node [shape=box, fontsize=10];"]
        ids = {dim: f"d{i}" for i, dim in enumerate(self.graph.nodes)}
        for g in self.groups:
            color = "black" if g.permutable else "red"
            out.append(f'  subgraph cluster_{g.index} {{ label="group {g.index} ({g.size})"; color={color};')
            for dim in g.dims:
                out.append(f'    {ids[dim]} [label="{dim[0]} {dim[1]} @{dim[2]}"];')
            out.append("  }")
        for a, b, data in self.graph.edges(data=True):
            style = ", style=dashed" if data.get("kind") == "contains" else ""
            out.append(f'  {ids[a]} -- {ids[b]} [label="{data.get("op", "")}"{style}];')
        out.append("}")
        return "\n".join(out) + "\n"


class _Builder:
    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.graph = nx.Graph()
        self.axis: dict[str, int | None] = {}
        self.blocked: dict[Dim, list[str]] = {}
        self.producers: dict[Dim, list[str]] = {}
        self.consumers: dict[Dim, list[str]] = {}
        self.contains: list[tuple[Dim, Dim, int, int, str]] = []  # (container, part, offset, block, op)
        # tied tensors are one dimension whatever the name they are reached by
        first: dict[int, str] = {}
        self.canonical: dict[str, str] = {}
        for table in (gm.named_parameters(remove_duplicate=False), gm.named_buffers(remove_duplicate=False)):
            for name, tensor in table:
                self.canonical[name] = first.setdefault(id(tensor), name)

    def dim(self, node: fx.Node) -> Dim | None:
        axis = self.axis.get(node.name)
        return None if axis is None else ("tensor", node.name, axis)

    def couple(self, a: Dim | None, b: Dim | None, op: str) -> None:
        if a is None or b is None:
            return
        self.graph.add_edge(a, b, op=op, kind="couple")

    def new(self, node: fx.Node, axis: int | None) -> Dim | None:
        self.axis[node.name] = axis
        dim = self.dim(node)
        if dim is not None:
            self.graph.add_node(dim)
        return dim

    def block(self, dim: Dim | None, reason: str) -> None:
        if dim is not None:
            self.blocked.setdefault(dim, []).append(reason)

    def param(self, name: str, axis: int) -> Dim:
        dim = ("param", self.canonical.get(name, name), axis)
        self.graph.add_node(dim)
        return dim


def _info(node: Any) -> TensorInfo | None:
    info = node.meta.get("growc_shape") if isinstance(node, fx.Node) else None
    return info if isinstance(info, TensorInfo) else None


def _weighted(module: nn.Module) -> tuple[str, int] | None:
    """``("conv", groups)`` or ``("linear", 1)`` for modules whose weight is ``[out, in, ...]``."""
    if isinstance(module, (nn.Linear, MIXED_TYPES[3], GRID_TYPES[3])):
        return ("linear", 1)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, *MIXED_TYPES[:3], *GRID_TYPES[:3])):
        return ("conv", module.groups)
    return None


def analyze_channels(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> ChannelAnalysis:
    """Analyse the channels of ``gm`` (see the module docstring); annotates node shapes, changes nothing else."""
    propagate_shapes(gm, example_inputs)
    b = _Builder(gm)
    shared: set[str] = set()
    weighted_nodes: set[str] = set()
    stems: list[str] = []
    for node in gm.graph.nodes:
        info = _info(node)
        inputs = [a for a in node.all_input_nodes if _info(a) is not None]
        uses_weights = node.op == "get_attr" or (
            node.op == "call_module" and _has_state(gm.get_submodule(str(node.target)))
        )
        if node.op == "placeholder" or (not uses_weights and all(a.name in shared for a in inputs)):
            shared.add(node.name)
        if node.op == "placeholder":
            dim = b.new(node, 1 if info is not None and len(info.shape) >= 2 else None)
            b.block(dim, "graph input")
        elif node.op == "output":
            for arg in node.all_input_nodes:
                b.block(b.dim(arg), "graph output")
        elif info is None:
            b.new(node, None)
        elif node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            if _weighted(module) is not None:
                weighted_nodes.add(node.name)
                if inputs and inputs[0].name in shared:
                    stems.append(node.name)
            _module_rule(b, node, module, inputs, info)
        elif node.op in ("call_function", "call_method"):
            _function_rule(b, node, inputs, info)
        else:
            b.new(node, None)
    heads = _heads(gm, weighted_nodes)
    return _groups(b, gm, shared, stems, heads)


def _module_rule(b: _Builder, node: fx.Node, module: nn.Module, inputs: list[fx.Node], info: TensorInfo) -> None:
    target = str(node.target)
    rank = len(info.shape)
    x = inputs[0] if inputs else None
    x_dim = b.dim(x) if x is not None else None
    weighted = _weighted(module)
    if weighted is not None and x is not None:
        kind, groups = weighted
        out = b.new(node, rank - 1 if kind == "linear" else 1)
        weight = f"{target}.weight"
        b.couple(out, b.param(weight, 0), target)
        if getattr(module, "bias", None) is not None:
            b.couple(out, b.param(f"{target}.bias", 0), target)
        b.producers.setdefault(out, []).append(target)
        in_axis = len(_info(x).shape) - 1 if kind == "linear" else 1
        if b.axis.get(x.name) != in_axis:
            b.block(x_dim, f"read by {target} on another axis")
            return
        if groups == 1:
            b.couple(x_dim, b.param(weight, 1), target)
            b.consumers.setdefault(x_dim, []).append(target)
        elif groups == module.in_channels == module.out_channels:  # depthwise: channel c in -> channel c out
            b.couple(x_dim, out, target)
        else:
            b.block(x_dim, f"grouped conv {target}")
            b.block(out, f"grouped conv {target}")
        return
    same_shape = x is not None and _info(x).shape == info.shape
    if isinstance(module, _UNARY_MODULES) and same_shape:
        b.couple(x_dim, b.new(node, b.axis.get(x.name)), target)
    elif isinstance(
        module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm)
    ) and (x is None or b.axis.get(x.name) == 1):
        out = b.new(node, 1)
        b.couple(x_dim, out, target)
        for name, _ in (*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)):
            if name != "num_batches_tracked":
                b.couple(out, b.param(f"{target}.{name}", 0), target)
        if isinstance(module, nn.GroupNorm) and module.num_groups not in (1, module.num_channels):
            b.block(out, f"GroupNorm {target} normalizes channels in groups")
    elif (
        isinstance(module, nn.LayerNorm)
        and x is not None
        and b.axis.get(x.name) == rank - 1
        and len(module.normalized_shape) == 1
    ):
        out = b.new(node, rank - 1)
        b.couple(x_dim, out, target)
        for name, _ in module.named_parameters(recurse=False):
            b.couple(out, b.param(f"{target}.{name}", 0), target)
    elif isinstance(module, _POOL_MODULES) and x is not None and b.axis.get(x.name) == 1 and rank >= 3:
        b.couple(x_dim, b.new(node, 1), target)
    elif isinstance(module, nn.Flatten) and x is not None:
        _flatten(b, node, x, module.start_dim, module.end_dim, target)
    else:
        _unknown(b, node, inputs, f"{type(module).__name__} ({target})")


def _function_rule(b: _Builder, node: fx.Node, inputs: list[fx.Node], info: TensorInfo) -> None:
    target = node.target
    method = node.op == "call_method"
    name = target if method else getattr(target, "__name__", str(target))
    rank = len(info.shape)
    x = inputs[0] if inputs else None
    if x is None:
        b.new(node, None)
        return
    if ((method and target in _UNARY_METHODS) or (not method and target in _UNARY_FUNCTIONS)) and len(inputs) == 1:
        b.couple(b.dim(x), b.new(node, b.axis.get(x.name)), name)
    elif (method and target in _BINARY_METHODS) or (not method and target in _BINARY_FUNCTIONS):
        _binary(b, node, inputs, rank, name)
    elif not method and target in _POOL_FUNCTIONS and b.axis.get(x.name) == 1 and rank >= 3:
        b.couple(b.dim(x), b.new(node, 1), name)
    elif (method and target == "flatten") or (not method and target is torch.flatten):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        _flatten(b, node, x, start, end, name)
    elif not method and target in (torch.cat, torch.concat):
        _cat(b, node, inputs, rank, name)
    elif (
        len(inputs) == 1
        and b.axis.get(x.name) is not None
        and (moved := _moved_axis(node, target, method, b.axis[x.name], rank)) is not None
    ):
        b.couple(b.dim(x), b.new(node, moved), name)
    elif (method and target in _REDUCE_METHODS) or (not method and target in _REDUCE):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        axis = b.axis.get(x.name)
        dims = [dims] if isinstance(dims, int) else dims
        if axis is not None and isinstance(dims, (list, tuple)) and all(isinstance(d, int) for d in dims):
            in_rank = len(_info(x).shape)
            dims = [d % in_rank for d in dims]
            if axis not in dims:
                new_axis = axis if keepdim else axis - sum(d < axis for d in dims)
                b.couple(b.dim(x), b.new(node, new_axis), name)
                return
        _unknown(b, node, inputs, name)
    elif target is operator.getitem and node.args[0] in inputs:
        _unknown(b, node, inputs, "getitem")
    else:
        _unknown(b, node, inputs, name)


def _binary(b: _Builder, node: fx.Node, inputs: list[fx.Node], rank: int, name: str) -> None:
    info = _info(node)
    axis = None
    for arg in inputs:  # the output's channel axis: that of an operand spanning it
        a = b.axis.get(arg.name)
        if a is not None:
            aligned = a + rank - len(_info(arg).shape)
            if _info(arg).shape[a] == info.shape[aligned]:
                axis = aligned
                break
    out = b.new(node, axis)
    if axis is None:
        return
    for arg in inputs:
        aligned = axis - (rank - len(_info(arg).shape))
        if aligned < 0 or _info(arg).shape[aligned] == 1:
            continue  # broadcast over the channels: not coupled
        if b.axis.get(arg.name) == aligned:
            b.couple(b.dim(arg), out, name)
        else:
            b.block(out, f"{name} mixes a tensor whose channels are on another axis")


def _flatten(b: _Builder, node: fx.Node, x: fx.Node, start: Any, end: Any, name: str) -> None:
    axis = b.axis.get(x.name)
    shape = _info(x).shape
    if axis is None or not isinstance(start, int) or not isinstance(end, int):
        _unknown(b, node, [x], name)
        return
    start, end = start % len(shape), end % len(shape)
    if axis < start or axis > end:
        b.couple(b.dim(x), b.new(node, axis if axis < start else axis - (end - start)), name)
    elif axis == start:
        block = 1
        for s in shape[axis + 1 : end + 1]:
            block *= s
        out = b.new(node, start)
        if block == 1:
            b.couple(b.dim(x), out, name)
        else:
            b.contains.append((out, b.dim(x), 0, block, name))
    else:
        _unknown(b, node, [x], name)


def _cat(b: _Builder, node: fx.Node, inputs: list[fx.Node], rank: int, name: str) -> None:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    dim = dim % rank
    axes = {b.axis.get(a.name) for a in inputs}
    if len(axes) != 1 or None in axes:
        _unknown(b, node, inputs, name)
        return
    (axis,) = axes
    out = b.new(node, axis)
    if dim != axis:
        for arg in inputs:
            b.couple(b.dim(arg), out, name)
        return
    offset = 0
    for arg in inputs:
        b.contains.append((out, b.dim(arg), offset, 1, name))
        offset += _info(arg).shape[axis]


def _unknown(b: _Builder, node: fx.Node, inputs: list[fx.Node], name: str) -> None:
    for arg in inputs:
        b.block(b.dim(arg), f"read by {name}, which has no channel rule")
    info = _info(node)
    out = b.new(node, 1 if info is not None and len(info.shape) >= 2 else None)
    b.block(out, f"written by {name}, which has no channel rule")


def _heads(gm: fx.GraphModule, weighted: set[str]) -> list[str]:
    reaches: dict[str, bool] = {}
    for node in reversed(list(gm.graph.nodes)):
        if node.op == "output":
            reaches[node.name] = True
            continue
        reaches[node.name] = any(
            (user.name not in weighted) and reaches.get(user.name, False) for user in node.users
        ) or any(user.op == "output" for user in node.users)
    return [n.name for n in gm.graph.nodes if n.name in weighted and reaches.get(n.name, False)]


def _groups(b: _Builder, gm: fx.GraphModule, shared: set[str], stems: list[str], heads: list[str]) -> ChannelAnalysis:
    state = {**dict(gm.named_parameters(remove_duplicate=False)), **dict(gm.named_buffers(remove_duplicate=False))}
    groups: list[ChannelGroup] = []
    index_of: dict[Dim, int] = {}
    node_info = {n.name: _info(n) for n in gm.graph.nodes}
    couplings = nx.Graph()
    couplings.add_nodes_from(b.graph.nodes)
    couplings.add_edges_from((u, v) for u, v, d in b.graph.edges(data=True) if d.get("kind") == "couple")
    for component in nx.connected_components(couplings):
        _add_group(groups, index_of, sorted(component), node_info, state)
    for group in groups:
        for dim in group.dims:
            group.blocked += b.blocked.get(dim, [])
            group.producers += b.producers.get(dim, [])
            group.consumers += b.consumers.get(dim, [])
    for container, part, offset, block, op in b.contains:
        if container is None or part is None:
            continue
        b.graph.add_edge(container, part, op=op, kind="contains")
        groups[index_of[part]].contained_in.append((index_of[container], offset, block))
        groups[index_of[container]].holds.append(index_of[part])
    changed = True
    while changed:  # a group inside a blocked group is blocked too
        changed = False
        for group in groups:
            for outer, _, _ in group.contained_in:
                if groups[outer].blocked and not group.blocked:
                    group.blocked.append(f"inside group {outer}, which is blocked")
                    changed = True
    return ChannelAnalysis(dict(b.axis), shared, stems, heads, groups, b.graph)


def _add_group(
    groups: list[ChannelGroup],
    index_of: dict[Dim, int],
    dims: list[Dim],
    node_info: dict[str, TensorInfo | None],
    state: dict[str, torch.Tensor],
) -> None:
    tensors = [d for d in dims if d[0] == "tensor"]
    _, name, axis = tensors[0] if tensors else dims[0]
    if tensors:
        size = node_info[name].shape[axis]
    else:
        size = state[name].shape[axis] if name in state else 0  # a generated weight: only its layer knows
    group = ChannelGroup(index=len(groups), size=int(size), dims=list(dims))
    groups.append(group)
    for dim in dims:
        index_of[dim] = group.index
