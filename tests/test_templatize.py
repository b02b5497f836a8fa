"""The templatize pass: function preservation, banks, sharing policies, init modes, reports, purity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import fx, nn

import growc
import growc.models
import growc.passes
from growc.runtime.bank import TemplateBank
from growc.runtime.layers import MixedConv2d, MixedLinear, MixedWeight
from growc.testing import assert_same_function, cnn_models
from helpers import assert_unchanged, snapshot


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.c = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x))
        x = self.bn(self.c(torch.relu(self.b(x))) + x)
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def tiny() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    return Tiny(), (torch.randn(2, 3, 8, 8),)


@given(cnn_models(), st.sampled_from(["layer", "shape", "shape_window"]), st.integers(1, 3))
def test_exact_preserves_function_and_materialize_folds_back(generated, sharing, k) -> None:
    model, inputs = generated.module, generated.inputs
    before = snapshot(model)
    gm = growc.templatize(model, inputs, sharing=sharing, templates=k, init="exact")
    assert_unchanged(model, before)
    assert_same_function(model, gm, inputs, rtol=1e-5, atol=1e-6, mode="both")
    plain = growc.materialize(gm)
    assert_same_function(model, plain, inputs, rtol=1e-5, atol=1e-6, mode="both")
    assert not any(isinstance(m, (TemplateBank, *growc.runtime.layers.MIXED_TYPES)) for m in plain.modules())
    report = gm.meta["growc"]["templatize"]
    assert report["output"]["max_rel"] <= 1e-5
    # every Conv/Linear weight of the generated model became a bank row
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    raw = [p for m in model.modules() for n, p in m.named_parameters(recurse=False) if n == "weight" and p.dim() > 1]
    assert len(report["layers"]) == len({id(p) for p in raw} | {id(m.weight) for m in weighted})


@given(cnn_models(), st.sampled_from(["shape", "shape_window"]), st.integers(1, 3))
def test_svd_reported_error_matches_measured(generated, sharing, k) -> None:
    gm = growc.templatize(generated.module, generated.inputs, sharing=sharing, templates=k, init="svd")
    for bank in gm.meta["growc"]["templatize"]["banks"]:
        assert abs(bank["predicted_error"] - bank["measured_error"]) <= 1e-3, bank
        if len(bank["layers"]) <= k:
            assert bank["measured_error"] <= 1e-5


@given(cnn_models(), st.integers(0, 2**16))
def test_fresh_init_is_seeded_and_never_zero_pairs(generated, seed) -> None:
    a = growc.templatize(generated.module, generated.inputs, init="fresh", seed=seed, sharing="shape")
    b = growc.templatize(generated.module, generated.inputs, init="fresh", seed=seed, sharing="shape")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    for bank in a.growc_banks.values():
        for j in range(bank.num_templates):
            assert bank.templates[j].abs().sum() > 0 or bank.coefficients[:, j].abs().sum() > 0


def test_state_dict_holds_each_template_once(tiny) -> None:
    model, inputs = tiny
    gm = growc.templatize(model, inputs, sharing="shape", templates=2)
    keys = list(gm.state_dict())
    assert [k for k in keys if k.endswith("templates")] == [
        "growc_banks.bank0.templates",
        "growc_banks.bank1.templates",
        "growc_banks.bank2.templates",
    ]
    assert not any(k.endswith(".weight") and k.split(".")[0] in {"a", "b", "c", "fc"} for k in keys)
    ptrs = [v.data_ptr() for v in gm.state_dict().values() if v.numel()]
    assert len(ptrs) == len(set(ptrs))
    # b and c share one bank (same kind, shape, groups) with one coefficient row each
    assert gm.b.bank is gm.c.bank and (gm.b.index, gm.c.index) == (0, 1)
    assert isinstance(gm.b, MixedConv2d) and isinstance(gm.fc, MixedLinear)


def test_exact_raises_k_and_reports_it(tiny) -> None:
    model, inputs = tiny
    gm = growc.templatize(model, inputs, sharing="shape", templates=1)
    bank = next(b for b in gm.meta["growc"]["templatize"]["banks"] if len(b["layers"]) == 2)
    assert bank["templates"] == 2 and bank["templates_requested"] == 1
    assert bank["note"] == "K raised from 1 to 2: an exact identity basis needs one template per layer"
    assert torch.equal(gm.b.weight, model.b.weight) and torch.equal(gm.c.weight, model.c.weight)


def test_svd_error_formula_on_a_known_spectrum() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(6, 6, bias=False) for _ in range(4)])
    gm = growc.templatize(model, (torch.randn(3, 6),), sharing="shape", templates=2, init="svd")
    stacked = torch.stack([m.weight.detach().reshape(-1) for m in model]).double()
    s = torch.linalg.svdvals(stacked)
    expected = math.sqrt(float((s[2:] ** 2).sum() / (s**2).sum()))
    bank = gm.meta["growc"]["templatize"]["banks"][0]
    assert bank["predicted_error"] == pytest.approx(expected, rel=1e-9)
    assert bank["measured_error"] == pytest.approx(expected, rel=1e-5)


def test_shape_window_groups_consecutive_layers() -> None:
    model = nn.Sequential(*[nn.Conv2d(4, 4, 3, padding=1) for _ in range(5)])
    gm = growc.templatize(model, (torch.randn(1, 4, 6, 6),), sharing="shape_window", window=2)
    banks = gm.meta["growc"]["templatize"]["banks"]
    assert [b["layers"] for b in banks] == [["0.weight", "1.weight"], ["2.weight", "3.weight"], ["4.weight"]]


def test_layer_sharing_one_bank_per_weight(tiny) -> None:
    model, inputs = tiny
    gm = growc.templatize(model, inputs, sharing="layer", templates=3)
    report = gm.meta["growc"]["templatize"]
    assert len(report["banks"]) == 4 and all(b["templates"] == 3 for b in report["banks"])
    n_weights = sum(m.weight.numel() for m in (model.a, model.b, model.c, model.fc))
    before = sum(p.numel() for p in model.parameters())
    assert report["params"] == {"before": before, "after": before + 2 * n_weights + 3 * 4}


class Functional(nn.Module):
    """Weights reaching functional ops, a matmul, an opaque wrapped function, plus a tied and a blocked one."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.lin = nn.Parameter(torch.randn(4, 6))
        self.proj = nn.Parameter(torch.randn(6, 5))
        self.scale = nn.Parameter(torch.randn(5, 5))  # used by `mul`: not a weighted op, must be skipped
        self.fc = nn.Linear(5, 5)
        self.fc2 = nn.Linear(5, 5)
        self.fc2.weight = self.fc.weight  # tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.w, padding=1, groups=1).mean((2, 3))  # [B, 4]
        y = opaque_matmul(y, self.lin)  # [B, 6]
        y = y @ self.proj
        y = self.fc2(self.fc(y)) * self.scale.sum()
        return y


@torch.fx.wrap
def opaque_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x @ w


def test_get_attr_weights_tied_weights_and_blocked_uses() -> None:
    torch.manual_seed(0)
    model = Functional()
    x = torch.randn(2, 3, 5, 5)
    gm = growc.templatize(model, (x,), templates=2)
    report = gm.meta["growc"]["templatize"]
    assert sorted(layer["weight"] for layer in report["layers"]) == ["fc.weight", "lin", "proj", "w"]
    assert report["skipped"] == [  # every >=2-D parameter left as is is listed, with the op that uses it
        {"target": "scale", "reason": "used by node 'sum_1' (call_method sum), not as the weight of a weighted op"}
    ]
    assert isinstance(gm.growc_weights.w, MixedWeight) and gm.growc_weights.w.source == "w"
    assert gm.fc.bank is gm.fc2.bank and gm.fc.index == gm.fc2.index  # tied: one bank row
    kinds = {layer["weight"]: layer["kind"] for layer in report["layers"]}
    assert kinds == {"w": "conv2d", "lin": "param", "proj": "matmul", "fc.weight": "linear"}
    assert "scale" in dict(gm.named_parameters())
    assert_same_function(model, gm, (x,), mode="both")
    plain = growc.materialize(gm)
    assert_same_function(model, plain, (x,), mode="both")
    assert plain.fc.weight is plain.fc2.weight  # still tied after folding


class Blocked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + self.fc.weight.sum()


def test_weight_also_used_by_a_plain_op_is_skipped_with_reason() -> None:
    gm = growc.templatize(Blocked(), (torch.randn(2, 4),))
    report = gm.meta["growc"]["templatize"]
    assert report["layers"] == []
    assert report["skipped"] == [
        {
            "target": "fc.weight",
            "reason": "also used by an op that is not a weighted op: node 'sum_1' (call_method sum)",
        }
    ]


class WithLeaf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.attn(x, x, x)
        return self.fc(y.mean(1))


def test_weights_inside_leaf_modules_are_templatized() -> None:
    torch.manual_seed(0)
    model = WithLeaf()
    x = torch.randn(2, 5, 8)
    gm = growc.templatize(model, (x,))
    report = gm.meta["growc"]["templatize"]
    assert sorted(layer["weight"] for layer in report["layers"]) == [
        "attn.in_proj_weight",  # a raw parameter of the leaf: covered by a parametrization
        "attn.out_proj.weight",  # a Linear submodule of the leaf: swapped for a MixedLinear
        "fc.weight",
    ]
    assert report["skipped"] == []
    assert isinstance(gm.attn.out_proj, MixedLinear)
    assert isinstance(gm.attn.parametrizations.in_proj_weight[0], MixedWeight)
    keys = [k for k in gm.state_dict() if k.startswith("attn.")]
    assert keys == ["attn.in_proj_bias", "attn.out_proj.bias"]  # no stale copy of the original weight
    assert_same_function(model, gm, (x,), mode="both")
    plain = growc.materialize(gm)
    assert_same_function(model, plain, (x,), mode="both")
    assert type(plain.attn) is nn.MultiheadAttention and isinstance(plain.attn.in_proj_weight, nn.Parameter)
    assert isinstance(gm.attn.parametrizations.in_proj_weight[0], MixedWeight)  # the input is left as it was
    assert_same_function(model, gm, (x,), mode="both")


class WithEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(idx))


def test_embedding_tables_are_not_weights() -> None:
    gm = growc.templatize(WithEmbedding(), (torch.tensor([[1, 2, 3]]),))
    report = gm.meta["growc"]["templatize"]
    assert [layer["weight"] for layer in report["layers"]] == ["fc.weight"]
    assert report["skipped"] == [{"target": "emb.weight", "reason": "embedding table: a lookup, not a weighted op"}]


def test_graph_module_input_and_meta_records(tiny) -> None:
    model, inputs = tiny
    traced = growc.trace(model)
    before = snapshot(traced)
    gm = growc.templatize(traced, inputs)
    assert_unchanged(traced, before)
    node = next(n for n in gm.graph.nodes if n.target == "b")
    assert node.meta["growc"]["templatize"] == [{"pass": "templatize", "bank": "bank1", "row": 0, "weight": "b.weight"}]
    assert node.meta["growc_shape"].shape == (2, 8, 8, 8)
    assert gm.meta["growc"]["history"] == ["templatize"]
    gm.graph.lint()


def test_templatize_a_templatized_model_is_a_no_op_on_banks(tiny) -> None:
    model, inputs = tiny
    gm = growc.templatize(model, inputs)
    again = growc.templatize(gm, inputs)
    assert again.meta["growc"]["templatize"]["layers"] == []
    assert len(again.growc_banks) == len(gm.growc_banks)
    assert_same_function(gm, again, inputs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sharing": "global"}, "sharing must be 'layer', 'shape' or 'shape_window', got 'global'"),
        ({"init": "zeros"}, "init must be 'exact', 'svd' or 'fresh', got 'zeros'"),
        ({"templates": 0}, "templates must be a positive integer, got 0"),
        ({"window": 0}, "window must be a positive integer, got 0"),
    ],
)
def test_bad_options_are_refused(tiny, kwargs, message) -> None:
    model, inputs = tiny
    with pytest.raises(growc.GrowcConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        growc.templatize(model, inputs, **kwargs)


def test_double_precision_model_stays_double(tiny) -> None:
    model, inputs = tiny
    model = model.double()
    gm = growc.templatize(model, (inputs[0].double(),), init="svd", sharing="shape")
    assert gm.growc_banks.bank0.templates.dtype == torch.float64
    assert gm.meta["growc"]["templatize"]["output"]["max_rel"] < 1e-12


def test_result_is_an_fx_graph_module_with_lintable_graph(tiny) -> None:
    model, inputs = tiny
    gm = growc.templatize(model, inputs)
    assert isinstance(gm, fx.GraphModule)
    gm.graph.lint()
    assert "self.b(" in gm.code


# --- regressions: each of these once crashed or silently changed the function ---------------------------------


class Reuse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.attn = nn.MultiheadAttention(3, 1, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(torch.relu(self.conv(x)))  # one module, two calls
        t = x.flatten(2).transpose(1, 2)
        t = self.attn(t, t, t)[0]
        return self.attn(t, t, t)[0].mean(1)  # one leaf, two calls


def test_module_called_twice_is_one_bank_row() -> None:
    torch.manual_seed(0)
    model, x = Reuse(), torch.randn(2, 3, 5, 5)
    gm = growc.templatize(model, (x,), sharing="shape")
    weights = [layer["weight"] for layer in gm.meta["growc"]["templatize"]["layers"]]
    assert weights == ["conv.weight", "attn.out_proj.weight", "attn.in_proj_weight"]
    assert_same_function(model, gm, (x,), mode="both")
    assert_same_function(model, growc.materialize(gm), (x,), mode="both")


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from collections import OrderedDict

        return OrderedDict(out=self.fc(x), aux=x.sum(1))


def test_mapping_outputs_compare_by_keys() -> None:
    model, x = DictOut(), torch.randn(3, 4)
    gm = growc.templatize(model, (x,))
    assert gm.meta["growc"]["templatize"]["output"]["max_rel"] == 0.0
    assert_same_function(model, gm, (x,))


class Collide(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Module()
        self.a.b_c = nn.Parameter(torch.randn(3, 3))
        self.a_b = nn.Module()
        self.a_b.c = nn.Parameter(torch.randn(3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.a.b_c), self.a_b.c)


def test_weight_names_that_flatten_alike_stay_distinct() -> None:
    model, x = Collide(), torch.randn(2, 3)
    gm = growc.templatize(model, (x,))
    assert sorted(gm.growc_weights.keys()) == ["a_b_c", "a_b_c_2"]
    assert_same_function(model, gm, (x,))
    assert_same_function(model, growc.materialize(gm), (x,))


def test_modules_with_hooks_are_left_as_is() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    model[0].register_forward_hook(lambda module, inputs, output: output * 3)
    x = torch.randn(2, 3)
    gm = growc.templatize(model, (x,))
    report = gm.meta["growc"]["templatize"]
    assert [layer["weight"] for layer in report["layers"]] == ["1.weight"]
    assert report["skipped"] == [
        {"target": "0.weight", "reason": "the module has hooks, which a replacement module would not run; left as is"}
    ]
    assert_same_function(model, gm, (x,))


class ScaledConv(nn.Conv2d):
    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return super()._conv_forward(x, weight * 2, bias)


def test_conv_subclass_overriding_conv_forward_is_not_swapped() -> None:
    model = nn.Sequential(ScaledConv(3, 4, 3))
    x = torch.randn(1, 3, 6, 6)
    gm = growc.templatize(model, (x,), leaf_modules=[ScaledConv])
    # not swapped for a MixedConv2d (that would drop the override): its weight is parametrized in place instead
    assert [(layer["weight"], layer["kind"]) for layer in gm.meta["growc"]["templatize"]["layers"]] == [
        ("0.weight", "param")
    ]
    assert type(gm.get_submodule("0")).__bases__ == (ScaledConv,)
    assert_same_function(model, gm, (x,), mode="both")
    assert_same_function(model, growc.materialize(gm), (x,), mode="both")


class Aliased(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = self.a  # one submodule under two names
        self.w = nn.Parameter(torch.randn(3, 3))
        self.inner = nn.Module()
        self.inner.w = self.w  # one raw parameter under two names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)) @ self.inner.w + x @ self.w


def test_aliases_inside_a_leaf() -> None:
    model = nn.Sequential(Aliased())
    x = torch.randn(2, 3)
    gm = growc.templatize(model, (x,), leaf_modules=[Aliased])
    report = gm.meta["growc"]["templatize"]
    assert [layer["weight"] for layer in report["layers"]] == ["0.a.weight"]
    assert report["skipped"] == [
        {"target": "0.w", "reason": "reached through 2 names inside the leaf module; left as is"}
    ]
    assert all(not t.is_meta for t in model.state_dict().values())
    assert_same_function(model, gm, (x,))


def test_bank_keys_include_dtype_and_trainability() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].double()
    model[1].register_forward_pre_hook(lambda module, args: (args[0].double(),))
    model[1].register_forward_hook(lambda module, args, out: out.float())
    model[2].requires_grad_(False)
    x = torch.randn(2, 3)
    gm = growc.templatize(nn.Sequential(model[0], model[2]), (x,), sharing="shape")
    banks = gm.growc_banks
    assert len(banks) == 2  # a trainable and a frozen weight never share templates
    assert [b.templates.requires_grad for b in banks.values()] == [True, False]
    mixed = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3).double())
    gm = growc.templatize(nn.Sequential(mixed[0]), (x,), sharing="shape")
    assert len(gm.growc_banks) == 1


def test_frozen_model_stays_frozen_and_tied_biases_stay_tied() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].bias = model[0].bias
    model.requires_grad_(False)
    x = torch.randn(2, 3)
    gm = growc.templatize(model, (x,), sharing="shape")
    assert not any(p.requires_grad for p in gm.parameters())
    assert gm.get_submodule("0").bias is gm.get_submodule("1").bias
    plain = growc.materialize(gm)
    assert not any(p.requires_grad for p in plain.parameters())
    assert plain.get_submodule("0").bias is plain.get_submodule("1").bias


class NormLeaf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm([2, 4, 4])
        self.fc = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x).flatten(1))


def test_normalization_parameters_are_never_templated() -> None:
    model = nn.Sequential(NormLeaf())
    x = torch.randn(2, 2, 4, 4)
    gm = growc.templatize(model, (x,), leaf_modules=[NormLeaf], init="svd", templates=1)
    report = gm.meta["growc"]["templatize"]
    assert [layer["weight"] for layer in report["layers"]] == ["0.fc.weight"]
    reasons = {s["target"]: s["reason"] for s in report["skipped"]}
    assert reasons == {
        "0.norm.weight": "normalization parameters stay per layer, never templated",
        "0.norm.bias": "a bias: biases stay per layer, never templated",
    }


def test_shape_window_groups_by_role_across_blocks() -> None:
    from growc.models import WideResNet

    model = WideResNet(16, 1)  # 2 blocks per stage
    gm = growc.templatize(model, (torch.randn(1, 3, 32, 32),), sharing="shape_window", window=2)
    layers = [b["layers"] for b in gm.meta["growc"]["templatize"]["banks"]]
    assert ["block1.0.conv1.weight", "block1.1.conv1.weight"] in layers
    assert ["block1.0.conv2.weight", "block1.1.conv2.weight"] in layers
    assert not any(len({name.split(".")[-2] for name in group}) > 1 for group in layers)


def test_svd_per_layer_predicted_error_and_note() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(5, 5, bias=False) for _ in range(3)])
    gm = growc.templatize(model, (torch.randn(2, 5),), sharing="shape", init="svd", templates=1)
    report = gm.meta["growc"]["templatize"]
    for layer in report["layers"]:
        assert layer["predicted_error"] == pytest.approx(layer["relative_error"], abs=1e-5)
    assert any("fine-tune" in note for note in report["notes"])


def test_input_parameters_are_not_touched_even_through_parametrizations() -> None:
    model = WithLeaf()
    versions = {name: p._version for name, p in model.named_parameters()}
    growc.templatize(model, (torch.randn(2, 5, 8),))
    assert {name: p._version for name, p in model.named_parameters()} == versions


def test_wrong_example_input_names_the_node() -> None:
    with pytest.raises(growc.GrowcError, match=r"^shape analysis: node 'a' \(call_module a\) fails on inputs of "):
        growc.templatize(Tiny(), (torch.randn(2, 5, 8, 8),))


def test_layers_patterns_select_weights_and_leave_the_rest_plain() -> None:
    model = growc.models.resolve_model("wrn-10-1").eval()
    x = torch.randn(2, 3, 32, 32)
    before = snapshot(model)
    gm = growc.templatize(model, (x,), layers=["block1.*", "fc"])
    report = gm.meta["growc"]["templatize"]
    assert [layer["weight"] for layer in report["layers"]] == [
        "block1.0.conv1.weight",
        "block1.0.conv2.weight",
        "fc.weight",
    ]
    reason = "not selected by layers=['block1.*', 'fc']"
    assert {s["target"] for s in report["skipped"] if s["reason"] == reason} == {
        "conv1.weight",
        "block2.0.shortcut.weight",
        "block2.0.conv1.weight",
        "block2.0.conv2.weight",
        "block3.0.shortcut.weight",
        "block3.0.conv1.weight",
        "block3.0.conv2.weight",
    }
    assert type(gm.get_submodule("block2.0.conv1")) is nn.Conv2d
    assert report["output"]["max_rel"] == 0.0
    assert not any(p is q for p in gm.parameters() for q in model.parameters())  # unselected weights are copies
    assert_unchanged(model, before)


def test_a_layers_pattern_that_matches_nothing_is_an_error() -> None:
    model = growc.models.resolve_model("cnn1d-4")
    with pytest.raises(
        growc.GrowcConfigError,
        match=r"layers pattern 'head\*' matches no templatable weight \(the model has 4: features.0.weight, "
        r"features.3.weight, features.6.weight, fc.weight\)",
    ):
        growc.templatize(model, (torch.randn(2, 1, 40),), layers=["features.*", "head*"])
    assert growc.passes.templatable_weights(model) == [
        "features.0.weight",
        "features.3.weight",
        "features.6.weight",
        "fc.weight",
    ]


# --- non-finite values, dtypes and sizes: clear errors, never a raw exception or a NaN that "matches" -----------


def _wrn() -> nn.Module:
    torch.manual_seed(0)
    return growc.models.resolve_model("wrn-10-1").eval()


WRN_X = (torch.randn(2, 3, 32, 32),)


@pytest.mark.parametrize("init", ["exact", "svd", "fresh"])
def test_non_finite_weights_are_an_error_naming_the_parameter(init: str) -> None:
    model = _wrn()
    with torch.no_grad():
        model.block1[0].conv1.weight[0, 0, :, 0] = math.nan
    with pytest.raises(
        growc.GrowcDataError,
        match=r"^templatize: parameter 'block1\.0\.conv1\.weight' holds 3 NaN value\(s\) \(of 2304\): growc cannot "
        r"grow a model with non-finite weights",
    ):
        growc.templatize(model, WRN_X, init=init)
    with torch.no_grad():
        model.block1[0].conv1.weight.fill_(math.inf)
    with pytest.raises(growc.GrowcDataError, match=r"parameter 'block1\.0\.conv1\.weight' holds 2304 infinite"):
        growc.templatize(model, WRN_X, verify=False)


def test_non_finite_normalization_statistics_are_an_error() -> None:
    model = _wrn()
    model.block2[0].bn1.running_var[3] = math.nan
    with pytest.raises(
        growc.GrowcDataError,
        match=r"^templatize: buffer 'block2\.0\.bn1\.running_var' holds 1 NaN value\(s\) \(of 16\)",
    ):
        growc.templatize(model, WRN_X)
    model.block2[0].bn1.reset_running_stats()
    model.block2[0].bn1.running_mean[0] = -math.inf
    with pytest.raises(growc.GrowcDataError, match=r"buffer 'block2\.0\.bn1\.running_mean' holds 1 infinite"):
        growc.templatize(model, WRN_X)


def test_non_finite_example_inputs_are_an_error() -> None:
    x = torch.randn(2, 3, 32, 32)
    x[0, 0, 0, :2] = math.nan
    with pytest.raises(
        growc.GrowcDataError, match=r"^templatize: example input \[0\] holds 2 NaN value\(s\) \(of 6144\)"
    ):
        growc.templatize(_wrn(), (x,))


class Overflows(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * 1e30 * 1e30  # finite weights and inputs, infinite outputs in float32


def test_non_finite_outputs_are_an_error_not_a_match() -> None:
    with torch.no_grad():
        model = Overflows()
        model.fc.weight.fill_(1.0)
        model.fc.bias.fill_(1.0)
    with pytest.raises(
        growc.GrowcDataError,
        match=r"^templatize: the model's output on the example inputs holds 4 infinite value\(s\) \(of 4\), with "
        r"finite weights and inputs",
    ):
        growc.templatize(model, (torch.ones(2, 3),))
    growc.templatize(model, (torch.ones(2, 3),), verify=False)  # without the output check there is nothing to compare


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["cnn1d-4", "wrn-10-1"])
def test_low_precision_models_templatize_exactly(dtype: torch.dtype, name: str) -> None:
    torch.manual_seed(0)
    model = growc.models.resolve_model(name).to(dtype).eval()
    x = torch.randn(2, *growc.models.default_input_shape(name)[1:]).to(dtype)
    gm = growc.templatize(model, (x,), init="exact", sharing="shape")
    output = gm.meta["growc"]["templatize"]["output"]
    assert output["tolerance"] == growc.fx.analysis.exactness_tolerance(dtype)
    assert output["max_rel"] <= output["tolerance"]
    assert gm.growc_banks.bank0.templates.dtype == dtype


def test_float32_tolerance_is_reported() -> None:
    from growc.passes.templatize import EXACT_TOLERANCE

    gm = growc.templatize(_wrn(), WRN_X)
    assert gm.meta["growc"]["templatize"]["output"]["tolerance"] == EXACT_TOLERANCE
    assert EXACT_TOLERANCE == growc.fx.analysis.exactness_tolerance(torch.float32)


@pytest.mark.parametrize(("templates", "init"), [(10**9, "exact"), (10**8, "svd"), (10**7, "fresh")])
def test_templates_beyond_the_size_bound_are_refused_before_allocating(templates: int, init: str) -> None:
    message = (
        rf"^templatize: templates={templates} would allocate [0-9.]+ [GTP]B of templates for 10 bank\(s\), more than "
        r"growc's bound of 1\.07 GB \(256 x the 309 kB of weights they replace, and at least 1 GiB\); a bank needs "
        r"at most as many templates as its weight has elements \(more are linearly dependent\) or as it has layers "
        r"\(init='exact'\): at most 36864 here$"
    )
    with pytest.raises(growc.GrowcDataError, match=message):
        growc.templatize(_wrn(), WRN_X, templates=templates, init=init)


def test_templates_beyond_a_small_weights_size_still_work() -> None:
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 2))
    gm = growc.templatize(model, (torch.randn(2, 1),), templates=3, init="fresh")
    assert [b["templates"] for b in gm.meta["growc"]["templatize"]["banks"]] == [3, 3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"templates": True}, "templates must be a positive integer, got True"),
        ({"templates": 2.0}, "templates must be a positive integer, got 2.0"),
        ({"window": True, "sharing": "shape_window"}, "window must be a positive integer, got True"),
        ({"seed": 1.5}, r"seed must be an integer in \[0, 2\*\*63\), got 1.5"),
        ({"seed": True}, r"seed must be an integer in \[0, 2\*\*63\), got True"),
        ({"seed": 2**70}, r"seed must be an integer in \[0, 2\*\*63\), got 1180591620717411303424"),
    ],
)
def test_option_types_are_checked(tiny, kwargs, message) -> None:
    model, inputs = tiny
    with pytest.raises(growc.GrowcConfigError, match="^" + message + "$"):
        growc.templatize(model, inputs, **kwargs)


def test_wrong_argument_types_are_config_errors(tiny) -> None:
    model, (x,) = tiny
    with pytest.raises(
        growc.GrowcConfigError,
        match=r"^templatize: example_inputs must be a tuple or list of the model's positional inputs, e\.g\. \(x,\); "
        r"got a Tensor$",
    ):
        growc.templatize(model, x)
    with pytest.raises(
        growc.GrowcConfigError, match=r"^templatize: example_inputs must be a tuple or list .* got NoneType"
    ):
        growc.templatize(model, None)
    with pytest.raises(growc.GrowcConfigError, match=r"^templatize takes an nn\.Module, got int$"):
        growc.templatize(3, (x,))


def test_a_model_on_the_meta_device_is_an_error() -> None:
    with torch.device("meta"):
        model = growc.models.resolve_model("cnn1d-4")
    message = (
        r"^templatize: parameter 'features\.0\.weight' is on the meta device \(no data\): the passes need real weights"
    )
    with pytest.raises(growc.GrowcDataError, match=message):
        growc.templatize(model, (torch.randn(2, 1, 40),))
    with pytest.raises(growc.GrowcDataError, match=r"^templatize: example input \[0\] is on the meta device"):
        growc.templatize(growc.models.resolve_model("cnn1d-4"), (torch.randn(2, 1, 40, device="meta"),))


def test_svd_failures_are_growc_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "svd", fails)
    with pytest.raises(
        growc.GrowcPassError,
        match=r"^templatize\(init='svd'\): the SVD of bank 'bank0' \(layers 'features\.0\.weight'\) failed: "
        r"linalg\.svd: The algorithm failed to converge",
    ):
        growc.templatize(growc.models.resolve_model("cnn1d-4"), (torch.randn(2, 1, 40),), init="svd")


def test_zero_sized_weights_are_skipped() -> None:
    model = nn.Sequential(nn.Linear(0, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(2, 0)
    gm = growc.templatize(model, (x,), init="svd")
    report = gm.meta["growc"]["templatize"]
    assert [layer["weight"] for layer in report["layers"]] == ["2.weight"]
    assert report["skipped"] == [{"target": "0.weight", "reason": "zero-sized weight (3, 0): nothing to template"}]
    assert_same_function(model, gm, (x,))


class IntWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.fc.weight = nn.Parameter(torch.ones(3, 3, dtype=torch.int64), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_a_model_that_fails_on_its_example_inputs_is_a_config_error() -> None:
    with pytest.raises(
        growc.GrowcConfigError,
        match=r"^templatize: the model fails on the example inputs \(RuntimeError: self and mat2 must have the same "
        r"dtype, but got Float and Long\); do they fit the model\?$",
    ):
        growc.templatize(IntWeight(), (torch.randn(2, 3),))
