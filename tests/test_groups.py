"""growc.runtime.groups: parameter roles and optimizer groups (no weight decay on coefficients)."""

from __future__ import annotations

import torch
from torch import nn

import growc


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
