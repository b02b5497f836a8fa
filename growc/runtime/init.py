"""Initialisation of template banks, shared by every pass that draws new weights: one rule each.

* :func:`fan_in` and :func:`kaiming_templates`: Kaiming-normal templates (ReLU gain) with growc's fan-in rule,
  which knows that a ``matmul`` weight is laid out ``[..., in, out]`` (``x @ W``), unlike a conv or linear
  weight (``[out, in, ...]``);
* :func:`orthogonal_coefficients`: orthogonal coefficient rows (``nn.init.orthogonal_``);
* :func:`fresh_bank`: both together, the reference's init for training from scratch (``templatize(init="fresh")``
  and the new parents of ``widen(method="random"/"zero")``);
* :func:`svd` and :func:`orthogonal_row`: the coefficient row orthogonal to every row a bank already holds (the
  last right-singular vector), which ``fuse(cross_init="orthogonal")`` and ``widen(method="mixture")`` add.

Every draw is float32 from the caller's generator, then cast, so one seed gives one bank on every dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from growc.errors import GrowcPassError

__all__ = [
    "OrthogonalRow",
    "fan_in",
    "fresh_bank",
    "kaiming_std",
    "kaiming_templates",
    "orthogonal_coefficients",
    "orthogonal_row",
    "svd",
]


def fan_in(kind: str, shape: Sequence[int]) -> int:
    """The fan-in of a weight of ``kind`` (a bank's kind: ``"conv2d"``, ``"linear"``, ``"matmul"``, ...) and
    ``shape``: the product of every dim after the first, except for ``matmul`` weights (``x @ W``, ``W`` laid out
    ``[..., in, out]``), whose fan-in is the second-to-last dim. A 1-d weight's is its size."""
    shape = tuple(shape)
    if kind == "matmul":
        return shape[-2] if len(shape) > 1 else shape[0]
    return math.prod(shape[1:]) if len(shape) > 1 else shape[0]


def kaiming_std(fan: int) -> float:
    """The Kaiming-normal standard deviation (ReLU gain ``sqrt(2)``) for fan-in ``fan`` (at least 1)."""
    return math.sqrt(2.0) / math.sqrt(max(fan, 1))


def kaiming_templates(
    count: int, shape: Sequence[int], fan: int, generator: torch.Generator, dtype: torch.dtype
) -> Tensor:
    """``count`` Kaiming-normal tensors of ``shape`` for fan-in ``fan``, flattened to ``[count, prod(shape)]``:
    drawn in float32 from ``generator``, then cast to ``dtype``."""
    draw = torch.randn((count, math.prod(shape)), generator=generator, dtype=torch.float32)
    return (draw * kaiming_std(fan)).to(dtype)


def orthogonal_coefficients(rows: int, k: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    """A ``[rows, k]`` matrix with orthonormal rows (or columns, when ``rows > k``), drawn in float32 from
    ``generator`` (``nn.init.orthogonal_``), then cast to ``dtype``."""
    coefficients = torch.empty(rows, k, dtype=torch.float32)
    nn.init.orthogonal_(coefficients, generator=generator)
    return coefficients.to(dtype)


def fresh_bank(
    kind: str, shape: Sequence[int], k: int, rows: int, generator: torch.Generator, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """A freshly initialised bank for weights of ``kind`` and ``shape``: ``k`` Kaiming templates ``[k, D]`` (with
    :func:`fan_in`'s rule), then ``rows`` orthogonal coefficient rows ``[rows, k]``, in that order of draws."""
    templates = kaiming_templates(k, shape, fan_in(kind, shape), generator, dtype)
    coefficients = orthogonal_coefficients(rows, k, generator, dtype)
    return templates, coefficients


def svd(where: str, coefficients: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The full SVD ``(U, S, Vh)`` of a bank's coefficient rows; a failure is a :class:`GrowcPassError` naming
    ``where`` (the pass and option, e.g. ``"fuse(cross_init='orthogonal')"``)."""
    try:
        return torch.linalg.svd(coefficients, full_matrices=True)
    except RuntimeError as error:  # torch.linalg.LinAlgError included
        raise GrowcPassError(
            f"{where}: the SVD of a bank's {tuple(coefficients.shape)} coefficients failed: "
            f"{str(error).splitlines()[0]}"
        ) from error


class OrthogonalRow(NamedTuple):
    """A new coefficient row and the rank of the rows it was made orthogonal to."""

    row: Tensor
    rank: int

    @property
    def orthogonal(self) -> bool:
        """Whether the row is orthogonal to every existing row (``rank < K``); otherwise it is the least-aligned
        direction."""
        return self.rank < self.row.numel()


def orthogonal_row(where: str, coefficients: Tensor) -> OrthogonalRow:
    """The unit row orthogonal to every row of ``coefficients`` ``[L, K]``: the last right-singular vector, in
    float64 on the CPU, with the rows' numerical rank (singular values above ``1e-10`` of the largest). When
    ``rank == K`` no direction is orthogonal to all of them and the row is the least-aligned one."""
    existing = coefficients.detach().to("cpu", torch.float64)
    _, s, vh = svd(where, existing)
    rank = int((s > s.max() * 1e-10).sum()) if s.numel() else 0
    return OrthogonalRow(vh[-1], rank)
