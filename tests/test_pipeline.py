"""Pass infrastructure: composition, linting, purity checks and errors that name the pass."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import fx, nn

import growc
from growc.testing import assert_same_function


def model_and_input() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()), (torch.randn(2, 3, 6, 6),)


def test_pipeline_runs_passes_in_order_and_checks_purity() -> None:
    model, x = model_and_input()
    pipeline = growc.Pipeline(
        functools.partial(growc.templatize, example_inputs=x, init="exact"), growc.materialize, check_pure=True
    )
    assert pipeline.names == ["templatize(example_inputs=" + repr(x) + ", init='exact')", "materialize"]
    out = pipeline(model)
    assert out.meta["growc"]["history"] == ["templatize", "materialize"]
    assert_same_function(model, out, x)


def mutating_pass(gm: fx.GraphModule) -> fx.GraphModule:
    with torch.no_grad():
        next(gm.parameters()).add_(1.0)
    return fx.GraphModule(gm, gm.graph)


def broken_pass(gm: fx.GraphModule) -> fx.GraphModule:
    raise RuntimeError("boom")


def identity_pass(gm: fx.GraphModule) -> fx.GraphModule:
    return gm


def test_failing_pass_is_named_with_its_predecessors() -> None:
    model, x = model_and_input()
    pipeline = growc.Pipeline(functools.partial(growc.templatize, example_inputs=x), growc.materialize, broken_pass)
    with pytest.raises(growc.GrowcPassError) as info:
        pipeline(model)
    message = str(info.value)
    assert message.startswith("pass 3/3 'broken_pass' failed (after: templatize(example_inputs=")
    assert message.endswith(") -> materialize): RuntimeError: boom")


def test_purity_violation_and_returning_the_input_are_errors() -> None:
    model, _ = model_and_input()
    gm = growc.trace(model)
    with pytest.raises(growc.GrowcPassError, match=r"'mutating_pass' failed .*mutated its input: state_dict entry "):
        growc.Pipeline(mutating_pass, check_pure=True)(gm)
    with pytest.raises(growc.GrowcPassError, match="returned its input; a pass must return a new GraphModule"):
        growc.Pipeline(identity_pass)(growc.trace(model))


def test_pass_leaving_an_invalid_graph_is_caught_by_lint() -> None:
    def breaks_graph(gm: fx.GraphModule) -> fx.GraphModule:
        out = fx.GraphModule(gm, fx.Graph())
        x = out.graph.placeholder("x")
        out.graph.output(x)
        node = next(iter(out.graph.nodes))
        node.args = (out.graph.create_node("placeholder", "dangling"),)  # a node used by no one, wrongly wired
        return out

    with pytest.raises(growc.GrowcPassError, match="'breaks_graph' failed"):
        growc.Pipeline(breaks_graph)(growc.trace(nn.ReLU()))


def test_empty_pipeline_is_refused() -> None:
    with pytest.raises(ValueError, match="a Pipeline needs at least one pass"):
        growc.Pipeline()
