"""Tracing: leaves, autowrap, per-submodule fallback and the error when nothing works."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import growc
from growc.testing import assert_same_function


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace this
            return self.conv(x)
        return -self.conv(x)


class Iterates(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([row * 2 for row in x])  # iteration over a traced value


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.ReLU(), DataDependent())
        self.it = Iterates()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.it(self.block(self.stem(x)))
        return self.fc(x.mean((2, 3)))


def test_untraceable_submodules_fall_back_to_leaves_and_are_reported() -> None:
    torch.manual_seed(0)
    model = Outer()
    gm = growc.trace(model)
    report = gm.meta["growc"]["trace"]
    assert [(f["module"], f["type"], f["construct"]) for f in report["fallback_leaves"]] == [
        ("block.1", "DataDependent", "data-dependent control flow"),
        ("it", "Iterates", "iteration over a traced value"),
    ]
    assert report["leaf_modules"] == ["block.1", "it"]
    x = torch.randn(2, 3, 6, 6)
    assert_same_function(model, gm, (x,), mode="both")
    # the conv inside the fallback leaf is still templatized (as a Conv submodule of a leaf)
    tm = growc.templatize(model, (x,))
    assert "block.1.conv.weight" in [layer["weight"] for layer in tm.meta["growc"]["templatize"]["layers"]]
    assert_same_function(model, tm, (x,), mode="both")


def test_root_forward_that_cannot_be_traced_raises_a_specific_error() -> None:
    with pytest.raises(growc.GrowcTraceError) as info:
        growc.trace(DataDependent())
    error = info.value
    assert error.module_path == "" and error.construct == "data-dependent control flow"
    message = str(error)
    assert message.startswith(
        "cannot trace the forward of the root module (DataDependent): data-dependent control flow"
    )
    assert "leaf_modules=[...]" in message and "concrete_args" in message


def test_leaf_modules_by_type_and_path() -> None:
    model = Outer()
    gm = growc.trace(model, leaf_modules=[DataDependent, "it"])
    assert gm.meta["growc"]["trace"]["fallback_leaves"] == []
    targets = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    assert {"block.1", "it"} <= targets


def clip_sum(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(min=0).sum() if x.sum() > 0 else x.sum()


class UsesFunction(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + clip_sum(x)


def test_autowrap_functions_become_opaque_calls() -> None:
    gm = growc.trace(UsesFunction(), autowrap_functions=[clip_sum])
    assert next(n.target for n in gm.graph.nodes if n.op == "call_function") is clip_sum
    x = torch.randn(3, 4)
    assert_same_function(UsesFunction(), gm, (x,))


class Flagged(nn.Module):
    def forward(self, x: torch.Tensor, double: bool = False) -> torch.Tensor:
        return x * 2 if double else x


def test_concrete_args_specialise_python_flags() -> None:
    gm = growc.trace(Flagged(), concrete_args={"double": True})
    x = torch.randn(2)
    torch.testing.assert_close(gm(x, True), x * 2)  # fx keeps the argument and checks its value


def test_trace_shares_submodules_and_does_not_copy() -> None:
    model = Outer()
    gm = growc.trace(model)
    assert gm.stem is model.stem
