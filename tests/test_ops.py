"""Template banks, mixed and grid layers: generation, eval cache, autocast, compile, autograd modes, roles, groups."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import growc
from growc.runtime import generation
from growc.runtime import layers as runtime_layers
from growc.runtime.layers import MixedConv2d, MixedLinear, TemplateBank


def make_bank(layers: int = 3, k: int = 2, shape: tuple[int, ...] = (4, 3, 3, 3)) -> TemplateBank:
    g = torch.Generator().manual_seed(0)
    return TemplateBank(torch.randn(k, *shape, generator=g), torch.randn(layers, k, generator=g), kind="conv2d")


def test_weight_is_the_coefficient_mix_of_templates() -> None:
    bank = make_bank()
    expected = torch.einsum("lk,kabcd->labcd", bank.coefficients, bank.templates)
    torch.testing.assert_close(bank.weights(), expected, rtol=1e-6, atol=1e-6)
    for i in range(3):
        torch.testing.assert_close(bank.weight(i), expected[i], rtol=1e-6, atol=1e-6)


def _layers(bank: TemplateBank) -> list[MixedConv2d]:
    conv = nn.Conv2d(bank.weight_shape[1], bank.weight_shape[0], bank.weight_shape[2])
    return [MixedConv2d(bank, i, conv) for i in range(bank.num_layers)]


def test_eval_cache_returns_same_tensor_until_a_parameter_changes() -> None:
    bank = make_bank().eval()
    layers = _layers(bank)
    with torch.no_grad():
        first = layers[0].weight
        assert layers[0].weight is first  # served from the cache
        bank.coefficients.add_(1.0)  # an in-place update bumps the version counter
        regenerated = layers[0].weight
        assert regenerated is not first and layers[0].weight is regenerated
        bank.coefficients.data.add_(1.0)  # .data writes bypass version counters: clear_cache says so
        assert layers[0].weight is regenerated
        bank.clear_cache()
        cleared = layers[0].weight
    assert cleared is not regenerated
    torch.testing.assert_close(cleared, bank.weights()[0], rtol=1e-6, atol=1e-6)
    assert not torch.equal(regenerated, first) and not torch.equal(cleared, regenerated)


def test_no_cache_in_training_or_with_grad() -> None:
    bank = make_bank()
    layer = _layers(bank)[0]
    w = layer.weight
    assert w.requires_grad and layer.weight is not w
    w.sum().backward()
    assert bank.templates.grad is not None and bank.coefficients.grad is not None
    bank.eval()
    w = layer.weight  # grad enabled and parameters require grad: no cache, gradients still flow
    assert w.requires_grad and layer.weight is not w


def test_layer_weights_and_gradients_equal_the_mix() -> None:
    bank = make_bank(layers=4, k=3)
    layers = _layers(bank)
    weights = [layer.weight for layer in layers]
    grads = [torch.randn_like(w, generator=torch.Generator().manual_seed(i)) for i, w in enumerate(weights)]
    torch.autograd.backward(weights, grads)
    ours = bank.templates.grad, bank.coefficients.grad
    bank.zero_grad(set_to_none=True)
    expected = torch.einsum("lk,kabcd->labcd", bank.coefficients, bank.templates)
    torch.autograd.backward(list(expected), grads)
    for w, e in zip(weights, expected, strict=True):
        torch.testing.assert_close(w, e, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours[0], bank.templates.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[1], bank.coefficients.grad, rtol=1e-5, atol=1e-5)


def test_autocast_mixes_in_fp32_and_casts_once() -> None:
    bank = make_bank(shape=(8, 8))
    layer = MixedLinear(bank, 0, nn.Linear(8, 8))
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = layer.weight
        y = layer(x)
    assert w.dtype == torch.float32  # the mix is fp32; the op casts the finished weight
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), torch.nn.functional.linear(x, w, layer.bias), rtol=2e-2, atol=2e-2)


def test_mixed_layers_reference_the_bank_without_owning_it() -> None:
    bank = make_bank(layers=2)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    a, b = MixedConv2d(bank, 0, conv), MixedConv2d(bank, 1, conv)
    root = nn.Module()
    root.banks = nn.ModuleDict({"b": bank})
    root.a, root.b = a, b
    assert list(a.state_dict()) == ["bias"]
    assert sorted(root.state_dict()) == ["a.bias", "b.bias", "banks.b.coefficients", "banks.b.templates"]
    clone = copy.deepcopy(root)
    assert clone.a.bank is clone.banks.b and clone.b.bank is clone.banks.b and clone.a.bank is not bank
    buffer = io.BytesIO()
    torch.save(root, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded.a.bank is loaded.banks.b


def test_to_regenerates_in_the_new_dtype() -> None:
    bank = make_bank().eval()
    layer = _layers(bank)[0].eval()
    with torch.no_grad():
        before = layer.weight
        bank.double()
        after = layer.weight
    assert before.dtype == torch.float32 and after.dtype == torch.float64
    torch.testing.assert_close(after.float(), before)


def test_padding_modes_match_plain_conv() -> None:
    for mode in ("zeros", "reflect", "circular", "replicate"):
        conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode, stride=2, dilation=1)
        bank = TemplateBank(conv.weight.detach().clone()[None], torch.ones(1, 1), kind="conv2d")
        mixed = MixedConv2d(bank, 0, conv)
        x = torch.randn(2, 3, 7, 7)
        torch.testing.assert_close(mixed(x), conv(x), rtol=0, atol=0)
        plain = mixed.to_plain()
        torch.testing.assert_close(plain(x), conv(x), rtol=0, atol=0)


def test_param_roles_and_groups_exempt_coefficients_from_weight_decay() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 8, 8))
    gm = growc.templatize(model, (torch.randn(1, 3, 8, 8),), sharing="shape")
    roles = growc.param_roles(gm)
    assert roles["growc_banks.bank0.coefficients"] == "coefficient"
    assert roles["growc_banks.bank0.templates"] == "template"
    assert roles["1.weight"] == "other" and roles["0.bias"] == "other"
    groups = growc.param_groups(gm, weight_decay=5e-4)
    assert [(g["name"], g["weight_decay"]) for g in groups] == [("decay", 5e-4), ("coefficients", 0.0)]
    coefficient_ids = {id(p) for g in groups if g["name"] == "coefficients" for p in g["params"]}
    assert coefficient_ids == {id(b.coefficients) for b in gm.growc_banks.values()}
    assert sum(len(g["params"]) for g in groups) == len(list(gm.parameters()))
    optimizer = torch.optim.SGD(groups, lr=0.1, weight_decay=1.0)  # per-group values win
    assert optimizer.param_groups[1]["weight_decay"] == 0.0


def test_bad_coefficient_shape_is_refused() -> None:
    with pytest.raises(ValueError, match=r"coefficients must be \[layers, K=2\], got \(3, 3\)"):
        TemplateBank(torch.randn(2, 4), torch.randn(3, 3), kind="linear")


# --------------------------------------------------------- grown layers: one generation per bank group per step


@pytest.fixture(scope="module")
def grown() -> tuple[torch.fx.GraphModule, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    parents = [growc.models.resolve_model("wrn-10-1", num_classes=5) for _ in range(2)]
    for p in parents:
        for m in p.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight, 0.5, 1.5)
    gm = growc.fuse(parents, (x,), cross_init="orthogonal", templatize_options={"sharing": "shape"})
    return gm, x


def _count_generations(monkeypatch: pytest.MonkeyPatch) -> list[generation._Layout]:
    calls: list[generation._Layout] = []
    original = generation._Generate.forward

    def counting(ctx, layout, *args):
        calls.append(layout)
        return original(ctx, layout, *args)

    monkeypatch.setattr(generation._Generate, "forward", staticmethod(counting))
    return calls


def _without_step_markers(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    plain = copy.deepcopy(gm)
    runtime_layers.strip_step_markers(plain.graph)
    plain.recompile()
    return plain


def _group(layer: nn.Module) -> generation._Group:
    return layer.__dict__["_growc_slot"][0]


def test_a_training_forward_generates_each_bank_group_once(grown, monkeypatch: pytest.MonkeyPatch) -> None:
    gm, x = grown
    gm = copy.deepcopy(gm).train()  # survives a deep copy (and pickling): the markers are graph nodes
    banks = [b for b in gm.modules() if isinstance(b, TemplateBank)]
    layers = [m for m in gm.modules() if isinstance(m, runtime_layers.GENERATED_TYPES)]
    groups = gm.growc_banks.__dict__["_growc_groups"]
    assert {id(_group(m)) for m in layers} == {id(g) for g in groups}  # every layer is in one of its graph's groups
    calls = _count_generations(monkeypatch)
    gm(x).sum().backward()
    assert sorted(map(id, calls)) == sorted(id(g.layout) for g in groups)  # one node per group, for all its layers
    assert sorted(id(b) for g in groups for b in g.banks) == sorted(map(id, banks))  # each bank in one group
    assert sum(len(c.layers) for c in calls) == len(layers)
    assert all(g._step is None and not g._in_step for g in groups)  # dropped when the forward ends
    calls.clear()
    _without_step_markers(gm)(x)  # without the markers each layer generates its own weight
    assert len(calls) == len(layers) and all(len(c.layers) == 1 for c in calls)


def test_shared_generation_gives_the_same_outputs_and_gradients(grown) -> None:
    gm, x = grown
    shared, separate = copy.deepcopy(gm).train(), _without_step_markers(gm).train()
    torch.manual_seed(1)
    out_a = shared(x)
    torch.manual_seed(1)
    out_b = separate(x)
    assert torch.equal(out_a, out_b)  # the same kernels on the same numbers: bit for bit
    out_a.square().sum().backward()
    out_b.square().sum().backward()
    grads_b = dict(separate.named_parameters())
    for name, p in shared.named_parameters():
        torch.testing.assert_close(p.grad, grads_b[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_several_forwards_before_one_backward_still_work(grown) -> None:
    gm, x = grown
    gm = copy.deepcopy(gm).train()
    first, second = gm(x[:2]), gm(x[2:])  # gradient accumulation in any order: each forward has its own graph
    second.sum().backward()
    first.sum().backward()
    assert all(p.grad is not None for p in gm.parameters() if p.requires_grad)


def test_grid_weights_equal_the_blockwise_definition(grown) -> None:
    gm, _ = grown
    for module in gm.modules():
        if isinstance(module, runtime_layers.GRID_TYPES):
            rows = [torch.cat([sum(b.weights()[r] for b, r in terms) for terms in row], dim=1) for row in module.blocks]
            expected = torch.cat(rows, dim=0) * module.scale
            torch.testing.assert_close(module.weight, expected, rtol=1e-6, atol=1e-6)


def test_eval_cache_serves_grid_layers_until_a_step_changes_the_parameters(grown) -> None:
    gm, x = grown
    gm = copy.deepcopy(gm).eval()
    layer = next(m for m in gm.modules() if isinstance(m, runtime_layers.GRID_TYPES))
    group = _group(layer)
    with torch.no_grad():
        before = gm(x)
        cached = group._cache[3]
        gm(x)
        assert group._cache[3] is cached  # the same tensors: nothing regenerated
    optimizer = torch.optim.SGD(gm.parameters(), lr=0.1)
    gm.train()
    gm(x).sum().backward()
    optimizer.step()
    gm.eval()
    with torch.no_grad():
        after = gm(x)
    assert group._cache[3] is not cached and not torch.equal(before, after)
    torch.testing.assert_close(after, _without_step_markers(gm).eval()(x), rtol=1e-5, atol=1e-6)


def test_torch_compile_sees_no_graph_break_and_matches_eager(grown) -> None:
    gm, x = grown
    gm = copy.deepcopy(gm).eval()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(gm)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(gm, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), gm(x), rtol=1e-5, atol=1e-5)
        compiled(x)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # the second call reuses the first graph
    gm.train()
    twin = copy.deepcopy(gm)
    torch.manual_seed(0)
    eager = gm(x)
    eager.square().sum().backward()
    torch.manual_seed(0)
    out = torch.compile(twin, backend="aot_eager")(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    grads = dict(twin.named_parameters())
    for name, p in gm.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_channels_last_inputs_and_modules_give_the_same_outputs(grown) -> None:
    gm, x = grown
    gm = copy.deepcopy(gm).eval()
    with torch.no_grad():
        expected = gm(x)
        gm = gm.to(memory_format=torch.channels_last)
        out = gm(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
def test_autocast_outputs_stay_within_tolerance_of_fp32(grown, dtype: torch.dtype, tolerance: float) -> None:
    gm, x = grown
    gm = copy.deepcopy(gm).eval()
    with torch.no_grad():
        reference = gm(x)
        with torch.autocast("cpu", dtype=dtype):
            low = gm(x)
    assert low.dtype == dtype
    error = (low.float() - reference).abs().max() / reference.abs().max()
    assert error <= tolerance, f"{dtype}: max rel error {error:.3e}"


def test_the_benchmark_block_loop_reference_computes_the_same_weights(grown) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "runtime.py"
    spec = importlib.util.spec_from_file_location("runtime_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    gm, x = grown
    reference = module.block_loop(gm)
    ours = {n: m for n, m in gm.named_modules() if isinstance(m, runtime_layers.GRID_TYPES)}
    for name, layer in reference.named_modules():
        if name in ours:
            torch.testing.assert_close(layer.weight, ours[name].weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reference.eval()(x), copy.deepcopy(gm).eval()(x), rtol=1e-5, atol=1e-5)


def test_a_bank_generates_only_the_rows_its_model_reads(grown) -> None:
    gm, _ = grown
    gm = copy.deepcopy(gm)  # rows the parents' own forwards read (shape analysis, checks) are not generated
    needed: dict[int, int] = {}
    for module in gm.modules():
        if isinstance(module, runtime_layers.GRID_TYPES):
            for row in module.blocks:
                for terms in row:
                    for bank, _ in terms:
                        needed[id(bank)] = needed.get(id(bank), 0) + 1
    for group in gm.growc_banks.__dict__["_growc_groups"]:
        for bank, rows in zip(group.banks, group.layout.rows, strict=True):
            assert len(rows) == needed[id(bank)]


def _reference_weight(layer: nn.Module) -> torch.Tensor:
    """The definition: each block the sum of its terms' bank rows, blocks concatenated, times the scale."""
    rows = []
    for row in layer.blocks:
        blocks = []
        for terms in row:
            block = torch.zeros(layer.banks[0].weight_shape)
            for bank, index in terms:
                block = block + torch.einsum("k,k...->...", bank.coefficients[index], bank.templates)
            blocks.append(block)
        rows.append(torch.cat(blocks, dim=1) if blocks[0].dim() > 1 else torch.cat(blocks))
    return torch.cat(rows) * layer.scale


@settings(max_examples=30)
@given(
    rows=st.integers(1, 3),
    cols=st.integers(1, 3),
    data=st.data(),
    scale=st.sampled_from([1.0, 0.5, -2.0]),
    linear=st.booleans(),
)
def test_grids_of_any_terms_generate_the_definition_and_its_gradients(rows, cols, data, scale, linear) -> None:
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    shape = (3, 4) if linear else (3, 4, 3, 3)
    banks = [
        TemplateBank(torch.randn(k, *shape, generator=g), torch.randn(3, k, generator=g), kind="linear") for k in (2, 3)
    ]
    term = st.tuples(st.sampled_from(banks), st.integers(0, 2))
    # one or two terms per block (a block with none reads as zeros when another block fixes the shape)
    blocks = [[data.draw(st.lists(term, min_size=1, max_size=2)) for _ in range(cols)] for _ in range(rows)]
    if data.draw(st.booleans()) and rows * cols > 1:
        blocks[-1][-1] = []
    if linear:
        layer = runtime_layers.GridLinear(blocks, None, in_features=4 * cols, out_features=3 * rows, scale=scale)
    else:
        conv = nn.Conv2d(4, 3, 3)
        layer = runtime_layers.GridConv2d(
            blocks, None, conv, in_channels=4 * cols, out_channels=3 * rows, groups=1, scale=scale
        )
    ours = layer.weight
    grad = torch.randn(ours.shape, generator=g)
    ours.backward(grad)
    got = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for b in banks for p in b.parameters()]
    for b in banks:
        b.zero_grad(set_to_none=True)
    expected = _reference_weight(layer)
    expected.backward(grad)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    want = [p.grad if p.grad is not None else torch.zeros_like(p) for b in banks for p in b.parameters()]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_pickled_grown_models_keep_their_groups_on_their_own_banks(grown) -> None:
    gm, x = grown
    gm = copy.deepcopy(gm).eval()
    with torch.no_grad():
        expected = gm(x)  # fills the eval caches: they are not pickled
    buffer = io.BytesIO()
    torch.save(gm, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    banks = {id(b) for b in loaded.growc_banks.children()}
    for layer in loaded.modules():
        if isinstance(layer, runtime_layers.GENERATED_TYPES):
            group = _group(layer)
            assert group._cache is None and {id(b) for b in group.banks} <= banks
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    loaded.train()
    loaded(x).sum().backward()
    assert all(p.grad is not None for p in loaded.parameters() if p.requires_grad)


def test_templates_are_stored_out_major_and_their_gradient_needs_no_copy(tmp_path) -> None:
    bank = make_bank(layers=2, shape=(4, 3, 3, 3))
    assert bank.templates.shape == (2, 4, 3, 3, 3) and bank.templates.transpose(0, 1).is_contiguous()
    layer = _layers(bank)[0]
    layer(torch.randn(1, 3, 5, 5)).sum().backward()
    assert bank.templates.grad.stride() == bank.templates.stride()  # handed over as computed, not re-laid out
    for moved in (copy.deepcopy(bank), bank.double(), bank.to(memory_format=torch.channels_last)):
        assert moved.templates.transpose(0, 1).is_contiguous()
    fresh = make_bank(layers=2, shape=(4, 3, 3, 3)).double()
    fresh.load_state_dict(bank.state_dict())
    assert fresh.templates.transpose(0, 1).is_contiguous() and torch.equal(fresh.templates, bank.templates)
    growc.io.save_state_dict(bank, tmp_path / "bank.safetensors")  # growc saves them contiguous
    assert torch.equal(growc.io.load_state_dict(tmp_path / "bank.safetensors")["templates"], bank.templates)


def _two_bank_layers() -> tuple[TemplateBank, TemplateBank, nn.Module, nn.Module]:
    g = torch.Generator().manual_seed(0)
    a, b = (
        TemplateBank(torch.randn(2, 3, 4, generator=g), torch.randn(2, 2, generator=g), kind="linear") for _ in "ab"
    )
    grid = runtime_layers.GridLinear([[[(a, 0)], [(b, 0)]]], None, in_features=8, out_features=3)
    alone = MixedLinear(b, 1, nn.Linear(4, 3))
    return a, b, grid, alone


def test_a_layer_without_gradient_gives_its_banks_none() -> None:
    a, b, grid, alone = _two_bank_layers()
    (group,) = generation.register([grid, alone])  # one group: the grid joins both banks
    group.begin_step()
    alone.weight.sum().backward()  # the grid's weight was generated with it but is not used
    group.end_step()
    assert a.templates.grad is None and a.coefficients.grad is None  # not zeros: an optimizer leaves a alone
    assert b.templates.grad is not None and torch.count_nonzero(b.coefficients.grad[0]) == 0


def test_inference_mode_weights_do_not_leak_into_autograd() -> None:
    bank = make_bank().eval()
    bank.requires_grad_(False)
    layer = _layers(bank)[0].eval()
    with torch.inference_mode():
        layer(torch.randn(1, 3, 5, 5))
    x = torch.randn(1, 3, 5, 5, requires_grad=True)
    layer(x).sum().backward()  # an inference tensor from the cache could not be saved for backward
    assert x.grad is not None


class _Holder(nn.Module):
    """A bank and one layer reading it, as a model (so ``functional_call`` can swap the bank's parameters)."""

    def __init__(self, bank: TemplateBank, layer: nn.Module) -> None:
        super().__init__()
        self.bank, self.layer = bank, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # raised inside torch.func
def test_double_backward_forward_ad_and_torch_func_work() -> None:
    bank = make_bank(layers=2, shape=(3, 4))
    model = _Holder(bank, MixedLinear(bank, 1, nn.Linear(4, 3)))
    x = torch.randn(5, 4)

    def reference(templates: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        weight = torch.einsum("k,kab->ab", coefficients[1], templates)
        return torch.nn.functional.linear(x, weight, model.layer.bias)

    # double backward (a gradient penalty)
    (g,) = torch.autograd.grad(model(x).square().sum(), bank.templates, create_graph=True)
    g.square().sum().backward()
    ours = bank.coefficients.grad.clone()
    bank.zero_grad(set_to_none=True)
    (g,) = torch.autograd.grad(
        reference(bank.templates, bank.coefficients).square().sum(), bank.templates, create_graph=True
    )
    g.square().sum().backward()
    torch.testing.assert_close(ours, bank.coefficients.grad, rtol=1e-5, atol=1e-5)
    templates, coefficients = bank.templates.detach(), bank.coefficients.detach()
    # forward-mode AD
    tangent = torch.randn_like(templates)
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(templates, tangent)
        out = torch.func.functional_call(model, {"bank.templates": dual}, (x,), strict=False)
        jvp = torch.autograd.forward_ad.unpack_dual(out).tangent
    expected = torch.func.jvp(lambda t: reference(t, coefficients), (templates,), (tangent,))[1]
    torch.testing.assert_close(jvp, expected, rtol=1e-5, atol=1e-5)
    # torch.func.grad through functional_call
    params = {k: v.detach() for k, v in model.named_parameters()}
    grads = torch.func.grad(lambda p: torch.func.functional_call(model, p, (x,)).sum())(params)
    expected = torch.func.grad(lambda t: reference(t, coefficients).sum())(templates)
    torch.testing.assert_close(grads["bank.templates"], expected, rtol=1e-5, atol=1e-5)


def test_scales_keep_the_parameters_precision() -> None:
    g = torch.Generator().manual_seed(0)
    bank = TemplateBank(torch.randn(2, 3, 4, generator=g), torch.randn(2, 2, generator=g), kind="linear").double()
    grid = runtime_layers.GridLinear([[[(bank, 0)], [(bank, 1)]]], None, in_features=8, out_features=3, scale=1 / 3)
    torch.testing.assert_close(grid.weight, _reference_weight(grid), rtol=1e-12, atol=1e-12)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        single = runtime_layers.GridLinear([[[(bank.float(), 0)]]], None, in_features=4, out_features=3, scale=0.5)
        assert single.weight.dtype == torch.float32
    finally:
        torch.set_default_dtype(default)


def test_moving_a_model_frees_its_cached_weights(grown) -> None:
    gm, x = grown
    gm = copy.deepcopy(gm).eval()
    with torch.no_grad():
        gm(x)
    groups = gm.growc_banks.__dict__["_growc_groups"]
    assert all(g._cache is not None for g in groups)
    gm.double()
    assert all(g._cache is None for g in groups)


def test_blocks_of_one_weight_must_read_banks_of_one_shape() -> None:
    g = torch.Generator().manual_seed(0)
    small = TemplateBank(torch.randn(2, 3, 4, generator=g), torch.randn(1, 2, generator=g), kind="linear")
    large = TemplateBank(torch.randn(2, 5, 4, generator=g), torch.randn(1, 2, generator=g), kind="linear")
    with pytest.raises(ValueError, match=r"must read banks of one weight shape, got \[\(3, 4\), \(5, 4\)\]"):
        runtime_layers.GridLinear([[[(small, 0)]], [[(large, 0)]]], None, in_features=4, out_features=8)
