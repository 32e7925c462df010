"""
recbole_hyena.model.layers
##########################

The building blocks of the Hyena family: the causal FFT convolution, the short path, the Hyena
operator and the pre-norm residual block that HyenaRec stacks. The long-kernel generators live in
``recbole_hyena.model.filters``.

Tensors in the long path are channel-first, ``[B, C, L]``, so that the FFT and the depth-wise
short convolution both run over the contiguous last dimension.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from recbole_hyena.model.filters import KernelGenerator
from recbole_hyena.model.fused_norm import LayerNorm

_ACTIVATIONS = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
}


def next_power_of_two(min_length: int) -> int:
    """The smallest power of two >= ``min_length`` (1 for ``min_length <= 1``)."""
    return 1 << max(0, (min_length - 1).bit_length())


def fast_fft_length(min_length: int) -> int:
    """The smallest 2^a 3^b 5^c 7^d >= ``min_length``: sizes every FFT backend handles fast,
    and often much closer to ``2L`` than the next power of two."""
    best = next_power_of_two(min_length)
    power7 = 1
    while power7 < best:
        power5 = power7
        while power5 < best:
            power3 = power5
            while power3 < best:
                candidate = power3
                while candidate < min_length:
                    candidate *= 2
                best = min(best, candidate)
                power3 *= 3
            power5 *= 5
        power7 *= 7
    return best


def fft_length(min_length: int, device_type: str) -> int:
    """The FFT size for a linear convolution of ``min_length`` taps on ``device_type``.

    cuFFT: the next power of two (on an H200 at L=4000, n=8192 ran a causal conv's forward and
    backward in 2.6 ms against 3.1 ms for n=8000, and with less workspace). CPU (MKL): the
    smallest 2^a 3^b 5^c 7^d that is a multiple of 16, or the power of two when that is at most
    10% larger. On this project's 2-core EPYC an rfft + irfft took ~3x as long at odd sizes
    (n=2025: 5.9 ms, 2048: 1.6 ms), 1.5x at 2500 = 4 x 5^4 against 2560, and 15-20% longer at
    2000, 4000, 8000 or 16000 than at the next power of two; the multiples of 16 were as fast as
    a power of two per point (2560, 3024, 4480, 12096).
    """
    if device_type == "cuda":
        return next_power_of_two(min_length)
    smooth = 16 * fast_fft_length(-(-min_length // 16))
    power_of_two = next_power_of_two(min_length)
    return power_of_two if power_of_two <= 1.1 * smooth else smooth


class _FFTCausalConv(torch.autograd.Function):
    """The FFT convolution with a hand-written backward, in the kernels' dtype (float32 or 64).

    Autograd through ``rfft(n=...)`` and its slicing would zero-fill, concatenate and run a
    full complex FFT per backward call; here the backward is real FFTs of the forward's size:
    the input gradient is the correlation with the kernel (``G * conj(K)``), and the kernel
    gradient the batch-summed correlation with the input (``sum_b G * conj(U)``), summed over
    the batch in the frequency domain so that it costs one small inverse FFT.

    The input itself (in its own dtype, bf16 under autocast) is kept for the backward, not its
    spectrum: the complex spectrum of the zero-padded input is 4x (8x in bf16) the bytes, and
    one more FFT in the backward costs less than holding it.

    The ``1/n`` of the inverse FFTs over ``[B, C, n]`` is folded into the small kernel spectrum
    (``norm="forward"``), which spares cuFFT's separate scaling pass over the large output.
    ``spectrum``, when given, is that of ``kernels`` (``kernel_spectrum``), computed once for
    several calls.
    """

    @staticmethod
    def forward(ctx, inputs, kernels, spectrum):  # [B, C, L] (any float dtype), [C, L] float32/64
        seq_len = inputs.shape[-1]
        # Zero-padding both signals to >= 2L - 1 turns the FFT's circular convolution into a
        # linear one (and, in the backward, the circular correlations into linear ones).
        fft_len = fft_length(2 * seq_len - 1, inputs.device.type)
        kernels_f = kernel_spectrum(kernels, seq_len) if spectrum is None else spectrum
        products = torch.fft.rfft(inputs.to(kernels.dtype), n=fft_len).mul_(kernels_f)
        ctx.fft_len = fft_len
        ctx.save_for_backward(inputs, kernels_f)
        return torch.fft.irfft(products, n=fft_len, norm="forward")[..., :seq_len]

    @staticmethod
    def backward(ctx, grad_outputs):
        inputs, kernels_f = ctx.saved_tensors
        seq_len, fft_len = grad_outputs.shape[-1], ctx.fft_len
        grad_f = torch.fft.rfft(grad_outputs, n=fft_len)
        grad_inputs = grad_kernels = None
        if ctx.needs_input_grad[1]:
            # conj(U) * G in place in the recomputed spectrum, then summed over the batch.
            cross = (
                torch.fft.rfft(inputs.to(grad_outputs.dtype), n=fft_len)
                .conj_physical_()
                .mul_(grad_f)
            )
            grad_kernels = torch.fft.irfft(cross.flatten(0, -3).sum(0), n=fft_len)[..., :seq_len]
        if ctx.needs_input_grad[0]:
            grad_f = grad_f.mul_(kernels_f.conj())  # grad_f is not needed after this
            grad_inputs = torch.fft.irfft(grad_f, n=fft_len, norm="forward")[..., :seq_len]
            grad_inputs = grad_inputs.to(inputs.dtype)
        return grad_inputs, grad_kernels, None


def kernel_spectrum(kernels: torch.Tensor, seq_len: int) -> torch.Tensor:
    """``_FFTCausalConv``'s spectrum of ``kernels`` ``[..., seq_len]`` (float32 or 64, skip term
    folded in, as ``_float_kernels`` gives them) for inputs of ``seq_len``: ``rfft(K) / n``."""
    fft_len = fft_length(2 * seq_len - 1, kernels.device.type)
    return torch.fft.rfft(kernels, n=fft_len, norm="forward")


def fft_causal_conv(
    inputs: torch.Tensor,
    kernels: torch.Tensor,
    skip: torch.Tensor | None = None,
    spectrum: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Causal depth-wise convolution ``y[..., t] = sum_{s<=t} k[c, t-s] u[..., c, s] + d[c] u[..., c, t]``.

    Args:
        inputs: ``[B, C, L]``.
        kernels: ``[C, K]`` with ``K >= 1``; taps beyond ``L`` are ignored.
        skip: optional ``[C]`` per-channel skip term ``d``.
        spectrum: optional ``kernel_spectrum`` of the float32 ``[C, L]`` kernels (skip folded
            in, ``skip`` then None), e.g. computed once for the chunks of a batch.

    The FFT runs in float32 even under autocast (half-precision FFTs lose too much accuracy
    and only accept power-of-two sizes); the result is cast back to the input dtype.
    """
    with torch.autocast(device_type=inputs.device.type, enabled=False):
        kernels = _float_kernels(kernels, skip, inputs.shape[-1])
        outputs = _FFTCausalConv.apply(inputs, kernels, spectrum)
    outputs = outputs.to(inputs.dtype)
    if outputs.is_cuda and not outputs.is_contiguous():
        # The next stage saves this output for its backward, and a slice would keep the whole
        # zero-padded buffer (n >= 2L) alive with it. (A cast to bf16 already copied; on CPU
        # the float32 copy costs more time than the memory it frees is worth: 2-9% of a step.)
        outputs = outputs.contiguous()
    return outputs


def _float_kernels(kernels: torch.Tensor, skip: torch.Tensor | None, seq_len: int) -> torch.Tensor:
    """``kernels`` ``[C, K]`` as float32 ``[C, seq_len]`` (cut or zero-padded), with the skip term
    ``d`` folded into tap 0: ``d u[t]`` is the convolution with ``d`` at lag 0, which spares a
    multiply and an add over the whole ``[B, C, L]`` input, forward and backward."""
    kernels = kernels[..., :seq_len].float()
    if kernels.shape[-1] < seq_len:
        kernels = F.pad(kernels, (0, seq_len - kernels.shape[-1]))
    if skip is not None:
        kernels = kernels + F.pad(skip.float().unsqueeze(-1), (0, seq_len - 1))
    return kernels


class _CausalConvAt(torch.autograd.Function):
    """``causal_conv_at`` with a hand-written backward that keeps only the input, in its own
    dtype (bf16 under autocast): autograd through the gather and the product would keep two
    float32 ``[B, C, L]`` copies of it."""

    @staticmethod
    def forward(ctx, inputs, kernels, positions):  # [B, C, L] any float dtype, [C, L] float32
        ctx.save_for_backward(inputs, kernels, positions)
        return torch.einsum("bcl,cl->bc", _reversed_past(inputs, positions, kernels.dtype), kernels)

    @staticmethod
    def backward(ctx, grad_outputs):  # [B, C]
        inputs, kernels, positions = ctx.saved_tensors
        grad_inputs = grad_kernels = None
        if ctx.needs_input_grad[0]:
            # d out[b, c] / d u[b, c, s] = k[c, positions[b] - s] for s <= positions[b]: the
            # kernel reversed from each position, read with the same gather.
            lags = _reversed_past(kernels.expand(len(inputs), -1, -1), positions, kernels.dtype)
            grad_inputs = (lags * grad_outputs.unsqueeze(-1)).to(inputs.dtype)
        if ctx.needs_input_grad[1]:
            past = _reversed_past(inputs, positions, kernels.dtype)
            grad_kernels = torch.einsum("bc,bcl->cl", grad_outputs.to(kernels.dtype), past)
        return grad_inputs, grad_kernels, None


def _reversed_past(values: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
    """``[B, C, L] -> [B, C, L]`` in ``dtype``: ``out[b, c, j] = values[b, c, positions[b] - j]``,
    0 where ``j > positions[b]``. Its own inverse over ``s <= positions[b]``."""
    seq_len = values.shape[-1]
    sources = positions.unsqueeze(1) - torch.arange(seq_len, device=values.device)  # [B, L]
    index = sources.clamp(min=0).unsqueeze(1).expand(-1, values.shape[1], -1)
    return torch.gather(values, 2, index).to(dtype) * (sources >= 0).unsqueeze(1)


def causal_conv_at(
    inputs: torch.Tensor,
    kernels: torch.Tensor,
    positions: torch.Tensor,
    skip: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""``fft_causal_conv(inputs, kernels, skip)[b, :, positions[b]]``, computed directly.

    One output position per sequence is a dot product of the reversed kernel with the inputs up
    to it: O(B * C * L), below the FFT's O(B * C * L log L), and no [B, C, L] output. Models that
    score only the last position (prefix training, every evaluation) use it for the last stage.

    Args:
        inputs: ``[B, C, L]``.
        kernels: ``[C, K]``; taps beyond ``L`` are ignored.
        positions: ``[B]`` output position of each sequence, in ``[0, L)``.
        skip: optional ``[C]`` per-channel skip term ``d``.

    Returns:
        ``[B, C]``, in the inputs' dtype (the sum runs in float32, like the FFT).
    """
    with torch.autocast(device_type=inputs.device.type, enabled=False):
        kernels = _float_kernels(kernels, skip, inputs.shape[-1])
        outputs = _CausalConvAt.apply(inputs, kernels, positions)
    return outputs.to(inputs.dtype)


class CausalShortConv(nn.Module):
    """Depth-wise causal convolution of a few taps (optionally dilated, i.e. atrous)."""

    def __init__(self, channels: int, kernel_size: int, dilation: int = 1):
        super().__init__()
        if kernel_size < 1 or dilation < 1:
            raise ValueError(
                f"short conv needs kernel_size >= 1 and dilation >= 1, got {kernel_size}, {dilation}"
            )
        self.left_pad = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, dilation=dilation)

    @property
    def receptive_field(self) -> int:
        return self.left_pad + 1

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:  # [B, C, L] -> [B, C, L]
        # Left padding only: output t sees inputs t - left_pad .. t.
        return self.conv(F.pad(inputs, (self.left_pad, 0)))


def causal_windows(inputs: torch.Tensor, kernel_size: int, dilation: int = 1) -> torch.Tensor:
    """``[B, L, C] -> [B, L, kernel_size * C]``: row ``t`` holds, tap-major, the inputs at
    ``t - (kernel_size - 1 - j) * dilation`` for ``j = 0..kernel_size-1`` (zeros before the start),
    the taps a causal ``nn.Conv1d`` of that size and dilation reads for output ``t``."""
    seq_len = inputs.shape[1]
    padded = F.pad(inputs, (0, 0, (kernel_size - 1) * dilation, 0))
    # shifted slices, not unfold: unfold's overlapping view costs a scatter in the backward pass
    taps = [padded[:, j * dilation : j * dilation + seq_len] for j in range(kernel_size)]
    return torch.cat(taps, dim=-1)


def projected_causal_conv(
    inputs: torch.Tensor,
    projection: torch.Tensor,
    conv: nn.Conv1d,
    channels_first: bool = False,
    glu: bool = False,
) -> torch.Tensor:
    """``conv(inputs @ projection.T)`` for a causal depth-wise ``conv`` (left zero padding),
    then with ``glu`` the GLU over the channels: ``[B, L, D_in] -> [B, L, C]``, or
    ``[B, C, L]`` with ``channels_first`` (C halved by the GLU).

    Both steps are linear. On CPU they run as a product then the conv's shifted taps
    (``_ProjectThenTaps``); on a GPU as one product over the windows of the conv's taps with
    the effective weight ``W_eff[c, (j, d)] = w_conv[c, j] projection[c, d]``, which costs
    ``kernel_size`` times the multiply-adds but no element-wise passes (``_WindowedProduct``
    channels-first, which writes the transposed result directly).
    """
    device_type = inputs.device.type
    if torch.is_autocast_enabled(device_type):
        # Every step runs in the autocast dtype, as a product under autocast would.
        inputs = inputs.to(torch.get_autocast_dtype(device_type))
    if _factors_short_conv(inputs):
        dtype = inputs.dtype
        weight, bias = conv.weight.squeeze(1).to(dtype), conv.bias.to(dtype)
        return _ProjectThenTaps.apply(
            inputs, projection.to(dtype), weight, bias, conv.dilation[0], channels_first, glu
        )
    weight = (conv.weight.transpose(1, 2) * projection.unsqueeze(1)).flatten(1)  # [C, K * D_in]
    if channels_first:
        # In the inputs' dtype: under autocast the product would cast an expanded weight, which
        # materialises (and keeps for the backward) a [B, C, K * D_in] copy of it.
        weight, bias = weight.to(inputs.dtype), conv.bias.to(inputs.dtype)
        outputs = _WindowedProduct.apply(inputs, weight, bias, *conv.dilation)
    else:
        windows = causal_windows(inputs, conv.kernel_size[0], conv.dilation[0])
        outputs = F.linear(windows, weight, conv.bias)
    # value * sigmoid(gate) as one fused op, which also spares the backward a concat.
    return F.glu(outputs, dim=1 if channels_first else -1) if glu else outputs


def _factors_short_conv(inputs: torch.Tensor) -> bool:
    """Whether ``projected_causal_conv`` runs the projection and the conv's taps as separate
    steps (``_ProjectThenTaps``, on CPU) rather than as one product over the taps' windows
    (``_WindowedProduct``, on GPUs, whose matrix products are cheap next to extra element-wise
    passes)."""
    return not inputs.is_cuda


def _tap_shifts(kernel_size: int, dilation: int, seq_len: int) -> list[tuple[int, int]]:
    """``(tap, shift)`` of each tap of a causal conv that reads inside a sequence of
    ``seq_len``: tap ``j`` reads ``t - shift`` with ``shift = (kernel_size - 1 - j) * dilation``
    (the last tap, shift 0, always)."""
    shifts = ((tap, (kernel_size - 1 - tap) * dilation) for tap in range(kernel_size))
    return [(tap, shift) for tap, shift in shifts if shift < seq_len]


class _WindowedProduct(torch.autograd.Function):
    """``W @ causal_windows(u)^T + b`` per sequence, channels-first (``[B, C, L]``): the
    projection and the conv's taps as one product (the GPU's short path, see
    ``_factors_short_conv``). It keeps ``u`` for the backward pass instead of its windows, which
    are ``kernel_size`` times larger, and rebuilds them there (a few shifted copies): GPU memory
    is the limit at long L."""

    @staticmethod
    def forward(ctx, inputs, weight, bias, dilation):  # [B, L, D], [C, K * D], [C]
        windows = causal_windows(inputs, weight.shape[1] // inputs.shape[-1], dilation)
        ctx.save_for_backward(inputs, weight)
        ctx.dilation, ctx.input_shape = dilation, inputs.shape
        bias = bias.unsqueeze(-1).expand(-1, inputs.shape[1])  # [C, L]
        return torch.baddbmm(bias, weight.expand(len(windows), -1, -1), windows.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad_outputs):  # [B, C, L]
        inputs, weight = ctx.saved_tensors
        grad_outputs = grad_outputs.to(weight.dtype)
        (batch, seq_len, features), dilation = ctx.input_shape, ctx.dilation
        kernel_size = weight.shape[1] // features
        grad_inputs = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # Tap j of row t read the input at t - shift_j: send its gradient back there,
            # channels-first as the product gives it ([B, K * D, L]), transposed at the end.
            grad_windows = torch.bmm(weight.t().expand(len(grad_outputs), -1, -1), grad_outputs)
            grad_inputs = grad_windows.new_zeros(batch, features, seq_len)
            for tap, shift in _tap_shifts(kernel_size, dilation, seq_len):
                taps = grad_windows[:, tap * features : (tap + 1) * features, shift:]
                grad_inputs[..., : seq_len - shift] += taps
            grad_inputs = grad_inputs.transpose(1, 2)
        if ctx.needs_input_grad[1]:
            windows = causal_windows(inputs, kernel_size, dilation)
            grad_weight = torch.bmm(grad_outputs, windows).sum(0)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_outputs.sum((0, 2))
        return grad_inputs, grad_weight, grad_bias, None


# A batch chunk's [b, C, L] intermediates of about this size stay in the CPU's cache, and the
# short path's taps, GLU and their backward are a dozen element-wise passes over them: a
# HyenaRec batch's taps (L=1000, batch 128, 384 channels) took 7.8 ms in 6 MiB chunks, 15.7 ms
# in 24 MiB ones and 30.5 ms as one 197 MiB tensor (2-core EPYC VM: 1 MiB L2 per core, 32 MiB L3).
_CACHE_CHUNK_BYTES = 4 * 2**20


def _cache_chunks(batch: int, bytes_per_sequence: int) -> list[slice]:
    """Slices of the batch dimension whose tensors of ``bytes_per_sequence`` per sequence hold
    about ``_CACHE_CHUNK_BYTES`` each (at least one sequence)."""
    size = max(1, _CACHE_CHUNK_BYTES // max(1, bytes_per_sequence))
    return [slice(start, min(start + size, batch)) for start in range(0, batch, size)]


class _ProjectThenTaps(torch.autograd.Function):
    """``[GLU](conv(u @ W^T))`` with the projection and the depth-wise taps as separate steps:
    a ``kernel_size``-th of the windowed product's multiply-adds, for ``kernel_size`` shifted
    element-wise passes. On CPU, where the products dominated, this cut a HyenaRec training
    step by about a tenth (L=1000, batch 128). Channels-last ``[B, L, C]`` or channels-first
    ``[B, C, L]`` (one product per sequence that writes it directly).

    Both passes run on cache-sized chunks of the batch (``_cache_chunks``) with one set of
    scratch buffers, so that the taps, the GLU and their backward read and write the cache
    rather than memory, and no chunk allocates. Only the inputs and the projection
    ``z = u @ W^T`` are kept for the backward pass, not also the conv's output that the GLU's
    backward reads (the taps are recomputed there) nor the windows of the taps."""

    @staticmethod
    def forward(ctx, inputs, projection, weight, bias, dilation, channels_first, glu):
        # [B, L, F], [C, F], [C, K], [C]
        (batch, seq_len, _), channels = inputs.shape, projection.shape[0]
        taps = _Taps(weight, bias, dilation, channels_first)
        projected = inputs.new_empty(taps.shape(batch, channels, seq_len))
        outputs = inputs.new_empty(taps.shape(batch, channels // 2 if glu else channels, seq_len))
        chunks = _cache_chunks(batch, projected[0].nbytes)
        conv = projected.new_empty(projected[chunks[0]].shape) if glu else None
        for rows in chunks:
            chunk = inputs[rows]
            if channels_first:
                weights = projection.expand(len(chunk), -1, -1)
                torch.bmm(weights, chunk.transpose(1, 2), out=projected[rows])
            else:
                torch.matmul(chunk, projection.t(), out=projected[rows])
            if glu:
                scratch = taps.apply(projected[rows], conv[: len(chunk)])
                torch.ops.aten.glu.out(scratch, taps.channel_dim, out=outputs[rows])
            else:
                taps.apply(projected[rows], outputs[rows])
        ctx.dilation, ctx.channels_first, ctx.glu = dilation, channels_first, glu
        ctx.save_for_backward(inputs, projection, weight, bias, projected)
        return outputs

    @staticmethod
    def backward(ctx, grad_outputs):
        inputs, projection, weight, bias, projected = ctx.saved_tensors
        taps = _Taps(weight, bias, ctx.dilation, ctx.channels_first)
        batch, seq_len, features = inputs.shape
        # Summed over the chunks in float32 at least, whatever the autocast dtype.
        summed = torch.promote_types(projected.dtype, torch.float32)
        grad_projection = torch.zeros_like(projection, dtype=summed)
        grad_weight = torch.zeros_like(weight, dtype=summed)
        grad_bias = torch.zeros_like(bias, dtype=summed)
        grad_inputs = inputs.new_empty(taps.shape(batch, features, seq_len))
        chunks = _cache_chunks(batch, projected[0].nbytes)
        buffer_shape = projected[chunks[0]].shape
        conv, grad_conv, grad_chunk = (projected.new_empty(buffer_shape) for _ in range(3))
        for rows in chunks:
            chunk = projected[rows]
            size, grad = len(chunk), grad_outputs[rows].to(chunk.dtype)
            if ctx.glu:
                scratch = taps.apply(chunk, conv[:size])
                grad = torch.ops.aten.glu_backward.grad_input(
                    grad, scratch, taps.channel_dim, grad_input=grad_conv[:size]
                )
            # the conv's recomputed output is spent: its buffer holds the tap products now
            taps.backward(grad, chunk, grad_chunk[:size], grad_weight, conv[:size])
            grad_bias += grad.sum(taps.other_dims)
            if taps.channels_first:
                weights = projection.t().expand(size, -1, -1)
                torch.bmm(weights, grad_chunk[:size], out=grad_inputs[rows])
                grad_projection += torch.bmm(grad_chunk[:size], inputs[rows]).sum(0)
            else:
                torch.matmul(grad_chunk[:size], projection, out=grad_inputs[rows])
                grad_projection += grad_chunk[:size].flatten(0, 1).t() @ inputs[rows].flatten(0, 1)
        if taps.channels_first:
            grad_inputs = grad_inputs.transpose(1, 2)
        return (
            grad_inputs,
            grad_projection.to(projection.dtype),
            grad_weight.to(weight.dtype),
            grad_bias.to(bias.dtype),
            None,
            None,
            None,
        )


class _Taps:
    """A causal depth-wise conv (``weight`` ``[C, K]``, ``bias`` ``[C]``) as shifted in-place
    updates along the time axis of a channels-first ``[B, C, L]`` or channels-last ``[B, L, C]``
    tensor, writing into given buffers."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor, dilation: int, channels_first: bool
    ):
        self.weight, self.dilation, self.channels_first = weight, dilation, channels_first
        self.bias = bias.unsqueeze(-1) if channels_first else bias
        self.time_dim, self.channel_dim = (2, 1) if channels_first else (1, 2)
        self.other_dims = (0, self.time_dim)

    def shape(self, batch: int, channels: int, seq_len: int) -> tuple[int, int, int]:
        return (batch, channels, seq_len) if self.channels_first else (batch, seq_len, channels)

    def _tap(self, tap: int) -> torch.Tensor:  # broadcastable over the channels
        column = self.weight[:, tap]
        return column.unsqueeze(-1) if self.channels_first else column

    def _shifts(self, seq_len: int) -> list[tuple[int, int]]:
        """``_tap_shifts`` but the last tap (shift 0), which ``apply`` starts the output with."""
        return _tap_shifts(self.weight.shape[1], self.dilation, seq_len)[:-1]

    def _dot(
        self, first: torch.Tensor, second: torch.Tensor, scratch: torch.Tensor
    ) -> torch.Tensor:
        """``(first * second).sum(other_dims)``, the product written into ``scratch`` (as large
        as ``first`` or larger along the time axis) rather than a fresh tensor."""
        product = scratch.narrow(self.time_dim, 0, first.shape[self.time_dim])
        return torch.mul(first, second, out=product).sum(self.other_dims)

    def apply(self, projected: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out[t] = bias + sum_j w_j z[t - shift_j]``."""
        # A multiply then an add: addcmul with a broadcast bias as its first operand took 3x
        # as long on CPU.
        torch.mul(projected, self._tap(-1), out=out).add_(self.bias)
        seq_len = projected.shape[self.time_dim]
        for tap, shift in self._shifts(seq_len):
            later = out.narrow(self.time_dim, shift, seq_len - shift)
            later.addcmul_(projected.narrow(self.time_dim, 0, seq_len - shift), self._tap(tap))
        return out

    def backward(
        self,
        grad: torch.Tensor,
        projected: torch.Tensor,
        grad_projected: torch.Tensor,
        grad_weight: torch.Tensor,
        scratch: torch.Tensor,
    ) -> None:
        """Writes the gradient of ``apply`` w.r.t. ``projected`` into ``grad_projected`` and adds
        that w.r.t. ``weight`` to ``grad_weight`` (``scratch``: a buffer of ``grad``'s shape):
        tap j read z at ``t - shift_j``, so its gradient is the output gradient shifted back."""
        seq_len = grad.shape[self.time_dim]
        torch.mul(grad, self._tap(-1), out=grad_projected)
        grad_weight[:, -1] += self._dot(grad, projected, scratch)
        for tap, shift in self._shifts(seq_len):
            later = grad.narrow(self.time_dim, shift, seq_len - shift)
            earlier = projected.narrow(self.time_dim, 0, seq_len - shift)
            grad_projected.narrow(self.time_dim, 0, seq_len - shift).addcmul_(later, self._tap(tap))
            grad_weight[:, tap] += self._dot(later, earlier, scratch)


class ShortPath(nn.Module):
    r"""In-projection to ``n_streams`` streams of width ``d_model``, a causal short conv and,
    with ``glu``, GLU gating ``a * sigmoid(b)`` of a doubled projection (HyenaRec's addition
    for short bursts of interest).

    The projection, the depth-wise conv and the GLU run fused (``projected_causal_conv``),
    channels-first as the long path wants them. The in-projection's bias enters through
    a mask channel, so that padding looks like the conv's own zero padding rather than like the
    bias.
    """

    def __init__(
        self,
        d_model: int,
        n_streams: int,
        kernel_size: int = 3,
        dilation: int = 1,
        glu: bool = True,
    ):
        super().__init__()
        self.glu = glu
        width = n_streams * d_model * (2 if glu else 1)
        self.in_proj = nn.Linear(d_model, width)
        self.short_conv = CausalShortConv(width, kernel_size, dilation)

    def forward(
        self, inputs: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:  # [B, L, D] -> [B, n_streams * D, L]; mask [B, L, 1], 1 at items
        if mask is None:
            mask = inputs.new_ones(*inputs.shape[:2], 1)
        device_type = inputs.device.type
        if torch.is_autocast_enabled(device_type):
            # The product runs in the autocast dtype anyway: build its features (and on a GPU
            # their taps' windows, 3x the bytes) in it rather than in float32 and then cast.
            inputs = inputs.to(torch.get_autocast_dtype(device_type))
            mask = mask.to(inputs.dtype)
        projection = torch.cat([self.in_proj.weight, self.in_proj.bias.unsqueeze(1)], dim=1)
        parts = [inputs * mask, mask]
        # cuBLAS picks much slower kernels when the reduction size (taps x features) is not a
        # multiple of 8: zero features (and weight columns) up to one.
        padding = -(inputs.shape[-1] + 1) % 8 if device_type == "cuda" else 0
        if padding:
            parts.append(inputs.new_zeros(*inputs.shape[:2], padding))
            projection = F.pad(projection, (0, padding))
        features = torch.cat(parts, dim=-1)  # [B, L, D + 1 (+ padding)]
        return projected_causal_conv(
            features, projection, self.short_conv.conv, channels_first=True, glu=self.glu
        )  # [B, C, L]


class HyenaOperator(nn.Module):
    r"""Hyena mixer of order ``N``: ``v_n = h_n * (x_n . v_{n-1}) + d_n . (x_n . v_{n-1})``.

    The short path yields ``N + 1`` streams ``x_1..x_N, v_0``; ``long_filter`` yields the ``N``
    long kernels (``N * d_model`` channels); ``filter_length`` is the grid the kernels live on,
    so that a sequence shorter than it sees the same leading taps whatever its padded length.
    """

    def __init__(
        self,
        d_model: int,
        order: int,
        long_filter: KernelGenerator,
        short_path: ShortPath,
        filter_length: int,
    ):
        super().__init__()
        if order < 1:
            raise ValueError(f"hyena_order must be >= 1, got {order}")
        if long_filter.channels != order * d_model:
            raise ValueError(
                f"long filter has {long_filter.channels} channels, expected order * d_model = "
                f"{order * d_model}"
            )
        self.d_model = d_model
        self.order = order
        self.filter_length = filter_length
        self.short_path = short_path
        self.long_filter = long_filter
        self.skip = nn.Parameter(torch.empty(order, d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.skip)

    def kernels(self, seq_len: int) -> torch.Tensor:
        """The long kernels for a sequence of ``seq_len``: ``[order, d_model, seq_len]``."""
        if seq_len > self.filter_length:
            raise ValueError(
                f"sequence length {seq_len} exceeds the filter length {self.filter_length} "
                "(MAX_ITEM_LIST_LENGTH the model was built with)"
            )
        kernels = self.long_filter(self.filter_length)[:, :seq_len]
        return kernels.view(self.order, self.d_model, seq_len)

    def conv_kernels(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What ``forward`` convolves with over ``seq_len`` positions: the long kernels as
        float32 with the skip terms folded into tap 0, ``[order, d_model, seq_len]``, and their
        spectra (``kernel_spectrum``, no gradient). A caller that runs a batch in chunks builds
        them once for all of them (at L=8000, batch 128, HyenaRec's CPU step took 12.5 s with the
        kernels built per chunk, 9.7-10.0 s with them built once)."""
        kernels = _float_kernels(self.kernels(seq_len), self.skip, seq_len)
        with torch.no_grad(), torch.autocast(kernels.device.type, enabled=False):
            spectra = kernel_spectrum(kernels.detach(), seq_len)
        return kernels, spectra

    def forward(
        self,
        inputs: torch.Tensor,
        mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        conv_kernels: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``[B, L, D] -> [B, L, D]`` (mask ``[B, L, 1]``, 1 at items); with ``positions``
        (``[B]``) only the output at each sequence's position, ``[B, D]``: the last stage is then
        evaluated there alone (``causal_conv_at``) instead of over every position.
        ``conv_kernels``: ``self.conv_kernels(L)``, from a caller that shares it between chunks."""
        streams = self.short_path(inputs, mask)
        *modulations, value = streams.split(self.d_model, dim=1)
        if mask is not None:
            # Zero v_0 at padding (the short conv's bias and window leak into it): every stage
            # multiplies the value, so the long convolutions then see zeros there too, which
            # makes left padding harmless. Masking the modulations as well would change nothing.
            # In the streams' dtype: a float32 mask would promote every stage to float32 under
            # autocast, and each stage's saved activations with it.
            value = value * mask.transpose(1, 2).to(value.dtype)
        kernels, spectra = conv_kernels or self.conv_kernels(inputs.shape[1])
        last_stage = self.order - 1
        for stage, modulation in enumerate(modulations):
            value = value * modulation
            if positions is not None and stage == last_stage:
                value = causal_conv_at(value, kernels[stage], positions)
                return self.out_proj(value)  # [B, D]
            value = fft_causal_conv(value, kernels[stage], spectrum=spectra[stage])
        return self.out_proj(value.transpose(1, 2))


class _CPUDropout(torch.autograd.Function):
    """Inverted dropout whose keep mask compares 16-bit random lanes with ``p``."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, p: float) -> torch.Tensor:
        count = inputs.numel()
        # full 64-bit words (plain random_() leaves the sign bit 0), split into four int16 lanes
        words = torch.empty((count + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
        lanes = words.view(torch.int16)[:count].view(inputs.shape)
        keep = lanes >= round(p * 65536) - 32768  # P(keep) = 1 - p, p rounded to 1/65536
        ctx.scale = 1.0 / (1.0 - p)
        ctx.save_for_backward(keep)
        return torch.mul(inputs, keep).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.mul(grad, keep).mul_(ctx.scale), None


class Dropout(nn.Dropout):
    """``nn.Dropout`` with a cheaper random mask on CPU (same keys, same semantics).

    PyTorch's CPU dropout draws one Bernoulli sample per element, which costs more than the layer
    norms and GELUs around it (~8% of a HyenaRec training step at L=1000). Here the mask comes
    from 64-bit random words cut into 16-bit lanes, about 2.5x faster; it uses the same seeded
    generator, so runs stay reproducible, but draws a different stream than ``nn.Dropout``.
    Other devices, ``inplace`` and ``p`` of 0 or 1 take ``nn.Dropout``'s own path.
    """

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if (
            not self.training
            or self.inplace
            or not 0.0 < self.p < 1.0
            or inputs.device.type != "cpu"
            or not inputs.is_floating_point()
        ):
            return super().forward(inputs)
        return _CPUDropout.apply(inputs, self.p)


class _ActivationThenLinear(torch.autograd.Function):
    """``linear(activation(hidden), weight, bias)`` that keeps ``hidden`` alone for the backward
    pass and recomputes the element-wise activation there, instead of also keeping its output:
    in a ``D -> 4D -> D`` MLP that is a quarter of what a block keeps per position (a [B, L, 4D]
    tensor), for one more activation (cheap next to the block's products). Under autocast the
    product runs in autocast's dtype, as ``F.linear`` would."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, activation):
        device = hidden.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            hidden, weight, bias = hidden.to(dtype), weight.to(dtype), bias.to(dtype)
        with torch.autocast(device, enabled=False):
            outputs = F.linear(activation(hidden), weight, bias)
        ctx.activation = activation
        ctx.save_for_backward(hidden, weight)
        return outputs

    @staticmethod
    def backward(ctx, grad_outputs):
        hidden, weight = ctx.saved_tensors
        grad_outputs = grad_outputs.to(weight.dtype)
        with torch.enable_grad():
            hidden = hidden.detach().requires_grad_()
            activated = ctx.activation(hidden)
        (grad_hidden,) = torch.autograd.grad(activated, hidden, grad_outputs @ weight)
        rows = grad_outputs.reshape(-1, grad_outputs.shape[-1])
        grad_weight = rows.t() @ activated.detach().reshape(-1, activated.shape[-1])
        return grad_hidden, grad_weight, rows.sum(0), None


class FeedForward(nn.Module):
    """Position-wise MLP ``D -> inner -> D``, with dropout on its hidden layer when ``dropout > 0``.
    Without that dropout, a training step keeps the hidden layer before its activation only
    (``_ActivationThenLinear``); the parameters are those of the plain ``nn.Sequential``."""

    def __init__(self, d_model: int, inner_size: int, dropout: float, activation: str):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_act [{activation}] is not supported; choose one of {sorted(_ACTIVATIONS)}"
            )
        self.net = nn.Sequential(
            nn.Linear(d_model, inner_size),
            _ACTIVATIONS[activation](),
            Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(inner_size, d_model),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        to_hidden, activation, dropout, to_outputs = self.net
        if not (torch.is_grad_enabled() and isinstance(dropout, nn.Identity)):
            return self.net(inputs)
        return _ActivationThenLinear.apply(
            to_hidden(inputs), to_outputs.weight, to_outputs.bias, activation
        )


def gather_positions(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``values[b, positions[b]]``: ``[B, L, ...]`` at ``positions`` ``[B]`` (one position per
    sequence) -> ``[B, ...]``, or ``[B, R]`` -> ``[B, R, ...]``."""
    rows = torch.arange(len(values), device=values.device)
    return values[rows.view(-1, *[1] * (positions.dim() - 1)), positions]


def checkpointed(block: nn.Module, enabled: bool) -> Callable[..., torch.Tensor]:
    """``block`` itself, or, when ``enabled`` and the block is training with gradients on,
    ``block`` under activation checkpointing: only its inputs are kept for the backward pass,
    which recomputes its activations (with the same dropout masks)."""
    if enabled and block.training and torch.is_grad_enabled():
        return partial(checkpoint, block, use_reentrant=False)
    return block


class PreNormBlock(nn.Module):
    """``x + Dropout(Mixer(LN(x), ...))`` then ``x + Dropout(MLP(LN(x)))``, around any mixer;
    extra arguments of ``forward`` go to the mixer (e.g. a padding mask, time gaps)."""

    def __init__(
        self,
        d_model: int,
        mixer: nn.Module,
        inner_size: int,
        dropout: float,
        activation: str = "gelu",
        layer_norm_eps: float = 1e-12,
        layer_norm_backend: str = "auto",
    ):
        super().__init__()
        self.mixer_norm = LayerNorm(d_model, eps=layer_norm_eps, backend=layer_norm_backend)
        self.mixer = mixer
        self.ffn_norm = LayerNorm(d_model, eps=layer_norm_eps, backend=layer_norm_backend)
        # Dropout on the mixer and MLP outputs only (the HyenaRec paper's block): dropout inside
        # the MLP would also cost a random draw per hidden unit (on CPU ~8% of a training step).
        self.ffn = FeedForward(d_model, inner_size, 0.0, activation)
        self.dropout = Dropout(dropout)

    def forward(
        self,
        hidden: torch.Tensor,
        *mixer_args,
        positions: torch.Tensor | None = None,
        **mixer_kwargs,
    ) -> torch.Tensor:
        """``[B, L, D] -> [B, L, D]``; with ``positions`` (``[B]`` or ``[B, R]``, for a mixer
        that accepts them) the block's output at those positions only, ``[B, D]`` or
        ``[B, R, D]``: everything after the mixer works per position, so the rest of the block
        runs on B (x R) rows instead of B x L."""
        normed = self.mixer_norm(hidden)
        if positions is None:
            mixed = self.mixer(normed, *mixer_args, **mixer_kwargs)
        else:
            mixed = self.mixer(normed, *mixer_args, positions=positions, **mixer_kwargs)
            hidden = gather_positions(hidden, positions)
        hidden = hidden + self.dropout(mixed)
        return hidden + self.dropout(self.ffn(self.ffn_norm(hidden)))
