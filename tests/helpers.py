"""Small shared helpers for the test suite."""

from __future__ import annotations

import torch
from torch import nn


def snapshot(module: nn.Module) -> tuple[str, dict[str, torch.Tensor], list[bool]]:
    """Code (for a GraphModule) or repr, a cloned state dict and the training flags: enough to prove no mutation."""
    code = getattr(module, "code", None) or repr(module)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    return code, state, [m.training for m in module.modules()]


def assert_unchanged(module: nn.Module, before: tuple[str, dict[str, torch.Tensor], list[bool]]) -> None:
    code, state, flags = snapshot(module)
    assert code == before[0], "the module's code changed"
    assert state.keys() == before[1].keys(), "the module's state_dict keys changed"
    for key, value in state.items():
        assert torch.equal(value, before[1][key]), f"state_dict entry {key} changed"
    assert flags == before[2], "training flags changed"
