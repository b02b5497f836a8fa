"""Pass infrastructure: every pass is a pure function ``GraphModule -> new GraphModule``.

:func:`finish_pass` is what each pass calls last: it lints and recompiles the new graph and records the pass's
report on ``gm.meta["growc"][name]`` and in ``gm.meta["growc"]["history"]``. :class:`Pipeline` composes passes,
lints after every one and, when a pass fails, raises :class:`~growc.errors.GrowcPassError` naming the failing
pass and the passes that ran before it. With ``check_pure=True`` it also proves that no pass changed its input
(generated code and every state-dict tensor compared bit for bit).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import fx

from growc.errors import GrowcPassError

__all__ = ["Pipeline", "finish_pass", "first_change", "pass_name", "snapshot"]

GraphPass = Callable[[fx.GraphModule], fx.GraphModule]


def finish_pass(gm: fx.GraphModule, name: str, report: dict[str, Any]) -> fx.GraphModule:
    """Lint and recompile ``gm``'s graph and record ``report`` as the result of pass ``name``.

    A graph that owns template banks gets the step markers
    (:func:`growc.runtime.markers.begin_step`/``end_step``) that let each bank generate its weights once per forward."""
    from growc.runtime.markers import add_step_markers

    try:
        gm.graph.lint()
    except Exception as error:
        raise GrowcPassError(f"pass '{name}' produced a graph that does not lint: {error}") from error
    add_step_markers(gm)
    gm.recompile()
    meta = gm.meta.setdefault("growc", {})
    meta[name] = report
    meta.setdefault("history", []).append(name)
    return gm


def pass_name(p: Callable[..., Any]) -> str:
    """A readable name for a pass: the function's name, or ``name(arg=value, ...)`` for a ``functools.partial``."""
    if isinstance(p, functools.partial):
        inner = pass_name(p.func)
        kwargs = ", ".join(f"{k}={v!r}" for k, v in p.keywords.items())
        return f"{inner}({kwargs})" if kwargs else inner
    return getattr(p, "__name__", type(p).__name__)


Snapshot = tuple[str, dict[str, torch.Tensor], list[bool]]


def snapshot(module: torch.nn.Module) -> Snapshot:
    """What a pure pass must leave as it was: generated code (or repr), every state-dict tensor, training flags."""
    code = module.code if isinstance(module, fx.GraphModule) else repr(module)
    state = {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items()}
    return code, state, [m.training for m in module.modules()]


def first_change(before: Snapshot, module: torch.nn.Module) -> str | None:
    """The first difference between ``before`` and ``module`` now, in words; None when there is none."""
    code, state, flags = snapshot(module)
    if code != before[0]:
        return "its generated code changed"
    if state.keys() != before[1].keys():
        return "its state_dict keys changed"
    for key, value in state.items():
        old = before[1][key]
        if value.shape != old.shape or value.dtype != old.dtype or not torch.equal(value, old):
            return f"state_dict entry '{key}' changed"
    if flags != before[2]:
        return "its training flags changed"
    return None


class Pipeline:
    """Run passes in order; lint after each; name the failing pass and its predecessors in any error.

    Example::

        pipeline = growc.Pipeline(
            functools.partial(growc.templatize, example_inputs=(x,), init="exact"),
            growc.materialize,
        )
        plain = pipeline(model)
    """

    def __init__(self, *passes: GraphPass, check_pure: bool = False) -> None:
        if not passes:
            raise ValueError("a Pipeline needs at least one pass")
        self.passes = passes
        self.check_pure = check_pure

    @property
    def names(self) -> list[str]:
        return [pass_name(p) for p in self.passes]

    def __call__(self, gm: torch.nn.Module) -> fx.GraphModule:
        names = self.names
        for i, (p, name) in enumerate(zip(self.passes, names, strict=True)):
            before = " -> ".join(names[:i]) or "nothing (first pass)"
            before_pass = snapshot(gm) if self.check_pure else None
            try:
                out = p(gm)
                if not isinstance(out, fx.GraphModule):
                    raise TypeError(f"returned {type(out).__name__}, not a torch.fx.GraphModule")
                if out is gm:
                    raise TypeError("returned its input; a pass must return a new GraphModule")
                out.graph.lint()
                if before_pass is not None and (change := first_change(before_pass, gm)) is not None:
                    raise RuntimeError(f"mutated its input: {change}")
            except Exception as error:
                raise GrowcPassError(
                    f"pass {i + 1}/{len(names)} '{name}' failed (after: {before}): {type(error).__name__}: {error}"
                ) from error
            gm = out
        return gm
