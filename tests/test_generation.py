"""growc.runtime.generation: the batched generation against the definition (values and gradients), the eval cache,
autocast, channels_last, torch.compile, forward-mode AD, double backward and torch.func."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from runtime_helpers import (
    Holder,
    group_of,
    grown_model,
    make_bank,
    mixed_layers,
    reference_weight,
    two_bank_layers,
    without_step_markers,
)
from torch import nn

from growc.runtime import generation, markers
from growc.runtime import layers as runtime_layers
from growc.runtime.bank import TemplateBank
from growc.runtime.layers import MixedLinear


@pytest.fixture(scope="module")
def grown() -> tuple[torch.fx.GraphModule, torch.Tensor]:
    return grown_model()


def test_eval_cache_returns_same_tensor_until_a_parameter_changes() -> None:
    bank = make_bank().eval()
    layers = mixed_layers(bank)
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
    layer = mixed_layers(bank)[0]
    w = layer.weight
    assert w.requires_grad and layer.weight is not w
    w.sum().backward()
    assert bank.templates.grad is not None and bank.coefficients.grad is not None
    bank.eval()
    w = layer.weight  # grad enabled and parameters require grad: no cache, gradients still flow
    assert w.requires_grad and layer.weight is not w


def test_layer_weights_and_gradients_equal_the_mix() -> None:
    bank = make_bank(layers=4, k=3)
    layers = mixed_layers(bank)
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


def test_to_regenerates_in_the_new_dtype() -> None:
    bank = make_bank().eval()
    layer = mixed_layers(bank)[0].eval()
    with torch.no_grad():
        before = layer.weight
        bank.double()
        after = layer.weight
    assert before.dtype == torch.float32 and after.dtype == torch.float64
    torch.testing.assert_close(after.float(), before)


def test_eval_cache_serves_grid_layers_until_a_step_changes_the_parameters(grown) -> None:
    gm, x = grown
    gm = copy.deepcopy(gm).eval()
    layer = next(m for m in gm.modules() if isinstance(m, runtime_layers.GRID_TYPES))
    group = group_of(layer)
    with torch.no_grad():
        before = gm(x)
        cached = group.cached_weights
        gm(x)
        assert group.cached_weights is cached  # the same tensors: nothing regenerated
    optimizer = torch.optim.SGD(gm.parameters(), lr=0.1)
    gm.train()
    gm(x).sum().backward()
    optimizer.step()
    gm.eval()
    with torch.no_grad():
        after = gm(x)
    assert group.cached_weights is not cached and not torch.equal(before, after)
    torch.testing.assert_close(after, without_step_markers(gm).eval()(x), rtol=1e-5, atol=1e-6)


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
    for group in markers.step_groups(gm):
        for bank, rows in zip(group.banks, group.layout.rows, strict=True):
            assert len(rows) == needed[id(bank)]


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
    expected = reference_weight(layer)
    expected.backward(grad)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    want = [p.grad if p.grad is not None else torch.zeros_like(p) for b in banks for p in b.parameters()]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_a_layer_without_gradient_gives_its_banks_none() -> None:
    a, b, grid, alone = two_bank_layers()
    (group,) = generation.register([grid, alone])  # one group: the grid joins both banks
    group.begin_step()
    alone.weight.sum().backward()  # the grid's weight was generated with it but is not used
    group.end_step()
    assert a.templates.grad is None and a.coefficients.grad is None  # not zeros: an optimizer leaves a alone
    assert b.templates.grad is not None and torch.count_nonzero(b.coefficients.grad[0]) == 0


def test_inference_mode_weights_do_not_leak_into_autograd() -> None:
    bank = make_bank().eval()
    bank.requires_grad_(False)
    layer = mixed_layers(bank)[0].eval()
    with torch.inference_mode():
        layer(torch.randn(1, 3, 5, 5))
    x = torch.randn(1, 3, 5, 5, requires_grad=True)
    layer(x).sum().backward()  # an inference tensor from the cache could not be saved for backward
    assert x.grad is not None


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # raised inside torch.func
def test_double_backward_forward_ad_and_torch_func_work() -> None:
    bank = make_bank(layers=2, shape=(3, 4))
    model = Holder(bank, MixedLinear(bank, 1, nn.Linear(4, 3)))
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
    torch.testing.assert_close(grid.weight, reference_weight(grid), rtol=1e-12, atol=1e-12)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        single = runtime_layers.GridLinear([[[(bank.float(), 0)]]], None, in_features=4, out_features=3, scale=0.5)
        assert single.weight.dtype == torch.float32
    finally:
        torch.set_default_dtype(default)
