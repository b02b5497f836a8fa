"""Training FLOPs, counted with ``torch.utils.flop_counter``: of one step, and of a whole phase.

Owns: :func:`count_training_flops` (one step's FLOPs, split into what scales with the batch and what happens once
per step: generating weights from templates), :func:`phase_flops` (a phase's total over its steps, examples and
ranks) and :func:`logits` (a classifier's logits from its output, a transformers ``ModelOutput`` included).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from growc.errors import GrowcError

__all__ = ["count_training_flops", "logits", "phase_flops"]


def logits(out: Any) -> torch.Tensor:
    """A classifier's logits from its output: the tensor itself, a mapping's ``logits`` (a transformers
    ``ModelOutput``), or a tuple's first element."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise GrowcError(f"the model returns {type(out).__name__} with no logits: training needs a classifier's logits")


def count_training_flops(model: nn.Module, sample_shape: tuple[int, ...], num_classes: int) -> dict[str, float]:
    """FLOPs of one training step (forward, cross-entropy, backward) with ``torch.utils.flop_counter``.

    Measured at batch sizes 2 and 4 on a copy of ``model``: ``per_sample`` scales with the batch, ``per_step`` does
    not (generating weights from templates happens once per step). Returns both.
    """
    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).train()
    device = next((p.device for p in probe.parameters()), torch.device("cpu"))
    counts = []
    for batch in (2, 4):
        x = torch.randn(batch, *sample_shape, device=device)
        y = torch.zeros(batch, dtype=torch.long, device=device) % num_classes
        with FlopCounterMode(display=False) as counter:
            F.cross_entropy(logits(probe(x)), y).backward()
        counts.append(float(counter.get_total_flops()))
        probe.zero_grad(set_to_none=True)
    per_sample = (counts[1] - counts[0]) / 2
    return {"per_sample": per_sample, "per_step": max(0.0, counts[0] - 2 * per_sample)}


def phase_flops(step: dict[str, float], *, steps: int, seen: int, epochs: int, ranks: int) -> dict[str, float]:
    """A phase's FLOPs from one step's (:func:`count_training_flops`): ``steps`` steps on each of ``ranks`` ranks,
    ``seen`` examples an epoch for ``epochs`` epochs."""
    return {
        **step,
        "steps": steps,
        "samples": seen * epochs,
        "ranks": ranks,
        # each rank generates the weights once per step; the examples are split over the ranks
        "total": step["per_step"] * steps * ranks + step["per_sample"] * seen * epochs,
    }
