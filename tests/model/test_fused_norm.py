"""The LayerNorm with a Triton kernel: nn.LayerNorm's parameters and results on every backend."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recbole_hyena.model.fused_norm import (
    MIN_TRITON_ROWS,
    LayerNorm,
    replace_layer_norms,
    triton_available,
    triton_layer_norm,
    triton_pays,
)
from tests.conftest import build_model, random_sequences

HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_CUDA = torch.cuda.is_available()


def test_bad_backend_names_the_option():
    with pytest.raises(ValueError, match="layer_norm_backend"):
        LayerNorm(8, backend="apex")
    if not triton_available():
        with pytest.raises(ValueError, match="layer_norm_backend is 'triton'"):
            LayerNorm(8, backend="triton")
    with pytest.raises(ValueError, match="layer_norm_backend"):
        build_model(layer_norm_backend="fast")


def test_is_nn_layer_norm_on_cpu_and_loads_its_state_dict():
    reference = nn.LayerNorm(24, eps=1e-12)
    nn.init.normal_(reference.weight)
    nn.init.normal_(reference.bias)
    norm = LayerNorm(24, eps=1e-12)
    norm.load_state_dict(reference.state_dict())
    inputs = torch.randn(3, 7, 24)
    assert torch.equal(norm(inputs), reference(inputs))


def test_auto_picks_triton_for_many_rows_of_at_most_1024_channels():
    assert triton_pays(torch.Size([MIN_TRITON_ROWS, 64]))
    assert triton_pays(torch.Size([128, 4000, 64]))  # B x L x H at L=4000
    assert not triton_pays(torch.Size([128, 1000, 64]))  # launch-bound there (see fused_norm)
    assert not triton_pays(torch.Size([MIN_TRITON_ROWS, 2048]))


# Triton's interpreter runs the kernels on CPU tensors; it reads TRITON_INTERPRET at import, hence
# a fresh interpreter. CPU builds of PyTorch do not ship Triton: then this check needs a GPU.
_INTERPRETED_CHECK = textwrap.dedent(
    """
    import torch, torch.nn.functional as F
    from recbole_hyena.model.fused_norm import triton_layer_norm
    torch.manual_seed(0)
    # odd row lengths and row counts that leave a partial tile
    for shape in [(3, 37, 64), (5, 48), (1000, 7), (2, 130, 200)]:
        n = shape[-1]
        x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).requires_grad_()
        w = torch.randn(n, dtype=torch.float64, requires_grad=True)
        b = torch.randn(n, dtype=torch.float64, requires_grad=True)
        g = torch.randn(shape, dtype=torch.float64)
        ours = triton_layer_norm(x, w, b, 1e-5)
        ref = F.layer_norm(x, (n,), w, b, 1e-5)
        assert ours.shape == ref.shape and ours.dtype == ref.dtype
        assert torch.allclose(ours, ref, atol=1e-5), shape
        for a, c in zip(torch.autograd.grad(ours, (x, w, b), g), torch.autograd.grad(ref, (x, w, b), g)):
            assert torch.allclose(a, c, atol=1e-4, rtol=1e-4), shape
    print("ok")
    """
)


@pytest.mark.skipif(not HAS_TRITON, reason="needs the triton package (PyTorch's CUDA builds)")
def test_kernels_match_layer_norm_under_the_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(
        [sys.executable, "-c", _INTERPRETED_CHECK], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs a CUDA GPU and triton")
@pytest.mark.parametrize("n_cols", [64, 50, 1024])
def test_cuda_kernels_match_layer_norm_with_gradients_and_under_bf16_autocast(n_cols):
    torch.manual_seed(0)
    x = (torch.randn(129, 33, n_cols, device="cuda") * 2 + 0.5).requires_grad_()
    w = torch.randn(n_cols, device="cuda", requires_grad=True)
    b = torch.randn(n_cols, device="cuda", requires_grad=True)
    g = torch.randn_like(x)
    ours, ref = triton_layer_norm(x, w, b, 1e-12), F.layer_norm(x, (n_cols,), w, b, 1e-12)
    assert torch.allclose(ours, ref, atol=1e-5)
    ours_grads = torch.autograd.grad(ours, (x, w, b), g)
    for a, c in zip(ours_grads, torch.autograd.grad(ref, (x, w, b), g)):
        assert torch.allclose(a, c, atol=1e-3, rtol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half_input = x.detach().bfloat16()
        ours = triton_layer_norm(half_input, w, b, 1e-12)
        ref = F.layer_norm(half_input, (n_cols,), w, b, 1e-12)
    assert ours.dtype == ref.dtype == torch.float32  # autocast runs layer_norm in float32
    assert torch.allclose(ours, ref, atol=1e-5)


@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs a CUDA GPU and triton")
def test_auto_takes_triton_for_many_short_rows_only():
    def rows(n_rows, n_cols, device="cuda"):  # the shape only, without the memory
        return torch.empty(1, n_cols, device=device).expand(n_rows, n_cols)

    norm = LayerNorm(64).cuda()
    assert norm._use_triton(rows(MIN_TRITON_ROWS, 64))
    assert not norm._use_triton(rows(MIN_TRITON_ROWS - 1, 64))
    assert not norm._use_triton(rows(MIN_TRITON_ROWS, 64, device="cpu"))
    assert not LayerNorm(2048).cuda()._use_triton(rows(MIN_TRITON_ROWS, 2048))
    assert LayerNorm(64, backend="triton").cuda()._use_triton(rows(2, 64))
    assert not LayerNorm(64, backend="torch").cuda()._use_triton(rows(MIN_TRITON_ROWS, 64))


@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs a CUDA GPU and triton")
def test_hyenarec_gives_the_same_loss_and_gradients_with_either_backend():
    items, lengths = random_sequences(6, 120, 80)
    losses, grads = [], []
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        model = build_model(MAX_ITEM_LIST_LENGTH=120, n_items=80, layer_norm_backend=backend)
        model.cuda().eval()
        output = model.forward_sequence(items.cuda(), lengths.cuda())
        loss = output.square().mean() + output.mean()
        loss.backward()
        losses.append(loss.item())
        grads.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for name, grad in grads[0].items():
        assert torch.allclose(grads[1][name], grad, atol=1e-5, rtol=1e-3), name


def test_replace_layer_norms_keeps_a_zoo_models_outputs():
    model = build_model("FlashSASRec", MAX_ITEM_LIST_LENGTH=30)
    items, lengths = random_sequences(4, 30, 50)
    with torch.no_grad():
        before = model.forward(items, lengths)
        swapped = replace_layer_norms(model, backend="torch")
        after = model.forward(items, lengths)
    assert swapped == 5  # the embedding's, then attention and feed-forward in each of 2 layers
    assert not any(type(module) is nn.LayerNorm for module in model.modules())
    assert torch.equal(before, after)
