"""The fuse pass: with zero cross blocks the fused model is the parents' sum (or mean), on any graph."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import growc
from growc.models import WideResNet
from growc.runtime.layers import GridConv2d, GridLinear
from growc.testing import ALL_FEATURES, assert_same_function, cnn_models
from helpers import assert_unchanged, snapshot


def second_parent(generated, seed: int) -> nn.Module:
    """The same architecture with an independent random init (the reference's network 2)."""
    spec = dataclasses.replace(generated.spec, seed=generated.spec.seed + seed + 1)
    return type(generated).from_spec(spec).build()


class Ensemble(nn.Module):
    def __init__(self, parents: list[nn.Module], head: str) -> None:
        super().__init__()
        self.parents = nn.ModuleList(parents)
        self.head = head

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        outputs = [p(*args) for p in self.parents]
        total = outputs[0]
        for out in outputs[1:]:
            total = torch.utils._pytree.tree_map(torch.add, total, out)
        return torch.utils._pytree.tree_map(lambda t: t / len(outputs), total) if self.head == "mean" else total


NO_RANDOMNESS = ALL_FEATURES - {"dropout"}  # in train mode a fused dropout draws one mask, the parents n


@settings(max_examples=12)
@given(cnn_models(features=NO_RANDOMNESS), st.sampled_from(["sum", "mean"]), st.integers(0, 100))
def test_zero_cross_blocks_give_the_parents_sum_in_train_and_eval(generated, head, seed) -> None:
    a, b = generated.build(), second_parent(generated, seed)
    before = snapshot(a), snapshot(b)
    gm = growc.fuse([a, b], generated.inputs, cross_init="zero", head=head, seed=seed)
    assert_unchanged(a, before[0])
    assert_unchanged(b, before[1])
    assert_same_function(Ensemble([a, b], head), gm, generated.inputs, rtol=1e-5, atol=1e-5, mode="both")
    assert gm.meta["growc"]["fuse"]["output"]["max_rel"] <= 1e-5
    gm.graph.lint()


@settings(max_examples=12)
@given(cnn_models())
def test_zero_cross_blocks_in_eval_with_dropout(generated) -> None:
    a, b = generated.build(), second_parent(generated, 0)
    gm = growc.fuse([a, b], generated.inputs, cross_init="zero")
    assert_same_function(Ensemble([a, b], "sum"), gm, generated.inputs, rtol=1e-5, atol=1e-5, mode="eval")


@settings(max_examples=12)
@given(cnn_models(features=NO_RANDOMNESS), st.sampled_from(["own", "union"]))
def test_parameter_count_follows_the_formula(generated, cross_templates) -> None:
    a, b = generated.build(), second_parent(generated, 0)
    gm = growc.fuse([a, b], generated.inputs, cross_templates=cross_templates)  # K = 2 templates per bank
    report = gm.meta["growc"]["fuse"]
    n, k = 2, 2
    grids = sum(lift["lift"] == "grid" for lift in report["lifts"])  # parents' 1x1 layers: R = C = 1
    head_bias = sum(
        gm.get_submodule(lift["target"]).bias.numel()
        for lift in report["lifts"]
        if lift["lift"] == "head" and gm.get_submodule(lift["target"]).bias is not None
    )
    cross = grids * n * (n - 1) * k * (1 if cross_templates == "own" else n)
    assert report["params"]["fused"] == sum(report["params"]["parents"]) + cross - (n - 1) * head_bias


@settings(max_examples=12)
@given(cnn_models(features=NO_RANDOMNESS, max_blocks=3))
def test_three_parents_and_materialize(generated) -> None:
    parents = [generated.build(), second_parent(generated, 1), second_parent(generated, 2)]
    gm = growc.fuse(parents, generated.inputs, cross_init="zero")
    assert_same_function(Ensemble(parents, "sum"), gm, generated.inputs, rtol=1e-5, atol=1e-5, mode="both")
    plain = growc.materialize(gm)
    assert_same_function(gm, plain, generated.inputs, rtol=1e-5, atol=1e-5, mode="both")


def fused_wrn(**kwargs) -> tuple[nn.Module, nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    a = WideResNet(10, 1, num_classes=5)
    torch.manual_seed(1)
    b = WideResNet(10, 1, num_classes=5)
    x = torch.randn(4, 3, 32, 32)
    return a, b, growc.fuse([a, b], (x,), **kwargs), x


def test_reference_2x2_layout_on_a_wrn() -> None:
    a, b, gm, _x = fused_wrn(cross_init="orthogonal")
    conv = gm.get_submodule("block1.0.conv1")
    assert isinstance(conv, GridConv2d) and (conv.in_channels, conv.out_channels) == (32, 32)
    blocks = next(lift["blocks"] for lift in gm.meta["growc"]["fuse"]["lifts"] if lift["target"] == "block1.0.conv1")
    # [[B0, B2], [B3, B1]]: B0, B1 the parents' own rows; B2 new over set 0 (parent 0's bank), B3 new over set 1
    assert blocks == [[["p0_bank1[0]"], ["p0_bank1[1]"]], [["p1_bank1[1]"], ["p1_bank1[0]"]]]
    w = conv.weight.detach()
    torch.testing.assert_close(w[:16, :16], a.block1[0].conv1.weight, rtol=0, atol=0)
    torch.testing.assert_close(w[16:, 16:], b.block1[0].conv1.weight, rtol=0, atol=0)
    assert w[:16, 16:].abs().sum() > 0 and w[16:, :16].abs().sum() > 0  # orthogonal init: not zero
    # stem stacked along outputs, BN concatenated, classifier side by side with biases summed
    torch.testing.assert_close(gm.conv1.weight, torch.cat([a.conv1.weight, b.conv1.weight]), rtol=0, atol=0)
    bn = gm.get_submodule("block1.0.bn2")
    torch.testing.assert_close(bn.running_var, torch.cat([a.block1[0].bn2.running_var, b.block1[0].bn2.running_var]))
    torch.testing.assert_close(bn.weight, torch.cat([a.block1[0].bn2.weight, b.block1[0].bn2.weight]))
    fc = gm.fc
    assert isinstance(fc, GridLinear) and fc.weight.shape == (5, 128)
    torch.testing.assert_close(fc.weight, torch.cat([a.fc.weight, b.fc.weight], 1), rtol=0, atol=0)
    torch.testing.assert_close(fc.bias, a.fc.bias + b.fc.bias)
    assert gm.meta["growc"]["fuse"]["fallbacks"] == []


def test_orthogonal_cross_rows_are_orthogonal_and_say_when_they_cannot_be() -> None:
    torch.manual_seed(0)
    parents = [WideResNet(10, 1, num_classes=3) for _ in range(3)]
    x = torch.randn(2, 3, 32, 32)
    gm = growc.fuse(parents, (x,), templatize_options={"templates": 4})
    bank = gm.growc_banks["p0_bank1"]
    rows = bank.coefficients.detach()
    assert rows.shape == (3, 4)  # the layer's own row and two new ones (3 parents: 2 off-diagonal blocks per row)
    gram = rows @ rows.T
    torch.testing.assert_close(gram - torch.diag(torch.diag(gram)), torch.zeros(3, 3), rtol=0, atol=1e-6)
    cross = [c for lift in gm.meta["growc"]["fuse"]["lifts"] for c in lift.get("cross", [])]
    assert all(c["orthogonal"] for c in cross)
    gm1 = growc.fuse(parents[:2], (x,), templatize_options={"templates": 1})
    cross = [c for lift in gm1.meta["growc"]["fuse"]["lifts"] for c in lift.get("cross", [])]
    assert not any(c["orthogonal"] for c in cross)
    assert cross[0]["note"].startswith("K=1 templates and 1 rows of rank 1: no direction is orthogonal")


@pytest.mark.parametrize("cross_init", ["orthogonal", "random", "copy"])
def test_nonzero_cross_inits_change_the_function_and_are_seeded(cross_init: str) -> None:
    a, b, gm, x = fused_wrn(cross_init=cross_init, seed=3)
    assert gm.meta["growc"]["fuse"]["output"]["max_rel"] > 1e-3
    again = growc.fuse([a, b], (x,), cross_init=cross_init, seed=3)
    for (k1, v1), (k2, v2) in zip(gm.state_dict().items(), again.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)


def test_union_cross_templates_sum_one_new_row_per_parent_bank() -> None:
    _, _, gm, _ = fused_wrn(cross_init="zero", cross_templates="union")
    blocks = next(lift["blocks"] for lift in gm.meta["growc"]["fuse"]["lifts"] if lift["target"] == "block1.0.conv1")
    assert blocks[0][1] == ["p0_bank1[1]", "p1_bank1[1]"] and blocks[1][0] == ["p0_bank1[2]", "p1_bank1[2]"]


def test_mean_head_averages_logits() -> None:
    a, b, gm, x = fused_wrn(cross_init="zero", head="mean")
    assert_same_function(Ensemble([a, b], "mean"), gm, (x,), rtol=1e-5, atol=1e-5, mode="both")
    assert gm.fc.scale == 0.5


def test_fused_model_trains_and_every_parameter_gets_a_gradient() -> None:
    """SGD on the fused model's parameter groups fits a fixed batch: every parameter gets a gradient, every step
    moves the templates, and the loss falls well below where it started."""
    _, _, gm, x = fused_wrn()
    gm.train()
    y = torch.arange(4) % 5
    optimizer = torch.optim.SGD(growc.param_groups(gm, 5e-4), lr=0.05, momentum=0.9)
    templates = [p for name, p in gm.named_parameters() if name.endswith("templates")]
    assert templates
    losses = []
    for step in range(8):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(gm(x), y)
        loss.backward()
        if step == 0:
            assert all(p.grad is not None for p in gm.parameters())
        before = [t.detach().clone() for t in templates]
        optimizer.step()
        assert all(not torch.equal(b, t) for b, t in zip(before, templates, strict=True))
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_ddp_wraps_the_fused_model_without_unused_parameters(tmp_path) -> None:
    import torch.distributed as dist

    _, _, gm, x = fused_wrn()
    local = copy.deepcopy(gm)
    local(x).sum().backward()
    expected = {name: p.grad.clone() for name, p in local.named_parameters()}
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(gm)  # find_unused_parameters=False: every one must be used
        for step in range(2):  # a second step fails if a parameter went unused in the first
            ddp.zero_grad()
            ddp(x).sum().backward()
            got = {name: p.grad for name, p in gm.named_parameters()}
            assert got.keys() == expected.keys()
            for name, grad in expected.items():  # one rank: DDP's reduced gradients are the local ones
                torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-6, msg=f"step {step}: {name}")
    finally:
        dist.destroy_process_group()


class Gated(nn.Module):
    """Broadcast operands, channel cat, LayerNorm over channels (fallback) and a channel shuffle (fallback)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        mask = (x[:, :1] > 0).float()  # shared [B, 1, H, W]: broadcast over channels, never duplicated
        y = torch.cat([y * mask, torch.relu(y)], dim=1)
        b, c, h, w = y.shape
        y = y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)  # channel shuffle
        y = self.ln(y.mean((2, 3)))
        return self.fc(y)


def test_broadcast_cat_and_exact_fallbacks_are_reported() -> None:
    torch.manual_seed(0)
    a = Gated()
    torch.manual_seed(1)
    b = Gated()
    x = torch.randn(2, 3, 5, 5)
    gm = growc.fuse([a, b], (x,), cross_init="zero")
    assert_same_function(Ensemble([a, b], "sum"), gm, (x,), rtol=1e-5, atol=1e-5, mode="both")
    fallbacks = {f["target"] for f in gm.meta["growc"]["fuse"]["fallbacks"]}
    # the shuffle's first view and its transpose keep parents contiguous (lifted); the view that interleaves
    # them cannot (per-parent fallback), nor can LayerNorm over channels
    assert {"reshape", "LayerNorm"} <= fallbacks
    assert not fallbacks & {"mul", "cat", "view", "transpose"}


def test_parents_of_different_architectures_are_refused() -> None:
    x = torch.randn(1, 2)
    narrow, wide = (nn.Sequential(nn.Linear(2, w), nn.ReLU(), nn.Linear(w, 2)) for w in (3, 4))
    wider = r'^parent 1 differs from parent 0 at node #1: call_module "0 \(MixedLinear: in_features=2, out_features=4'
    with pytest.raises(growc.GrowcError, match=wider):
        growc.fuse([narrow, wide], (x,))
    deeper = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 3), nn.Linear(3, 2))
    message = r'^parent 1 differs from parent 0 at node #2: call_module "1 \(MixedLinear: in_features=3, out_features=3'
    with pytest.raises(growc.GrowcError, match=message):
        growc.fuse([narrow, deeper], (x,))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cross_init": "ones"}, "cross_init must be 'orthogonal', 'zero', 'random' or 'copy', got 'ones'"),
        ({"cross_templates": "all"}, "cross_templates must be 'own' or 'union', got 'all'"),
        ({"head": "max"}, "head must be 'sum' or 'mean', got 'max'"),
        ({"cross_scale": float("nan")}, "cross_scale must be a finite number, got nan"),
    ],
)
def test_bad_options(kwargs, message) -> None:
    with pytest.raises(growc.GrowcConfigError, match="^" + message + "$"):
        growc.fuse([nn.Linear(2, 2), nn.Linear(2, 2)], (torch.randn(1, 2),), **kwargs)


def test_one_parent_is_refused() -> None:
    with pytest.raises(growc.GrowcConfigError, match="fuse needs at least 2 parents, got 1"):
        growc.fuse([nn.Linear(2, 2)], (torch.randn(1, 2),))


def test_templatized_parents_are_used_as_they_are() -> None:
    torch.manual_seed(0)
    a, b = WideResNet(10, 1), WideResNet(10, 1)
    x = torch.randn(2, 3, 32, 32)
    ta = growc.templatize(a, (x,), sharing="shape", templates=3)
    tb = growc.templatize(b, (x,), sharing="shape", templates=3)
    gm = growc.fuse([ta, tb], (x,), cross_init="zero")
    assert gm.meta["growc"]["fuse"]["templatize"] is None
    assert gm.growc_banks["p0_bank1"].num_templates == 3
    assert_same_function(Ensemble([a, b], "sum"), gm, (x,), rtol=1e-5, atol=1e-5, mode="both")


def test_parents_must_agree_on_hyperparameters() -> None:
    a = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8))
    b = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(4, 8))
    with pytest.raises(growc.GrowcError, match=r'call_module "1 \(GroupNorm: 4, 8, eps=1e-05, affine=True'):
        growc.fuse([a, b], (torch.randn(1, 3, 6, 6),))


class LeafStem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class Tricky(nn.Module):
    """A leaf holding a bias-free conv on the input, an in-place op that must fall back, a per-parent operand
    broadcasting over channels, a batch-sensitive view and a weight-free output."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = LeafStem()
        self.gate = nn.Conv2d(4, 1, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.stem(x)
        y.clamp_(max=1.0)  # in place, not lifted: the per-parent result must replace y
        y = y * torch.sigmoid(self.gate(y))  # a [B, 1, H, W] gate per parent: broadcasts over channels
        b, c, h, w = y.shape
        z = y.reshape(-1, h * w).log_softmax(-1).reshape(b, c, h, w)
        return self.fc(z.mean((2, 3))), x.mean((2, 3))


@pytest.mark.parametrize("batch", [1, 3])
def test_leaves_inplace_broadcast_and_batch_sensitive_reshapes(batch: int) -> None:
    torch.manual_seed(0)
    a, b = Tricky(), Tricky()
    x = torch.randn(batch, 3, 6, 6)
    gm = growc.fuse([a, b], (x,), cross_init="zero", templatize_options={"leaf_modules": [LeafStem]})
    for other in (1, 2, 4):  # the graph must not depend on the example's batch size
        y = torch.randn(other, 3, 6, 6)
        assert_same_function(Ensemble([a, b], "sum"), gm, (y,), rtol=1e-5, atol=1e-5, mode="both")
    banks = {id(m) for m in gm.modules()}
    leaf = gm.get_submodule("growc_parents.p0.stem")
    assert id(leaf.conv.bank) in banks  # the leaf's templates are registered: they train


class Keywords(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.permute(self.conv(input=x), dims=(0, 2, 3, 1))  # keywords everywhere
        return self.fc(input=y.mean((1, 2)))


def test_keyword_calls_take_the_fallback_and_stay_exact() -> None:
    torch.manual_seed(0)
    a, b = Keywords(), Keywords()
    x = torch.randn(2, 3, 6, 6)
    gm = growc.fuse([a, b], (x,), cross_init="zero")
    assert_same_function(Ensemble([a, b], "sum"), gm, (x,), rtol=1e-5, atol=1e-5, mode="both")


class CapturesTensors(nn.Module):
    """Tensors created in forward become fx constants named by a counter, which differs between traces."""

    def __init__(self, offset: int) -> None:
        super().__init__()
        self.offset = offset
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = torch.tensor([1.0, -1.0, 0.5, 0.0])[None, :, None, None]
        return (self.conv(x) + bias).mean((2, 3))


def test_captured_tensor_constants_match_by_position() -> None:
    torch.manual_seed(0)
    a, b = CapturesTensors(0), CapturesTensors(1)
    x = torch.randn(2, 3, 5, 5)
    growc.trace(b)  # a trace that leaves a constant behind on b, so b's next trace numbers its constant anew
    gm = growc.fuse([a, b], (x,), cross_init="zero")
    assert_same_function(Ensemble([a, b], "sum"), gm, (x,), rtol=1e-5, atol=1e-5, mode="both")


# --- non-finite values, dtypes, devices and sizes ------------------------------------------------------------------


def _cnn(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return growc.models.resolve_model("cnn1d-4").to(dtype).eval()


CNN_X = (torch.randn(2, 1, 40),)


def test_non_finite_parent_weights_are_an_error_naming_parent_and_parameter() -> None:
    a, b = _cnn(), _cnn(seed=1)
    with torch.no_grad():
        b.fc.weight[0, 0] = math.inf
    with pytest.raises(
        growc.GrowcDataError,
        match=r"^fuse: parent 1's parameter 'fc\.weight' holds 1 infinite value\(s\) \(of 40\): growc cannot grow",
    ):
        growc.fuse([a, b], CNN_X, cross_init="zero")
    ta = growc.templatize(a, CNN_X)
    tb = growc.templatize(_cnn(seed=1), CNN_X)
    with torch.no_grad():
        tb.growc_banks.bank0.templates[0, 0, 0, 0] = math.nan
    with pytest.raises(
        growc.GrowcDataError, match=r"^fuse: parent 1's parameter 'growc_banks\.bank0\.templates' holds 1 NaN"
    ):
        growc.fuse([ta, tb], CNN_X)
    x = CNN_X[0].clone()
    x[0, 0, 0] = math.inf
    with pytest.raises(growc.GrowcDataError, match=r"^fuse: example input \[0\] holds 1 infinite value\(s\)"):
        growc.fuse([a, _cnn(seed=1)], (x,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("name", "shape"), [("cnn1d-4", (2, 1, 40)), ("wrn-10-1", (2, 3, 32, 32))])
def test_low_precision_parents_fuse_with_zero_cross_blocks(dtype: torch.dtype, name: str, shape) -> None:
    torch.manual_seed(0)
    a, b = (growc.models.resolve_model(name).to(dtype).eval() for _ in range(2))
    x = torch.randn(*shape).to(dtype)
    gm = growc.fuse([a, b], (x,), cross_init="zero")
    output = gm.meta["growc"]["fuse"]["output"]
    assert output["tolerance"] == growc.fx.analysis.exactness_tolerance(dtype)
    assert output["max_rel"] <= output["tolerance"]
    assert gm.growc_banks.p0_bank0.templates.dtype == dtype


def test_parents_of_different_dtypes_are_refused() -> None:
    with pytest.raises(
        growc.GrowcConfigError,
        match=r"^fuse: the parents hold different dtypes: parent 0 float32, parent 1 float64; convert them to one "
        r"dtype first \(e\.g\. parent\.to\(torch\.float32\)\)$",
    ):
        growc.fuse([_cnn(), _cnn(torch.float64)], CNN_X)


def test_parents_on_different_devices_are_refused() -> None:
    with torch.device("meta"):
        ghost = growc.models.resolve_model("cnn1d-4")
    with pytest.raises(
        growc.GrowcConfigError,
        match=r"^fuse: the parents are on different devices: parent 0 cpu, parent 1 meta; move them to one device "
        r"first \(e\.g\. parent\.to\('cpu'\)\)$",
    ):
        growc.fuse([_cnn(), ghost], CNN_X)
    with pytest.raises(growc.GrowcDataError, match=r"^fuse: parent 0's parameter 'features\.0\.weight' is on the meta"):
        growc.fuse([ghost, copy.deepcopy(ghost)], CNN_X)


@pytest.mark.gpu
def test_parents_on_cpu_and_cuda_are_refused() -> None:
    with pytest.raises(growc.GrowcConfigError, match=r"parent 0 cpu, parent 1 cuda:0; move them to one device"):
        growc.fuse([_cnn(), _cnn().cuda()], CNN_X)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"templatize_options": {"foo": 1}}, r"templatize_options has unknown option\(s\) 'foo'; known: "),
        ({"templatize_options": {"seed": 1}}, r"templatize_options may not set 'seed' \(fuse's own option\)"),
        ({"templatize_options": {"verify": False}}, r"templatize_options may not set 'verify' \(fuse's own option\)"),
        ({"templatize_options": 3}, r"templatize_options must be a dict of templatize options, got int"),
        ({"templatize_options": {"templates": True}}, r"templates must be a positive integer, got True"),
        ({"cross_scale": True}, r"cross_scale must be a finite number, got True"),
        ({"seed": 0.5}, r"seed must be an integer in \[0, 2\*\*63\), got 0\.5"),
    ],
)
def test_bad_option_types(kwargs, message) -> None:
    with pytest.raises(growc.GrowcConfigError, match="^" + message):
        growc.fuse([_cnn(), _cnn(seed=1)], CNN_X, **kwargs)


def test_bad_argument_types() -> None:
    with pytest.raises(growc.GrowcConfigError, match=r"^fuse: parent 1 is not an nn\.Module but int$"):
        growc.fuse([_cnn(), 3], CNN_X)
    with pytest.raises(growc.GrowcConfigError, match=r"^fuse: example_inputs must be a tuple or list"):
        growc.fuse([_cnn(), _cnn(seed=1)], CNN_X[0])
    gm = growc.fuse(iter([_cnn(), _cnn(seed=1)]), CNN_X, cross_init="zero")  # any iterable of parents
    assert gm.meta["growc"]["fuse"]["parents"] == 2


def test_zero_sized_weights_take_the_fallback() -> None:
    a, b = (nn.Sequential(nn.Linear(0, 3), nn.ReLU(), nn.Linear(3, 2)) for _ in range(2))
    x = torch.randn(2, 0)
    gm = growc.fuse([a, b], (x,), cross_init="zero")
    assert_same_function(Ensemble([a, b], "sum"), gm, (x,), rtol=1e-5, atol=1e-5)


def test_parents_whose_tensors_differ_in_dtype_one_by_one_are_refused() -> None:
    a, b = _cnn(), _cnn(seed=1)
    a.features[1].double()  # both parents hold float32 and float64 tensors, but not the same ones
    b.fc.double()
    with pytest.raises(
        growc.GrowcError,
        match=r"^parent 1's 'features\.1\.weight' is float32 on cpu, parent 0's float64 on cpu: fuse needs parents of "
        r"one dtype on one device$",
    ):
        growc.fuse([a, b], CNN_X, verify=False)
