"""Template banks: ``K`` templates shared by ``L`` layers of one kind, with one coefficient row per layer.

A :class:`TemplateBank` holds the templates ``T`` (shape ``[K, *weight_shape]``) and the coefficients ``A``
(shape ``[L, K]``: one row per layer of the bank); the weight of row ``l`` is ``W_l = sum_k A[l, k] * T_k``. It is
registered once on the root module, so the state dict holds every template exactly once; the layers that read it
(:mod:`growc.runtime.layers`) reference it without owning it. This module owns the bank's storage layout (its
templates are kept out-major, see :func:`out_major`), its reference weights and its cache epoch, which
:mod:`growc.runtime.generation` reads through :attr:`TemplateBank.epoch`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from growc.runtime.precision import compute_dtype, full_precision

__all__ = ["TemplateBank", "Term", "contract", "out_major"]


def contract(coefficients: Tensor, templates: Tensor) -> Tensor:
    """``coefficients @ templates`` flattened, in at least fp32 and outside autocast, returned in the templates'
    dtype (the reference definition of a bank's weights; layers generate theirs with
    :mod:`growc.runtime.generation`)."""
    dtype = compute_dtype(templates.dtype)
    with full_precision(templates.device):
        flat = coefficients.to(dtype) @ templates.flatten(1).to(dtype)
    return flat.to(templates.dtype)


def out_major(templates: Tensor) -> Tensor:
    """``templates`` (``[K, out, ...]``) laid out as ``[out, K, ...]`` in memory (a copy only when they are not).

    Generation reads the templates as ``[out, K, width]`` batches and writes their gradient in that order; with this
    layout both are views, so the gradient lands in ``.grad`` without a copy. Shape and values are unchanged.
    """
    if templates.dim() < 2 or templates.transpose(0, 1).is_contiguous():
        return templates
    return templates.transpose(0, 1).contiguous().transpose(0, 1)


class TemplateBank(nn.Module):
    """K templates shared by L layers of one kind, weight shape and ``groups``; one coefficient row per layer.

    The templates have a memory format of their own, like ``channels_last`` conv weights: ``bank.templates`` has the
    shape ``[K, *weight_shape]`` and the memory order of ``[out, K, ...]`` (see :func:`out_major`), so it is not
    contiguous and, as on a ``channels_last`` weight, ``.view(-1)`` on it fails (use ``.reshape``/``.contiguous()``).
    """

    def __init__(self, templates: Tensor, coefficients: Tensor, *, kind: str, groups: int = 1) -> None:
        super().__init__()
        if coefficients.dim() != 2 or coefficients.shape[1] != templates.shape[0]:
            raise ValueError(f"coefficients must be [layers, K={templates.shape[0]}], got {tuple(coefficients.shape)}")
        self.templates = nn.Parameter(out_major(templates))
        self.coefficients = nn.Parameter(coefficients)
        self.kind = kind
        self.groups = groups
        self._epoch = 0  # bumped by clear_cache: the layers' eval caches and step weights are regenerated

    @property
    def epoch(self) -> int:
        """How many times :meth:`clear_cache` was called (or the bank moved): generated weights made at another
        epoch are stale."""
        return self._epoch

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return tuple(self.templates.shape[1:])

    @property
    def num_templates(self) -> int:
        return int(self.templates.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.coefficients.shape[0])

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind}, weight_shape={self.weight_shape}, groups={self.groups}, "
            f"templates={self.num_templates}, layers={self.num_layers}"
        )

    def _mix(self, coefficients: Tensor) -> Tensor:
        """``coefficients @ templates`` (see :func:`contract`); one matmul whatever the row count."""
        return contract(coefficients, self.templates)

    def weights(self) -> Tensor:
        """All L generated weights, ``[L, *weight_shape]``, in one contraction."""
        return self._mix(self.coefficients).view(self.num_layers, *self.weight_shape)

    def weight(self, index: int) -> Tensor:
        """The weight of row ``index``, generated on its own (layers generate theirs through their group)."""
        return self._mix(self.coefficients[index]).view(self.weight_shape)

    def clear_cache(self) -> None:
        """Make every layer reading this bank regenerate its weight.

        Layers notice a change by itself: a different parameter object (``load_state_dict`` with ``assign``,
        ``.to()``) or a bumped version counter (any in-place update: optimizer steps, ``copy_``). Writes through
        ``.data`` bypass version counters: call this after one.
        """
        self._epoch += 1

    def add_rows(self, rows: Tensor) -> list[int]:
        """Append coefficient rows ``[r, K]`` (new layers or blocks over the same templates); returns their indices.

        The coefficients Parameter is replaced by a longer one: build optimizers after adding rows.
        """
        rows = rows.to(self.coefficients.device, self.coefficients.dtype).reshape(-1, self.num_templates)
        start = self.num_layers
        grown = torch.cat([self.coefficients.detach(), rows])
        self.coefficients = nn.Parameter(grown, requires_grad=self.coefficients.requires_grad)
        return list(range(start, start + rows.shape[0]))

    def _apply(self, fn: Any, recurse: bool = True) -> TemplateBank:  # .to(), .cuda(), .half() ...
        self.clear_cache()

        def convert(t: Tensor) -> Tensor:
            try:
                out = fn(t)
            except RuntimeError as error:
                # model.to(memory_format=torch.channels_last) reaches the 5-D templates of a conv2d bank; their
                # layout is growc's (generation reads them flat), so convert dtype/device through a 4-D view
                if "channels_last" not in str(error) or t.dim() != 5:
                    raise
                out = fn(t.flatten(0, 1)).reshape(t.shape)
            if t is self.templates:
                return out_major(out)
            return out.contiguous() if t.is_contiguous() else out  # a memory format change keeps them flat

        return super()._apply(convert, recurse)


#: one term of a generated block: ``(bank, coefficient row)``
Term = tuple[TemplateBank, int]
