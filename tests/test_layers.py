"""growc.runtime.layers: mixed and grid layers against plain nn layers and the blockwise definition; banks are
referenced, not owned; binding to a generation group."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from runtime_helpers import grown_model, make_bank
from torch import nn

from growc.runtime import layers as runtime_layers
from growc.runtime.bank import TemplateBank
from growc.runtime.layers import MixedConv2d, MixedLinear


@pytest.fixture(scope="module")
def grown() -> tuple[torch.fx.GraphModule, torch.Tensor]:
    return grown_model()


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


def test_padding_modes_match_plain_conv() -> None:
    for mode in ("zeros", "reflect", "circular", "replicate"):
        conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode, stride=2, dilation=1)
        bank = TemplateBank(conv.weight.detach().clone()[None], torch.ones(1, 1), kind="conv2d")
        mixed = MixedConv2d(bank, 0, conv)
        x = torch.randn(2, 3, 7, 7)
        torch.testing.assert_close(mixed(x), conv(x), rtol=0, atol=0)
        plain = mixed.to_plain()
        torch.testing.assert_close(plain(x), conv(x), rtol=0, atol=0)


def test_grid_weights_equal_the_blockwise_definition(grown) -> None:
    gm, _ = grown
    for module in gm.modules():
        if isinstance(module, runtime_layers.GRID_TYPES):
            rows = [torch.cat([sum(b.weights()[r] for b, r in terms) for terms in row], dim=1) for row in module.blocks]
            expected = torch.cat(rows, dim=0) * module.scale
            torch.testing.assert_close(module.weight, expected, rtol=1e-6, atol=1e-6)


def test_blocks_of_one_weight_must_read_banks_of_one_shape() -> None:
    g = torch.Generator().manual_seed(0)
    small = TemplateBank(torch.randn(2, 3, 4, generator=g), torch.randn(1, 2, generator=g), kind="linear")
    large = TemplateBank(torch.randn(2, 5, 4, generator=g), torch.randn(1, 2, generator=g), kind="linear")
    with pytest.raises(ValueError, match=r"must read banks of one weight shape, got \[\(3, 4\), \(5, 4\)\]"):
        runtime_layers.GridLinear([[[(small, 0)]], [[(large, 0)]]], None, in_features=4, out_features=8)


def test_layers_are_bound_to_a_group_and_unbound_when_their_definition_changes() -> None:
    bank = make_bank(layers=2)
    conv = nn.Conv2d(3, 4, 3)
    layer = MixedConv2d(bank, 0, conv)
    assert layer.binding is None
    layer.weight  # noqa: B018  (first use: a group of its own)
    group, slot = layer.binding
    assert group.banks == [bank] and slot == 0
    layer.index = 1  # what the weight is made of changed: a new group on next use
    assert layer.binding is None
    torch.testing.assert_close(layer.weight, bank.weight(1), rtol=1e-6, atol=1e-6)
    grid = runtime_layers.GridLinear([[[(make_bank(shape=(3, 4)), 0)]]], None, in_features=4, out_features=3)
    grid.weight  # noqa: B018
    assert grid.binding is not None
    grid.scale = 2.0
    assert grid.binding is None
    grid.bind(group, 0)  # bound explicitly, as the step markers do
    assert grid.binding == (group, 0)
