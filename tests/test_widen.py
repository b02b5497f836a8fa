"""The widen pass: single-parent growth by MixtureGrowth and the baseline operators, and multi-step growth."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import growc
import growc.models
from growc.models import WideResNet
from growc.runtime.layers import GridConv2d
from growc.testing import ALL_FEATURES, assert_same_function, cnn_models
from helpers import assert_unchanged, snapshot

NO_RANDOMNESS = ALL_FEATURES - {"dropout"}


@settings(max_examples=12)
@given(cnn_models(features=NO_RANDOMNESS), st.sampled_from(["net2net", "zero"]), st.integers(2, 3))
def test_net2net_and_zero_preserve_the_function(generated, method, factor) -> None:
    model = generated.build()
    before = snapshot(model)
    gm = growc.widen(model, generated.inputs, method=method, factor=factor)
    assert_unchanged(model, before)
    assert_same_function(model, gm, generated.inputs, rtol=1e-5, atol=1e-5, mode="both")


@settings(max_examples=8)
@given(cnn_models(features=NO_RANDOMNESS, max_blocks=3))
def test_growth_composes_and_carries_templates(generated) -> None:
    model = generated.build()
    once = growc.widen(model, generated.inputs, method="net2net")
    twice = growc.widen(once, generated.inputs, method="net2net")
    assert_same_function(model, twice, generated.inputs, rtol=1e-5, atol=1e-5, mode="both")
    assert set(once.growc_banks) <= {name.removeprefix("p0_") for name in twice.growc_banks}


def wrn() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return WideResNet(10, 1, num_classes=5), torch.randn(4, 3, 32, 32)


def test_widths_and_layouts() -> None:
    model, x = wrn()
    for method in ("mixture", "net2net", "random", "zero"):
        gm = growc.widen(model, (x,), method=method)
        conv = gm.get_submodule("block1.0.conv1")
        assert isinstance(conv, GridConv2d) and (conv.in_channels, conv.out_channels) == (32, 32)
        assert gm(x).shape == (4, 5)
        assert gm.meta["growc"]["widen"]["method"] == method


def test_mixture_grows_over_the_models_own_templates() -> None:
    model, x = wrn()
    gm = growc.widen(model, (x,), method="mixture")
    lifts = gm.meta["growc"]["widen"]["lifts"]
    blocks = next(lift["blocks"] for lift in lifts if lift["target"] == "block1.0.conv1")
    banks = {term.split("[")[0] for row in blocks for block in row for term in block}
    assert banks == {"p0_bank1"}  # every block, the new diagonal one too, mixes the model's own templates
    assert len(gm.growc_banks) == len(growc.templatize(model, (x,)).growc_banks)
    assert gm.meta["growc"]["widen"]["output"]["max_rel"] > 1e-3  # new blocks change the function


def test_zero_keeps_new_channels_out_of_old_ones() -> None:
    model, x = wrn()
    gm = growc.widen(model, (x,), method="zero")
    w = gm.get_submodule("block1.0.conv1").weight.detach()
    assert w[:16, 16:].abs().sum() == 0 and w[16:, :16].abs().sum() > 0
    head = gm.get_submodule("fc").weight.detach()
    assert head[:, 64:].abs().sum() == 0


def test_net2net_replicates_channels() -> None:
    model, x = wrn()
    gm = growc.widen(model, (x,), method="net2net")
    w = gm.get_submodule("block1.0.conv1").weight.detach()
    torch.testing.assert_close(w[:16, :16], w[16:, 16:])
    torch.testing.assert_close(w[:16, :16] * 2, model.block1[0].conv1.weight.detach())


def test_random_changes_the_function_and_is_seeded() -> None:
    model, x = wrn()
    a = growc.widen(model, (x,), method="random", seed=1)
    b = growc.widen(model, (x,), method="random", seed=1)
    assert a.meta["growc"]["widen"]["output"]["max_rel"] > 1e-3
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "double"}, "method must be 'mixture', 'net2net', 'random' or 'zero', got 'double'"),
        ({"factor": 1}, "factor must be an integer >= 2, got 1"),
        ({"factor": 1.5}, "factor must be an integer >= 2, got 1.5"),
    ],
)
def test_bad_options(kwargs, message) -> None:
    with pytest.raises(growc.GrowcConfigError, match="^" + message.replace(".", r"\.") + "$"):
        growc.widen(nn.Linear(2, 2), (torch.randn(1, 2),), **kwargs)


def test_quarter_half_full_with_fuse_then_widen() -> None:
    """The reference's unfinished multi-step growth: 0.25 -> 0.5 (fuse two parents) -> 1 (widen)."""
    torch.manual_seed(0)
    a, b = WideResNet(10, 1, num_classes=5), WideResNet(10, 1, num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    half = growc.fuse([a, b], (x,), cross_init="zero")
    full = growc.widen(half, (x,), method="net2net")
    assert full.get_submodule("block3.0.conv2").out_channels == 4 * 64
    with torch.no_grad():
        torch.testing.assert_close(full.eval()(x), a.eval()(x) + b.eval()(x), rtol=1e-4, atol=1e-4)
    assert_same_function(half, growc.materialize(full), (x,), rtol=1e-4, atol=1e-4, mode="both")


# --- non-finite values, dtypes and sizes ------------------------------------------------------------------------


def _cnn(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return growc.models.resolve_model("cnn1d-4").to(dtype).eval()


CNN_X = (torch.randn(2, 1, 40),)


def test_non_finite_weights_of_a_templatized_model_are_an_error() -> None:
    gm = growc.templatize(_cnn(), CNN_X)
    with torch.no_grad():
        gm.growc_banks.bank1.coefficients[0, 0] = math.nan
    with pytest.raises(
        growc.GrowcDataError,
        match=r"^widen: parameter 'growc_banks\.bank1\.coefficients' holds 1 NaN value\(s\) \(of 2\): growc cannot",
    ):
        growc.widen(gm, CNN_X, method="net2net")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("method", "factor"), [("net2net", 3), ("zero", 2)])
def test_low_precision_models_widen_preserving(dtype: torch.dtype, method: str, factor: int) -> None:
    model = _cnn(dtype)
    gm = growc.widen(model, (CNN_X[0].to(dtype),), method=method, factor=factor)
    output = gm.meta["growc"]["widen"]["output"]
    assert output["tolerance"] == growc.fx.analysis.exactness_tolerance(dtype)
    assert output["max_rel"] <= output["tolerance"]


def test_a_factor_beyond_the_size_bound_is_refused_before_allocating() -> None:
    with pytest.raises(
        growc.GrowcDataError,
        match=r"^widen: factor=1000000 would grow the model's 760 B of parameters about 1000000000000-fold "
        r"\(760 TB\), more than growc's bound of 1\.07 GB \(256 x the parameters, and at least 1 GiB\)$",
    ):
        growc.widen(_cnn(), CNN_X, factor=10**6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": 0.5}, r"seed must be an integer in \[0, 2\*\*63\), got 0\.5"),
        ({"templatize_options": {"seed": 3}}, r"templatize_options may not set 'seed' \(widen's own option\)"),
    ],
)
def test_bad_option_types(kwargs, message) -> None:
    with pytest.raises(growc.GrowcConfigError, match="^" + message):
        growc.widen(_cnn(), CNN_X, **kwargs)


def test_mixture_widening_of_a_model_without_templates_is_refused() -> None:
    model = growc.models.CNN1d(width=4, num_classes=3)
    x = torch.randn(2, 1, 24)
    with pytest.raises(growc.GrowcConfigError, match=r"widen: method 'mixture' mixes the model's templates, and it"):
        growc.widen(model, (x,), factor=2, method="mixture", templatize_options={"layers": []})


def test_fuse_templated_never_modifies_its_parents() -> None:
    from growc.passes.config import FusionConfig
    from growc.passes.fuse import fuse_templated

    parents = [growc.templatize(_cnn(), CNN_X, seed=i) for i in range(2)]
    before = [snapshot(p) for p in parents]
    fusion = fuse_templated(parents, CNN_X, FusionConfig(cross_init="orthogonal", seed=0))
    for parent, snap in zip(parents, before, strict=True):
        assert_unchanged(parent, snap)  # no step marker stripped, no coefficient row added
    ours = {id(t) for t in (*fusion.module.parameters(), *fusion.module.buffers())}
    theirs = {id(t) for p in parents for t in (*p.parameters(), *p.buffers())}
    assert not ours & theirs  # the result shares no tensor with the parents
    assert {"stem", "grid", "head"} <= {lift["lift"] for lift in fusion.lifts} and fusion.fallbacks == []
    # the same fusion as growc.fuse's, draw for draw
    fused = growc.fuse(parents, CNN_X, cross_init="orthogonal", verify=False)
    assert torch.equal(fused(*CNN_X), fusion.module(*CNN_X))


@pytest.mark.parametrize("method", ["mixture", "net2net", "random", "zero"])
def test_widening_a_templatized_model_leaves_it_alone(method: str) -> None:
    model = growc.templatize(_cnn(), CNN_X)
    before = snapshot(model)
    growc.widen(model, CNN_X, method=method)
    assert_unchanged(model, before)
