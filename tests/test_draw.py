"""Drawing: the fx graph as DOT, rendering through Graphviz, the coefficient heatmap."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import growc
from growc.errors import GrowcError
from growc.fx.draw import coefficient_heatmap, coefficient_rows, graph_dot, write_graphic
from growc.models import resolve_model


@pytest.fixture(scope="module")
def fused() -> torch.fx.GraphModule:
    x = torch.randn(4, 1, 40)
    parents = [resolve_model("cnn1d-4", num_classes=3) for _ in range(2)]
    return growc.fuse(parents, (x,), cross_init="orthogonal", templatize_options={"sharing": "layer", "init": "exact"})


def test_graph_dot_has_a_node_per_fx_node_and_marks_grid_layers(fused: torch.fx.GraphModule) -> None:
    dot = graph_dot(fused, title="fused")
    assert dot.startswith('digraph "fused" {')
    for node in fused.graph.nodes:
        assert f'  "{node.name}" [label=' in dot
    assert dot.count(" -> ") == sum(len(n.users) for n in fused.graph.nodes)
    assert 'GridConv1d 2x2", color=darkgreen]' in dot  # interior layers: a 2 x 2 grid
    assert 'GridConv1d 2x1", color=darkgreen]' in dot  # the stem: stacked along outputs
    assert 'GridLinear 1x2", color=darkgreen]' in dot  # the head: side by side


def test_coefficient_rows_name_the_blocks_that_use_them(fused: torch.fx.GraphModule) -> None:
    rows = coefficient_rows(fused)
    labels = [label for label, _ in rows]
    assert len(rows) == sum(b.coefficients.shape[0] for b in fused.modules() if isinstance(b, growc.TemplateBank))
    assert any(label.endswith("features.3[0,1]") for label in labels)  # a cross block
    assert any(label.endswith("features.3[1,1]") for label in labels)  # parent 1's diagonal block


def test_heatmap_writes_a_png_and_refuses_a_model_without_banks(fused: torch.fx.GraphModule, tmp_path: Path) -> None:
    path = coefficient_heatmap(fused, tmp_path / "h.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["h.png"]
    with pytest.raises(GrowcError, match=r"the model has no template banks: nothing to draw"):
        coefficient_heatmap(resolve_model("cnn1d-4"), tmp_path / "x.png")


def test_rendering_needs_graphviz_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(GrowcError, match=r"needs the Graphviz 'dot' program, which is not on PATH"):
        write_graphic("digraph {}", tmp_path / "g.svg")
    assert write_graphic("digraph {}\n", tmp_path / "g.dot").read_text() == "digraph {}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.dot"]
