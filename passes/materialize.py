"""The ``materialize`` pass: fold every template-mixed op back into a plain op with its generated weight.

What it does to the graph:

* each ``call_module`` of a mixed layer (:class:`~growc.runtime.layers.MixedConv2d`,
  :class:`~growc.runtime.layers.MixedLinear`, ...) keeps its target and node, and the module becomes a
  plain ``nn.Conv*``/``nn.Linear`` whose weight is the generated weight (detached copy) and whose bias is a
  copy of the mixed layer's bias;
* mixed layers inside leaf modules are swapped back the same way, and the parametrizations growc put on raw
  weight parameters of leaf modules are removed, leaving a plain ``nn.Parameter`` with the generated value;
* each ``call_module`` of a :class:`~growc.runtime.layers.MixedWeight` becomes a ``get_attr`` of a new ``nn.Parameter``
  registered at the path the weight had before templatizing;
* the ``growc_banks`` and ``growc_weights`` containers are removed. The result has no growc modules and computes
  the same function (up to fp rounding of one matmul per weight; exactly when the bank used an identity basis).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from growc.errors import GrowcConfigError
from growc.fx.analysis import check_finite_state
from growc.fx.pipeline import finish_pass
from growc.fx.trace import attribute_owner
from growc.runtime.layers import GRID_TYPES, MIXED_TYPES, MixedWeight, strip_step_markers

__all__ = ["materialize"]


class _NotAGraphModule(GrowcConfigError, TypeError):
    """materialize was given something other than a GraphModule (a TypeError, as it always was, and a GrowcError)."""


def _unparametrize(module: nn.Module, attr: str, weight: nn.Parameter) -> None:
    """Replace growc's parametrization of ``module.<attr>`` by the plain parameter ``weight``.

    ``parametrize.remove_parametrizations`` edits the module's generated class, which a deep copy shares with
    the module it was copied from (the input of this pass); so the instance gets a class of its own instead.
    """
    cls = type(module)
    base = cls.__bases__[0]
    del module.parametrizations[attr]
    if len(module.parametrizations) == 0:
        del module._modules["parametrizations"]
        module.__class__ = base
    else:
        namespace = {k: v for k, v in vars(cls).items() if k not in (attr, "__dict__", "__weakref__")}
        module.__class__ = type(cls.__name__, (base,), namespace)
    module.register_parameter(attr, weight)


def materialize(gm: fx.GraphModule) -> fx.GraphModule:
    """Return a new GraphModule with every template-mixed op folded into a plain ``nn.Conv*``/``nn.Linear``.

    ``gm.meta["growc"]["materialize"]`` lists the folded layers and the parameter count before and after. A
    parameter or buffer that is non-finite (a diverged training run) or has no data raises ``GrowcDataError``.
    """
    if not isinstance(gm, fx.GraphModule):
        raise _NotAGraphModule(f"materialize takes a torch.fx.GraphModule, got {type(gm).__name__}")
    check_finite_state(gm, "materialize")
    before = sum(p.numel() for p in gm.parameters())
    out = copy.deepcopy(gm)
    strip_step_markers(out.graph)  # the result owns no banks
    folded: list[dict[str, Any]] = []
    shared: dict[tuple[int, int], nn.Parameter] = {}  # (bank, row) -> one Parameter, so tied weights stay tied

    def weight_of(mixed: nn.Module) -> nn.Parameter:
        key = (id(mixed.bank), mixed.index)
        if key not in shared:
            requires_grad = mixed.bank.templates.requires_grad
            shared[key] = nn.Parameter(mixed.weight.detach().clone(), requires_grad=requires_grad)
        return shared[key]

    def plain(mixed: nn.Module) -> nn.Module:
        module = mixed.to_plain()
        module.weight = weight_of(mixed)
        return module

    with torch.no_grad():
        for node in list(out.graph.nodes):
            if node.op != "call_module":
                continue
            module = out.get_submodule(str(node.target))
            if isinstance(module, MixedWeight):
                # back where templatize found it; elsewhere (a fused model's per-parent copies share one
                # source path) the parameter takes the module's own place
                path = module.source if str(node.target).startswith("growc_weights.") else str(node.target)
                owner, attr = attribute_owner(out, path, create=True)
                if path == str(node.target):
                    delattr(owner, attr)
                owner.register_parameter(attr, weight_of(module))
                with out.graph.inserting_before(node):
                    new = out.graph.get_attr(path)
                new.meta.update(node.meta)
                node.replace_all_uses_with(new)
                out.graph.erase_node(node)
                folded.append({"target": path, "kind": "weight", "node": new.name})
            elif isinstance(module, GRID_TYPES):
                owner, attr = attribute_owner(out, str(node.target), create=True)
                setattr(owner, attr, module.to_plain())
                folded.append({"target": str(node.target), "kind": type(module).__name__, "node": node.name})
            elif isinstance(module, MIXED_TYPES):
                owner, attr = attribute_owner(out, str(node.target), create=True)
                setattr(owner, attr, plain(module))
                folded.append({"target": str(node.target), "kind": type(module).__name__, "node": node.name})
            else:
                for inner, sub in list(module.named_modules()):
                    if inner and isinstance(sub, MIXED_TYPES) and not isinstance(sub, MixedWeight):
                        parent, attr = attribute_owner(module, inner, create=True)
                        setattr(parent, attr, plain(sub))
                        folded.append({"target": f"{node.target}.{inner}", "kind": type(sub).__name__})
                    elif parametrize.is_parametrized(sub):
                        for attr, plist in list(sub.parametrizations.items()):
                            if len(plist) == 1 and isinstance(plist[0], MixedWeight):
                                _unparametrize(sub, attr, weight_of(plist[0]))
                                folded.append({"target": plist[0].source, "kind": "parametrization"})
    for name in ("growc_banks", "growc_weights"):
        if hasattr(out, name):
            delattr(out, name)
    report = {"folded": folded, "params": {"before": before, "after": sum(p.numel() for p in out.parameters())}}
    return finish_pass(out, "materialize", report)
