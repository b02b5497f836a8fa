"""Template banks and mixed layers: one contraction, eval cache, autocast, roles and optimizer groups."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import growc
from growc.ops import MixedConv2d, MixedLinear, TemplateBank


def make_bank(layers: int = 3, k: int = 2, shape: tuple[int, ...] = (4, 3, 3, 3)) -> TemplateBank:
    g = torch.Generator().manual_seed(0)
    return TemplateBank(torch.randn(k, *shape, generator=g), torch.randn(layers, k, generator=g), kind="conv2d")


def test_weight_is_the_coefficient_mix_of_templates() -> None:
    bank = make_bank()
    expected = torch.einsum("lk,kabcd->labcd", bank.coefficients, bank.templates)
    torch.testing.assert_close(bank.weights(), expected, rtol=1e-6, atol=1e-6)
    for i in range(3):
        torch.testing.assert_close(bank.weight(i), expected[i], rtol=1e-6, atol=1e-6)


def test_eval_cache_returns_same_tensor_until_a_parameter_changes() -> None:
    bank = make_bank().eval()
    with torch.no_grad():
        first = bank.weight(0)
        assert bank.weight(0).data_ptr() == first.data_ptr()  # served from the cache
        assert bank.weight(1).data_ptr() != first.data_ptr()
        cached = bank.cached_weights()
        assert bank.cached_weights() is cached
        bank.coefficients.add_(1.0)  # an in-place update bumps the version counter
        regenerated = bank.weight(0)
    assert bank.cached_weights() is not cached
    torch.testing.assert_close(regenerated, bank.weights()[0].detach())
    assert not torch.equal(regenerated, first)


def test_no_cache_in_training_or_with_grad() -> None:
    bank = make_bank()
    w = bank.weight(0)
    assert w.requires_grad and bank._cache is None
    w.sum().backward()
    assert bank.templates.grad is not None and bank.coefficients.grad is not None
    bank.eval()
    w = bank.weight(0)  # grad enabled and parameters require grad: no cache, gradients still flow
    assert w.requires_grad and bank._cache is None


def test_autocast_mixes_in_fp32_and_casts_once() -> None:
    bank = make_bank(shape=(8, 8))
    layer = MixedLinear(bank, 0, nn.Linear(8, 8))
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = bank.weight(0)
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


def test_to_moves_bank_and_clears_cache() -> None:
    bank = make_bank().eval()
    with torch.no_grad():
        bank.weight(0)
    assert bank._cache is not None
    bank.double()
    assert bank._cache is None and bank.weight(0).dtype == torch.float64


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


# ------------------------------------------------------------------- grown layers: one contraction per bank per step


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


def _count_mixes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = TemplateBank._mix

    def counting(self: TemplateBank, coefficients: torch.Tensor) -> torch.Tensor:
        calls.append(id(self))
        return original(self, coefficients)

    monkeypatch.setattr(TemplateBank, "_mix", counting)
    return calls


def _without_step_markers(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    plain = copy.deepcopy(gm)
    growc.ops.strip_step_markers(plain.graph)
    plain.recompile()
    return plain


def test_a_training_forward_generates_each_bank_once(grown, monkeypatch: pytest.MonkeyPatch) -> None:
    gm, x = grown
    gm = copy.deepcopy(gm).train()  # survives a deep copy (and pickling): the markers are graph nodes
    banks = [b for b in gm.modules() if isinstance(b, TemplateBank)]
    mixes = _count_mixes(monkeypatch)
    shared: list[int] = []
    original = growc.ops._BankMix.forward
    monkeypatch.setattr(
        growc.ops._BankMix,
        "forward",
        staticmethod(lambda ctx, a, t, *i: shared.append(id(t)) or original(ctx, a, t, *i)),
    )
    gm(x).sum().backward()
    assert mixes == []  # no layer contracts on its own
    assert sorted(shared) == sorted(id(b.templates) for b in banks)  # one contraction per bank, for all its layers
    assert all(b._step is None and not b._in_step for b in banks)  # dropped when the forward ends
    _without_step_markers(gm)(x)  # without the markers each layer contracts its own rows
    assert len(mixes) > len(banks)


def test_shared_generation_gives_the_same_outputs_and_gradients(grown) -> None:
    gm, x = grown
    shared, separate = copy.deepcopy(gm).train(), _without_step_markers(gm).train()
    torch.manual_seed(1)
    out_a = shared(x)
    torch.manual_seed(1)
    out_b = separate(x)
    torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-6)
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
        if isinstance(module, growc.ops.GRID_TYPES):
            rows = [torch.cat([sum(b.weights()[r] for b, r in terms) for terms in row], dim=1) for row in module.blocks]
            expected = torch.cat(rows, dim=0) * module.scale
            torch.testing.assert_close(module.weight, expected, rtol=1e-6, atol=1e-6)


def test_eval_cache_serves_grid_layers_until_a_step_changes_the_parameters(grown) -> None:
    gm, x = grown
    gm = copy.deepcopy(gm).eval()
    layer = next(m for m in gm.modules() if isinstance(m, growc.ops.GRID_TYPES))
    bank = layer.banks[0]
    with torch.no_grad():
        before = gm(x)
        cached = bank._cache[3]
        gm(x)
        assert bank._cache[3] is cached  # the same tensor: nothing regenerated
    optimizer = torch.optim.SGD(gm.parameters(), lr=0.1)
    gm.train()
    gm(x).sum().backward()
    optimizer.step()
    gm.eval()
    with torch.no_grad():
        after = gm(x)
    assert bank._cache[3] is not cached and not torch.equal(before, after)
    torch.testing.assert_close(after, _without_step_markers(gm).eval()(x), rtol=1e-5, atol=1e-6)


def test_torch_compile_sees_no_graph_break_and_matches_eager(grown) -> None:
    gm, x = grown
    gm = copy.deepcopy(gm).eval()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(gm)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(gm, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), gm(x), rtol=1e-5, atol=1e-5)
    gm.train()
    torch.manual_seed(0)
    eager = gm(x)
    torch.manual_seed(0)
    out = torch.compile(gm, backend="aot_eager")(x)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)


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
    ours = {n: m for n, m in gm.named_modules() if isinstance(m, growc.ops.GRID_TYPES)}
    for name, layer in reference.named_modules():
        if name in ours:
            torch.testing.assert_close(layer.weight, ours[name].weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reference.eval()(x), copy.deepcopy(gm).eval()(x), rtol=1e-5, atol=1e-5)


def test_a_bank_generates_only_the_rows_its_model_reads(grown) -> None:
    gm, x = grown
    gm = copy.deepcopy(gm).train()
    gm(x)  # rows the parents' own forwards read (shape analysis, checks) are not generated for the grown model
    needed: dict[int, int] = {}
    for module in gm.modules():
        if isinstance(module, growc.ops.GRID_TYPES):
            for row in module.blocks:
                for terms in row:
                    for bank, _ in terms:
                        needed[id(bank)] = needed.get(id(bank), 0) + 1
    for bank in gm.modules():
        if isinstance(bank, TemplateBank):
            assert sum(len(rows) for rows in bank._consumers) == needed[id(bank)]
