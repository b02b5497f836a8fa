"""Small shared helpers for the test suite."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from growc.fx.pipeline import Snapshot, first_change, snapshot

__all__ = ["assert_unchanged", "parents", "snapshot"]


def assert_unchanged(module: nn.Module, before: Snapshot) -> None:
    change = first_change(before, module)
    assert change is None, f"the module was mutated: {change}"


def parents(make: Callable[[], nn.Module]) -> tuple[nn.Module, nn.Module]:
    """Two parents of one architecture with different weights (seeds 0 and 1), in eval mode."""
    torch.manual_seed(0)
    a = make().eval()
    torch.manual_seed(1)
    b = make().eval()
    return a, b
