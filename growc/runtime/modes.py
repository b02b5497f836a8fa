"""Graph ops that follow ``.train()``/``.eval()``: what a graph captured by ``torch.export`` needs to stay right.

``torch.export`` bakes the mode into the graph (``aten.dropout(x, p, False)``, ``aten.batch_norm(..., training,
...)``). Capture turns the mode-dependent ops that belong to a standard module back into that module
(:mod:`growc.fx.export`); a functional op left in the graph reads its flag from a :class:`ModeValue` node instead, a
module with no state whose output is one of two constants, chosen by its own ``training`` flag (which
``.train()``/``.eval()`` on the root set).
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["ModeValue"]


class ModeValue(nn.Module):
    """``train`` in training mode, ``eval`` in eval mode (a Python constant, e.g. ``batch_norm``'s ``training``)."""

    def __init__(self, train: Any, eval: Any) -> None:
        super().__init__()
        self.train_value = train
        self.eval_value = eval

    def forward(self) -> Any:
        return self.train_value if self.training else self.eval_value

    def extra_repr(self) -> str:
        return f"train={self.train_value!r}, eval={self.eval_value!r}"
