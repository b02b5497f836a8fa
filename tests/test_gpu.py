"""CUDA checks: a templatized model moves to the GPU, trains, caches, autocasts, compiles. Skipped without a GPU."""

from __future__ import annotations

import copy

import pytest
import torch

import growc
from growc.models import WideResNet
from growc.testing import assert_same_function

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _full_fp32() -> object:
    """CUDA convs and matmuls default to TF32 (about 1e-3 relative): compare in full fp32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _model_and_input() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return WideResNet(10, 2, num_classes=10), torch.randn(8, 3, 32, 32)


@pytest.mark.parametrize("sharing", ["layer", "shape"])
def test_templatized_model_runs_and_trains_on_cuda(sharing: str) -> None:
    model, x = _model_and_input()
    gm = growc.templatize(model, (x,), sharing=sharing)
    cuda = copy.deepcopy(gm).cuda()
    assert all(p.is_cuda for p in cuda.parameters())
    assert cuda.get_submodule("conv1").bank is cuda.growc_banks.bank0
    cuda.eval()
    with torch.no_grad():
        torch.testing.assert_close(cuda(x.cuda()).cpu(), model.eval()(x), rtol=1e-4, atol=1e-4)
    cuda.train()
    optimizer = torch.optim.SGD(growc.param_groups(cuda, 5e-4), lr=0.1, momentum=0.9)
    before = cuda.growc_banks.bank0.templates.detach().clone()
    loss = torch.nn.functional.cross_entropy(cuda(x.cuda()), torch.arange(8, device="cuda") % 10)
    loss.backward()
    optimizer.step()
    assert not torch.equal(before, cuda.growc_banks.bank0.templates.detach())


def test_eval_cache_on_cuda_regenerates_after_a_step() -> None:
    model, x = _model_and_input()
    gm = growc.templatize(model, (x,), sharing="shape").cuda().eval()
    layer = gm.get_submodule("conv1")
    with torch.no_grad():
        gm(x.cuda())
        first = layer.weight
        assert layer.weight is first
        layer.bank.templates.mul_(2.0)
        torch.testing.assert_close(layer.weight, 2 * first)


def test_autocast_bf16_within_tolerance_of_fp32() -> None:
    model, x = _model_and_input()
    gm = growc.templatize(model, (x,)).cuda().eval()
    with torch.no_grad():
        reference = gm(x.cuda())
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = gm(x.cuda())
    assert low.dtype == torch.bfloat16
    assert growc.max_abs_rel_error(reference, low.float())[1] < 5e-2


def test_compile_matches_eager_on_cuda() -> None:
    model, x = _model_and_input()
    gm = growc.templatize(model, (x,)).cuda()
    compiled = torch.compile(gm)
    assert_same_function(gm, compiled, (x.cuda(),), rtol=1e-4, atol=1e-4, mode="train")


def test_materialize_on_cuda_matches() -> None:
    model, x = _model_and_input()
    gm = growc.templatize(model, (x,), init="svd", sharing="shape").cuda()
    plain = growc.materialize(gm)
    assert all(p.is_cuda for p in plain.parameters())
    assert_same_function(gm, plain, (x.cuda(),), rtol=1e-4, atol=1e-4, mode="both")


def test_fused_model_on_cuda_compiles_and_matches() -> None:
    torch.manual_seed(0)
    a, b = WideResNet(10, 1, num_classes=10), WideResNet(10, 1, num_classes=10)
    x = torch.randn(8, 3, 32, 32)
    gm = growc.fuse([a, b], (x,), cross_init="orthogonal")
    cuda = copy.deepcopy(gm).cuda()
    with torch.no_grad():
        torch.testing.assert_close(cuda.eval()(x.cuda()).cpu(), gm.eval()(x), rtol=1e-4, atol=1e-4)
    assert_same_function(cuda, torch.compile(cuda), (x.cuda(),), rtol=1e-4, atol=1e-4, mode="train")
    cuda.train()
    loss = torch.nn.functional.cross_entropy(cuda(x.cuda()), torch.arange(8, device="cuda") % 10)
    loss.backward()
    assert all(p.grad is not None for p in cuda.parameters())
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
        low = cuda.eval()(x.cuda())
    assert growc.max_abs_rel_error(cuda(x.cuda()), low.float())[1] < 5e-2
    assert_same_function(cuda, growc.materialize(cuda), (x.cuda(),), rtol=1e-4, atol=1e-4, mode="both")


def test_export_captured_fused_model_on_cuda_matches() -> None:
    torch.manual_seed(0)
    parents = [WideResNet(10, 1, num_classes=10).eval() for _ in range(2)]
    x = torch.randn(4, 3, 32, 32)
    gm = growc.fuse(parents, (x,), cross_init="zero", templatize_options={"capture": "export"})
    cuda = copy.deepcopy(gm).cuda().eval()
    with torch.no_grad():
        torch.testing.assert_close(cuda(x.cuda()).cpu(), gm.eval()(x), rtol=1e-4, atol=1e-4)
    cuda.train()
    cuda(x.cuda()).sum().backward()
    assert all(p.grad is not None and p.grad.is_cuda for p in cuda.parameters() if p.requires_grad)


def test_hugging_face_model_captured_by_export_moves_to_cuda() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    torch.manual_seed(0)
    parents = [transformers.BertModel(config).eval() for _ in range(2)]
    ids = torch.randint(0, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    gm = growc.fuse(parents, (ids, mask), cross_init="zero")
    cuda = copy.deepcopy(gm).cuda().eval()
    with torch.no_grad():
        out = cuda(ids.cuda(), mask.cuda())
    torch.testing.assert_close(
        out.last_hidden_state.cpu(), gm.eval()(ids, mask).last_hidden_state, rtol=1e-4, atol=1e-4
    )
