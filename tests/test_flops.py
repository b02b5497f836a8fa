"""growc.train.flops: one training step's FLOPs (what scales with the batch, what happens once per step) and a
phase's total."""

from __future__ import annotations

import pytest
import torch

import growc
from growc.train import count_training_flops
from growc.train.flops import phase_flops


def test_training_flops_count_the_weight_generation_once_per_step() -> None:
    model = growc.models.resolve_model("growc.models:CNN1d", width=4, num_classes=3)
    x = torch.randn(2, 1, 24)
    plain = count_training_flops(model, (1, 24), 3)
    mixed = count_training_flops(growc.templatize(model, (x,), init="fresh", verify=False), (1, 24), 3)
    assert plain["per_step"] == 0 and plain["per_sample"] > 0
    assert mixed["per_sample"] == plain["per_sample"]  # the same convolutions per example
    assert mixed["per_step"] > 0  # plus generating the weights (forward and backward of the mix), once a step


def test_counting_leaves_the_model_as_it_was() -> None:
    model = growc.models.resolve_model("growc.models:CNN1d", width=4, num_classes=3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_training_flops(model, (1, 24), 3)
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_phase_generates_weights_once_per_step_on_each_rank_and_splits_the_examples() -> None:
    total = phase_flops({"per_sample": 10.0, "per_step": 1000.0}, steps=8, seen=120, epochs=2, ranks=2)
    assert total == {"per_sample": 10.0, "per_step": 1000.0, "steps": 8, "samples": 240, "ranks": 2,
                     "total": pytest.approx(1000.0 * 8 * 2 + 10.0 * 240)}  # fmt: skip
    assert list(total) == ["per_sample", "per_step", "steps", "samples", "ranks", "total"]  # done.json's order
