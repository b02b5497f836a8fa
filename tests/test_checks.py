"""growc.fx.checks: the argument and output checks every pass shares, each a specific GrowcError."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from growc.errors import GrowcConfigError, GrowcDataError, GrowcPassError
from growc.fx.checks import (
    SIZE_FACTOR,
    check_example_inputs,
    check_growth_size,
    check_module,
    check_parents,
    check_seed,
    checked_outputs,
    first_line,
    format_bytes,
    positive_int,
    size_bound,
)


def test_seeds_and_counts_are_integers_in_range() -> None:
    assert check_seed(0) == 0 and check_seed(2**63 - 2, span=2) == 2**63 - 2
    for bad in (-1, 2**63, True, 1.0, "3"):
        with pytest.raises(GrowcConfigError, match=r"seed must be an integer in \[0, 2\*\*63\), got"):
            check_seed(bad)
    with pytest.raises(GrowcConfigError):
        check_seed(2**63 - 1, span=2)  # seed + 1 would leave the range
    assert positive_int("templates", 3) == 3
    for bad in (0, True, 2.0):
        with pytest.raises(GrowcConfigError, match=f"templates must be a positive integer, got {bad!r}"):
            positive_int("templates", bad)


def test_example_inputs_are_a_tuple_of_finite_values() -> None:
    x = torch.ones(2, 3)
    assert check_example_inputs("fuse", [x]) == (x,)
    with pytest.raises(GrowcConfigError, match=r"fuse: example_inputs must be a tuple or list .* got a Tensor"):
        check_example_inputs("fuse", x)
    with pytest.raises(GrowcDataError, match=r"fuse: example input \[0\] holds 1 NaN value\(s\) \(of 2\)"):
        check_example_inputs("fuse", (torch.tensor([1.0, float("nan")]),))
    with pytest.raises(GrowcConfigError, match=r"widen takes an nn.Module, got int"):
        check_module("widen", 3)


def test_parents_share_a_device_and_a_dtype_and_are_finite() -> None:
    a, b = nn.Linear(2, 2), nn.Linear(2, 2).double()
    with pytest.raises(GrowcConfigError, match=r"fuse: the parents hold different dtypes: parent 0 float32, parent 1"):
        check_parents("fuse", [a, b])
    with torch.no_grad():
        b = nn.Linear(2, 2)
        b.weight[0, 0] = float("inf")
    with pytest.raises(GrowcDataError, match=r"fuse: parent 1's .*weight"):
        check_parents("fuse", [a, b])
    check_parents("fuse", [a, nn.Linear(2, 2)])


def test_growth_beyond_the_size_bound_is_refused_before_any_copy() -> None:
    model = nn.Linear(1000, 1000)  # about 4 MB of parameters
    assert size_bound(10) == 2**30 and size_bound(2**30) == SIZE_FACTOR * 2**30
    check_growth_size("fuse", "2 parents", 4, model)
    with pytest.raises(GrowcDataError, match=r"fuse: 1000 parents would grow the model's 4 MB of parameters about"):
        check_growth_size("fuse", "1000 parents", 10**6, model)
    assert format_bytes(999) == "999 B" and format_bytes(1.07e9) == "1.07 GB"


def test_checked_outputs_blame_the_caller_or_the_pass() -> None:
    x = (torch.ones(1, 2),)
    good, bad = nn.Linear(2, 3), nn.Linear(5, 3)
    outputs, out = checked_outputs("fuse", [("parent 0", good)], ("fused model", good), x, False, exact=True)
    assert torch.equal(outputs[0], out)
    with pytest.raises(GrowcConfigError, match=r"fuse: parent 0 fails on the example inputs \(RuntimeError: "):
        checked_outputs("fuse", [("parent 0", bad)], ("fused model", good), x, False, exact=True)
    with pytest.raises(GrowcPassError, match=r"fuse: the fused model fails on the example inputs, which the model"):
        checked_outputs("fuse", [("parent 0", good)], ("fused model", bad), x, False, exact=True)
    assert first_line(ValueError("one\ntwo")) == "ValueError: one"
