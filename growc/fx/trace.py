"""Tracing any PyTorch model into a ``torch.fx.GraphModule``, with a per-submodule fallback.

:func:`trace` runs ``torch.fx`` symbolic tracing with growc's tracer: user-chosen leaf modules (types or dotted
paths), autowrapped functions, ``concrete_args``, and growc's own template-mixed layers kept as leaves. When the
``forward`` of a submodule cannot be traced (data-dependent control flow, iteration over a traced value, ``len`` of
a traced value, ...), that submodule becomes a leaf and tracing starts again; the report on
``gm.meta["growc"]["trace"]`` lists every such fallback with the construct and the error. Only when the root
module's own ``forward`` cannot be traced is :class:`~growc.errors.GrowcTraceError` raised, naming the module, the
construct and the fix.

Note: like any fx trace, Python-level branches on ``self.training`` are specialised to the flag at trace time;
leaf modules (BatchNorm, Dropout, ...) still follow ``.train()``/``.eval()``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

from torch import fx, nn

from growc.errors import GrowcTraceError
from growc.fx.registry import is_registered_leaf, wrapped_functions
from growc.runtime.bank import TemplateBank
from growc.runtime.layers import GENERATED_TYPES

__all__ = ["GrowcTracer", "attribute_owner", "graph_module", "trace"]

_CONSTRUCTS = (
    ("symbolically traced variables cannot be used as inputs to control flow", "data-dependent control flow"),
    ("cannot be iterated", "iteration over a traced value"),
    ("'len' is not supported", "len() of a traced value"),
    ("Proxy object cannot be", "a Python operation on a traced value"),
)


def _construct(error: BaseException) -> str:
    message = str(error)
    for needle, words in _CONSTRUCTS:
        if needle in message:
            return words
    return f"{type(error).__name__} raised while tracing"


class GrowcTracer(fx.Tracer):
    """An ``fx.Tracer`` with configurable leaves that records which submodule's ``forward`` failed to trace."""

    def __init__(
        self,
        leaf_modules: Iterable[type[nn.Module] | str] = (),
        autowrap_functions: Iterable[Callable[..., Any]] = (),
        autowrap_modules: Iterable[ModuleType] = (math,),
        fallback_leaves: Iterable[str] = (),
    ) -> None:
        # functions registered with growc.register_op are autowrapped too: each call becomes one graph node
        wrapped = (*autowrap_functions, *wrapped_functions())
        super().__init__(autowrap_modules=tuple(autowrap_modules), autowrap_functions=wrapped)
        leaves = list(leaf_modules)
        self.leaf_types = tuple(t for t in leaves if isinstance(t, type))
        self.leaf_paths = {t for t in leaves if isinstance(t, str)} | set(fallback_leaves)
        self.failed_module: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (*GENERATED_TYPES, TemplateBank)) or is_registered_leaf(m):  # growc.register_op types
            return True
        if module_qualified_name in self.leaf_paths:
            return True
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(
        self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_module is None:  # the innermost module whose forward raised
                self.failed_module = self.path_of_module(m)
            raise


def trace(
    model: nn.Module,
    *,
    leaf_modules: Sequence[type[nn.Module] | str] = (),
    autowrap_functions: Sequence[Callable[..., Any]] = (),
    concrete_args: dict[str, Any] | None = None,
) -> fx.GraphModule:
    """Trace ``model`` into a GraphModule whose submodules are ``model``'s own (no copy is made).

    Args:
        model: any ``nn.Module``. A ``GraphModule`` is re-traced, with growc's mixed layers kept as leaves.
        leaf_modules: module types or dotted module paths not to trace into.
        autowrap_functions: free functions to record as opaque ``call_function`` nodes.
            Module types registered with :func:`growc.register_op` are leaves and registered functions are
            autowrapped, without being listed here.
        concrete_args: forwarded to ``fx.Tracer.trace`` (specialise arguments such as flags).

    Returns:
        The GraphModule; ``gm.meta["growc"]["trace"]`` holds the report: ``fallback_leaves`` (module, type,
        construct, error for each submodule made a leaf because it could not be traced), ``leaf_modules`` and
        ``nodes``.

    Raises:
        GrowcTraceError: the root module's ``forward`` itself cannot be traced.
    """
    fallbacks: list[dict[str, str]] = []
    fallback_paths: list[str] = []
    for _ in range(sum(1 for _ in model.modules()) + 1):
        tracer = GrowcTracer(leaf_modules, autowrap_functions, fallback_leaves=fallback_paths)
        try:
            graph = tracer.trace(model, concrete_args=concrete_args)
            break
        except Exception as error:
            path = tracer.failed_module
            construct = _construct(error)
            if not path or path in fallback_paths:
                if path:
                    where = f"module '{path}'"
                    fix = (
                        f"'{path}' already is a leaf, so the failure is in code it calls: wrap that function "
                        "(autowrap_functions=[...])"
                    )
                else:
                    where = f"the root module ({type(model).__name__})"
                    fix = (
                        "make the root forward traceable: wrap the offending function (autowrap_functions=[...]) "
                        "or specialise an argument (concrete_args={...}); a submodule kept in a plain Python "
                        "list or dict is not registered, so register it (nn.ModuleList/ModuleDict) to let it "
                        "become a leaf (leaf_modules=[...], --leaf on the CLI)"
                    )
                raise GrowcTraceError(
                    f"cannot trace the forward of {where}: {construct} ({type(error).__name__}: "
                    f"{str(error).splitlines()[0] if str(error) else ''}). Fix: {fix}.",
                    module_path=path or "",
                    construct=construct,
                ) from error
            fallback_paths.append(path)
            fallbacks.append(
                {
                    "module": path,
                    "type": type(model.get_submodule(path)).__qualname__,
                    "construct": construct,
                    "error": f"{type(error).__name__}: {error}".splitlines()[0][:300],
                }
            )
    gm = graph_module(tracer.root, graph, type(model).__name__)
    gm.meta.setdefault("growc", {})["trace"] = {
        "fallback_leaves": fallbacks,
        "leaf_modules": sorted(
            str(n.target) for n in gm.graph.nodes if n.op == "call_module" and not _is_builtin_leaf(gm, n)
        ),
        "nodes": len(gm.graph.nodes),
    }
    return gm


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


def graph_module(root: nn.Module, graph: fx.Graph, class_name: str = "GraphModule") -> fx.GraphModule:
    """``fx.GraphModule(root, graph)`` that also keeps ``root``'s template banks registered.

    fx copies only the attributes the graph's nodes name; banks are reached through mixed layers, not nodes, so
    they are carried over explicitly (the state dict must keep holding every template exactly once).
    """
    gm = fx.GraphModule(root, graph, class_name)
    if isinstance(getattr(root, "growc_banks", None), nn.Module) and not hasattr(gm, "growc_banks"):
        gm.add_module("growc_banks", root.growc_banks)
    if isinstance(root, fx.GraphModule):
        gm.meta = copy.deepcopy(root.meta)  # never share (and later write into) the input's records
    return gm


def _is_builtin_leaf(gm: fx.GraphModule, node: fx.Node) -> bool:
    module = gm.get_submodule(str(node.target))
    qualified = type(module).__module__
    return qualified.startswith(("torch.nn", "torch.ao.nn", "growc."))
