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
import time
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any, Literal

from torch import fx, nn

from growc.errors import GrowcConfigError, GrowcTraceError
from growc.fx.einops_ops import EINOPS_FUNCTIONS, EINOPS_LAYERS, EINOPS_MODULES
from growc.fx.export import Dynamic, adopt, captured_by_export, check_dynamic, export_graph, is_aten_graph
from growc.fx.graphs import graph_module
from growc.fx.registry import is_registered_leaf, wrapped_functions
from growc.runtime.bank import TemplateBank
from growc.runtime.layers import GENERATED_TYPES

__all__ = ["CAPTURES", "Capture", "GrowcTracer", "trace"]

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
        # and so are einops' functions; ``einops.rearrange(...)`` calls too: einops joins fx's namespaces patched
        # from the start (autowrap_modules=(einops,) would also wrap EinopsError, parse_shape, asnumpy)
        wrapped = (*autowrap_functions, *wrapped_functions(), *EINOPS_FUNCTIONS)
        super().__init__(autowrap_modules=tuple(autowrap_modules), autowrap_functions=wrapped)
        self._autowrap_search.extend(m for m in EINOPS_MODULES if m not in self._autowrap_search)
        leaves = list(leaf_modules)
        self.leaf_types = tuple(t for t in leaves if isinstance(t, type))
        self.leaf_paths = {t for t in leaves if isinstance(t, str)} | set(fallback_leaves)
        self.failed_module: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (*GENERATED_TYPES, TemplateBank, *EINOPS_LAYERS)) or is_registered_leaf(m):
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


Capture = Literal["auto", "fx", "export"]
CAPTURES: tuple[str, ...] = ("auto", "fx", "export")


def trace(
    model: nn.Module,
    example_inputs: Sequence[Any] | None = None,
    *,
    capture: Capture = "auto",
    dynamic: Dynamic = True,
    leaf_modules: Sequence[type[nn.Module] | str] = (),
    autowrap_functions: Sequence[Callable[..., Any]] = (),
    concrete_args: dict[str, Any] | None = None,
) -> fx.GraphModule:
    """Capture ``model`` as a GraphModule whose submodules and tensors are ``model``'s own (no copy is made).

    Args:
        model: any ``nn.Module``. A ``GraphModule`` from fx is re-traced (growc's mixed layers kept as leaves); one
            captured by ``export`` is returned as it is; an unlifted ``torch.export`` module
            (``ExportedProgram.module()``) is copied and adopted (:func:`growc.fx.export.adopt`).
        example_inputs: positional inputs; needed by ``export`` (and by ``auto`` to fall back to it).
        capture: ``"fx"`` (symbolic tracing, with submodules that cannot be traced made leaves), ``"export"``
            (``torch.export``, non-strict: an ATen graph, see :mod:`growc.fx.export`) or ``"auto"`` (fx; export when
            the root cannot be traced or fx had to make a submodule holding weights a leaf, and example inputs are
            given).
        dynamic: export only: ``True`` marks the batch dim of every input and the sequence dim of integer inputs
            dynamic, ``False`` none, or per input a list of dims (``None`` for none).
        leaf_modules: fx only: module types or dotted module paths not to trace into.
        autowrap_functions: fx only: free functions to record as opaque ``call_function`` nodes.
            Module types registered with :func:`growc.register_op` are leaves and registered functions are
            autowrapped, without being listed here; so are einops' functions and layers.
        concrete_args: fx only: forwarded to ``fx.Tracer.trace`` (specialise arguments such as flags).

    Returns:
        The GraphModule; ``gm.meta["growc"]["trace"]`` holds the report: ``capture`` (which ran), ``reason`` (why),
        ``seconds``, ``tried`` (each strategy that failed first, with its error), ``nodes`` and, for fx,
        ``fallback_leaves`` (module, type, construct, error for each submodule made a leaf) and ``leaf_modules``;
        for export, ``dynamic``, ``specialised``, ``raised``, ``mode_aware``, ``unregistered_ops`` and ``notes``.

    Raises:
        GrowcTraceError: no strategy captured the model: it names what each tried, the first failing construct
            with its source line, and the fix.
        GrowcConfigError: an unknown ``capture``, or ``export`` without example inputs.
    """
    if capture not in CAPTURES:
        raise GrowcConfigError(f"trace: capture must be one of {', '.join(CAPTURES)}, got {capture!r}")
    check_dynamic(dynamic)
    if isinstance(model, fx.GraphModule) and captured_by_export(model):
        return model
    if isinstance(model, fx.GraphModule) and is_aten_graph(model):
        return _adopted(model)
    inputs = None if example_inputs is None else tuple(example_inputs)
    if capture == "export" and inputs is None:
        raise GrowcConfigError("trace: capture='export' needs example_inputs (torch.export runs the model)")
    tried: list[dict[str, Any]] = []
    fx_error: GrowcTraceError | None = None
    gm = None
    if capture in ("fx", "auto"):
        start = time.perf_counter()
        try:
            gm = _fx_trace(model, leaf_modules, autowrap_functions, concrete_args)
        except GrowcTraceError as error:
            if capture == "fx" or inputs is None:
                raise
            fx_error = error
            tried.append({"capture": "fx", "seconds": round(time.perf_counter() - start, 3), "error": str(error)})
        if gm is not None:
            report = gm.meta["growc"]["trace"]
            report.update(capture="fx", seconds=round(time.perf_counter() - start, 3), tried=[])
            weighted = [f["module"] for f in report["fallback_leaves"] if _holds_weights(model, f["module"])]
            if capture == "fx" or not weighted or inputs is None:
                report["reason"] = "capture='fx'" if capture == "fx" else "the model traces with fx"
                return gm
            report["reason"] = f"fx made submodules holding weights leaves ({', '.join(weighted)}); export failed"
    try:
        exported, export_report = export_graph(model, inputs, dynamic=dynamic)
    except GrowcTraceError as error:
        if gm is not None:  # auto, after fx with weighted leaves: keep the fx graph, say why
            gm.meta["growc"]["trace"]["tried"] = [{"capture": "export", "error": str(error)}]
            return gm
        raise _capture_error(model, fx_error, error) from error
    reason = "capture='export'"
    if capture == "auto":
        reason = "fx could not trace the root module"
        if fx_error is None:
            reason = "fx made submodules holding weights leaves"
    exported.meta.setdefault("growc", {})["trace"] = {
        "capture": "export",
        "reason": reason,
        **export_report,
        "tried": tried,
        "nodes": len(exported.graph.nodes),
    }
    return exported


def _adopted(model: fx.GraphModule) -> fx.GraphModule:
    start = time.perf_counter()
    gm, report = adopt(copy.deepcopy(model))
    gm.meta.setdefault("growc", {})["trace"] = {
        "capture": "export",
        "reason": "an unlifted torch.export module, copied and adopted",
        "seconds": round(time.perf_counter() - start, 3),
        **report,
        "tried": [],
        "nodes": len(gm.graph.nodes),
    }
    return gm


def _holds_weights(model: nn.Module, path: str) -> bool:
    try:
        return any(p.ndim >= 2 for p in model.get_submodule(path).parameters())
    except AttributeError:
        return False


def _capture_error(model: nn.Module, fx_error: GrowcTraceError | None, error: GrowcTraceError) -> GrowcTraceError:
    parts = [f"cannot capture {type(model).__name__}:"]
    if fx_error is not None:
        parts.append(f"fx: {fx_error}")
    parts.append(str(error))
    fix = (
        "Fix: make the failing construct traceable (data-dependent control flow on tensor values cannot be "
        "captured: compute it outside the model or pass it as an input), pass concrete example inputs that the "
        "model accepts, or register the offending module or function with growc.register_op so it stays one op."
    )
    return GrowcTraceError(
        " ".join([*parts, fix]),
        module_path=fx_error.module_path if fx_error is not None else "",
        construct=fx_error.construct if fx_error is not None else error.construct,
    )


def _fx_trace(
    model: nn.Module,
    leaf_modules: Sequence[type[nn.Module] | str],
    autowrap_functions: Sequence[Callable[..., Any]],
    concrete_args: dict[str, Any] | None,
) -> fx.GraphModule:
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


def _is_builtin_leaf(gm: fx.GraphModule, node: fx.Node) -> bool:
    module = gm.get_submodule(str(node.target))
    qualified = type(module).__module__
    return qualified.startswith(("torch.nn", "torch.ao.nn", "growc."))
