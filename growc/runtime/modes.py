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

__all__ = ["InputGuard", "ModeValue"]


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


class InputGuard(nn.Module):
    """Checks a call's inputs against what a ``torch.export`` capture fixed: the sizes of its static dims and the
    values of non-tensor inputs it baked. A graph called outside them would compute something else silently (a
    ``view`` to baked sizes, a mean divided by a baked length); the guard raises ``ValueError`` naming the input,
    the dim and the fix instead. ``expected`` has one entry per input: ``{dim: size}`` for a tensor, ``("value",
    v)`` for a baked constant, ``None`` for nothing to check."""

    def __init__(self, names: list[str], expected: list[Any]) -> None:
        super().__init__()
        self.names = list(names)
        self.expected = list(expected)

    def forward(self, *inputs: Any) -> None:
        for name, value, expected in zip(self.names, inputs, self.expected, strict=False):
            if isinstance(expected, dict):
                for dim, size in expected.items():
                    if value.shape[dim] != size:
                        raise ValueError(
                            f"input '{name}' has size {value.shape[dim]} in dim {dim}, but this graph was captured "
                            f"by torch.export with that dim fixed at {size} (the model's code made it static, or it "
                            "was not marked dynamic: capture again with dynamic=[...] naming it)"
                        )
            elif isinstance(expected, tuple) and value != expected[1]:
                raise ValueError(
                    f"input '{name}' is {value!r}, but torch.export baked it into this graph as {expected[1]!r}: "
                    "capture again with that value, or make it a tensor input"
                )

    def extra_repr(self) -> str:
        return ", ".join(f"{n}: {e}" for n, e in zip(self.names, self.expected, strict=False) if e is not None)
