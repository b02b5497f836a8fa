"""The op-rule registry: user ops registered from outside growc are analysed, lifted and fused exactly."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import growc
import growc.testing.plugin  # registers the growc-ci hypothesis profile
from growc.fx.registry import KINDS, OpRule, is_registered_leaf, rules_table, unregister_op
from helpers import parents

ROOT = Path(__file__).resolve().parents[1]


# ---- ops growc does not know (module-level: growc.trace autowraps registered functions by their global name) ----


def soft_clip(x: torch.Tensor) -> torch.Tensor:
    """A per-channel activation: traced into, its ``clamp`` has no rule."""
    return torch.clamp(x, -2.0, 2.0) * 0.5 + torch.tanh(x) * 0.5


def half_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a + 0.5 * b


def double_pool(x: torch.Tensor, kernel: int) -> torch.Tensor:
    return F.avg_pool2d(x, kernel) * 2.0


def mean_square(x: torch.Tensor, dim: tuple[int, ...], keepdim: bool = False) -> torch.Tensor:
    return (x * x).mean(dim, keepdim)


def flat(x: torch.Tensor, start_dim: int = 0, end_dim: int = -1) -> torch.Tensor:
    return torch.flatten(x, start_dim, end_dim)


def reshaped(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return x.reshape(shape)


def perm(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return x.permute(dims)


def swap(x: torch.Tensor, a: int, b: int) -> torch.Tensor:
    return x.transpose(a, b)


def join(tensors: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
    return torch.cat(tensors, dim)


def sign_flip(x: torch.Tensor) -> torch.Tensor:
    """Data-dependent control flow: fx cannot trace into it, so it must be one (opaque) node."""
    return x if float(x.sum()) >= 0 else -x


class ChannelScale(nn.Module):
    """A per-channel affine ``x * weight[c] + bias[c]`` on ``[B, C, ...]``: a module with a ``[C]`` weight."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(channels) + 0.5)
        self.bias = nn.Parameter(torch.randn(channels) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


class MyBatchNorm(nn.BatchNorm2d):
    """A BatchNorm subclass from outside torch.nn: fx traces into it unless it is registered (a leaf)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


class MyLayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


class MyLinear(nn.Module):
    """A module whose forward is a weighted op on ``self.weight`` (``[out, in]``)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(features, features) / features**0.5)
        self.bias = nn.Parameter(torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


#: per rule kind: the op to register, how the stage uses it, and the channels it leaves
STAGES: dict[str, tuple[object, Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor], int]] = {
    "unary": (soft_clip, lambda m, x, y: soft_clip(y), 4),
    "elementwise": (half_add, lambda m, x, y: half_add(half_add(y, torch.relu(y)), x[:, :1]), 4),
    "pool": (double_pool, lambda m, x, y: double_pool(y, 2), 4),
    "reduce": (mean_square, lambda m, x, y: mean_square(y, (2, 3), True), 4),
    "flatten": (flat, lambda m, x, y: flat(y, 2), 4),
    "reshape": (reshaped, lambda m, x, y: reshaped(y, (2, 4, 36)), 4),
    "permute": (perm, lambda m, x, y: perm(torch.relu(perm(y, (0, 2, 3, 1))), (0, 3, 1, 2)), 4),
    "transpose": (swap, lambda m, x, y: swap(torch.relu(swap(y, 1, 3)), 3, 1), 4),
    "cat": (join, lambda m, x, y: join([join([y, torch.relu(y)], 1), join([y, y], 1)], 2), 8),
    "per-channel": (ChannelScale, lambda m, x, y: m.op(y), 4),
    "norm": (MyBatchNorm, lambda m, x, y: m.op(y), 4),
    "layer norm": (MyLayerNorm, lambda m, x, y: m.op(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), 4),
    "linear": (MyLinear, lambda m, x, y: m.op(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), 4),
    "opaque": (sign_flip, lambda m, x, y: sign_flip(y), 4),
}
#: kinds whose fuse lift is the exact per-parent fallback
FALLBACK_KINDS = {"layer norm", "linear", "opaque"}


class Net(nn.Module):
    """conv -> the stage -> per-channel mean -> linear head."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        op, _, channels = STAGES[kind]
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        if isinstance(op, type):
            self.op = op(4)
        self.fc = nn.Linear(channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = STAGES[self.kind][1](self, x, self.conv(x))
        return self.fc(y.flatten(2).mean(2))


X = torch.randn(2, 3, 6, 6)


@pytest.fixture
def registered(request: pytest.FixtureRequest) -> Iterator[None]:
    """Register the op of the kind named by the test's parameter (taken back afterwards)."""
    kind = request.param
    with growc.register_op(STAGES[kind][0], kind):
        yield


def fuse_exactly(make: Callable[[], nn.Module], x: torch.Tensor = X, **options: object) -> dict:
    """Fuse two parents with zero cross blocks; assert the result is their sum; return the report."""
    a, b = parents(make)
    gm = growc.fuse([a, b], (x,), cross_init="zero", **options)
    with torch.no_grad():
        expected, got = a(x) + b(x), gm(x)
    _, max_rel = growc.max_abs_rel_error(expected, got)
    assert max_rel <= growc.exactness_tolerance(x.dtype)
    report = gm.meta["growc"]["fuse"]
    report["gm"] = gm
    return report


def group_with(analysis: growc.passes.channels.ChannelAnalysis, dim: tuple[str, str, int]):
    return next((g for g in analysis.groups if dim in g.dims), None)


# ---- the brief's two user ops ------------------------------------------------------------------------------


class ActNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.scale = ChannelScale(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.scale(soft_clip(self.conv(x))).mean((2, 3)))


def test_registered_activation_and_scale_are_analysed_and_fused_exactly() -> None:
    with growc.register_op(soft_clip, "unary"), growc.register_op(ChannelScale, "per-channel"):
        gm = growc.trace(ActNet())
        assert [n.target for n in gm.graph.nodes if n.op == "call_function"][:1] == [soft_clip]  # one node
        assert "scale" in gm.meta["growc"]["trace"]["leaf_modules"]
        analysis = growc.analyze_channels(gm, (X,))
        group = group_with(analysis, ("tensor", "conv", 1))
        assert group is not None and group.permutable
        assert {("param", "scale.weight", 0), ("param", "scale.bias", 0), ("tensor", "soft_clip", 1)} <= set(group.dims)
        report = fuse_exactly(ActNet)
    assert report["fallbacks"] == []
    assert {"node": "scale", "target": "scale", "lift": "ChannelScale concatenated"} in report["lifts"]
    fused = {n.target: n for n in report["gm"].graph.nodes if n.op == "call_function"}
    assert fused[soft_clip].meta["growc"]["fuse"]["kind"] == "F1"  # applied once, to the fused tensor
    assert report["gm"].scale.weight.shape == (8,)


def test_unregistered_the_same_ops_take_the_fallback() -> None:
    assert not is_registered_leaf(ChannelScale(2))
    gm = growc.trace(ActNet())
    analysis = growc.analyze_channels(gm, (X,))
    assert all(("param", "scale.weight", 0) not in g.dims for g in analysis.groups)
    assert "read by clamp, which has no channel rule" in group_with(analysis, ("tensor", "conv", 1)).blocked
    report = fuse_exactly(ActNet)
    assert {"clamp", "view"} <= {f["target"] for f in report["fallbacks"]}
    leaf = fuse_exactly(ActNet, templatize_options={"leaf_modules": [ChannelScale]})
    assert "ChannelScale" in {f["target"] for f in leaf["fallbacks"]}


def test_permuting_a_group_through_registered_ops_keeps_the_function() -> None:
    with growc.register_op(soft_clip, "unary"), growc.register_op(ChannelScale, "per-channel"):
        torch.manual_seed(0)
        gm = growc.trace(ActNet().eval())
        analysis = growc.analyze_channels(gm, (X,))
        group = group_with(analysis, ("tensor", "conv", 1))
        with torch.no_grad():
            reference = gm(X)
            state = dict(gm.named_parameters())
            perm_ = torch.tensor([2, 0, 3, 1])
            for name, axis in group.params:
                state[name].copy_(state[name].index_select(axis, perm_))
            torch.testing.assert_close(gm(X), reference, rtol=1e-5, atol=1e-6)


@settings(settings.get_profile("growc-ci"), max_examples=5)
@given(st.integers(1, 6), st.integers(2, 7), st.sampled_from(["sum", "mean"]))
def test_registered_ops_fuse_exactly_for_any_width(channels: int, size: int, head: str) -> None:
    class Wide(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, channels, 3, padding=1)
            self.scale = ChannelScale(channels)
            self.fc = nn.Linear(channels, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.scale(soft_clip(self.conv(x))).mean((2, 3)))

    x = torch.randn(3, 2, size, size)
    with growc.register_op(soft_clip, "unary"), growc.register_op(ChannelScale, "per-channel"):
        a, b = parents(Wide)
        gm = growc.fuse([a, b], (x,), cross_init="zero", head=head)
    assert gm.meta["growc"]["fuse"]["fallbacks"] == []
    with torch.no_grad():
        expected = a(x) + b(x)
        expected = expected / 2 if head == "mean" else expected
        _, max_rel = growc.max_abs_rel_error(expected, gm(x))
    assert max_rel <= growc.exactness_tolerance(x.dtype)


# ---- every rule kind, through the registry --------------------------------------------------------------------


@pytest.mark.parametrize("registered", list(STAGES), indirect=True)
def test_every_rule_kind_analyses_and_fuses_a_user_op(registered: None, request: pytest.FixtureRequest) -> None:
    kind = request.node.callspec.params["registered"]
    op = STAGES[kind][0]
    name = op.__name__
    gm = growc.trace(Net(kind))
    targets = [n.target for n in gm.graph.nodes if n.op != "call_module"]
    if isinstance(op, type):
        assert is_registered_leaf(gm.op)
    else:
        assert op in targets  # autowrapped: one node
    analysis = growc.analyze_channels(gm, (X,))
    conv = group_with(analysis, ("tensor", "conv", 1))
    if kind in ("opaque", "reshape"):  # no channel rule: the conv's channels stop there
        assert f"read by {name}, which has no channel rule" in conv.blocked
    elif kind == "cat":  # the channel cat holds the conv's group; the spatial cat couples
        assert conv.contained_in
    else:
        assert conv.permutable, conv.blocked
    if kind in ("per-channel", "norm", "layer norm", "linear"):  # a linear reads the channels by weight dim 1
        assert ("param", "op.weight", 1 if kind == "linear" else 0) in conv.dims
    report = fuse_exactly(lambda: Net(kind))
    fallbacks = {f["target"] for f in report["fallbacks"]}
    if kind in FALLBACK_KINDS:
        # templatize parametrizes MyLinear's weight: its type becomes torch's ParametrizedMyLinear subclass
        assert name in fallbacks or f"Parametrized{name}" in fallbacks
    else:
        assert report["fallbacks"] == []
    if kind in ("per-channel", "norm"):
        assert {"node": "op", "target": "op", "lift": f"{name} concatenated"} in report["lifts"]


def test_a_method_can_be_registered_and_a_builtin_replaced_then_restored() -> None:
    class Clamped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).clamp(-1, 1).relu().mean((2, 3)))

    assert {f["target"] for f in fuse_exactly(Clamped)["fallbacks"]} >= {"clamp"}
    with growc.register_op("clamp", "unary"):
        assert fuse_exactly(Clamped)["fallbacks"] == []
        with growc.register_op("relu", "opaque", replace=True):
            assert {f["target"] for f in fuse_exactly(Clamped)["fallbacks"]} >= {"relu"}
        assert fuse_exactly(Clamped)["fallbacks"] == []
    assert ("method", "clamp") not in growc.op_rules()
    assert growc.op_rules()[("method", "relu")].builtin


@pytest.mark.parametrize("order", ["last first", "first first"])
def test_stacked_replacements_unregistered_in_any_order_restore_the_builtin(order: str) -> None:
    builtin = growc.op_rules()[("method", "relu")]
    a = growc.register_op("relu", "opaque", replace=True)
    b = growc.register_op("relu", "elementwise", replace=True)
    assert growc.op_rules()[("method", "relu")].rule.kind == "elementwise"
    first, second = (b, a) if order == "last first" else (a, b)
    first.unregister()
    first.unregister()  # idempotent
    assert growc.op_rules()[("method", "relu")].rule.kind == ("opaque" if order == "last first" else "elementwise")
    second.unregister()
    assert growc.op_rules()[("method", "relu")] is builtin


def test_registration_errors_and_unregister() -> None:
    with pytest.raises(growc.GrowcConfigError, match=r"Tensor\.relu already has a rule"):
        growc.register_op("relu", "unary")
    with pytest.raises(growc.GrowcConfigError, match="rule must be an OpRule or one of"):
        growc.register_op(soft_clip, "elementwize")
    with pytest.raises(growc.GrowcConfigError, match="applies to ops called as module"):
        growc.register_op(soft_clip, "norm")
    with pytest.raises(growc.GrowcConfigError, match="target must be a callable"):
        growc.register_op(3, "unary")
    with pytest.raises(growc.GrowcConfigError, match="has no user registration"):
        unregister_op(torch.relu)
    growc.register_op(soft_clip, "unary", lift="opaque")
    try:
        entry = growc.op_rules()[("function", soft_clip)]
        assert (entry.rule.kind, entry.builtin) == ("unary / opaque", False)
    finally:
        unregister_op(soft_clip)
    assert ("function", soft_clip) not in growc.op_rules()
    with pytest.raises(TypeError):
        growc.op_rules()[("function", soft_clip)] = entry  # read-only


def test_every_kind_name_makes_a_rule() -> None:
    assert set(STAGES) <= set(KINDS)
    assert all(isinstance(make(), OpRule) for make in KINDS.values())


def test_docs_table_is_the_registry() -> None:
    page = (ROOT / "docs" / "ops.md").read_text()
    match = re.search(r"<!-- rules-table -->\n(.*?)<!-- /rules-table -->", page, flags=re.S)
    assert match is not None, "docs/ops.md lost its <!-- rules-table --> markers"
    assert match.group(1) == rules_table(), (
        "docs/ops.md's table of built-in rules is out of date: regenerate it with "
        "`python -c \"from growc.fx.registry import write_docs; write_docs('docs/ops.md')\"`"
    )
