"""growc.runtime.init: the one home of Kaiming templates, orthogonal coefficients and the orthogonal new row."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import growc
from growc.runtime.init import (
    fan_in,
    fresh_bank,
    kaiming_std,
    kaiming_templates,
    orthogonal_coefficients,
    orthogonal_row,
    svd,
)


@pytest.mark.parametrize(
    ("kind", "shape", "expected"),
    [
        ("conv2d", (8, 4, 3, 3), 36),  # [out, in, kh, kw]
        ("conv1d", (8, 4, 5), 20),
        ("linear", (5, 7), 7),  # [out, in]
        ("matmul", (7, 5), 7),  # x @ W, W is [in, out]
        ("matmul", (3, 7, 5), 7),  # batched: [..., in, out]
        ("linear", (6,), 6),
        ("matmul", (6,), 6),
    ],
)
def test_fan_in_rule(kind: str, shape: tuple[int, ...], expected: int) -> None:
    assert fan_in(kind, shape) == expected


def test_kaiming_templates_are_float32_draws_scaled_and_cast() -> None:
    shape = (16, 32)
    out = kaiming_templates(3, shape, 32, torch.Generator().manual_seed(1), torch.float64)
    assert out.shape == (3, 16 * 32) and out.dtype == torch.float64
    draw = torch.randn((3, 512), generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    torch.testing.assert_close(out, (draw * kaiming_std(32)).to(torch.float64), rtol=0, atol=0)
    assert kaiming_std(32) == math.sqrt(2.0) / math.sqrt(32)
    assert kaiming_std(0) == math.sqrt(2.0)  # a zero fan-in counts as 1
    assert abs(out.std().item() - math.sqrt(2 / 32)) < 0.05 * math.sqrt(2 / 32)


def test_orthogonal_coefficients_have_orthonormal_rows() -> None:
    a = orthogonal_coefficients(3, 8, torch.Generator().manual_seed(0), torch.float64)
    assert a.shape == (3, 8) and a.dtype == torch.float64
    torch.testing.assert_close(a @ a.T, torch.eye(3, dtype=torch.float64), atol=1e-6, rtol=0)
    tall = orthogonal_coefficients(8, 3, torch.Generator().manual_seed(0), torch.float32)
    torch.testing.assert_close(tall.T @ tall, torch.eye(3), atol=1e-5, rtol=0)


def test_fresh_bank_draws_templates_then_coefficients_with_the_fan_in_rule() -> None:
    templates, coefficients = fresh_bank("matmul", (64, 4), 2, 3, torch.Generator().manual_seed(7), torch.float32)
    generator = torch.Generator().manual_seed(7)
    expected_t = kaiming_templates(2, (64, 4), 64, generator, torch.float32)  # fan-in 64, not 4
    expected_a = orthogonal_coefficients(3, 2, generator, torch.float32)
    assert torch.equal(templates, expected_t) and torch.equal(coefficients, expected_a)


def test_orthogonal_row_is_orthogonal_to_every_existing_row() -> None:
    existing = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    new = orthogonal_row("test", existing)
    assert new.rank == 3 and new.orthogonal
    assert new.row.dtype == torch.float64 and new.row.shape == (5,)
    assert abs(float(new.row.norm()) - 1) < 1e-12
    assert float((existing.double() @ new.row).abs().max()) < 1e-12


def test_orthogonal_row_of_a_full_rank_bank_is_the_least_aligned_direction() -> None:
    existing = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    new = orthogonal_row("test", existing)
    assert new.rank == 4 and not new.orthogonal
    *_, vh = torch.linalg.svd(existing.double())
    assert torch.allclose(new.row.abs(), vh[-1].abs())
    row, rank = new  # a plain (row, rank) pair too
    assert rank == 4 and row is new.row


def test_svd_failures_name_the_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "svd", fails)
    with pytest.raises(
        growc.GrowcPassError,
        match=r"^widen\(method='mixture'\): the SVD of a bank's \(2, 3\) coefficients failed: linalg\.svd: The",
    ):
        svd("widen(method='mixture')", torch.zeros(2, 3))


def test_templatize_fresh_init_is_the_shared_fresh_bank() -> None:
    model = nn.Sequential(nn.Linear(6, 5))
    x = torch.randn(2, 6)
    gm = growc.templatize(model, (x,), init="fresh", templates=3, seed=11)
    (bank,) = gm.growc_banks.values()
    templates, coefficients = fresh_bank("linear", (5, 6), 3, 1, torch.Generator().manual_seed(11), torch.float32)
    assert torch.equal(bank.templates.detach().reshape(3, -1), templates)
    assert torch.equal(bank.coefficients.detach(), coefficients)


class _MatmulNet(nn.Module):
    """``x @ W`` with ``W`` laid out ``[in, out]`` = ``[64, 4]``: the fan-in is 64, not 4."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(64, 4) * 0.1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(x @ self.w))


@pytest.mark.parametrize("method", ["random", "zero"])
def test_widen_fresh_init_applies_the_matmul_fan_in_rule(method: str) -> None:
    torch.manual_seed(0)
    gm = growc.widen(_MatmulNet().eval(), (torch.randn(2, 64),), factor=2, method=method, seed=0)
    new = gm.growc_banks["p1_bank0"]  # the new parent's fresh bank of the matmul weight
    assert new.kind == "matmul"
    std = float(new.templates.detach().std())
    assert abs(std - math.sqrt(2 / 64)) < 0.15 * math.sqrt(2 / 64), std  # fan-in 64 (the rows of W)
    assert std < 0.5 * math.sqrt(2 / 4)  # the conv/linear rule would read the columns: fan-in 4
