"""Building GraphModules: the one constructor every pass uses, and dotted attribute lookup.

:func:`graph_module` is ``fx.GraphModule(root, graph)`` that also keeps what a growc graph needs beyond the
attributes its nodes name: the template banks (``growc_banks``, reached through layers, not nodes), the input and
output structure of a graph captured by ``torch.export`` (its pytree code generator reads ``self._in_spec``; the
output keeps the model's structure, e.g. a Hugging Face ``ModelOutput``) and the root's records.
"""

from __future__ import annotations

import copy

from torch import fx, nn

__all__ = ["attribute_owner", "graph_module", "pytree_specs"]


def attribute_owner(root: nn.Module, target: str, *, create: bool = False) -> tuple[nn.Module, str]:
    """The module holding the dotted ``target`` and the attribute's name in it (``"a.b.w"`` -> ``(root.a.b, "w")``).

    With ``create``, missing intermediate modules are added as empty ``nn.Module`` containers.
    """
    *path, attr = target.split(".")
    owner = root
    for part in path:
        if create and part not in owner._modules:
            owner.add_module(part, nn.Module())
        owner = owner._modules[part] if part in owner._modules else getattr(owner, part)
    return owner, attr


def pytree_specs(graph: fx.Graph) -> tuple[object, object] | None:
    """The ``(in_spec, out_spec)`` of a graph whose code generator flattens inputs and rebuilds outputs (a graph
    from ``torch.export``), else None."""
    info = getattr(graph._codegen, "pytree_info", None)
    return None if info is None else (info.in_spec, info.out_spec)


def graph_module(root: nn.Module, graph: fx.Graph, class_name: str = "GraphModule") -> fx.GraphModule:
    """``fx.GraphModule(root, graph)`` that also keeps ``root``'s template banks registered and the pytree input
    and output specs of an exported graph."""
    gm = fx.GraphModule(root, graph, class_name)
    if isinstance(getattr(root, "growc_banks", None), nn.Module) and not hasattr(gm, "growc_banks"):
        gm.add_module("growc_banks", root.growc_banks)
    specs = pytree_specs(graph)
    if specs is not None:
        gm._in_spec, gm._out_spec = specs
    if isinstance(root, fx.GraphModule):
        gm.meta = copy.deepcopy(root.meta)  # never share (and later write into) the input's records
    return gm
