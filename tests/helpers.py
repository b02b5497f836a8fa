"""Small shared helpers for the test suite."""

from __future__ import annotations

from torch import nn

from growc.fx.pipeline import Snapshot, first_change, snapshot

__all__ = ["assert_unchanged", "snapshot"]


def assert_unchanged(module: nn.Module, before: Snapshot) -> None:
    change = first_change(before, module)
    assert change is None, f"the module was mutated: {change}"
