"""Argument and output checks the passes share: seeds, example inputs, parents, size bounds, the output run.

Every check raises a :class:`~growc.errors.GrowcError` subclass naming the pass (``where``) and what to change.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, fx, nn

from growc.errors import GrowcConfigError, GrowcDataError, GrowcError, GrowcPassError
from growc.fx.analysis import check_finite_state, check_finite_values, computation_dtype, nonfinite_tree, run_outputs

__all__ = [
    "SIZE_FACTOR",
    "check_example_inputs",
    "check_growth_size",
    "check_module",
    "check_parents",
    "check_seed",
    "checked_outputs",
    "describe_parents",
    "first_line",
    "format_bytes",
    "is_templatized",
    "positive_int",
    "size_bound",
]


#: New template banks (and a grown model's generated weights) may take at most this many times the bytes of the
#: weights they come from, or 1 GiB, whichever is more: a bound on a mistyped ``templates`` or ``factor``, checked
#: before anything is allocated.
SIZE_FACTOR = 256


_SIZE_FLOOR = 2**30


def first_line(error: BaseException) -> str:
    """``TypeName: first line of the message``: an exception in one line, for error messages."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int when it is an integer >= 1 (``True`` is not), else a ``GrowcConfigError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise GrowcConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_seed(seed: Any, span: int = 1) -> int:
    """A seed for ``torch.Generator.manual_seed``; ``span`` seeds ``seed, seed + 1, ...`` are drawn from it."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= 2**63 - span:
        raise GrowcConfigError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return int(seed)


def check_module(where: str, model: Any) -> None:
    """Refuse a ``model`` that is not an ``nn.Module``, naming the pass."""
    if not isinstance(model, nn.Module):
        raise GrowcConfigError(f"{where} takes an nn.Module, got {type(model).__name__}")


def check_example_inputs(where: str, example_inputs: Any) -> tuple[Any, ...]:
    """``example_inputs`` as a tuple, refused when it is not a tuple or list (a bare tensor would be split into
    its rows), holds a meta tensor or a non-finite value."""
    if not isinstance(example_inputs, (tuple, list)):
        got = "a Tensor" if isinstance(example_inputs, Tensor) else type(example_inputs).__name__
        raise GrowcConfigError(
            f"{where}: example_inputs must be a tuple or list of the model's positional inputs, e.g. (x,); got {got}"
        )
    inputs = tuple(example_inputs)
    check_finite_values(list(inputs), where, "example input")
    return inputs


def format_bytes(n: float) -> str:
    """``n`` bytes in decimal units to three significant digits (``1.07 GB``)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 999.5 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def size_bound(base: int) -> int:
    """The bytes a pass may allocate for templates or generated weights made from ``base`` bytes of weights."""
    return max(_SIZE_FLOOR, SIZE_FACTOR * base)


def checked_outputs(
    where: str,
    references: Sequence[tuple[str, nn.Module]],
    candidate: tuple[str, nn.Module],
    example_inputs: Sequence[Any],
    train: bool,
    *,
    exact: bool,
) -> tuple[list[Any], Any]:
    """The references' and the candidate's outputs (see :func:`run_outputs`), with clear errors: a reference that
    fails on the inputs is the caller's (``GrowcConfigError``), a candidate that fails is the pass's
    (``GrowcPassError``); a non-finite reference output cannot be compared (``GrowcDataError``), nor a non-finite
    candidate output of a lossy pass (an exact one fails its tolerance check instead)."""
    outputs = []
    for label, module in references:
        try:
            (out,) = run_outputs([module], example_inputs, train=train)
        except GrowcError:
            raise
        except Exception as error:
            raise GrowcConfigError(
                f"{where}: {label} fails on the example inputs ({first_line(error)}); do they fit the model?"
            ) from error
        problem = nonfinite_tree(out)
        if problem is not None:
            dtype = str(computation_dtype([module], out)).removeprefix("torch.")
            raise GrowcDataError(
                f"{where}: {label}'s output on the example inputs {problem}, with finite weights and inputs: the "
                f"output check cannot compare non-finite values (an overflow in {dtype}?); pass verify=False to skip it"
            )
        outputs.append(out)
    label, module = candidate
    try:
        (out,) = run_outputs([module], example_inputs, train=train)
    except GrowcError:
        raise
    except Exception as error:
        raise GrowcPassError(
            f"{where}: the {label} fails on the example inputs, which the model runs on ({first_line(error)}). "
            "Please report this model"
        ) from error
    problem = None if exact else nonfinite_tree(out)
    if problem is not None:
        raise GrowcDataError(
            f"{where}: the {label}'s output on the example inputs {problem}, while the model's is finite: its new "
            "weights overflow; try another init or a wider dtype"
        )
    return outputs, out


def is_templatized(model: nn.Module) -> bool:
    return isinstance(model, fx.GraphModule) and hasattr(model, "growc_banks")


def describe_parents(parents: Sequence[nn.Module], describe: Callable[[Tensor], str | None]) -> list[str]:
    """Per parent, the distinct ``describe(tensor)`` values of its parameters and buffers, joined by ``/``."""
    out = []
    for parent in parents:
        seen = {describe(t) for t in (*parent.parameters(), *parent.buffers())}
        out.append("/".join(sorted(d for d in seen if d is not None)))
    return out


def check_parents(where: str, parents: Sequence[nn.Module]) -> None:
    """Parents on one device and of one floating dtype, with real, finite weights (clear errors, before any work)."""
    devices = describe_parents(parents, lambda t: str(t.device))
    if len(set(devices)) > 1:
        listed = ", ".join(f"parent {i} {d or 'none'}" for i, d in enumerate(devices))
        raise GrowcConfigError(
            f"{where}: the parents are on different devices: {listed}; move them to one device first (e.g. "
            f"parent.to({devices[0].split('/')[0]!r}))"
        )
    dtypes = describe_parents(
        parents, lambda t: str(t.dtype).removeprefix("torch.") if t.is_floating_point() or t.is_complex() else None
    )
    if len(set(dtypes)) > 1:
        listed = ", ".join(f"parent {i} {d or 'none'}" for i, d in enumerate(dtypes))
        raise GrowcConfigError(
            f"{where}: the parents hold different dtypes: {listed}; convert them to one dtype first (e.g. "
            f"parent.to(torch.{dtypes[0].split('/')[0] or 'float32'}))"
        )
    for i, parent in enumerate(parents):
        check_finite_state(parent, where, owner=f"parent {i}'s ")


def check_growth_size(where: str, request: str, fold: int, model: nn.Module) -> None:
    """Refuse, before any copy, a growth whose generated weights (``fold`` times the model's parameters: n x n
    blocks per layer) exceed :data:`~growc.passes.templatize.SIZE_FACTOR` times the parameters (or 1 GiB)."""
    base = sum(p.numel() * p.element_size() for p in model.parameters())
    bound = size_bound(base)
    if fold * base > bound:
        raise GrowcDataError(
            f"{where}: {request} would grow the model's {format_bytes(base)} of parameters about {fold}-fold "
            f"({format_bytes(fold * base)}), more than growc's bound of {format_bytes(bound)} "
            f"({SIZE_FACTOR} x the parameters, and at least 1 GiB)"
        )
