"""The ``materialize`` pass: fold every template-mixed op back into a plain op with its generated weight.

What it does to the graph:

* each ``call_module`` of a mixed or grid layer (:class:`~growc.runtime.layers.MixedConv2d`,
  :class:`~growc.runtime.layers.MixedLinear`, :class:`~growc.runtime.layers.GridConv2d`, ...) keeps its target
  and node, and a new plain ``nn.Conv*``/``nn.Linear`` (same hyperparameters) takes the module's place, its weight
  the generated weight (detached copy) and its bias a copy of the mixed layer's bias;
* mixed layers inside leaf modules are replaced the same way, and each submodule of a leaf whose raw weight growc
  parametrized is replaced by a new module holding the same state with a plain ``nn.Parameter`` of the generated
  value in place of the parametrization;
* each ``call_module`` of a :class:`~growc.runtime.layers.MixedWeight` becomes a ``get_attr`` of a new ``nn.Parameter``
  registered at the path the weight had before templatizing;
* the ``growc_banks`` and ``growc_weights`` containers are removed. The input is never modified (the pass works
  on a deep copy). The result has no growc modules and computes the same function (up to fp rounding of one matmul
  per weight; exactly when the bank used an identity basis).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from growc.errors import GrowcConfigError
from growc.fx.analysis import check_finite_state
from growc.fx.graphs import attribute_owner
from growc.fx.pipeline import finish_pass
from growc.runtime.layers import GRID_TYPES, MIXED_TYPES, MixedWeight
from growc.runtime.markers import strip_step_markers

__all__ = ["materialize"]


class _NotAGraphModule(GrowcConfigError, TypeError):
    """materialize was given something other than a GraphModule (a TypeError, as it always was, and a GrowcError)."""


def _unparametrized(module: nn.Module, plain: dict[str, nn.Parameter]) -> nn.Module:
    """A new module holding ``module``'s state, with the plain parameters ``plain`` in place of growc's
    parametrizations of those attributes (other parametrizations are kept).

    ``module`` is left as it is: ``parametrize.remove_parametrizations`` would edit its generated class, which a
    deep copy shares with the module it was copied from (the input of this pass). The new module is an instance of
    the original class when no parametrization is left, else of a parametrized class of its own.
    """
    cls = type(module)
    base = cls.__bases__[0]
    kept = {attr: plist for attr, plist in module.parametrizations.items() if attr not in plain}
    if kept:
        hidden = (*plain, "__dict__", "__weakref__")
        new_cls: type[nn.Module] = type(cls.__name__, (base,), {k: v for k, v in vars(cls).items() if k not in hidden})
    else:
        new_cls = base
    modules = dict(module._modules)
    if kept:
        modules["parametrizations"] = nn.ModuleDict(kept)
    else:
        del modules["parametrizations"]
    new = new_cls.__new__(new_cls)
    new.__dict__.update({**module.__dict__, "_modules": modules, "_parameters": {**module._parameters, **plain}})
    return new


class _Folder:
    """Folds the generated modules of ``out`` (a copy of the pass's input) into plain ones, recording each fold.

    Every fold builds a new module (or ``nn.Parameter``) and puts it where the generated one was; mixed layers
    reading the same ``(bank, row)`` get one shared Parameter, so tied weights stay tied.
    """

    def __init__(self, out: fx.GraphModule) -> None:
        self.out = out
        self.folded: list[dict[str, Any]] = []
        self.shared: dict[tuple[int, int], nn.Parameter] = {}

    def weight_of(self, mixed: nn.Module) -> nn.Parameter:
        key = (id(mixed.bank), mixed.index)
        if key not in self.shared:
            requires_grad = mixed.bank.templates.requires_grad
            self.shared[key] = nn.Parameter(mixed.weight.detach().clone(), requires_grad=requires_grad)
        return self.shared[key]

    def plain(self, mixed: nn.Module) -> nn.Module:
        """A new ``nn.Conv*``/``nn.Linear`` with ``mixed``'s hyperparameters, bias and (shared) weight."""
        module = mixed.to_plain()
        module.weight = self.weight_of(mixed)
        return module

    def replace(self, path: str, module: nn.Module) -> None:
        setattr(*attribute_owner(self.out, path, create=True), module)

    def node(self, node: fx.Node) -> None:
        module = self.out.get_submodule(str(node.target))
        if isinstance(module, MixedWeight):
            self.weight_node(node, module)
        elif isinstance(module, GRID_TYPES):
            self.replace(str(node.target), module.to_plain())
            self.folded.append({"target": str(node.target), "kind": type(module).__name__, "node": node.name})
        elif isinstance(module, MIXED_TYPES):
            self.replace(str(node.target), self.plain(module))
            self.folded.append({"target": str(node.target), "kind": type(module).__name__, "node": node.name})
        else:
            self.leaf(str(node.target), module)

    def weight_node(self, node: fx.Node, module: MixedWeight) -> None:
        """A ``call_module`` of a MixedWeight becomes a ``get_attr`` of a new Parameter."""
        out, target = self.out, str(node.target)
        # back where templatize found it; elsewhere (a fused model's per-parent copies share one source path) the
        # parameter takes the module's own place
        path = module.source if target.startswith("growc_weights.") else target
        owner, attr = attribute_owner(out, path, create=True)
        if path == target:
            delattr(owner, attr)
        owner.register_parameter(attr, self.weight_of(module))
        with out.graph.inserting_before(node):
            new = out.graph.get_attr(path)
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        out.graph.erase_node(node)
        self.folded.append({"target": path, "kind": "weight", "node": new.name})

    def leaf(self, target: str, module: nn.Module) -> None:
        """Mixed layers inside a leaf module become plain ones; growc's parametrizations of its raw weights go."""
        for inner, sub in list(module.named_modules()):
            path = f"{target}.{inner}" if inner else target
            if inner and isinstance(sub, MIXED_TYPES) and not isinstance(sub, MixedWeight):
                self.replace(path, self.plain(sub))
                self.folded.append({"target": path, "kind": type(sub).__name__})
            elif parametrize.is_parametrized(sub):
                ours = {
                    attr: plist[0]
                    for attr, plist in sub.parametrizations.items()
                    if len(plist) == 1 and isinstance(plist[0], MixedWeight)
                }
                if ours:
                    self.replace(path, _unparametrized(sub, {a: self.weight_of(w) for a, w in ours.items()}))
                    self.folded += [{"target": w.source, "kind": "parametrization"} for w in ours.values()]


def materialize(gm: fx.GraphModule) -> fx.GraphModule:
    """Return a new GraphModule with every template-mixed op folded into a new plain ``nn.Conv*``/``nn.Linear``.

    ``gm`` is not modified. ``gm.meta["growc"]["materialize"]`` lists the folded layers and the parameter count
    before and after. A parameter or buffer that is non-finite (a diverged training run) or has no data raises
    ``GrowcDataError``.
    """
    if not isinstance(gm, fx.GraphModule):
        raise _NotAGraphModule(f"materialize takes a torch.fx.GraphModule, got {type(gm).__name__}")
    check_finite_state(gm, "materialize")
    before = sum(p.numel() for p in gm.parameters())
    out = copy.deepcopy(gm)
    strip_step_markers(out.graph)  # the result owns no banks
    folder = _Folder(out)
    with torch.no_grad():
        for node in list(out.graph.nodes):
            if node.op == "call_module":
                folder.node(node)
    for name in ("growc_banks", "growc_weights"):
        if hasattr(out, name):
            delattr(out, name)
    report = {"folded": folder.folded, "params": {"before": before, "after": sum(p.numel() for p in out.parameters())}}
    return finish_pass(out, "materialize", report)
