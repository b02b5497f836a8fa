"""Shared by the runtime's test modules: small banks and layers, a grown model, the reference definitions."""

from __future__ import annotations

import copy

import pytest
import torch
from einops import rearrange
from torch import nn

import growc
from growc.runtime import generation, markers
from growc.runtime.bank import TemplateBank
from growc.runtime.layers import GridLinear, MixedConv2d, MixedLinear


def make_bank(layers: int = 3, k: int = 2, shape: tuple[int, ...] = (4, 3, 3, 3)) -> TemplateBank:
    g = torch.Generator().manual_seed(0)
    return TemplateBank(torch.randn(k, *shape, generator=g), torch.randn(layers, k, generator=g), kind="conv2d")


def mixed_layers(bank: TemplateBank) -> list[MixedConv2d]:
    conv = nn.Conv2d(bank.weight_shape[1], bank.weight_shape[0], bank.weight_shape[2])
    return [MixedConv2d(bank, i, conv) for i in range(bank.num_layers)]


def grown_model() -> tuple[torch.fx.GraphModule, torch.Tensor]:
    """Two wrn-10-1 parents fused (orthogonal cross blocks, banks shared by shape) and an input batch."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    parents = [growc.models.resolve_model("wrn-10-1", num_classes=5) for _ in range(2)]
    for p in parents:
        for m in p.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight, 0.5, 1.5)
    gm = growc.fuse(parents, (x,), cross_init="orthogonal", templatize_options={"sharing": "shape"})
    return gm, x


def count_generations(monkeypatch: pytest.MonkeyPatch) -> list[generation.Layout]:
    calls: list[generation.Layout] = []
    original = generation.Group.generate

    def counting(self, layout):
        calls.append(layout)
        return original(self, layout)

    monkeypatch.setattr(generation.Group, "generate", counting)
    return calls


def without_step_markers(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    plain = copy.deepcopy(gm)
    markers.strip_step_markers(plain.graph)
    plain.recompile()
    return plain


def group_of(layer: nn.Module) -> generation.Group:
    """The generation group a layer is bound to."""
    return layer.binding.group


def reference_weight(layer: nn.Module) -> torch.Tensor:
    """The definition: each block the sum of its terms' bank rows, the ``R x C`` grid of blocks assembled
    ``r c o i ... -> (r o) (c i) ...`` (1-D blocks: stacked), times the scale."""
    shape = layer.banks[0].weight_shape
    zero = torch.zeros(shape)
    grid = torch.stack(
        [
            torch.stack(
                [
                    sum((torch.einsum("k,k...->...", b.coefficients[i], b.templates) for b, i in terms), zero)
                    for terms in row
                ]
            )
            for row in layer.blocks
        ]
    )
    pattern = "r c o -> (r c o)" if len(shape) == 1 else "r c o i ... -> (r o) (c i) ..."
    return rearrange(grid, pattern) * layer.scale


def two_bank_layers() -> tuple[TemplateBank, TemplateBank, nn.Module, nn.Module]:
    g = torch.Generator().manual_seed(0)
    a, b = (
        TemplateBank(torch.randn(2, 3, 4, generator=g), torch.randn(2, 2, generator=g), kind="linear") for _ in "ab"
    )
    grid = GridLinear([[[(a, 0)], [(b, 0)]]], None, in_features=8, out_features=3)
    alone = MixedLinear(b, 1, nn.Linear(4, 3))
    return a, b, grid, alone


class Holder(nn.Module):
    """A bank and one layer reading it, as a model (so ``functional_call`` can swap the bank's parameters)."""

    def __init__(self, bank: TemplateBank, layer: nn.Module) -> None:
        super().__init__()
        self.bank, self.layer = bank, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)
