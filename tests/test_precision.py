"""growc.runtime.precision: weights are mixed in at least fp32, outside autocast."""

from __future__ import annotations

import torch

from growc.runtime.precision import compute_dtype, full_precision


def test_compute_dtype_is_at_least_fp32() -> None:
    assert compute_dtype(torch.bfloat16) == torch.float32
    assert compute_dtype(torch.float16) == torch.float32
    assert compute_dtype(torch.float32) == torch.float32
    assert compute_dtype(torch.float64) == torch.float64


def test_full_precision_leaves_autocast_and_restores_it() -> None:
    cpu = torch.device("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with full_precision(cpu):
            assert not torch.is_autocast_enabled("cpu")
        assert torch.is_autocast_enabled("cpu")
    with full_precision(torch.device("meta")):  # nothing to leave
        assert not torch.is_autocast_enabled("cpu")
