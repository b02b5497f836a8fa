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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import torch
from torch import fx, nn

from growc.fx.analysis import TensorInfo, propagate_shapes
from growc.fx.registry import has_state, has_tensor, op_label, rule_for, tensor_info

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
    """The analysis under construction; the :class:`growc.fx.registry.ChannelContext` op rules talk to."""

    def __init__(self, gm: fx.GraphModule, shared: set[str]) -> None:
        self.gm = gm
        self.graph = nx.Graph()
        self.axis: dict[str, int | None] = {}
        self.blocked: dict[Dim, list[str]] = {}
        self.producers: dict[Dim, list[str]] = {}
        self.consumers: dict[Dim, list[str]] = {}
        self.contains: list[tuple[Dim, Dim, int, int, str]] = []  # (container, part, offset, block, op)
        self.shared = shared
        self.weighted_nodes: set[str] = set()
        self.stems: list[str] = []
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

    def module(self, node: fx.Node) -> nn.Module:
        return self.gm.get_submodule(str(node.target))

    def axis_of(self, node: fx.Node) -> int | None:
        return self.axis.get(node.name)

    def contain(self, container: Dim | None, part: Dim | None, offset: int, block: int, op: str) -> None:
        self.contains.append((container, part, offset, block, op))

    def produced(self, dim: Dim | None, op: str) -> None:
        self.producers.setdefault(dim, []).append(op)

    def consumed(self, dim: Dim | None, op: str) -> None:
        self.consumers.setdefault(dim, []).append(op)

    def weighted(self, node: fx.Node, inputs: Sequence[fx.Node]) -> None:
        self.weighted_nodes.add(node.name)
        if inputs and inputs[0].name in self.shared:
            self.stems.append(node.name)

    def opaque(self, node: fx.Node, inputs: Sequence[fx.Node], name: str | None = None) -> None:
        if name is None:
            name = op_label(node)
            if node.op == "call_module":
                name = f"{type(self.module(node)).__name__} ({name})"
        for arg in inputs:
            self.block(self.dim(arg), f"read by {name}, which has no channel rule")
        info = tensor_info(node)
        out = self.new(node, 1 if info is not None and len(info.shape) >= 2 else None)
        self.block(out, f"written by {name}, which has no channel rule")


_info = tensor_info


def analyze_channels(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> ChannelAnalysis:
    """Analyse the channels of ``gm`` (see the module docstring); annotates node shapes, changes nothing else."""
    propagate_shapes(gm, example_inputs)
    shared: set[str] = set()
    b = _Builder(gm, shared)
    for node in gm.graph.nodes:
        info = _info(node)
        inputs = [a for a in node.all_input_nodes if _info(a) is not None]
        uses_weights = node.op == "get_attr" or (node.op == "call_module" and has_state(b.module(node)))
        if node.op == "placeholder" or (not uses_weights and all(a.name in shared for a in inputs)):
            shared.add(node.name)
        if node.op == "placeholder":
            dim = b.new(node, 1 if info is not None and len(info.shape) >= 2 else None)
            b.block(dim, "graph input")
        elif node.op == "output":
            for arg in node.all_input_nodes:
                b.block(b.dim(arg), "graph output")
        elif info is None and has_tensor(node.meta.get("growc_shape")):
            # several tensors out (split, chunk, einops pack/unpack): no rule maps axes into a tuple, so the groups
            # it reads are blocked (its results start their own groups where getitem takes them apart)
            b.opaque(node, inputs, op_label(node))
        elif info is None or node.op == "get_attr" or (node.op != "call_module" and not inputs):
            b.new(node, None)
        else:  # the op's rule from the registry says how its axes map
            rule_for(node, b.module(node) if node.op == "call_module" else None).channels(node, b, inputs)
    heads = _heads(gm, b.weighted_nodes)
    return _groups(b, gm, shared, b.stems, heads)


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
