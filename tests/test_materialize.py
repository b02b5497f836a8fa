"""The materialize pass: template-mixed ops folded back into plain layers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import growc
from growc.models import WideResNet
from growc.testing import assert_same_function
from helpers import assert_unchanged, snapshot


def test_materialize_folds_every_mixed_layer_and_keeps_the_graph() -> None:
    torch.manual_seed(0)
    model = WideResNet(10, 1, num_classes=4)
    x = torch.randn(2, 3, 16, 16)
    gm = growc.templatize(model, (x,), sharing="shape", init="svd", templates=3)
    before = snapshot(gm)
    plain = growc.materialize(gm)
    assert_unchanged(gm, before)
    assert_same_function(gm, plain, (x,), rtol=1e-5, atol=1e-6, mode="both")
    assert not hasattr(plain, "growc_banks")
    assert [type(m).__name__ for m in plain.modules() if "Mixed" in type(m).__name__] == []
    markers = (
        "growc_banks",
        growc.runtime.markers.begin_step,
        growc.runtime.markers.end_step,
    )  # the per-forward step markers go
    assert [n.name for n in plain.graph.nodes] == [n.name for n in gm.graph.nodes if n.target not in markers]
    report = plain.meta["growc"]["materialize"]
    assert len(report["folded"]) == len(gm.meta["growc"]["templatize"]["layers"])
    assert report["params"]["after"] == sum(p.numel() for p in model.parameters())
    assert plain.meta["growc"]["history"] == ["templatize", "materialize"]


class FunctionalModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Module()
        self.inner.w = nn.Parameter(torch.randn(4, 3, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.inner.w, padding=1)


def test_mixed_weights_become_parameters_at_their_old_path() -> None:
    model = FunctionalModel()
    x = torch.randn(1, 3, 5, 5)
    plain = growc.materialize(growc.templatize(model, (x,)))
    assert isinstance(plain.inner.w, nn.Parameter)
    assert [n.op for n in plain.graph.nodes if n.name.startswith("inner")] == ["get_attr"]
    assert_same_function(model, plain, (x,))


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.add_module("0", nn.MultiheadAttention(8, 2, batch_first=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.get_submodule("0")(x, x, x)[0]


def test_materialize_replaces_a_parametrized_leaf_module_by_a_new_one() -> None:
    torch.manual_seed(0)
    model = _Attention()
    x = torch.randn(2, 5, 8)
    gm = growc.templatize(model, (x,))
    attn = gm.get_submodule("0")
    parametrized = type(attn)
    plain = growc.materialize(gm)
    assert type(plain.get_submodule("0")) is nn.MultiheadAttention and plain.get_submodule("0") is not attn
    assert type(gm.get_submodule("0")) is parametrized and isinstance(
        attn.parametrizations.in_proj_weight[0], growc.MixedWeight
    )
    assert_same_function(gm, plain, (x,), rtol=1e-5, atol=1e-6)


def test_materialized_model_trains_like_a_plain_one() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    x = torch.randn(2, 3, 6, 6)
    plain = growc.materialize(growc.templatize(model, (x,), init="fresh"))
    assert {n for n, _ in plain.named_parameters()} == {"0.weight", "0.bias", "3.weight", "3.bias"}
    plain(x).sum().backward()
    assert all(p.grad is not None for p in plain.parameters())


def test_materialize_refuses_a_plain_module() -> None:
    with pytest.raises(TypeError, match=r"materialize takes a torch\.fx\.GraphModule, got Linear"):
        growc.materialize(nn.Linear(2, 2))  # type: ignore[arg-type]


def test_materialize_of_a_plain_graph_is_identity() -> None:
    gm = fx.symbolic_trace(nn.Sequential(nn.Linear(3, 3)))
    out = growc.materialize(gm)
    assert out.meta["growc"]["materialize"]["folded"] == []
    assert_same_function(gm, out, (torch.randn(2, 3),))


def test_materialize_refuses_non_finite_banks() -> None:
    gm = growc.templatize(nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2)), (torch.randn(2, 3),))
    with torch.no_grad():
        gm.growc_banks.bank1.templates[1, 0, 0] = math.inf  # e.g. a diverged training run
    with pytest.raises(
        growc.GrowcDataError,
        match=r"^materialize: parameter 'growc_banks\.bank1\.templates' holds 1 infinite value\(s\) \(of 12\)",
    ):
        growc.materialize(gm)


def test_materialize_type_error_is_a_growc_error() -> None:
    with pytest.raises(growc.GrowcError, match=r"materialize takes a torch\.fx\.GraphModule, got Linear"):
        growc.materialize(nn.Linear(2, 2))  # type: ignore[arg-type]


def test_materialized_layers_are_new_plain_modules() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1, groups=1), nn.Flatten(), nn.Linear(36, 2))
    x = torch.randn(2, 3, 6, 6)
    gm = growc.templatize(model, (x,))
    plain = growc.materialize(gm)
    assert type(plain.get_submodule("0")) is nn.Conv2d and type(plain.get_submodule("2")) is nn.Linear
    assert type(gm.get_submodule("0")) is growc.MixedConv2d and type(gm.get_submodule("2")) is growc.MixedLinear
    conv = plain.get_submodule("0")
    assert (conv.stride, conv.padding, conv.kernel_size) == ((2, 2), (1, 1), (3, 3))
    assert conv.bias is not gm.get_submodule("0").bias and torch.equal(conv.bias, gm.get_submodule("0").bias)
    assert_same_function(model, plain, (x,))
