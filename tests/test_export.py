"""growc.fx.export: torch.export capture adopted into growc's module-level form, and growc.trace's strategies."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from torch import nn

import growc
from growc.errors import GrowcConfigError, GrowcTraceError
from growc.fx.export import adopt, default_dynamic, is_aten_graph
from growc.runtime.modes import InputGuard, ModeValue
from growc.testing import assert_same_function
from growc.testing.strategies import cnn_models


class ConvNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.drop = nn.Dropout(0.25)
        self.fc = nn.Linear(width, 5)
        self.ln = nn.LayerNorm(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(F.relu(self.bn(self.conv(x)))).mean((2, 3))
        return self.ln(self.fc(y))


class DataDependent(nn.Module):
    """fx cannot trace the root (a branch on a tensor's value); export can (torch.cond-free: the branch is on a
    shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for row in x.unbind(0):  # iteration over a traced value: fx fails at the root
            x = x + self.fc(row)
        return x


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: neither fx nor export
            return self.fc(x)
        return x


def _x(batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, 3, 6, 6, generator=torch.Generator().manual_seed(batch))


def test_export_raises_standard_modules_back_and_keeps_the_models_own():
    model = ConvNet()
    gm = growc.trace(model, (_x(),), capture="export")
    calls = {str(n.target): type(gm.get_submodule(str(n.target))) for n in gm.graph.nodes if n.op == "call_module"}
    assert calls == {
        "growc_input_guard": InputGuard,
        "conv": nn.Conv2d,
        "bn": nn.BatchNorm2d,
        "drop": nn.Dropout,
        "fc": nn.Linear,
        "ln": nn.LayerNorm,
    }
    assert gm.conv is model.conv and gm.bn is model.bn  # no copy, like fx
    report = gm.meta["growc"]["trace"]
    assert report["capture"] == "export" and report["reason"] == "capture='export'"
    assert [r["module"] for r in report["raised"]] == ["Conv2d", "BatchNorm2d", "Dropout", "Linear", "LayerNorm"]
    assert "aten.relu.default" not in report["unregistered_ops"]  # the registry has ATen rules
    assert not any(n.op == "call_module" and n.target == "_guards_fn" for n in gm.graph.nodes)


def test_export_graph_switches_modes_like_the_model():
    model = ConvNet()
    gm = growc.trace(model, (_x(),), capture="export")
    x = _x()
    model.eval(), gm.eval()
    assert torch.equal(model(x), gm(x))
    model.train(), gm.train()
    torch.manual_seed(3)
    expected = model(x)  # dropout active, batch statistics, running stats updated
    before = model.bn.running_mean.clone()
    torch.manual_seed(3)
    got = gm(x)
    assert torch.equal(expected, got)
    assert not torch.equal(before, model.bn.running_mean)  # the shared BN updated its statistics (twice)
    assert int(model.bn.num_batches_tracked) == 2


def test_dynamic_batch_by_default_and_static_on_request():
    model = ConvNet().eval()
    gm = growc.trace(model, (_x(4),), capture="export")
    assert gm.meta["growc"]["trace"]["dynamic"] == [[0]]
    assert torch.equal(gm(_x(7)), model(_x(7)))
    static = growc.trace(model, (_x(4),), capture="export", dynamic=False)
    assert static.meta["growc"]["trace"]["dynamic"] == [None]


def test_a_dim_export_specialises_is_reported():
    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.ones(4, 1)  # broadcasting against 4 rows bakes the batch

    gm = growc.trace(Fixed(), (torch.randn(4, 3),), capture="export")
    report = gm.meta["growc"]["trace"]
    assert report["specialised"] == [{"input": 0, "name": "x", "dim": 0, "size": 4}]
    assert any("input 0 dim 0 = 4" in note for note in report["notes"])


def test_default_dynamic_marks_sequence_of_token_inputs():
    ids = torch.zeros(2, 8, dtype=torch.long)
    assert default_dynamic((torch.zeros(2, 3, 4), ids, 1.0)) == [[0], [0, 1], None]


def test_auto_uses_fx_when_it_traces_and_export_when_the_root_fails():
    fx_gm = growc.trace(ConvNet(), (_x(),))
    assert fx_gm.meta["growc"]["trace"]["capture"] == "fx"
    x = torch.randn(3, 4)
    gm = growc.trace(DataDependent(), (x,))
    report = gm.meta["growc"]["trace"]
    assert report["capture"] == "export" and report["reason"] == "fx could not trace the root module"
    assert report["tried"][0]["capture"] == "fx" and "iteration" in report["tried"][0]["error"]
    assert is_aten_graph(gm)


def test_auto_without_example_inputs_is_fx_and_raises_its_error():
    with pytest.raises(GrowcTraceError, match="root module"):
        growc.trace(DataDependent())


def test_neither_strategy_names_both_and_the_source_line():
    with pytest.raises(GrowcTraceError) as info:
        growc.trace(Untraceable(), (torch.randn(2, 4),))
    message = str(info.value)
    assert message.startswith("cannot capture Untraceable: fx: ")
    assert "export: " in message and "test_export.py" in message and "if x.sum() > 0" in message
    assert "Fix:" in message


def test_bad_capture_options():
    with pytest.raises(GrowcConfigError, match="capture must be one of auto, fx, export, got 'jit'"):
        growc.trace(ConvNet(), capture="jit")
    with pytest.raises(GrowcConfigError, match="capture='export' needs example_inputs"):
        growc.trace(ConvNet(), capture="export")


def test_an_unlifted_export_module_is_copied_and_adopted():
    model = ConvNet()
    unlifted = torch.export.export(model.eval(), (_x(),), strict=False).module()
    gm = growc.trace(unlifted)
    assert gm.meta["growc"]["trace"]["capture"] == "export"
    assert isinstance(gm.get_submodule("conv"), nn.Conv2d)
    x = _x()
    gm.eval()
    assert torch.equal(gm(x), model(x))
    gm.train()  # the unlifted module refuses .train(); the adopted one follows it
    assert gm.drop.training


def test_functional_batch_norm_reads_its_mode():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.rand(3) + 0.5)
            self.register_buffer("mean", torch.zeros(3))
            self.register_buffer("var", torch.ones(3))
            self.extra = nn.Parameter(torch.zeros(3))  # the attributes are not one BatchNorm's

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.batch_norm(x, self.mean, self.var, self.w, self.extra, self.training) + self.extra.view(1, 3, 1, 1)

    model = Functional()
    x = torch.randn(4, 3, 2, 2)
    gm = growc.trace(model, (x,), capture="export")
    flags = [m for m in gm.modules() if isinstance(m, ModeValue)]
    assert len(flags) == 1 and gm.meta["growc"]["trace"]["mode_aware"] == ["batch_norm"]
    model.train(), gm.train()
    assert torch.allclose(model(x), gm(x))
    assert not torch.equal(model.mean, torch.zeros(3))  # running stats updated through the shared buffer
    model.eval(), gm.eval()
    assert torch.equal(model(x), gm(x))


def test_adopt_without_the_model_builds_modules_from_the_op():
    model = ConvNet().eval()
    unlifted = torch.export.export(model, (_x(),), strict=False).module()
    gm, _ = adopt(unlifted)
    assert isinstance(gm.get_submodule("bn"), nn.BatchNorm2d) and gm.bn is not model.bn
    assert gm.bn.running_mean is model.bn.running_mean  # built around the graph's (the model's) tensors
    assert gm.fc.weight is model.fc.weight
    assert torch.equal(gm.eval()(_x()), model(_x()))


def test_templatize_fuse_materialize_on_export_graphs_equal_fx():
    torch.manual_seed(0)
    a, b = ConvNet().eval(), ConvNet().eval()
    x = _x()
    by_fx = growc.templatize(a, (x,), capture="fx")
    by_export = growc.templatize(a, (x,), capture="export")
    assert torch.allclose(by_fx(x), by_export(x), rtol=0, atol=1e-6)
    assert [r["weight"] for r in by_fx.meta["growc"]["templatize"]["layers"]] == [
        r["weight"] for r in by_export.meta["growc"]["templatize"]["layers"]
    ]
    fused_fx = growc.fuse([a, b], (x,), cross_init="orthogonal", templatize_options={"capture": "fx"})
    fused_ex = growc.fuse([a, b], (x,), cross_init="orthogonal", templatize_options={"capture": "export"})
    assert torch.allclose(fused_fx(x), fused_ex(x), rtol=0, atol=1e-5)
    lifts_fx = [(lift["target"], lift["lift"]) for lift in fused_fx.meta["growc"]["fuse"]["lifts"]]
    lifts_ex = [(lift["target"], lift["lift"]) for lift in fused_ex.meta["growc"]["fuse"]["lifts"]]
    assert lifts_fx == lifts_ex
    m = growc.materialize(fused_ex)
    assert torch.allclose(m(x), fused_ex(x), rtol=0, atol=1e-5)


# ---- a model captured by export, templatized and fused keeps fx graphs' runtime guarantees ---------------------


@pytest.fixture(scope="module")
def fused_export() -> tuple[torch.fx.GraphModule, torch.Tensor]:
    torch.manual_seed(1)
    parents = [ConvNet().eval(), ConvNet().eval()]
    x = _x(6)
    gm = growc.fuse(parents, (x,), cross_init="orthogonal", templatize_options={"capture": "export"})
    assert gm.meta["growc"]["fuse"]["trace"]["capture"] == "export"
    return gm, x


def test_fused_export_model_switches_modes(fused_export):
    gm, x = fused_export
    gm = copy.deepcopy(gm)
    bns = [m for m in gm.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.num_features == 16 for m in bns)  # the parents' norms, concatenated
    gm.eval()
    with torch.no_grad():
        assert torch.equal(gm(x), gm(x))  # eval: deterministic, running statistics
    gm.train()
    before = bns[0].running_mean.clone()
    torch.manual_seed(0)
    a = gm(x)
    torch.manual_seed(1)
    b = gm(x)
    assert not torch.equal(a, b)  # dropout draws in train mode
    assert not torch.equal(before, bns[0].running_mean)  # and the running statistics update


def test_fused_export_model_trains_with_param_groups(fused_export):
    gm, x = fused_export
    gm = copy.deepcopy(gm).train()
    optimizer = torch.optim.SGD(growc.param_groups(gm, weight_decay=1e-4), lr=0.05)
    target = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = F.mse_loss(gm(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert gm.growc_banks["p0_bank0"].templates.grad is not None


def test_fused_export_model_compiles_without_graph_breaks_and_matches(fused_export):
    gm, x = fused_export
    gm = copy.deepcopy(gm).eval()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(gm)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(gm, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), gm(x), rtol=1e-5, atol=1e-5)


def test_fused_export_model_under_autocast(fused_export):
    gm, x = fused_export
    gm = copy.deepcopy(gm).eval()
    with torch.no_grad():
        reference = gm(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = gm(x)
    error = (low.float() - reference).abs().max() / reference.abs().max()
    assert error <= 5e-2, error


def test_fused_export_model_wraps_in_ddp(fused_export, tmp_path):
    import torch.distributed as dist

    gm, x = fused_export
    gm = copy.deepcopy(gm).eval()  # eval: no dropout draws, so local and DDP gradients compare exactly
    local = copy.deepcopy(gm)
    local(x).sum().backward()
    expected = {name: p.grad.clone() for name, p in local.named_parameters() if p.grad is not None}
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(gm)
        for step in range(2):
            ddp.zero_grad()
            ddp(x).sum().backward()
            for name, p in gm.named_parameters():
                torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-6, msg=f"{step}: {name}")
    finally:
        dist.destroy_process_group()


@settings(max_examples=8)
@given(cnn_models(max_blocks=4))
def test_both_captures_give_the_same_templatized_function(generated):
    """Every generated graph also goes through export: the templatized models agree with the model and with
    each other, in eval and train mode, and template the same weights."""
    model, inputs = generated.module, generated.inputs
    by_fx = growc.templatize(model, inputs, capture="fx")
    by_export = growc.templatize(model, inputs, capture="export")
    assert by_export.meta["growc"]["templatize"]["trace"]["capture"] == "export"
    assert_same_function(model, by_export, inputs, rtol=1e-5, atol=1e-6, mode="both")
    assert_same_function(by_fx, by_export, inputs, rtol=1e-5, atol=1e-6, mode="both")
    aliases: dict[int, set[str]] = {}  # a tied weight has several names; captures may report either
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), set()).add(name)
    by_name = {name: frozenset(names) for names in aliases.values() for name in names}
    weights = [
        sorted(by_name[r["weight"]] for r in t.meta["growc"]["templatize"]["layers"]) for t in (by_fx, by_export)
    ]
    assert weights[0] == weights[1]


def _param_groups(analysis) -> list[list[str]]:
    return sorted(sorted(str(d) for d in g.dims if d[0] == "param") for g in analysis.groups)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_channel_analysis_reads_export_graphs_like_fx(name):
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    by_fx = growc.analyze_channels(growc.trace(model), (x,))
    by_export = growc.analyze_channels(growc.trace(model, (x,), capture="export"), (x,))
    assert _param_groups(by_fx) == _param_groups(by_export)
    assert sorted(map(sorted, (g.blocked for g in by_fx.groups))) == sorted(
        map(sorted, (g.blocked for g in by_export.groups))
    )


def test_widen_net2net_on_an_export_capture_preserves_the_function():
    model = ConvNet().eval()
    x = _x()
    gm = growc.widen(model, (x,), factor=2, method="net2net", templatize_options={"capture": "export"})
    assert gm.meta["growc"]["widen"]["trace"]["capture"] == "export"
    assert gm.meta["growc"]["widen"]["output"]["max_rel"] <= 1e-5
    torch.testing.assert_close(gm.eval()(x), model(x), rtol=1e-5, atol=1e-5)


def test_auto_prefers_export_when_fx_makes_a_weighted_submodule_a_leaf():
    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = DataDependent()  # fx fails inside: it becomes a leaf, and its Linear would not be templated
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.inner(x))

    x = torch.randn(3, 4)
    fx_only = growc.trace(Outer(), (x,), capture="fx")
    assert [f["module"] for f in fx_only.meta["growc"]["trace"]["fallback_leaves"]] == ["inner"]
    gm = growc.trace(Outer(), (x,))
    report = gm.meta["growc"]["trace"]
    assert report["capture"] == "export" and report["reason"] == "fx made submodules holding weights leaves"
    t = growc.templatize(Outer(), (x,))
    assert sorted(r["weight"] for r in t.meta["growc"]["templatize"]["layers"]) == ["head.weight", "inner.fc.weight"]


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_an_unlifted_module_passes_through_templatize_and_fuse_in_the_mode_it_was_exported(mode):
    model = ConvNet().train(mode == "train")
    x = _x()
    unlifted = torch.export.export(model, (x,), strict=False).module()
    gm = growc.trace(unlifted)
    assert gm.training is (mode == "train")  # the mode export baked, whatever the unlifted module's flag says
    model.eval(), gm.eval()
    assert torch.allclose(gm(x), model(x), atol=1e-6)
    t = growc.templatize(unlifted, (x,))  # verified against the adopted graph: the unlifted one cannot switch modes
    assert t.meta["growc"]["templatize"]["output"]["max_rel"] <= 1e-5
    fused = growc.fuse([unlifted, unlifted], (x,), cross_init="zero")
    assert torch.allclose(fused.eval()(x), 2 * model(x), atol=1e-5)


def test_a_call_outside_what_export_fixed_raises_instead_of_computing_something_else():
    class Mean(nn.Module):
        def forward(self, x: torch.Tensor, n: int) -> torch.Tensor:
            return x.sum(1) / x.shape[1] * n  # the length becomes a Python int: export fixes it; n is baked

    x = torch.randn(2, 5, 4)
    gm = growc.trace(Mean(), (x, 3), capture="export")
    assert gm.meta["growc"]["trace"]["baked_inputs"] == {"n": 3}
    assert gm(torch.randn(7, 5, 4), 3).shape == (7, 4)  # another batch size is fine
    assert torch.equal(gm(x, 3), Mean()(x, 3))
    with pytest.raises(ValueError, match=re.escape("input 'x' has size 9 in dim 1, but this graph was captured")):
        gm(torch.randn(2, 9, 4), 3)
    with pytest.raises(ValueError, match=re.escape("input 'n' is 1, but torch.export baked it into this graph as 3")):
        gm(x, 1)


@pytest.mark.parametrize(
    ("dynamic", "message"),
    [
        ("yes", "dynamic must be true, false or a list with, per input, null or a list of dims"),
        ([0], "dynamic must be true, false or a list with, per input, null or a list of dims"),
        ([[0], [1]], "dynamic names dims for 2 inputs, the model takes 1"),
        ([[5]], "dynamic: input 0 has 4 dims, so it has no dim 5"),
    ],
)
def test_bad_dynamic_values_are_config_errors(dynamic, message):
    with pytest.raises(GrowcConfigError, match=re.escape(message)):
        growc.trace(ConvNet(), (_x(),), capture="export", dynamic=dynamic)
    with pytest.raises(GrowcConfigError, match=re.escape(message)):
        growc.templatize(ConvNet(), (_x(),), capture="export", dynamic=dynamic)


def test_tied_embedding_and_head_keep_their_paths():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.e = nn.Embedding(20, 8)
            self.h = nn.Linear(8, 20, bias=False)
            self.h.weight = self.e.weight

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.h(self.e(ids).relu())

    model = Tied().eval()
    ids = torch.randint(0, 20, (2, 5))
    gm = growc.trace(model, (ids,), capture="export")
    assert gm.e is model.e  # the embedding at its own path, not under the head's name
    assert set(gm.state_dict()) == set(model.state_dict())
    gm.load_state_dict(model.state_dict())
    assert torch.equal(gm(ids), model(ids))


def test_a_rebuilt_batch_norm_keeps_momentum_none():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=None))
    model[1].register_forward_hook(lambda m, i, o: o * 2)  # hooks are inlined: the module is rebuilt without them
    x = _x()
    gm = growc.trace(model, (x,), capture="export")
    assert gm.get_submodule("1") is not model[1] and gm.get_submodule("1").momentum is None
    gm.train(), model.train()
    twin = copy.deepcopy(model)
    gm(x), twin(x)
    torch.testing.assert_close(gm.get_submodule("1").running_mean, twin[1].running_mean)


def test_instance_norm_with_running_stats_follows_the_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4, affine=True, track_running_stats=True))
    x = _x()
    gm = growc.trace(model.eval(), (x,), capture="export")
    assert gm.meta["growc"]["trace"]["mode_aware"] == ["instance_norm"]
    twin = copy.deepcopy(model).train()
    gm.train()
    torch.testing.assert_close(gm(x), twin(x))  # statistics of the input in training mode
    torch.testing.assert_close(model[1].running_mean, twin[1].running_mean)  # and running stats updated
    model.eval(), gm.eval()
    torch.testing.assert_close(gm(x), model(x))


def test_always_on_dropout_stays_on_in_eval():
    class MonteCarlo(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.dropout(self.fc(x), 0.5, training=True)

    gm = growc.trace(MonteCarlo().eval(), (torch.randn(3, 4),), capture="export").eval()
    assert gm.meta["growc"]["trace"]["always_on_dropout"] == ["dropout"]
    x = torch.randn(3, 4)
    assert not torch.equal(gm(x), gm(x))


def test_conv_transpose_is_raised_to_its_module():
    model = nn.Sequential(nn.ConvTranspose2d(3, 4, 3, stride=2, output_padding=1), nn.ReLU())
    gm = growc.trace(model.eval(), (_x(),), capture="export")
    assert gm.get_submodule("0") is model[0]
    assert torch.equal(gm(_x()), model(_x()))


def test_capture_errors_name_the_model_line_and_a_hint():
    from dataclasses import dataclass

    @dataclass
    class Out:
        y: torch.Tensor

    class ReturnsDataclass(nn.Module):
        def forward(self, x: torch.Tensor) -> Out:
            return Out(x * 2)

    with pytest.raises(GrowcTraceError, match="register_dataclass") as info:
        growc.trace(ReturnsDataclass(), (torch.randn(2, 3),), capture="export")
    assert "<string>" not in str(info.value)
