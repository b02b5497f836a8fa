"""Optimizer parameter groups and roles of a model that owns template banks: templates and other parameters take
weight decay, coefficients never do."""

from __future__ import annotations

from typing import Any

from torch import nn

from growc.runtime.bank import TemplateBank

__all__ = ["param_groups", "param_roles"]


def param_roles(model: nn.Module) -> dict[str, str]:
    """Map each parameter name (as ``model.named_parameters()`` gives it) to its role.

    Roles: ``"template"`` (a bank's templates), ``"coefficient"`` (a bank's mixing coefficients) and ``"other"``
    (biases, normalization parameters, untemplated weights).
    """
    special: dict[int, str] = {}
    for module in model.modules():
        if isinstance(module, TemplateBank):
            special[id(module.templates)] = "template"
            special[id(module.coefficients)] = "coefficient"
    return {name: special.get(id(p), "other") for name, p in model.named_parameters()}


def param_groups(model: nn.Module, weight_decay: float = 0.0, *, only_trainable: bool = True) -> list[dict[str, Any]]:
    """Optimizer parameter groups: weight decay on templates and other parameters, never on coefficients.

    Returns ``[{"params": [...], "weight_decay": weight_decay, "name": "decay"},
    {"params": [...], "weight_decay": 0.0, "name": "coefficients"}]`` (empty groups are left out), ready for
    ``torch.optim.SGD(growc.param_groups(gm, 5e-4), lr=0.1, momentum=0.9)``.
    """
    roles = param_roles(model)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if only_trainable and not p.requires_grad:
            continue
        (no_decay if roles[name] == "coefficient" else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "coefficients"},
    ]
    return [g for g in groups if g["params"]]
