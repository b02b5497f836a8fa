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
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.fx.node import map_aggregate

from growc.errors import GrowcConfigError, GrowcDataError, GrowcError, GrowcPassError
from growc.fx.analysis import (
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
from growc.fx.graphs import attribute_owner, graph_module
from growc.fx.pipeline import finish_pass
from growc.fx.registry import FuseValue, ValueKind, has_state, has_tensor, rule_for, tensor_info
from growc.runtime.grid_layout import CrossBlock, Layout, head_layout, interior_layout, stem_layout
from growc.runtime.init import orthogonal_row
from growc.runtime.layers import (
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

from .config import SEED, VERIFY, CrossInit, CrossTemplates, FuseConfig, FusionConfig, Head, TemplatizeConfig
from .templatize import templatize

__all__ = ["CrossInit", "FusionResult", "fuse", "fuse_owned", "fuse_templated", "verify_fusion"]

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


_Value = FuseValue  # a value of the fused graph: shared, fused along ``axis``, or per parent (ValueKind)
_tensor_info = tensor_info
_has_tensor = has_tensor


class _Fuser:
    def __init__(self, parents: list[fx.GraphModule], config: FusionConfig) -> None:
        """A fuser of ``parents`` (templatized, of one architecture; their banks become the result's) under
        ``config``, which alone decides every new block's init, the heads and the scales."""
        self.parents = parents
        self.n = len(parents)
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed)
        self.root = nn.Module()
        self.graph = fx.Graph()
        # the parents' input and output structure (a graph from torch.export flattens and rebuilds pytrees)
        self.graph.set_codegen(copy.deepcopy(parents[0].graph._codegen))
        self.env: dict[fx.Node, _Value] = {}
        self.fallbacks: list[dict[str, str]] = []
        self.lifts: list[dict[str, Any]] = []
        self.banks = nn.ModuleDict()
        self.per_parent = nn.ModuleDict({f"p{i}": nn.Module() for i in range(self.n)})
        self.bank_names: dict[int, str] = {}
        self.weighted: dict[tuple[str, str], str] = {}  # (parent target, lift) -> installed fused module
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
                # a head is already the sum; a mean of equals is the value
                if value.summed or self.config.head != "sum":
                    return value.node
                return self.graph.call_function(operator.mul, (value.node, self.n))  # n equal parents' outputs
            parts = self.parts(value)
            total = parts[0]
            if self.config.head == "first":
                return total
            for part in parts[1:]:
                total = self.graph.call_function(operator.add, (total, part))
            if self.config.head == "mean":
                total = self.graph.call_function(operator.truediv, (total, self.n))
            return total

        return _Value("S", self.graph.output(map_aggregate(node.args[0], merge)))

    def op_call_module(self, node: fx.Node) -> _Value:
        """A module call: shared when the module is stateless and reads shared values only; else lifted by
        its registered rule (:mod:`growc.fx.registry`), or the exact fallback."""
        module = self.module(node)
        if not has_state(module) and all(self.env[a].kind == ValueKind.SHARED for a in node.all_input_nodes):
            target = self.add_fused_module(str(node.target), copy.deepcopy(module))
            args_, kwargs_ = self.map_args(node, lambda v: v.node)
            return _Value(ValueKind.SHARED, self.graph.call_module(target, args_, kwargs_))
        lifted = rule_for(node, module).lift(node, self)
        return lifted if lifted is not None else self.fallback(node)

    def op_call_function(self, node: fx.Node) -> _Value:
        return self.lift_function(node)

    def op_call_method(self, node: fx.Node) -> _Value:
        return self.lift_function(node)

    # ---- direct lifts --------------------------------------------------------------------------------------

    def direct_module(self, node: fx.Node, module: nn.Module, arg: fx.Node, axis: int) -> _Value:
        target = self.add_fused_module(str(node.target), copy.deepcopy(module))
        return _Value(ValueKind.FUSED, self.graph.call_module(target, (arg,)), axis)

    def map_args(self, node: fx.Node, convert: Callable[[_Value], Any]) -> tuple[Any, Any]:
        def one(arg: Any) -> Any:
            return convert(self.env[arg]) if isinstance(arg, fx.Node) else arg

        return map_aggregate(node.args, one), map_aggregate(node.kwargs, one)

    def emit_like(self, node: fx.Node, args: Any, kwargs: Any) -> fx.Node:
        return self.graph.create_node(node.op, node.target, args, kwargs)

    def lift_function(self, node: fx.Node) -> _Value:
        """A function or method call: shared when it reads shared values only; else lifted by its registered
        rule (:mod:`growc.fx.registry`), or the exact fallback."""
        if all(self.env[a].kind == ValueKind.SHARED for a in node.all_input_nodes):
            args, kwargs = self.map_args(node, lambda v: v.node)
            return _Value(ValueKind.SHARED, self.emit_like(node, args, kwargs))
        lifted = rule_for(node).lift(node, self)
        return lifted if lifted is not None else self.fallback(node)

    # ---- the registry's FuseContext ------------------------------------------------------------------------

    def value(self, arg: fx.Node) -> _Value:
        return self.env[arg]

    def module(self, node: fx.Node) -> nn.Module:
        return self.parents[0].get_submodule(str(node.target))

    def parent_modules(self, node: fx.Node) -> list[nn.Module]:
        return [p.get_submodule(str(node.target)) for p in self.parents]

    def install(self, node: fx.Node, module: nn.Module, lift: str) -> str:
        target = self.add_fused_module(str(node.target), module)
        self.lifts.append({"node": node.name, "target": str(node.target), "lift": lift})
        return target

    # ---- weighted ops --------------------------------------------------------------------------------------

    def new_row(self, bank: TemplateBank, copy_row: int, init: str) -> tuple[int, dict[str, Any]]:
        existing = bank.coefficients.detach().to("cpu", torch.float64)
        k = existing.shape[1]
        info: dict[str, Any] = {"bank": self.bank_names[id(bank)], "init": init}
        if init == "zero":
            row = torch.zeros(k, dtype=torch.float64)
        elif init == "random":
            row = (torch.rand(k, generator=self.generator, dtype=torch.float64) * 2 - 1) * self.config.cross_scale
        elif init == "copy":
            noise = torch.randn(k, generator=self.generator, dtype=torch.float64) * self.config.copy_noise
            row = existing[copy_row] * self.config.cross_scale + noise
        else:  # orthogonal: the last right-singular vector of every row the bank already has
            orthogonal, rank = orthogonal_row("fuse(cross_init='orthogonal')", existing)
            row = orthogonal * self.config.cross_scale
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
        (arg,) = node.args
        value = self.env[arg]
        linear = isinstance(module, (MixedLinear, GridLinear))
        axis = (len(_tensor_info(arg).shape) - 1) if linear else 1
        groups = 1 if linear else module.groups
        users = list(node.users)
        is_head = value.kind != "S" and len(users) == 1 and users[0].op == "output" and groups == 1
        kind = "stem" if value.kind == "S" else "head" if is_head else "grouped" if groups != 1 else "grid"
        if kind == "stem" and groups != 1:
            return self.fallback(node)
        out_axis = (len(_tensor_info(node).shape) - 1) if linear else 1
        first = (target, kind) not in self.weighted  # else a module called again with the same lift: the same one
        if first:
            self.install_grid(node, module, kind, linear)
        new = self.graph.call_module(self.weighted[(target, kind)], (self.weighted_input(value, kind, axis),))
        if first:
            new.meta["growc"] = {"fuse": {"lift": kind}}
        return _Value("S", new, summed=True) if kind == "head" else _Value("F", new, out_axis)

    def install_grid(self, node: fx.Node, module: nn.Module, kind: str, linear: bool) -> None:
        """Build the grid layer lifting ``node``'s weighted layer as a ``kind`` (stem, head, grouped or interior
        grid) from the parents' layers, install it, and report its blocks."""
        target = str(node.target)
        layers = [p.get_submodule(target) for p in self.parents]
        grids = [_as_grid(layer) for layer in layers]
        n = self.n
        report: dict[str, Any] = {"node": node.name, "target": target, "lift": kind}
        biases = [layer.bias for layer in layers]
        groups = 1 if linear else module.groups
        scale = getattr(module, "scale", 1.0)
        in_size, out_size, new_groups = n, n, groups
        if kind in ("stem", "grouped"):  # parents stacked along outputs, no cross blocks
            blocks = self.realize(stem_layout(grids), [])
            bias = self.joined_bias(target, biases)
            in_size = 1 if kind == "stem" else n
            new_groups = groups * (n if kind == "grouped" else 1)
        elif kind == "head":  # parents side by side along inputs
            report["cross"] = []
            blocks = self.realize(head_layout(grids, self.config.head), report["cross"])
            bias = self.summed_bias(biases)
            out_size = 1
            scale = scale / n if self.config.head == "mean" else scale
        else:  # interior: the parents on the diagonal, new coefficient rows off it
            report["cross"] = []
            union = self.config.cross_templates == "union"
            blocks = self.realize(interior_layout(grids, self.config.init_of, union=union), report["cross"])
            bias = self.joined_bias(target, biases)
            scale = scale * self.config.interior_scale
        grid = self.grid_module(module, linear, blocks, bias, (in_size, out_size, new_groups), scale)
        installed = target if not any(t == target for t, _ in self.weighted) else f"{target}_{kind}"
        self.weighted[(target, kind)] = self.add_fused_module(installed, grid)
        report["blocks"] = [[[f"{self.bank_names[id(b)]}[{r}]" for b, r in terms] for terms in row] for row in blocks]
        self.lifts.append(report)

    @staticmethod
    def grid_module(
        module: nn.Module,
        linear: bool,
        blocks: list[list[list[Term]]],
        bias: nn.Parameter | None,
        sizes: tuple[int, int, int],
        scale: float,
    ) -> nn.Module:
        """The grid layer of ``blocks`` like ``module``, its inputs and outputs ``sizes[:2]`` times as many and
        ``sizes[2]`` groups (a conv's)."""
        in_size, out_size, groups = sizes
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
                groups=groups,
                scale=scale,
            )
        grid.train(module.training)
        return grid

    def realize(self, layout: Layout, report: list[dict[str, Any]]) -> list[list[list[Term]]]:
        """A layout's blocks, each :class:`~growc.runtime.grid_layout.CrossBlock` replaced by the terms of its new
        rows, made in layout order (row-major: the order the random draws follow); each reported in ``report``."""
        blocks = []
        for row in layout:
            blocks.append([self.new_block(b, report) if isinstance(b, CrossBlock) else b for b in row])
        return blocks

    def new_block(self, block: CrossBlock, report: list[dict[str, Any]]) -> list[Term]:
        """The terms of a new block: one new row per source (see :meth:`cross_block`)."""
        terms: list[Term] = []
        for source in block.sources:
            terms += self.cross_block(
                source, block.row_parent, block.column_parent, block.init, report, list(block.where)
            )
        return terms

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
        if self.config.head == "first":  # only parent 0 reads out
            return nn.Parameter(biases[0].detach().clone(), requires_grad=biases[0].requires_grad)
        total = torch.stack([b.detach() for b in biases]).sum(0)
        if self.config.head == "mean":
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
            return _Value(ValueKind.SHARED, outputs[0])  # parents share shapes: a non-tensor result is the same
        return _Value(ValueKind.PER_PARENT, parts=outputs)


def _is_inplace(node: fx.Node) -> bool:
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    return (
        (isinstance(name, str) and name.endswith("_") and not name.endswith("__"))
        or node.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv)
        or node.kwargs.get("inplace") is True
    )


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
    cross_init: CrossInit = FuseConfig.cross_init,
    cross_scale: float = FuseConfig.cross_scale,
    cross_templates: CrossTemplates = FuseConfig.cross_templates,
    head: Head = FuseConfig.head,
    seed: int = SEED,
    templatize_options: dict[str, Any] | None = None,
    verify: bool = VERIFY,
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

    The defaults are :class:`~growc.passes.config.FuseConfig`'s (and :class:`~growc.passes.config.TemplatizeConfig`'s
    for ``templatize_options``).

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
    config = FuseConfig(cross_init=cross_init, cross_scale=cross_scale, cross_templates=cross_templates, head=head)
    seed = check_seed(seed, span=len(parents))
    options = TemplatizeConfig.from_options("fuse", templatize_options)
    example_inputs = check_example_inputs("fuse", example_inputs)
    check_parents("fuse", parents)
    n = len(parents)
    check_growth_size("fuse", f"{n} parents", n * n, parents[0])
    templated = [
        copy.deepcopy(p)
        if is_templatized(p)
        else templatize(p, example_inputs, seed=seed + i, verify=verify, **options.kwargs())
        for i, p in enumerate(parents)
    ]
    parent_params = [sum(p.numel() for p in t.parameters()) for t in templated]
    fusion = fuse_owned(templated, example_inputs, config.fusion(seed))  # fuse's own copies: no second copy
    gm = fusion.module
    report: dict[str, Any] = {
        "parents": len(parents),
        **config.as_dict(),
        "seed": seed,
        "templatize": options.report() if not all(is_templatized(p) for p in parents) else None,
        "trace": templated[0].meta.get("growc", {}).get("trace", {}),  # how the parents were captured
        "lifts": fusion.lifts,
        "fallbacks": fusion.fallbacks,
        "params": {"parents": parent_params, "fused": sum(p.numel() for p in gm.parameters())},
    }
    finish_pass(gm, "fuse", report)
    if verify:
        exact = config.cross_init == "zero"
        report["output"] = output = verify_fusion(templated, gm, example_inputs, head, where="fuse", exact=exact)
        if exact and "note" not in output and not output["max_rel"] <= output["tolerance"]:
            raise GrowcPassError(
                f"fuse(cross_init='zero') is not the parents' {head}: max rel error {output['max_rel']:.3e} > "
                f"{output['tolerance']:.3g}. Please report this model; the ops involved can be made leaves "
                "(templatize_options={'leaf_modules': [...]}) to take the per-parent fallback."
            )
    return gm


@dataclass(frozen=True)
class FusionResult:
    """What :func:`fuse_templated` returns: the fused GraphModule, its lifts (with their block layouts and cross
    blocks) and the ops that took the exact fallback."""

    module: fx.GraphModule
    lifts: list[dict[str, Any]]
    fallbacks: list[dict[str, str]]


def fuse_templated(
    templated: Sequence[fx.GraphModule], example_inputs: tuple[Any, ...], config: FusionConfig
) -> FusionResult:
    """The fusion itself, of templatized parents of one architecture, configured by ``config`` alone.

    Never modifies ``templated``: the parents are deep-copied together first (so parents that share banks, as a
    widening's do, still share them in the copy) and the result shares no module, parameter or buffer with them.
    """
    return fuse_owned(copy.deepcopy(list(templated)), example_inputs, config)


def fuse_owned(templated: list[fx.GraphModule], example_inputs: tuple[Any, ...], config: FusionConfig) -> FusionResult:
    """:func:`fuse_templated` without the copy, for parents the caller made for this call and hands over.

    The ownership contract: every parent must be the caller's own fresh object (a copy or a new templatization,
    never an object its own caller gave it), and it belongs to the result afterwards: its banks gain the new rows
    and become the result's, its modules may be the result's fallback modules, its graph loses its step markers.
    :func:`growc.fuse` and :func:`growc.widen` pass only the copies they made, so no caller's object is ever
    modified, and the copy :func:`fuse_templated` would make is not paid twice."""
    for parent in templated:
        strip_step_markers(parent.graph)
        parent.recompile()
    _check_same_architecture(templated)
    propagate_shapes(templated[0], example_inputs)
    fuser = _Fuser(templated, config)
    return FusionResult(fuser.run(), fuser.lifts, fuser.fallbacks)


_RESULT = {"fuse": "fused model", "widen": "widened model"}


def verify_fusion(
    parents: list[nn.Module],
    gm: nn.Module,
    example_inputs: tuple[Any, ...],
    head: str,
    *,
    where: str,
    exact: bool,
) -> dict[str, Any]:
    """The fused model ``gm`` against the parents' sum (``head="sum"``), mean (``"mean"``) or parent 0 alone
    (``"first"``) on ``example_inputs``, in the mode the graphs were traced in; ``where`` is the pass (``"fuse"``
    or ``"widen"``) and ``exact`` says whether it must preserve the function. ``tolerance`` is the exactness
    bound of the parents' dtype (:func:`growc.fx.analysis.exactness_tolerance`)."""
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
