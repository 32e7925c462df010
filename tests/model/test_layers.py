"""The operator's pieces against slow, obviously correct references."""

from functools import partial

import pytest
import torch

from recbole_hyena.model import layers
from recbole_hyena.model.filters import LegendreKernelGenerator, legendre_basis, uniform_grid
from recbole_hyena.model.layers import (
    CausalShortConv,
    Dropout,
    FeedForward,
    HyenaOperator,
    ShortPath,
    _FFTCausalConv,
    causal_conv_at,
    causal_windows,
    fast_fft_length,
    fft_causal_conv,
    kernel_spectrum,
    projected_causal_conv,
)
from tests.conftest import saved_activations


def direct_causal_conv(inputs, kernels, skip=None):
    """O(L^2) reference: y[b, c, t] = sum_{s<=t} k[c, t-s] u[b, c, s] (+ d[c] u[b, c, t])."""
    batch, channels, seq_len = inputs.shape
    outputs = torch.zeros_like(inputs, dtype=torch.float64)
    for t in range(seq_len):
        for s in range(t + 1):
            outputs[..., t] += kernels[:, t - s].double() * inputs[..., s].double()
    if skip is not None:
        outputs += skip.double()[:, None] * inputs.double()
    return outputs


@pytest.mark.parametrize("seq_len", [1, 2, 7, 50, 97])
def test_fft_conv_matches_direct_convolution(seq_len):
    torch.manual_seed(seq_len)
    inputs = torch.randn(3, 5, seq_len)
    kernels = torch.randn(5, seq_len) / seq_len**0.5
    skip = torch.randn(5)
    expected = direct_causal_conv(inputs, kernels, skip)
    assert torch.allclose(fft_causal_conv(inputs, kernels, skip).double(), expected, atol=1e-5)
    assert torch.allclose(
        fft_causal_conv(inputs, kernels).double(), direct_causal_conv(inputs, kernels), atol=1e-5
    )


@pytest.mark.parametrize("given_spectrum", [False, True])
@pytest.mark.parametrize("seq_len", [1, 6, 33])
def test_fft_conv_hand_written_backward_matches_numerical_gradients(seq_len, given_spectrum):
    """Also with the kernels' spectrum computed outside (no gradient through it): the kernels'
    gradient still reaches them."""
    torch.manual_seed(seq_len)
    inputs = torch.randn(2, 3, seq_len, dtype=torch.float64, requires_grad=True)
    kernels = torch.randn(3, seq_len, dtype=torch.float64, requires_grad=True)

    def conv(inputs, kernels):
        spectrum = kernel_spectrum(kernels.detach(), seq_len) if given_spectrum else None
        return _FFTCausalConv.apply(inputs, kernels, spectrum)

    assert torch.autograd.gradcheck(conv, (inputs, kernels))


def test_fft_conv_gradients_match_the_direct_convolution():
    torch.manual_seed(0)
    inputs = torch.randn(2, 3, 17, requires_grad=True)
    kernels = torch.randn(3, 17, requires_grad=True)
    skip = torch.randn(3, requires_grad=True)
    weights = torch.randn(2, 3, 17)
    (fft_causal_conv(inputs, kernels, skip) * weights).sum().backward()
    fft_grads = [t.grad.clone() for t in (inputs, kernels, skip)]
    for t in (inputs, kernels, skip):
        t.grad = None
    (direct_causal_conv(inputs, kernels, skip) * weights).sum().backward()
    for fft_grad, direct in zip(fft_grads, (inputs, kernels, skip)):
        assert torch.allclose(fft_grad, direct.grad, atol=1e-5)


@pytest.mark.parametrize("kernel_len", [9, 17, 30])
def test_conv_at_positions_matches_the_direct_convolution_there(kernel_len):
    """Values and gradients at one position per sequence, first, last and inner positions,
    with kernels shorter than, equal to and longer than the input."""
    torch.manual_seed(kernel_len)
    inputs = torch.randn(4, 3, 17, requires_grad=True)
    kernels = torch.randn(3, kernel_len, requires_grad=True)
    skip = torch.randn(3, requires_grad=True)
    positions = torch.tensor([0, 16, 5, 11])
    weights = torch.randn(4, 3)
    outputs = causal_conv_at(inputs, kernels, positions, skip)
    padded = torch.nn.functional.pad(kernels[:, :17], (0, max(0, 17 - kernel_len)))
    expected = direct_causal_conv(inputs, padded, skip)[torch.arange(4), :, positions]
    assert torch.allclose(outputs.double(), expected, atol=1e-5)
    (outputs * weights).sum().backward()
    grads = [t.grad.clone() for t in (inputs, kernels, skip)]
    for t in (inputs, kernels, skip):
        t.grad = None
    (expected * weights).sum().backward()
    for grad, t in zip(grads, (inputs, kernels, skip)):
        assert torch.allclose(grad, t.grad.float(), atol=1e-5)
    # the inputs after each position get no gradient: the convolution is causal
    later = torch.arange(17).unsqueeze(0) > positions.unsqueeze(1)  # [B, L]
    assert grads[0].abs().sum(1)[later].max() == 0


def test_fft_conv_ignores_kernel_taps_beyond_the_input():
    inputs, kernels = torch.randn(2, 3, 10), torch.randn(3, 40)
    assert torch.allclose(
        fft_causal_conv(inputs, kernels), fft_causal_conv(inputs, kernels[:, :10])
    )


def test_fft_conv_runs_in_float32_under_autocast():
    inputs, kernels = torch.randn(2, 4, 64), torch.randn(4, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = fft_causal_conv(inputs.bfloat16(), kernels)
    assert outputs.dtype == torch.bfloat16
    reference = fft_causal_conv(inputs.bfloat16().float(), kernels)
    assert torch.allclose(outputs.float(), reference, atol=0.05, rtol=0.02)


@pytest.mark.parametrize(
    "min_length, expected",
    # odd 2025 = 3^4 5^2 and 2500 = 4 5^4 were slow; a power of two within 10% is taken
    [(17, 32), (99, 112), (399, 400), (1999, 2048), (2025, 2048), (2499, 2560), (3001, 3024)],
)
def test_cpu_fft_length_is_a_smooth_multiple_of_16_or_a_close_power_of_two(min_length, expected):
    assert layers.fft_length(min_length, "cpu") == expected
    assert layers.fft_length(min_length, "cuda") == layers.next_power_of_two(min_length)


@pytest.mark.parametrize("min_length", [1, 2, 3, 99, 257, 1999, 8191])
def test_fast_fft_length_is_smooth_and_not_wasteful(min_length):
    length = fast_fft_length(min_length)
    assert min_length <= length <= 2 * min_length
    remainder = length
    for prime in (2, 3, 5, 7):
        while remainder % prime == 0:
            remainder //= prime
    assert remainder == 1


def test_legendre_recurrence_gives_known_polynomials():
    grid = torch.linspace(-1, 1, 101, dtype=torch.float64)
    basis = legendre_basis(grid, 5)
    expected = [
        torch.ones_like(grid),
        grid,
        (3 * grid**2 - 1) / 2,
        (5 * grid**3 - 3 * grid) / 2,
        (35 * grid**4 - 30 * grid**2 + 3) / 8,
    ]
    for k in range(5):
        assert torch.allclose(basis[:, k], expected[k], atol=1e-12)


def test_legendre_basis_is_orthogonal_and_bounded():
    grid = uniform_grid(20001)
    basis = legendre_basis(grid, 64)
    assert basis.abs().max() <= 1 + 1e-9
    # Trapezoid rule for int_{-1}^{1} P_m P_n dx = 2 / (2n + 1) delta_mn.
    weights = torch.full_like(grid, 2 / (len(grid) - 1))
    weights[[0, -1]] /= 2
    gram = basis.T @ (basis * weights[:, None])
    expected = torch.diag(2 / (2 * torch.arange(64, dtype=torch.float64) + 1))
    assert torch.allclose(gram, expected, atol=1e-3)


@pytest.mark.parametrize("seq_len", [1, 2, 50, 1000])
def test_legendre_kernels_have_unit_norm_per_channel(seq_len):
    generator = LegendreKernelGenerator(channels=6, n_basis=64)
    kernels = generator(seq_len)
    assert kernels.shape == (6, seq_len)
    assert torch.isfinite(kernels).all()
    assert torch.allclose(kernels.norm(dim=-1), torch.ones(6), atol=1e-5)


def test_basis_is_built_once_per_length():
    generator = LegendreKernelGenerator(channels=4, n_basis=8)
    generator(30)
    first = generator.basis(30)
    generator(30)
    assert generator.basis(30) is first
    assert "coefficients" in generator.state_dict() and len(generator.state_dict()) == 1


@pytest.mark.parametrize("dilation", [1, 3])
def test_short_conv_is_causal_with_the_stated_receptive_field(dilation):
    conv = CausalShortConv(channels=2, kernel_size=3, dilation=dilation)
    inputs = torch.randn(1, 2, 20, requires_grad=True)
    conv(inputs)[..., 12].sum().backward()
    touched = (inputs.grad.abs().sum(dim=(0, 1)) > 0).nonzero().flatten().tolist()
    assert touched == [12 - dilation * j for j in (2, 1, 0)]
    assert conv.receptive_field == 2 * dilation + 1


def make_operator(d_model=8, order=2, glu=True, filter_length=40):
    torch.manual_seed(0)
    return HyenaOperator(
        d_model,
        order,
        LegendreKernelGenerator(order * d_model, n_basis=16),
        ShortPath(d_model, order + 1, kernel_size=3, glu=glu),
        filter_length,
    )


@pytest.mark.parametrize("glu", [True, False])
def test_operator_is_causal_by_autograd(glu):
    operator = make_operator(glu=glu)
    inputs = torch.randn(2, 30, 8, requires_grad=True)
    for t in (0, 11, 28):
        inputs.grad = None
        operator(inputs)[:, t].sum().backward()
        # FFT round-off leaves ~1e-9; a real leak would be of the order of the causal part.
        past = inputs.grad[:, : t + 1].abs().max()
        assert past > 0
        assert inputs.grad[:, t + 1 :].abs().max() <= 1e-6 * past


def test_operator_output_does_not_depend_on_padding_side_or_amount():
    operator = make_operator()
    items = torch.randn(1, 12, 8)
    ones = torch.ones(1, 12, 1)
    reference = operator(items, ones)
    # right padding with junk in the padded slots
    right = torch.cat([items, torch.randn(1, 9, 8)], dim=1)
    right_mask = torch.cat([ones, torch.zeros(1, 9, 1)], dim=1)
    assert torch.allclose(operator(right, right_mask)[:, :12], reference, atol=1e-5)
    # left padding: the mask zeroes the padded streams, so the valid outputs are unchanged
    left = torch.cat([torch.randn(1, 9, 8), items], dim=1)
    left_mask = torch.cat([torch.zeros(1, 9, 1), ones], dim=1)
    assert torch.allclose(operator(left, left_mask)[:, 9:], reference, atol=1e-5)


def test_operator_rejects_sequences_longer_than_its_filter():
    with pytest.raises(ValueError, match="filter length 40"):
        make_operator()(torch.randn(1, 41, 8))


@pytest.mark.parametrize("factors", [True, False])  # CPU's way and the GPU's
@pytest.mark.parametrize(
    "kernel_size, dilation, glu", [(3, 1, True), (3, 2, False), (1, 1, True), (4, 6, True)]
)
def test_short_path_equals_projection_then_depthwise_conv(
    kernel_size, dilation, glu, factors, monkeypatch
):
    """The fused short path is exactly ``conv(mask * in_proj(x))`` (then the GLU), padding
    positions included, in values and in the gradients of its inputs and parameters (both
    ways of computing it have hand-written backward passes)."""
    monkeypatch.setattr(layers, "_factors_short_conv", lambda inputs: factors)
    torch.manual_seed(kernel_size + dilation)
    path = ShortPath(6, 3, kernel_size=kernel_size, dilation=dilation, glu=glu)
    inputs = torch.randn(2, 15, 6, requires_grad=True)
    mask = torch.ones(2, 15, 1)
    mask[0, :4] = 0  # left padding
    mask[1, 11:] = 0  # right padding
    projected = (path.in_proj(inputs) * mask).transpose(1, 2)
    expected = path.short_conv(projected)
    if glu:
        value, gate = expected.chunk(2, dim=1)
        expected = value * torch.sigmoid(gate)
    outputs = path(inputs, mask)
    assert torch.allclose(outputs, expected, atol=1e-5)
    assert torch.allclose(path(inputs), path(inputs, torch.ones(2, 15, 1)))
    weights = torch.randn_like(expected)
    leaves = [inputs, *path.parameters()]
    fused = torch.autograd.grad((outputs * weights).sum(), leaves)
    reference = torch.autograd.grad((expected * weights).sum(), leaves)
    for grad, want in zip(fused, reference):
        torch.testing.assert_close(grad, want, atol=1e-5, rtol=1e-5)


# The CPU's way, in one chunk and in chunks of two sequences then one; the GPU's way.
@pytest.mark.parametrize("factors, chunk_bytes", [(True, 2**20), (True, 800), (False, 2**20)])
@pytest.mark.parametrize("channels_first", [True, False])
@pytest.mark.parametrize("kernel_size, dilation, glu", [(4, 1, False), (3, 2, True), (2, 9, True)])
def test_projected_causal_conv_equals_projection_then_depthwise_conv(
    kernel_size, dilation, glu, channels_first, factors, chunk_bytes, monkeypatch
):
    """Both layouts (the short path's channels-first, TADN's channels-last), in values and in
    the gradients of the inputs, the projection and the conv's parameters; a shift past the
    sequence (2 x 9 > 12) reads only padding."""
    monkeypatch.setattr(layers, "_factors_short_conv", lambda inputs: factors)
    monkeypatch.setattr(layers, "_CACHE_CHUNK_BYTES", chunk_bytes)  # 384 bytes a sequence
    torch.manual_seed(kernel_size * dilation)
    conv = CausalShortConv(8, kernel_size, dilation)
    projection = torch.randn(8, 5, requires_grad=True)
    inputs = torch.randn(3, 12, 5, requires_grad=True)
    expected = conv((inputs @ projection.t()).transpose(1, 2))  # [B, C, L]
    if glu:
        value, gate = expected.chunk(2, dim=1)
        expected = value * torch.sigmoid(gate)
    if not channels_first:
        expected = expected.transpose(1, 2)
    outputs = projected_causal_conv(inputs, projection, conv.conv, channels_first, glu)
    torch.testing.assert_close(outputs, expected, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(expected)
    leaves = [inputs, projection, *conv.parameters()]
    fused = torch.autograd.grad((outputs * weights).sum(), leaves)
    reference = torch.autograd.grad((expected * weights).sum(), leaves)
    for grad, want in zip(fused, reference):
        torch.testing.assert_close(grad, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels_first", [True, False])
def test_projected_causal_conv_under_cpu_bf16_autocast_matches_float32(channels_first, monkeypatch):
    """In bf16 under autocast, in chunks (each chunk's parameter gradients summed in float32),
    close to float32, every gradient in its parameter's dtype."""
    monkeypatch.setattr(layers, "_CACHE_CHUNK_BYTES", 800)
    torch.manual_seed(0)
    conv = CausalShortConv(8, 3)
    projection = torch.randn(8, 5, requires_grad=True)
    inputs = torch.randn(3, 12, 5, requires_grad=True)
    leaves = [inputs, projection, *conv.parameters()]
    outputs = projected_causal_conv(inputs, projection, conv.conv, channels_first, glu=True)
    expected = torch.autograd.grad(outputs.sum(), leaves)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs_bf16 = projected_causal_conv(inputs, projection, conv.conv, channels_first, True)
    assert outputs_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(outputs_bf16.float(), outputs, atol=0.1, rtol=0.05)
    for grad, want in zip(torch.autograd.grad(outputs_bf16.float().sum(), leaves), expected):
        assert grad.dtype == want.dtype == torch.float32
        torch.testing.assert_close(grad, want, atol=0.2, rtol=0.05)


def test_causal_windows_hold_the_dilated_past():
    inputs = torch.arange(1.0, 8.0).view(1, 7, 1) * torch.tensor([1.0, -1.0])  # two channels
    windows = causal_windows(inputs, kernel_size=3, dilation=2)
    assert windows.shape == (1, 7, 6)
    assert windows[0, 6].tolist() == [3.0, -3.0, 5.0, -5.0, 7.0, -7.0]  # t - 4, t - 2, t
    assert windows[0, 1].tolist() == [0.0, 0.0, 0.0, 0.0, 2.0, -2.0]


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_cpu_dropout_keeps_1_minus_p_scaled_and_masks_its_gradient(p):
    torch.manual_seed(0)
    dropout = Dropout(p).train()
    inputs = torch.full((64, 100, 40), 2.0, requires_grad=True)  # 256,000 elements
    outputs = dropout(inputs)
    kept = outputs != 0
    # kept values are scaled by 1 / (1 - p); the kept fraction is 1 - p within 5 sigma
    assert torch.allclose(outputs[kept], torch.tensor(2.0 / (1 - p)))
    sigma = (p * (1 - p) / inputs.numel()) ** 0.5
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * sigma
    # no position along any axis is favoured (each 16-bit lane of a random word is used)
    for dim in range(3):
        per_index = kept.float().mean(dim=[d for d in range(3) if d != dim])
        assert (per_index - (1 - p)).abs().max() < 0.05
    outputs.sum().backward()
    assert torch.equal(inputs.grad, kept.float() / (1 - p))
    # seeded: the same mask again; eval mode and p = 0 are the identity
    torch.manual_seed(0)
    assert torch.equal(dropout(inputs.detach()), outputs.detach())
    assert torch.equal(dropout.eval()(inputs), inputs)
    assert torch.equal(Dropout(0.0).train()(inputs), inputs)


def test_operator_keeps_half_precision_activations_under_autocast():
    """Under bf16 autocast every [B, L, D]-sized activation the operator keeps for its backward
    is bf16 (a float32 mask once promoted every stage to float32), and nothing is kept that the
    float32 graph does not keep too (autocast once materialised an expanded weight): about
    half the float32 graph's bytes."""
    operator = make_operator(d_model=16, filter_length=64)
    inputs = torch.randn(8, 64, 16, requires_grad=True)
    mask = torch.ones(8, 64, 1)
    _, float32 = saved_activations(lambda: operator(inputs, mask))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, half = saved_activations(lambda: operator(inputs, mask))
    large = [t for t in half if t.numel() >= inputs.numel()]
    assert large and all(t.dtype == torch.bfloat16 for t in large), [t.dtype for t in large]
    assert sum(t.untyped_storage().nbytes() for t in half) <= 0.55 * sum(
        t.untyped_storage().nbytes() for t in float32
    )


@pytest.mark.parametrize("activation", ["gelu", "relu", "silu", "tanh"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_feed_forward_recomputes_its_activation_with_the_same_gradients(activation, autocast):
    """The MLP keeps its hidden layer before the activation only; outputs and every gradient
    equal those of the plain ``nn.Sequential`` (also under autocast), and it keeps one
    [.., inner] tensor where the plain one keeps two."""
    torch.manual_seed(0)
    ffn = FeedForward(16, 64, 0.0, activation)
    inputs = torch.randn(3, 7, 16, requires_grad=True)
    results = []
    for run in (ffn, ffn.net):  # the recomputing forward, then the plain Sequential
        for p in [inputs, *ffn.parameters()]:
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            outputs, saved = saved_activations(partial(run, inputs))
        outputs.float().pow(2).sum().backward()
        grads = [p.grad.clone() for p in [inputs, *ffn.parameters()]]
        inner = sum(1 for t in saved if t.numel() == 3 * 7 * 64)
        results.append((outputs.detach(), grads, inner))
    (outputs, grads, inner), (expected, expected_grads, expected_inner) = results
    assert outputs.dtype == expected.dtype
    tolerance = {"atol": 2e-2, "rtol": 2e-2} if autocast else {"atol": 1e-6, "rtol": 1e-5}
    torch.testing.assert_close(outputs, expected, **tolerance)
    for grad, expected_grad in zip(grads, expected_grads):
        assert grad.dtype == expected_grad.dtype
        torch.testing.assert_close(grad, expected_grad, **tolerance)
    # ReLU and tanh keep their output, which the second product reads too: one tensor either way
    assert inner == 1 and expected_inner == (1 if activation in ("relu", "tanh") else 2)
