"""Channel analysis: axes, shared tensors, stems and heads, and coupled groups proven by permutation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import growc
from growc.models import WideResNet
from growc.testing import ALL_FEATURES, cnn_models

NO_RANDOMNESS = ALL_FEATURES - {"dropout"}


def _permute(model: nn.Module, dims: list[tuple[str, int]], slices: list[tuple[str, int, int, int]], perm) -> None:
    """Permute whole parameter dims, and (offset, block) slices of dims that contain the group."""
    state = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    done: set[tuple[int, int]] = set()
    with torch.no_grad():
        for name, axis in dims:
            tensor = state[name]
            if (id(tensor), axis) in done:
                continue
            done.add((id(tensor), axis))
            tensor.copy_(tensor.index_select(axis, perm))
        for name, axis, offset, block in slices:
            tensor = state[name]
            index = torch.arange(tensor.shape[axis])
            span = (perm[:, None] * block + torch.arange(block)).reshape(-1) + offset
            index[offset : offset + len(span)] = span
            tensor.copy_(tensor.index_select(axis, index))


def _output(model: nn.Module, inputs) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(*inputs)


@settings(max_examples=25)
@given(cnn_models(features=NO_RANDOMNESS), st.integers(0, 2**16))
def test_permuting_a_group_consistently_keeps_the_function(generated, seed) -> None:
    model = generated.build()
    gm = growc.trace(model)
    analysis = growc.analyze_channels(gm, generated.inputs)
    groups = [g for g in analysis.groups if g.permutable and g.size >= 2 and g.producers]
    assume(groups)
    reference = _output(gm, generated.inputs)
    generator = torch.Generator().manual_seed(seed)
    group = groups[seed % len(groups)]
    perm = torch.randperm(group.size, generator=generator)
    if torch.equal(perm, torch.arange(group.size)):
        perm = perm.roll(1)
    _permute(gm, group.params, analysis.permutation_slices(group), perm)
    torch.testing.assert_close(_output(gm, generated.inputs), reference, rtol=1e-4, atol=1e-5)


def _values(gm, inputs) -> dict[str, torch.Tensor]:
    values: dict[str, torch.Tensor] = {}

    class Record(torch.fx.Interpreter):
        def run_node(self, n):
            values[n.name] = result = super().run_node(n)
            return result

    gm.eval()
    with torch.no_grad():
        Record(gm).run(*inputs)
    return values


@settings(max_examples=25)
@given(cnn_models(features=NO_RANDOMNESS), st.integers(0, 2**16))
def test_permuting_part_of_a_group_changes_the_function(generated, seed) -> None:
    """Negative control: permute every member of a group but one (a consumer's input dimension): the consumer's
    output changes, so that member is necessary. (Equivalent to permuting that member alone, relative to the rest.)"""
    gm = growc.trace(generated.build())
    analysis = growc.analyze_channels(gm, generated.inputs)
    groups = [g for g in analysis.groups if g.permutable and g.size >= 2 and g.producers and g.consumers]
    assume(groups)
    group = groups[seed % len(groups)]
    consumer = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == group.consumers[0])
    before = _values(gm, generated.inputs)
    x = before[consumer.args[0].name]
    axis = analysis.channel_axis[consumer.args[0].name]
    assume(not torch.allclose(x, x.narrow(axis, 0, 1).expand_as(x)))  # channels that differ can be told apart
    _permute(gm, [(f"{group.consumers[0]}.weight", 1)], [], torch.arange(group.size).roll(1))
    after = _values(gm, generated.inputs)
    assert not torch.allclose(after[consumer.name], before[consumer.name], rtol=1e-4, atol=1e-6)


def test_wrn_axes_stems_heads_and_shared() -> None:
    model = WideResNet(10, 1, num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    gm = growc.trace(model)
    analysis = growc.analyze_channels(gm, (x,))
    assert analysis.stems == ["conv1"] and analysis.heads == ["fc"]
    assert analysis.shared == {"x"}
    assert analysis.channel_axis["conv1"] == 1 and analysis.channel_axis["fc"] == 1
    stem = analysis.group_of("conv1")
    # the stem's 16 channels run through block1 (identity shortcut): conv1, bn1, add ... one group
    assert stem.size == 16 and "block1.0.conv2" in stem.producers and "block1.0.conv1" in stem.consumers
    assert stem.permutable
    assert not analysis.group_of("fc").permutable  # the logits: a graph output
    assert "group 0" in analysis.summary() and analysis.to_dot().startswith("graph channels {")


class Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = (x[:, :1] > 0).float()  # [B, 1, H, W]
        y = self.conv(x) * mask  # broadcast: the mask is not coupled to the 4 channels
        y = torch.softmax(self.conv2(y), dim=1)  # no channel rule: blocks both sides
        return self.fc(y.mean((2, 3)))


def test_broadcast_operands_are_not_coupled_and_unknown_ops_block() -> None:
    gm = growc.trace(Masked())
    analysis = growc.analyze_channels(gm, (torch.randn(2, 3, 5, 5),))
    conv = analysis.group_of("conv")
    assert conv.permutable and ("tensor", "mask", 1) not in conv.dims  # the [B, 1, H, W] mask is not coupled
    conv2 = analysis.group_of("conv2")
    assert conv2.blocked == ["read by softmax, which has no channel rule"]


class DenseFlatten(nn.Module):
    """A channel cat (containment at an offset) feeding a flatten -> linear (containment in blocks)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 2, 1)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.a(x)))
        y = torch.cat([y, self.b(y)], dim=1)
        return self.fc(torch.flatten(y, 1))


@pytest.mark.parametrize("producer", ["a", "b"])
def test_permutation_through_cat_and_flatten(producer: str) -> None:
    torch.manual_seed(0)
    gm = growc.trace(DenseFlatten())
    bn = gm.get_submodule("bn")
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 4, 4)
    analysis = growc.analyze_channels(gm, (x,))
    group = analysis.group_of(producer)
    assert group.permutable and group.producers == [producer]
    assert analysis.permutation_slices(group) == [
        ("fc.weight", 1, (0 if producer == "a" else 4) * 16, 16)  # channel c of the cat is 16 flattened features
    ]
    reference = _output(gm, (x,))
    perm = torch.arange(group.size).roll(1)
    _permute(gm, group.params, analysis.permutation_slices(group), perm)
    torch.testing.assert_close(_output(gm, (x,)), reference, rtol=1e-5, atol=1e-6)
    _permute(gm, [(f"{producer}.weight", 0)], [], perm)  # the negative control: only the producer again
    assert not torch.allclose(_output(gm, (x,)), reference, rtol=1e-4, atol=1e-5)
