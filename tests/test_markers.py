"""growc.runtime.markers: one generation per bank group per training step between the step markers; the groups a
graph holds survive deepcopy, pickling and moves."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from runtime_helpers import count_generations, group_of, grown_model, without_step_markers
from torch import nn

from growc.runtime import layers as runtime_layers
from growc.runtime import markers
from growc.runtime.bank import TemplateBank


@pytest.fixture(scope="module")
def grown() -> tuple[torch.fx.GraphModule, torch.Tensor]:
    return grown_model()


def test_a_training_forward_generates_each_bank_group_once(grown, monkeypatch: pytest.MonkeyPatch) -> None:
    gm, x = grown
    gm = copy.deepcopy(gm).train()  # survives a deep copy (and pickling): the markers are graph nodes
    banks = [b for b in gm.modules() if isinstance(b, TemplateBank)]
    layers = [m for m in gm.modules() if isinstance(m, runtime_layers.GENERATED_TYPES)]
    groups = markers.step_groups(gm)
    assert {id(group_of(m)) for m in layers} == {id(g) for g in groups}  # every layer is in one of its graph's groups
    calls = count_generations(monkeypatch)
    gm(x).sum().backward()
    assert sorted(map(id, calls)) == sorted(id(g.layout) for g in groups)  # one node per group, for all its layers
    assert sorted(id(b) for g in groups for b in g.banks) == sorted(map(id, banks))  # each bank in one group
    assert sum(len(c.layers) for c in calls) == len(layers)
    assert all(g.step_weights is None and not g.in_step for g in groups)  # dropped when the forward ends
    calls.clear()
    without_step_markers(gm)(x)  # without the markers each layer generates its own weight
    assert len(calls) == len(layers) and all(len(c.layers) == 1 for c in calls)


def test_shared_generation_gives_the_same_outputs_and_gradients(grown) -> None:
    gm, x = grown
    shared, separate = copy.deepcopy(gm).train(), without_step_markers(gm).train()
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
            group = group_of(layer)
            assert group.cached_weights is None and {id(b) for b in group.banks} <= banks
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    loaded.train()
    loaded(x).sum().backward()
    assert all(p.grad is not None for p in loaded.parameters() if p.requires_grad)


def test_moving_a_model_frees_its_cached_weights(grown) -> None:
    gm, x = grown
    gm = copy.deepcopy(gm).eval()
    with torch.no_grad():
        gm(x)
    groups = markers.step_groups(gm)
    assert all(g.cached_weights is not None for g in groups)
    gm.double()
    assert all(g.cached_weights is None for g in groups)


def test_step_markers_are_idempotent_and_strip_cleanly(grown) -> None:
    gm, x = grown
    gm = copy.deepcopy(gm)
    marks = [n.target for n in gm.graph.nodes if n.target in markers.STEP_MARKERS]
    assert marks == [markers.begin_step, markers.end_step]
    groups = markers.step_groups(gm)
    markers.add_step_markers(gm)  # again: the same two markers, groups made afresh
    assert [n.target for n in gm.graph.nodes if n.target in markers.STEP_MARKERS] == marks
    assert markers.step_groups(gm) is not groups and len(markers.step_groups(gm)) == len(groups)
    plain = without_step_markers(gm)
    assert not [n for n in plain.graph.nodes if n.target in (*markers.STEP_MARKERS, "growc_banks")]
    assert torch.equal(plain.eval()(x), gm.eval()(x))


def test_a_graph_without_banks_gets_no_markers_and_no_groups() -> None:
    gm = torch.fx.symbolic_trace(nn.Sequential(nn.Linear(3, 3)))
    before = [n.name for n in gm.graph.nodes]
    markers.add_step_markers(gm)
    assert [n.name for n in gm.graph.nodes] == before
    assert len(markers.step_groups(gm)) == 0
