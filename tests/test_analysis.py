"""Shape and dtype propagation on meta tensors."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import growc
from growc.fx.analysis import TensorInfo, check_finite_state, check_finite_values, exactness_tolerance


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
    layers = [m for m in gm.modules() if isinstance(m, growc.runtime.layers.GENERATED_TYPES)]
    assert layers and all(m.binding.group.cached_weights is None for m in layers)  # no meta weight kept


# --- non-finite values and dtype-aware tolerances ----------------------------------------------------------------


def test_max_abs_rel_error_never_counts_nan_as_equal() -> None:
    nan = torch.tensor([float("nan"), 1.0])
    assert growc.max_abs_rel_error(nan, nan.clone()) == (math.inf, math.inf)  # NaN vs NaN: not equal
    assert growc.max_abs_rel_error(torch.tensor([1.0]), torch.tensor([math.nan])) == (math.inf, math.inf)
    assert growc.max_abs_rel_error({"a": (math.nan,)}, {"a": (math.nan,)}) == (math.inf, math.inf)
    _, rel = growc.max_abs_rel_error((torch.ones(2), nan), (torch.ones(2), nan.clone()))
    assert not rel <= 1e-5  # so every exactness check on it fails
    inf = torch.tensor([math.inf, -math.inf, 2.0])
    assert growc.max_abs_rel_error(inf, inf.clone()) == (0.0, 0.0)  # equal infinities are equal values


def test_exactness_tolerance_follows_the_dtype() -> None:
    def expected(dtype: torch.dtype, accumulate: torch.dtype) -> float:
        return 8 * torch.finfo(dtype).eps + 64 * torch.finfo(accumulate).eps

    assert exactness_tolerance(torch.float64) == expected(torch.float64, torch.float64)
    assert exactness_tolerance(torch.float32) == expected(torch.float32, torch.float32)
    assert exactness_tolerance(torch.float16) == expected(torch.float16, torch.float32)
    assert exactness_tolerance(torch.bfloat16) == expected(torch.bfloat16, torch.float32)
    assert exactness_tolerance(torch.complex64) == exactness_tolerance(torch.float32)
    assert exactness_tolerance(torch.complex128) == exactness_tolerance(torch.float64)
    assert exactness_tolerance(torch.int64) == 0.0  # integer arithmetic is exact
    assert exactness_tolerance(torch.float64) < 1e-13 and 8e-6 < exactness_tolerance(torch.float32) <= 1e-5
    assert exactness_tolerance(torch.float16) < exactness_tolerance(torch.bfloat16) < 0.07


@pytest.mark.parametrize("page", ["templatize.md", "fuse.md"])
def test_documented_tolerances_are_the_functions(page: str) -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / page).read_text()
    rows = re.findall(r"^\| `torch\.(\w+)` \| ([0-9.e+-]+) \| ([0-9.e+-]+) \|$", text, flags=re.M)
    assert [name for name, _, _ in rows] == ["float64", "float32", "float16", "bfloat16"]
    for name, eps, tolerance in rows:
        dtype = getattr(torch, name)
        assert float(eps) == float(f"{torch.finfo(dtype).eps:.3g}")
        assert float(tolerance) == float(f"{exactness_tolerance(dtype):.3g}"), name


def test_check_finite_state_names_the_tensor_and_counts() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    with torch.no_grad():
        model[0].weight[0, :2] = math.nan
        model[0].weight[1, 0] = -math.inf
    with pytest.raises(
        growc.GrowcDataError,
        match=r"^somewhere: parameter '0\.weight' holds 2 NaN and 1 infinite value\(s\) \(of 9\)",
    ):
        check_finite_state(model, "somewhere")
    model[0].reset_parameters()
    model[1].running_var[1] = math.inf
    with pytest.raises(growc.GrowcDataError, match=r"^here: parent 1's buffer '1\.running_var' holds 1 infinite"):
        check_finite_state(model, "here", owner="parent 1's ")
    model[1].reset_running_stats()
    model.register_buffer("mask", torch.full((3,), -math.inf))  # an attention mask: -inf is what it means
    check_finite_state(model, "here")
    model.mask[0] = math.nan
    with pytest.raises(growc.GrowcDataError, match=r"^here: buffer 'mask' holds 1 NaN value\(s\) \(of 3\)"):
        check_finite_state(model, "here")
    with torch.device("meta"):
        ghost = nn.Linear(2, 2)
    with pytest.raises(growc.GrowcDataError, match=r"^here: parameter 'weight' is on the meta device \(no data\)"):
        check_finite_state(ghost, "here")


def test_check_finite_values_names_the_leaf() -> None:
    check_finite_values((torch.ones(2), {"k": 3}), "p", "example input")
    with pytest.raises(growc.GrowcDataError, match=r"^p: example input \[1\]\['k'\] holds 1 NaN value\(s\) \(of 2\)"):
        check_finite_values((torch.ones(2), {"k": torch.tensor([1.0, math.nan])}), "p", "example input")
    with pytest.raises(growc.GrowcDataError, match=r"^p: output holds 1 infinite value\(s\) \(of 1\)"):
        check_finite_values(torch.tensor(math.inf), "p", "output")
    check_finite_values(torch.tensor([1, 2]), "p", "output")  # integers are always finite


def test_example_inputs_must_match_the_graphs_inputs() -> None:
    gm = growc.trace(WithInspectingLeaf())
    x = torch.randn(3, 4)
    for inputs in [(), (x, x)]:
        with pytest.raises(
            growc.GrowcConfigError,
            match=rf"^shape analysis: the model takes 1 positional input\(s\) \(x\), got {len(inputs)} example input",
        ):
            growc.propagate_shapes(gm, inputs)
