"""Tests for growc.testing: the CNN strategies, the equivalence assertion and the pytest plugin."""

from __future__ import annotations

import copy
import json
import math
import operator
import os
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from torch import nn

from growc.testing import (
    ALL_FEATURES,
    BlockSpec,
    CNNSpec,
    GeneratedCNN,
    GeneratedModel,
    assert_same_function,
    block_output_shape,
    build_cnn,
    cnn_models,
    cnn_specs,
    max_abs_rel_error,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

FAST = settings(deadline=None, max_examples=30, suppress_health_check=[HealthCheck.too_slow])
FIND = settings(deadline=None, max_examples=300, phases=[Phase.generate], database=None)


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and thread wake-ups dominate on busy CPUs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def reused_targets(gm: torch.fx.GraphModule) -> dict[str, int]:
    """``call_module`` targets called more than once in the traced graph, with their call counts."""
    counts = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    return {target: n for target, n in counts.items() if n > 1}


def tied_pairs(gm: torch.fx.GraphModule) -> list[tuple[str, str]]:
    """Pairs of distinct called Conv/Linear modules whose ``weight`` is one and the same Parameter."""
    modules = dict(gm.named_modules())
    called = dict.fromkeys(n.target for n in gm.graph.nodes if n.op == "call_module")
    weighted = [t for t in called if isinstance(modules[t], (nn.Conv1d, nn.Conv2d, nn.Linear))]
    return [
        (a, b)
        for i, a in enumerate(weighted)
        for b in weighted[i + 1 :]
        if modules[a] is not modules[b] and modules[a].weight is modules[b].weight
    ]


_MODULE_FEATURES: tuple[tuple[tuple[type[nn.Module], ...], str], ...] = (
    ((nn.BatchNorm1d, nn.BatchNorm2d), "bn"),
    ((nn.GroupNorm,), "gn"),
    ((nn.ReLU, nn.GELU, nn.SiLU, nn.Hardswish), "act"),
    ((nn.Dropout,), "dropout"),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d), "pool"),
)


def _module_feature(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str | None:
    mod = modules[node.target]
    if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
        return "conv" if mod.groups == 1 else "depthwise" if mod.groups == mod.in_channels else "grouped"
    for types, feature in _MODULE_FEATURES:
        if isinstance(mod, types):
            return feature
    if isinstance(mod, nn.Flatten):
        src = node.args[0]
        is_gap = src.op == "call_module" and isinstance(
            modules[src.target], (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
        )
        return "gap_head" if is_gap else "flatten_head"
    return None


def _function_feature(node: torch.fx.Node, called: set) -> str | None:
    if node.target is operator.add:
        return "residual"
    if node.target is torch.cat:
        return "concat"
    if node.target is operator.mul and torch.sigmoid in called:
        return "se"
    if node.target in (F.conv1d, F.conv2d, F.linear) and node.args[1].op == "get_attr":
        return "functional"
    if getattr(node.target, "__module__", "").startswith("einops"):
        return "einops"
    return None


def graph_features(gm: torch.fx.GraphModule) -> set[str]:
    """Feature names whose markers occur in a traced graph (a superset of ``spec.features``)."""
    modules = dict(gm.named_modules())
    found: set[str] = set()
    called = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    if any(isinstance(modules[t], (nn.Conv1d, nn.Conv2d)) for t in reused_targets(gm)):
        found.add("reuse")
    if tied_pairs(gm):
        found.add("tied")
    n_linear = 0
    for node in gm.graph.nodes:
        if node.op == "call_module":
            n_linear += isinstance(modules[node.target], nn.Linear)
            feature = _module_feature(node, modules)
        else:
            feature = _function_feature(node, called) if node.op == "call_function" else None
        if feature is not None:
            found.add(feature)
    if n_linear >= 2:
        found.add("mlp_head")
    return found


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------


@FAST
@given(cnn_models())
def test_generated_models_trace_and_match(model: GeneratedModel) -> None:
    module = model.build()
    gm = torch.fx.symbolic_trace(module)
    assert_same_function(module, gm, model.inputs, mode="both")
    with torch.no_grad():
        out = module.eval()(*model.inputs)
    assert out.shape == (model.batch_size, model.spec.num_classes) == model.output_shape
    assert 2 <= model.spec.num_classes <= 6
    assert torch.isfinite(out).all()
    assert model.spec.features <= graph_features(gm)


@settings(deadline=None, max_examples=15)
@given(cnn_models(dims=(1,), batch_sizes=(1, 4), max_blocks=3))
def test_1d_models_with_custom_batch_sizes(model: GeneratedModel) -> None:
    (x,) = model.inputs
    assert x.dim() == 3 and x.shape[0] in (1, 4) and 8 <= x.shape[2] <= 24 and 1 <= x.shape[1] <= 4
    gm = torch.fx.symbolic_trace(model.module)
    assert_same_function(model.module, gm, model.inputs, mode="both")


@settings(deadline=None, max_examples=15)
@given(cnn_models(dims=(2,)))
def test_2d_input_shapes(model: GeneratedModel) -> None:
    (x,) = model.inputs
    assert x.dim() == 4 and x.shape[0] in (2, 3)
    assert 6 <= x.shape[2] <= 16 and 6 <= x.shape[3] <= 16
    assert x.dtype == torch.float32


@settings(deadline=None, max_examples=20)
@given(cnn_models())
def test_build_is_deterministic_and_leaves_global_rng_alone(model: GeneratedModel) -> None:
    rng_before = torch.random.get_rng_state()
    first, second = model.build(), model.build()
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    sd1, sd2 = first.state_dict(), second.state_dict()
    assert sd1.keys() == sd2.keys()
    for key in sd1:
        assert torch.equal(sd1[key], sd2[key]), key
    assert first is not second
    assert model.module is model.module
    assert model.build() is not model.module
    assert build_cnn(CNNSpec.from_json(model.spec.to_json())).state_dict().keys() == sd1.keys()


@settings(deadline=None, max_examples=50)
@given(cnn_specs())
def test_spec_is_plain_hashable_and_round_trips(spec: CNNSpec) -> None:
    assert hash(spec) == hash(CNNSpec.from_json(spec.to_json()))
    assert CNNSpec.from_json(spec.to_json()) == spec
    assert CNNSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert len(repr(spec)) < 1200 and "\n" not in repr(spec)
    # shape bookkeeping is consistent with the documented block semantics
    c, size = spec.in_channels, spec.input_size
    for block in spec.blocks:
        c, size = block_output_shape(block, spec.dim, c, size)
        assert c >= 1 and min(size) >= 1


@settings(deadline=None, max_examples=40)
@given(st.data())
def test_only_enabled_features_are_used(data: st.DataObject) -> None:
    enabled = data.draw(st.frozensets(st.sampled_from(sorted(ALL_FEATURES))), label="features")
    max_channels = data.draw(st.integers(1, 6), label="max_channels")
    spec = data.draw(cnn_specs(features=enabled, max_channels=max_channels, max_blocks=4))
    assert spec.features <= enabled | {"gap_head"}
    assert len(spec.blocks) <= 4
    c, size = spec.in_channels, spec.input_size
    for block in spec.blocks:
        c, size = block_output_shape(block, spec.dim, c, size)
        assert c <= max_channels
    model = build_cnn(spec)
    assert len(model.blocks) == len(spec.blocks)


def test_generated_model_repr_is_short_and_readable() -> None:
    model = find(cnn_models(), lambda m: len(m.spec.blocks) >= 3, settings=FIND)
    text = repr(model)
    assert text.startswith("GeneratedModel(spec=CNNSpec(dim=")
    assert "tensor(" not in text and len(text) < 1500
    assert str(list(model.inputs[0].shape)) in text


@pytest.mark.parametrize("feature", sorted(ALL_FEATURES))
def test_each_feature_occurs_in_traced_graph(feature: str) -> None:
    features = frozenset({"conv", feature})
    model = find(cnn_models(features=features), lambda m: feature in m.spec.features, settings=FIND)
    gm = torch.fx.symbolic_trace(model.build())
    assert feature in graph_features(gm), (feature, model)
    assert_same_function(model.module, gm, model.inputs, mode="both")


def test_conv_se_example_has_sigmoid_and_mul() -> None:
    strategy = cnn_models(features=frozenset({"conv", "se"}))
    model = find(strategy, lambda m: "se" in m.spec.features, settings=FIND)
    graph = torch.fx.symbolic_trace(model.build()).graph
    targets = {n.target for n in graph.nodes if n.op == "call_function"}
    assert torch.sigmoid in targets and operator.mul in targets


def test_functional_block_uses_get_attr_weights() -> None:
    for variant in ("fconv", "flinear"):
        model = find(
            cnn_models(features=frozenset({"functional"})),
            lambda m, v=variant: any(b.kind == v for b in m.spec.blocks),
            settings=FIND,
        )
        gm = torch.fx.symbolic_trace(model.build())
        calls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in (F.conv1d, F.conv2d, F.linear)]
        assert calls and all(n.args[1].op == "get_attr" for n in calls)
        assert not any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) for m in model.module.blocks.modules())


def _find_block(kind: str, **params: Any) -> tuple[GeneratedModel, int]:
    """A generated model (with ``kind`` enabled) containing a ``kind`` block with ``params``; its index."""

    def matches(block: BlockSpec) -> bool:
        return block.kind == kind and all(block.get(k) == v for k, v in params.items())

    model = find(
        cnn_models(features=frozenset({"conv", kind}), max_blocks=3),
        lambda m: any(matches(b) for b in m.spec.blocks),
        settings=FIND,
    )
    return model, next(i for i, b in enumerate(model.spec.blocks) if matches(b))


def test_reused_conv_is_called_twice_in_traced_graph() -> None:
    for k in (1, 3):
        model, i = _find_block("reuse", k=k)
        module = model.build()
        conv = module.blocks[i].conv
        assert isinstance(conv, (nn.Conv1d, nn.Conv2d))
        assert conv.in_channels == conv.out_channels and conv.stride == (1,) * model.spec.dim
        gm = torch.fx.symbolic_trace(module)
        calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == f"blocks.{i}.conv"]
        assert len(calls) == 2 and calls[0] is not calls[1]
        assert calls[0] in calls[1].args[0].all_input_nodes  # conv(act(conv(x)))
        assert reused_targets(gm)[f"blocks.{i}.conv"] == 2
        assert_same_function(module, gm, model.inputs, mode="both")
        # the block keeps the shape: conv -> act -> conv of its own input
        x = torch.randn(2, conv.in_channels, *model.spec.input_size)
        block = module.blocks[i]
        with torch.no_grad():
            y = block(x)
            assert y.shape == x.shape
            assert torch.equal(y, conv(block.act(conv(x))))


def test_tied_weights_are_one_parameter_with_own_biases() -> None:
    for op, cls in (("conv", (nn.Conv1d, nn.Conv2d)), ("linear", nn.Linear)):
        model, i = _find_block("tied", op=op)
        module = model.build()
        pair = module.blocks[i]
        assert isinstance(pair.a, cls) and isinstance(pair.b, cls) and pair.a is not pair.b
        assert pair.b.weight is pair.a.weight  # identity, not merely equal values
        assert pair.a.bias is not pair.b.bias and not torch.equal(pair.a.bias, pair.b.bias)
        assert "weight_tied=True" in repr(module)
        # the shared weight is one parameter, listed under both names in the state dict
        names = {name for name, _ in module.named_parameters()}
        assert f"blocks.{i}.a.weight" in names and f"blocks.{i}.b.weight" not in names
        sd = module.state_dict()
        assert sd[f"blocks.{i}.a.weight"].data_ptr() == sd[f"blocks.{i}.b.weight"].data_ptr()
        # deterministic, survives building from the JSON spec, copying, converting, tracing, loading
        other = build_cnn(CNNSpec.from_json(model.spec.to_json()))
        assert other.blocks[i].b.weight is other.blocks[i].a.weight
        assert all(torch.equal(sd[k], v) for k, v in other.state_dict().items())
        for copied in (copy.deepcopy(module), copy.deepcopy(module).double(), GeneratedCNN(model.spec)):
            assert copied.blocks[i].b.weight is copied.blocks[i].a.weight
        other.load_state_dict(sd)
        assert other.blocks[i].b.weight is other.blocks[i].a.weight
        gm = torch.fx.symbolic_trace(module)
        assert (f"blocks.{i}.a", f"blocks.{i}.b") in tied_pairs(gm)
        assert_same_function(module, gm, model.inputs, mode="both")
        # one update through the shared Parameter changes both modules
        with torch.no_grad():
            pair.a.weight.add_(1.0)
        assert torch.equal(pair.b.weight, pair.a.weight)


def test_hand_written_reuse_and_tied_specs_round_trip() -> None:
    blocks = (
        BlockSpec.of("reuse", k=3, bias=False, act="gelu"),
        BlockSpec.of("tied", op="conv", k=3, act="relu"),
        BlockSpec.of("tied", op="linear", act="silu"),
    )
    spec = CNNSpec(1, 3, (9,), blocks, BlockSpec.of("gap_head", hidden=0, act="relu"), 4, 11)
    assert spec.features == {"reuse", "tied", "gap_head"}
    assert "reuse(k=3, bias=False, act='gelu')" in repr(spec) and "tied(op='linear', act='silu')" in repr(spec)
    assert CNNSpec.from_json(spec.to_json()) == spec and hash(CNNSpec.from_dict(spec.to_dict())) == hash(spec)
    assert [block_output_shape(b, 1, 3, (9,)) for b in blocks] == [(3, (9,))] * 3
    model = build_cnn(spec)
    assert model.blocks[0].conv.bias is None
    assert model(torch.randn(2, 3, 9)).shape == (2, 4)
    with pytest.raises(ValueError, match="odd"):
        block_output_shape(BlockSpec.of("reuse", k=2, bias=True, act="relu"), 1, 3, (9,))
    with pytest.raises(ValueError, match="tied op"):
        build_cnn(CNNSpec(1, 3, (9,), (BlockSpec.of("tied", op="mlp", act="relu"),), spec.head, 4, 11))


def test_grouped_and_depthwise_convs_appear() -> None:
    for feature in ("grouped", "depthwise"):
        strategy = cnn_models(features=frozenset({"conv", feature}))
        model = find(strategy, lambda m, f=feature: f in m.spec.features, settings=FIND)
        convs = [m for m in model.build().modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
        if feature == "grouped":
            assert any(1 < c.groups < c.in_channels for c in convs)
        else:
            assert any(c.groups == c.in_channels > 1 for c in convs)


def test_batchnorm_statistics_are_randomised() -> None:
    model = find(cnn_models(features=frozenset({"bn"})), lambda m: "bn" in m.spec.features, settings=FIND)
    bns = [m for m in model.build().modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns
    for bn in bns:
        assert not torch.all(bn.running_mean == 0)
        assert not torch.all(bn.running_var == 1)
        assert not torch.all(bn.weight == 1)


def test_flatten_head_linear_sees_all_positions() -> None:
    spec = CNNSpec(
        dim=2,
        in_channels=3,
        input_size=(7, 9),
        blocks=(BlockSpec.of("conv", out=5, k=3, stride=2, pad=1, dil=1, groups=1, bias=True),),
        head=BlockSpec.of("flatten_head", hidden=4, act="gelu"),
        num_classes=3,
        seed=7,
    )
    model = build_cnn(spec)
    linears = [m for m in model.head if isinstance(m, nn.Linear)]
    assert [lin.in_features for lin in linears] == [5 * 4 * 5, 4]
    assert model(torch.zeros(2, 3, 7, 9)).shape == (2, 3)
    assert spec.features == {"conv", "flatten_head", "mlp_head"}


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown features"):
        cnn_models(features=frozenset({"conv", "transformer"}))
    with pytest.raises(ValueError, match="dims"):
        cnn_specs(dims=(3,))
    with pytest.raises(ValueError, match="batch_sizes"):
        cnn_models(batch_sizes=())
    bad = CNNSpec(
        1,
        2,
        (4,),
        (BlockSpec.of("pool", op="max", k=5, stride=1, pad=0),),
        BlockSpec.of("gap_head", hidden=0, act="relu"),
        2,
        0,
    )
    with pytest.raises(ValueError, match="invalid"):
        build_cnn(bad)


# --------------------------------------------------------------------------------------------
# assert_same_function / max_abs_rel_error
# --------------------------------------------------------------------------------------------


def _small_model() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    spec = CNNSpec(
        dim=2,
        in_channels=2,
        input_size=(6, 6),
        blocks=(
            BlockSpec.of("conv", out=4, k=3, stride=1, pad=1, dil=1, groups=1, bias=False),
            BlockSpec.of("bn"),
            BlockSpec.of("act", fn="relu"),
            BlockSpec.of("dropout", p=0.2),
        ),
        head=BlockSpec.of("gap_head", hidden=0, act="relu"),
        num_classes=3,
        seed=1,
    )
    return build_cnn(spec), GeneratedModel.from_spec(spec, batch_size=3, input_seed=1).inputs


def test_perturbed_weight_fails_with_specific_message() -> None:
    model, inputs = _small_model()
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.blocks[0].weight[0, 0, 1, 1] += 0.5
    with pytest.raises(AssertionError) as info:
        assert_same_function(model, other, inputs, mode="both")
    msg = str(info.value)
    assert "mode='eval'" in msg
    assert "output leaf 0 of 1 (path <root>)" in msg
    assert "shape: (3, 3)" in msg
    assert "max abs diff:" in msg and "max rel diff:" in msg
    assert "tolerance: atol + rtol*max|a| = 1e-06 + 1e-05*" in msg


def test_train_mode_only_is_reported_as_train() -> None:
    model, inputs = _small_model()
    other = copy.deepcopy(model)
    other.blocks[3].p = 0.5  # different dropout: equal in eval, different in train
    assert_same_function(model, other, inputs, mode="eval")
    with pytest.raises(AssertionError, match="mode='train'"):
        assert_same_function(model, other, inputs, mode="both")


def test_dropout_draws_match_in_train_mode() -> None:
    model, inputs = _small_model()
    traced = torch.fx.symbolic_trace(model)
    assert_same_function(model, traced, inputs, mode="both", rtol=0.0, atol=0.0)


def test_shape_mismatch_is_reported() -> None:
    a, b = nn.Linear(4, 3), nn.Linear(4, 5)
    with pytest.raises(AssertionError, match=r"shapes differ: a has shape \(2, 3\), b has shape \(2, 5\)"):
        assert_same_function(a, b, (torch.randn(2, 4),))


def test_dtype_and_structure_mismatches_are_reported() -> None:
    lin = nn.Linear(4, 3)
    half = copy.deepcopy(lin).double()
    x = torch.randn(2, 4)
    with pytest.raises(AssertionError, match="dtypes differ"):
        assert_same_function(lin, lambda t: half(t.double()), (x,))
    with pytest.raises(AssertionError, match="tree structures differ"):
        assert_same_function(lambda t: (lin(t),), lambda t: [lin(t)], (x,))


class _Pair(NamedTuple):
    logits: torch.Tensor
    extra: dict[str, Any]


class _PytreeModule(nn.Module):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> _Pair:
        y = self.lin(x)
        return _Pair(y, {"feat": [x * self.scale, y.sum()], "n": 2})


def test_pytree_outputs_report_leaf_paths() -> None:
    torch.manual_seed(0)
    a = _PytreeModule()
    b = copy.deepcopy(a)
    x = torch.randn(2, 4)
    assert_same_function(a, b, x, mode="both")  # a single tensor is accepted as the input
    b.scale = 1.5
    with pytest.raises(AssertionError) as info:
        assert_same_function(a, b, (x,))
    msg = str(info.value)
    assert "output leaf 1 of 4" in msg and "feat" in msg and "shape: (2, 4)" in msg


def test_does_not_mutate_arguments() -> None:
    model, inputs = _small_model()
    model.train()
    model.blocks[1].eval()  # mixed flags must survive as well
    traced = torch.fx.symbolic_trace(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    traced_flags = [m.training for m in traced.modules()]
    x_before = inputs[0].clone()
    rng_before = torch.random.get_rng_state()
    assert_same_function(model, traced, inputs, mode="train")
    assert_same_function(model, traced, inputs, mode="both")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in model.modules()] == flags
    assert [m.training for m in traced.modules()] == traced_flags
    assert torch.equal(inputs[0], x_before)
    assert torch.equal(torch.random.get_rng_state(), rng_before)


def test_inplace_modules_do_not_mutate_inputs() -> None:
    x = torch.randn(3, 4)
    x_before = x.clone()
    assert_same_function(nn.ReLU(inplace=True), nn.ReLU(), (x,))
    assert torch.equal(x, x_before)


def test_invalid_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        assert_same_function(nn.ReLU(), nn.ReLU(), (torch.ones(1),), mode="inference")  # type: ignore[arg-type]


def test_tolerances_are_max_norm_relative() -> None:
    ref = torch.tensor([100.0, 1.0])
    out = torch.tensor([100.0, 1.5])  # elementwise rel error 0.5, max-norm rel error 0.005
    assert_same_function(lambda: ref, lambda: out, (), rtol=0.006, atol=0.0)
    with pytest.raises(AssertionError, match=r"max rel diff: 0\.005"):
        assert_same_function(lambda: ref, lambda: out, (), rtol=0.004, atol=0.0)


def test_max_abs_rel_error() -> None:
    assert max_abs_rel_error(torch.zeros(3), torch.zeros(3)) == (0.0, 0.0)
    assert max_abs_rel_error(torch.zeros(2), torch.ones(2)) == (1.0, math.inf)
    abs_err, rel_err = max_abs_rel_error(
        {"a": torch.tensor([2.0, -4.0]), "b": (torch.tensor(1.0),)},
        {"a": torch.tensor([2.0, -3.0]), "b": (torch.tensor(1.5),)},
    )
    assert abs_err == pytest.approx(1.0) and rel_err == pytest.approx(0.25)
    nan = torch.tensor([float("nan"), 1.0])
    assert max_abs_rel_error(nan, nan.clone()) == (math.inf, math.inf)  # NaN is never equal, not even to NaN
    assert max_abs_rel_error(torch.tensor([1.0]), torch.tensor([float("nan")]))[0] == math.inf
    with pytest.raises(ValueError, match="structures differ"):
        max_abs_rel_error((torch.ones(1),), [torch.ones(1)])
    with pytest.raises(ValueError, match="shapes differ"):
        max_abs_rel_error(torch.ones(2), torch.ones(3))


# --------------------------------------------------------------------------------------------
# pytest plugin
# --------------------------------------------------------------------------------------------


def test_plugin_registers_profiles_without_loading_them() -> None:
    current = settings.default
    from growc.testing import plugin

    assert settings.default is current
    ci = settings.get_profile("growc-ci")
    assert ci.deadline is None and ci.derandomize and ci.max_examples == 25 and ci.print_blob
    assert set(ci.suppress_health_check) == {HealthCheck.too_slow, HealthCheck.data_too_large}
    dev = settings.get_profile("growc-dev")
    assert dev.deadline is None and dev.max_examples == 50
    header = plugin.pytest_report_header(None)  # type: ignore[arg-type]
    assert "growc-ci" in header and "growc-dev" in header


def test_plugin_fixture_and_profile_in_a_pytest_run(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            """
            import torch
            from hypothesis import settings

            def test_fixture(growc_assert_same_function):
                assert settings.default.max_examples == 25 and settings.default.derandomize
                lin = torch.nn.Linear(2, 2)
                growc_assert_same_function(lin, lin, (torch.ones(3, 2),), mode="both")
            """
        )
    )
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "_hypothesis_pytestplugin"]
    cmd += ["-p", "growc.testing.plugin", "--hypothesis-profile=growc-ci", "test_inner.py"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
    assert "growc testing: hypothesis profiles available: growc-ci, growc-dev" in proc.stdout
