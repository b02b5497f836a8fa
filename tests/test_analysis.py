"""Shape and dtype propagation on meta tensors."""

from __future__ import annotations

import torch
from torch import nn

import growc
from growc.analysis import TensorInfo


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.bn(self.conv(x))
        return self.fc(y.flatten(1)), y.to(torch.float16)


def test_every_node_gets_shape_and_dtype_without_changing_the_model() -> None:
    model = Model().train()
    gm = growc.trace(model)
    state = {k: v.clone() for k, v in gm.state_dict().items()}
    report = growc.propagate_shapes(gm, (torch.randn(2, 3, 8, 8),))
    shapes = {n.name: n.meta["growc_shape"] for n in gm.graph.nodes}
    assert shapes["conv"] == TensorInfo((2, 8, 4, 4), torch.float32)
    assert shapes["flatten"] == TensorInfo((2, 128), torch.float32)
    assert shapes["fc"] == TensorInfo((2, 5), torch.float32)
    assert shapes["to"] == TensorInfo((2, 8, 4, 4), torch.float16)
    assert shapes["output"] == (TensorInfo((2, 5), torch.float32), TensorInfo((2, 8, 4, 4), torch.float16))
    assert report == {"nodes": len(gm.graph.nodes), "real_compute_nodes": []}
    assert gm.training and all(m.training for m in gm.modules())
    for key, value in gm.state_dict().items():
        assert torch.equal(value, state[key]) and value.device.type == "cpu"


class Inspects(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if float(x.sum()) >= 0 else x  # needs data: cannot run on meta tensors


class WithInspectingLeaf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.leaf = Inspects()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.leaf(x))


def test_data_dependent_leaf_runs_on_zeros_and_is_reported() -> None:
    gm = growc.trace(WithInspectingLeaf())
    report = growc.propagate_shapes(gm, (torch.randn(3, 4),))
    assert len(report["real_compute_nodes"]) == 1 and report["real_compute_nodes"][0].startswith("leaf (")
    assert next(n for n in gm.graph.nodes if n.name == "fc").meta["growc_shape"].shape == (3, 2)


def test_templatized_models_propagate_through_banks() -> None:
    model = Model()
    x = torch.randn(2, 3, 8, 8)
    gm = growc.templatize(model, (x,), sharing="shape")
    assert growc.propagate_shapes(gm, (x,))["real_compute_nodes"] == []  # banks mix on meta tensors too
    assert next(n for n in gm.graph.nodes if n.name == "fc").meta["growc_shape"].shape == (2, 5)
    assert all(not t.is_meta for t in gm.state_dict().values())
    layers = [m for m in gm.modules() if isinstance(m, growc.ops.GENERATED_TYPES)]
    assert layers and all(m.__dict__["_growc_slot"][0]._cache is None for m in layers)  # no meta weight kept
