"""Shape and dtype propagation on fake tensors: no real compute, no parameter copies.

:func:`propagate_shapes` runs the graph under ``FakeTensorMode`` (real parameters are converted to fake tensors
on first use) and stores a :class:`TensorInfo` pytree on every node as ``node.meta["growc_shape"]``. A node whose
op cannot run on fake tensors (it inspects data, e.g. ``if x.sum() > 0`` inside a leaf) is run once on zeros of
the propagated shapes instead; such nodes are listed in the returned report, never hidden.
"""

from __future__ import annotations

from collections.abc import Sequence
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.utils._pytree import tree_flatten, tree_map

__all__ = ["TensorInfo", "max_abs_rel_error", "propagate_shapes"]


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of one tensor value of the graph."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": str(self.dtype).removeprefix("torch.")}


def _info(value: Any) -> Any:
    return TensorInfo(tuple(int(s) for s in value.shape), value.dtype) if isinstance(value, Tensor) else value


class _FakeInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, mode: FakeTensorMode) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.mode = mode
        self.real_nodes: list[str] = []

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as error:  # noqa: BLE001 - data-dependent op: fall back to zeros, and say so
            if n.op not in ("call_module", "call_function", "call_method"):
                raise
            result = self._run_on_zeros(n, error)
        n.meta["growc_shape"] = tree_map(_info, result)
        return result

    def _run_on_zeros(self, n: fx.Node, error: Exception) -> Any:
        args, kwargs = self.fetch_args_kwargs_from_env(n)

        def real(value: Any) -> Any:
            if isinstance(value, FakeTensor):
                return torch.zeros(value.shape, dtype=value.dtype)
            return value

        with unset_fake_temporarily():
            args, kwargs = tree_map(real, args), tree_map(real, kwargs)
            out = getattr(self, n.op)(n.target, args, kwargs)
        self.real_nodes.append(f"{n.name} ({type(error).__name__})")
        return tree_map(lambda v: self.mode.from_tensor(v) if isinstance(v, Tensor) else v, out)


def propagate_shapes(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> dict[str, Any]:
    """Annotate every node of ``gm`` with ``node.meta["growc_shape"]`` (a pytree of :class:`TensorInfo`).

    Runs on fake tensors in eval mode (training flags are restored afterwards; no buffer changes). Returns a
    report: ``nodes`` (count) and ``real_compute_nodes`` (nodes that had to run on zeros).
    """
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    flags = [(m, m.training) for m in gm.modules()]
    gm.eval()
    try:
        with mode:
            fake_inputs = tree_map(lambda v: mode.from_tensor(v) if isinstance(v, Tensor) else v, list(example_inputs))
            interpreter = _FakeInterpreter(gm, mode)
            interpreter.run(*fake_inputs)
    finally:
        for module, flag in flags:
            module.training = flag
    return {"nodes": len(gm.graph.nodes), "real_compute_nodes": interpreter.real_nodes}


def max_abs_rel_error(reference: Any, output: Any) -> tuple[float, float]:
    """Largest absolute difference over all tensor leaves of two pytrees, and that divided by ``max|reference|``.

    The relative error is a max-norm one: ``max|ref - out| / max|ref|`` (0 when both are 0). Raises ``ValueError``
    when the trees' structures or leaf shapes differ.
    """
    ref_leaves, ref_spec = tree_flatten(reference)
    out_leaves, out_spec = tree_flatten(output)
    if ref_spec != out_spec:
        raise ValueError(f"output structures differ: {ref_spec} vs {out_spec}")
    max_abs = 0.0
    max_ref = 0.0
    for ref, out in zip(ref_leaves, out_leaves, strict=True):
        if not isinstance(ref, Tensor):
            continue
        if ref.shape != out.shape:
            raise ValueError(f"output shapes differ: {tuple(ref.shape)} vs {tuple(out.shape)}")
        ref64, out64 = ref.detach().double(), out.detach().double()
        if ref64.numel():
            max_abs = max(max_abs, float((ref64 - out64).abs().max()))
            max_ref = max(max_ref, float(ref64.abs().max()))
    if max_abs == 0.0:
        return 0.0, 0.0
    return max_abs, (max_abs / max_ref if max_ref > 0 else math.inf)
