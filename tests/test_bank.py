"""growc.runtime.bank: the reference mix, the coefficient shape check, the out-major template layout, the epoch."""

from __future__ import annotations

import copy

import pytest
import torch
from runtime_helpers import make_bank, mixed_layers

import growc
from growc.runtime.bank import TemplateBank, contract, out_major


def test_weight_is_the_coefficient_mix_of_templates() -> None:
    bank = make_bank()
    expected = torch.einsum("lk,kabcd->labcd", bank.coefficients, bank.templates)
    torch.testing.assert_close(bank.weights(), expected, rtol=1e-6, atol=1e-6)
    for i in range(3):
        torch.testing.assert_close(bank.weight(i), expected[i], rtol=1e-6, atol=1e-6)


def test_bad_coefficient_shape_is_refused() -> None:
    with pytest.raises(ValueError, match=r"coefficients must be \[layers, K=2\], got \(3, 3\)"):
        TemplateBank(torch.randn(2, 4), torch.randn(3, 3), kind="linear")


def test_templates_are_stored_out_major_and_their_gradient_needs_no_copy(tmp_path) -> None:
    bank = make_bank(layers=2, shape=(4, 3, 3, 3))
    assert bank.templates.shape == (2, 4, 3, 3, 3) and bank.templates.transpose(0, 1).is_contiguous()
    layer = mixed_layers(bank)[0]
    layer(torch.randn(1, 3, 5, 5)).sum().backward()
    assert bank.templates.grad.stride() == bank.templates.stride()  # handed over as computed, not re-laid out
    for moved in (copy.deepcopy(bank), bank.double(), bank.to(memory_format=torch.channels_last)):
        assert moved.templates.transpose(0, 1).is_contiguous()
    fresh = make_bank(layers=2, shape=(4, 3, 3, 3)).double()
    fresh.load_state_dict(bank.state_dict())
    assert fresh.templates.transpose(0, 1).is_contiguous() and torch.equal(fresh.templates, bank.templates)
    growc.io.save_state_dict(bank, tmp_path / "bank.safetensors")  # growc saves them contiguous
    assert torch.equal(growc.io.load_state_dict(tmp_path / "bank.safetensors")["templates"], bank.templates)


def test_clear_cache_and_moves_advance_the_epoch() -> None:
    bank = make_bank()
    assert bank.epoch == 0
    bank.clear_cache()
    assert bank.epoch == 1
    bank.double()  # a move makes every generated weight stale too
    assert bank.epoch == 2
    assert copy.deepcopy(bank).epoch == 2


def test_contract_is_the_flat_mix_and_out_major_keeps_shape_and_values() -> None:
    bank = make_bank(layers=2, k=3)
    flat = contract(bank.coefficients, bank.templates)
    assert flat.shape == (2, 4 * 3 * 3 * 3)
    torch.testing.assert_close(flat.view(2, 4, 3, 3, 3), bank.weights())
    dense = torch.randn(3, 4, 5)
    laid = out_major(dense)
    assert torch.equal(laid, dense) and laid.transpose(0, 1).is_contiguous()
    assert out_major(laid) is laid  # already out-major: no copy
    assert [layer.index for layer in mixed_layers(bank)] == [0, 1]
