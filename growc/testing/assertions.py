"""Numerical equivalence checks for modules (e.g. a model before and after a graph pass).

Error measure used throughout (a *max-norm relative error*), per output leaf ``x`` (reference,
from the first module) and ``y`` (candidate)::

    max_abs = max |x - y|                (elementwise, over the whole leaf)
    max_rel = max_abs / max |x|          (0 when max_abs == 0)

and a leaf passes when ``max_abs <= atol + rtol * max |x|``.  Positions where both values are
equal (including equal infinities) or both are NaN count as a difference of 0; any other
NaN/inf mismatch counts as an infinite difference.  ``max |x|`` is taken over finite entries.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.utils._pytree import keystr, tree_flatten, tree_flatten_with_path

from growc.fx.analysis import as_tensor, leaf_error, max_abs_rel_error, plain_containers, relative_error

__all__ = ["assert_same_function", "max_abs_rel_error"]

Mode = Literal["eval", "train", "both"]
_MODES: dict[str, tuple[str, ...]] = {"eval": ("eval",), "train": ("train",), "both": ("eval", "train")}


def _cuda_devices(*objs: Any) -> list[int]:
    devices: set[int] = set()
    for obj in objs:
        tensors: list[torch.Tensor] = []
        if isinstance(obj, nn.Module):
            tensors += list(obj.parameters()) + list(obj.buffers())
        else:
            tensors += [t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)]
        devices.update(t.device.index or 0 for t in tensors if t.device.type == "cuda")
    return sorted(devices)


def _run(module: Callable[..., Any], inputs: tuple[Any, ...], train: bool, seed: int) -> Any:
    """Call a deep copy of ``module`` on a deep copy of ``inputs`` in the given mode."""
    module = copy.deepcopy(module)
    if isinstance(module, nn.Module):
        module.train(train)
    args = copy.deepcopy(inputs)
    with torch.no_grad():
        torch.manual_seed(seed)
        return module(*args)


def _path_str(path: tuple[Any, ...]) -> str:
    return keystr(path) if path else "<root>"


def _compare(out_a: Any, out_b: Any, mode: str, rtol: float, atol: float) -> None:
    leaves_a, spec_a = tree_flatten_with_path(plain_containers(out_a))
    leaves_b, spec_b = tree_flatten_with_path(plain_containers(out_b))
    where = f"assert_same_function (mode={mode!r})"
    if spec_a != spec_b:
        raise AssertionError(f"{where}: output tree structures differ:\n  a: {spec_a}\n  b: {spec_b}")
    n = len(leaves_a)
    for i, ((path, x), (_, y)) in enumerate(zip(leaves_a, leaves_b, strict=True)):
        leaf = f"output leaf {i} of {n} (path {_path_str(path)})"
        xt, yt = as_tensor(x), as_tensor(y)
        if xt is None or yt is None or isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            if type(x) is not type(y) or x != y:
                raise AssertionError(f"{where}: {leaf} differs: a={x!r}, b={y!r}")
            continue
        if xt.shape != yt.shape:
            raise AssertionError(
                f"{where}: {leaf} shapes differ: a has shape {tuple(xt.shape)}, b has shape {tuple(yt.shape)}"
            )
        if xt.dtype != yt.dtype:
            raise AssertionError(f"{where}: {leaf} dtypes differ: a is {xt.dtype}, b is {yt.dtype}")
        max_abs, ref_max = leaf_error(xt, yt)
        tol = atol + rtol * ref_max
        if not max_abs <= tol:
            raise AssertionError(
                f"{where}: {leaf} differs beyond tolerance:\n"
                f"  shape: {tuple(xt.shape)}, dtype: {xt.dtype}\n"
                f"  max abs diff: {max_abs:.6g}\n"
                f"  max rel diff: {relative_error(max_abs, ref_max):.6g} (max|a-b| / max|a|, max|a| = {ref_max:.6g})\n"
                f"  tolerance: atol + rtol*max|a| = {atol:g} + {rtol:g}*{ref_max:.6g} = {tol:.6g}"
            )


def assert_same_function(
    a: nn.Module | Callable[..., Any],
    b: nn.Module | Callable[..., Any],
    inputs: Sequence[Any] | torch.Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    mode: Mode = "eval",
    seed: int = 0,
) -> None:
    """Assert that modules ``a`` and ``b`` compute the same function on ``inputs``.

    Each module is called on a *deep copy* of itself and of ``inputs`` (so neither argument is
    mutated: not the parameters, not BN running statistics, not ``.training`` flags), under
    ``torch.no_grad()``, after ``torch.manual_seed(seed)`` so that dropout masks match.  The
    caller's global RNG state is restored afterwards.

    Outputs may be tensors or any pytree (tuple/list/dict/namedtuple).  They must have the same
    tree structure and, leaf by leaf, the same shape and dtype, and satisfy the max-norm bound
    ``max|x - y| <= atol + rtol * max|x|`` where ``x`` is the leaf from ``a`` (the reference).
    Non-tensor leaves must be equal.

    Args:
        a: reference module (or callable).
        b: candidate module (or callable).
        inputs: positional arguments (a tuple/list), or a single tensor.
        rtol: relative tolerance, scaled by ``max|x|`` of the reference leaf.
        atol: absolute tolerance.
        mode: ``"eval"``, ``"train"`` or ``"both"`` (eval first, then train, on fresh copies).
        seed: seed passed to ``torch.manual_seed`` before each call.

    Raises:
        AssertionError: naming the mode, the output leaf (index and path), the shapes, the max
            absolute and relative differences and the tolerance.
        ValueError: for an unknown ``mode``.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {sorted(_MODES)}, got {mode!r}")
    args: tuple[Any, ...] = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    with torch.random.fork_rng(devices=_cuda_devices(a, b, args)):
        for m in _MODES[mode]:
            train = m == "train"
            out_a = _run(a, args, train, seed)
            out_b = _run(b, args, train, seed)
            _compare(out_a, out_b, m, rtol, atol)
