"""
recbole_hyena.model.sequence_layers
###################################

Sequence mixers shared by the plugin's baselines, each next to a slow reference that the tests
hold it to:

- ``linear_recurrence``: ``h_t = lambda * h_{t-1} + x_t`` with a decay constant in time (LRURec's
  linear recurrent unit), in ``ceil(log2 L)`` parallel steps by recursive doubling.
- ``selective_scan``: the input-dependent state-space recurrence of Mamba in plain PyTorch
  (``varying_linear_recurrence``: step by step, or by recursive doubling), with
  the signature of ``mamba_ssm``'s CUDA ``selective_scan_fn`` so the two can be swapped;
  ``mamba_kernel`` returns that kernel when the package and a GPU are there.
- ``euler_rotate``: EulerFormer's polar-form rotation of query/key pairs.

All of them are causal: output ``t`` depends on inputs ``0..t`` only, so right padding never
reaches a valid position.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F


def _shift_right(inputs: torch.Tensor, shift: int) -> torch.Tensor:
    """``inputs`` moved ``shift`` steps later along dim 1, zeros entering at the start."""
    zeros = inputs.new_zeros(inputs.shape[0], shift, *inputs.shape[2:])
    return torch.cat([zeros, inputs[:, :-shift]], dim=1)


def linear_recurrence(inputs: torch.Tensor, log_decay: torch.Tensor) -> torch.Tensor:
    r"""All states of ``h_t = exp(log_decay) * h_{t-1} + x_t`` (``h_{-1} = 0``) along dim 1.

    Args:
        inputs: ``[B, L, C]``, real or complex.
        log_decay: ``[C]``, the log of the per-channel decay (complex for a rotating decay).

    Recursive doubling: after the step with shift ``s`` every state holds the sum over the last
    ``2s`` inputs, so ``ceil(log2 L)`` steps of O(L) work cover the whole history. The decay's
    powers are taken as ``exp(s * log_decay)`` rather than by repeated squaring, which keeps
    them accurate for long sequences.
    """
    states = inputs
    shift = 1
    while shift < inputs.shape[1]:
        states = states + torch.exp(shift * log_decay) * _shift_right(states, shift)
        shift *= 2
    return states


def varying_linear_recurrence(
    decay: torch.Tensor, inputs: torch.Tensor, parallel: bool
) -> torch.Tensor:
    r"""All states of ``h_t = a_t * h_{t-1} + x_t`` (``h_{-1} = 0``) along dim 2, with a decay
    ``a_t`` that varies in time (``decay`` and ``inputs`` of the same shape ``[B, C, L, ...]``).

    ``parallel``: recursive doubling, ``ceil(log2 L)`` steps of element-wise work over the whole
    tensor (a few large kernels instead of ``L`` small ones, but ``O(L log L)`` work and memory);
    otherwise one step per position. At Mamba4Rec's ML-1M shape the step-wise form was the
    faster on an H100 as on a CPU (see ``torch_scan`` in Mamba4Rec.yaml). Both keep ``O(B C L)``
    tensors for the backward pass; neither exponentiates a cumulative sum, so long sequences
    with strong decay stay finite.
    """
    if parallel:
        states, carry = inputs, decay  # carry: the product of the decays a state spans
        shift = 1
        while shift < inputs.shape[2]:
            head = states[:, :, :shift]
            tail = states[:, :, shift:] + carry[:, :, shift:] * states[:, :, :-shift]
            states = torch.cat([head, tail], dim=2)
            if 2 * shift < inputs.shape[2]:
                carry = torch.cat(
                    [carry[:, :, :shift], carry[:, :, shift:] * carry[:, :, :-shift]], dim=2
                )
            shift *= 2
        return states
    # unbind, not indexing: its backward stacks the step gradients once instead of adding
    # each into a zero tensor of the full size
    state = torch.zeros_like(inputs[:, :, 0])
    states = []
    for decay_t, inputs_t in zip(decay.unbind(2), inputs.unbind(2)):
        state = decay_t * state + inputs_t
        states.append(state)
    return torch.stack(states, dim=2)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    parallel: bool = False,
) -> torch.Tensor:
    r"""Mamba's selective scan in plain PyTorch (any device, any dtype).

    With ``dt = softplus(delta + delta_bias)`` (softplus if ``delta_softplus``), per channel d
    and state n: ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t``, ``y_t = C_t h_t + D u_t``, and
    ``y * silu(z)`` when ``z`` is given.

    Args:
        u, delta, z: ``[batch, channels, L]``.
        A: ``[channels, d_state]`` (negative real part for a decaying state).
        B, C: ``[batch, d_state, L]``, input-dependent.
        D, delta_bias: ``[channels]``.
        parallel: scan by recursive doubling instead of step by step (see
            ``varying_linear_recurrence``).

    Returns ``[batch, channels, L]``, as ``mamba_ssm``'s ``selective_scan_fn`` does. The
    ``[batch, channels, L, d_state]`` decays and states are materialised (the step-by-step
    recurrence keeps as much for its backward pass); the fused CUDA kernel avoids that.
    """
    dtype = u.dtype
    # The recurrence runs in float32 at least, as the CUDA kernel does.
    compute_dtype = torch.promote_types(dtype, torch.float32)
    u, delta, A, B, C = (x.to(compute_dtype) for x in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute_dtype).unsqueeze(-1)
    if delta_softplus:
        delta = F.softplus(delta)
    decay = torch.exp(delta.unsqueeze(-1) * A.unsqueeze(1))  # [batch, channels, L, d_state]
    drive = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)
    states = varying_linear_recurrence(decay, drive, parallel)
    y = torch.einsum("bcln,bnl->bcl", states, C)
    if D is not None:
        y = y + u * D.to(compute_dtype).unsqueeze(-1)
    if z is not None:
        y = y * F.silu(z.to(compute_dtype))
    return y.to(dtype)


@functools.cache
def mamba_kernel() -> Callable[..., torch.Tensor] | None:
    """``mamba_ssm``'s fused CUDA ``selective_scan_fn`` when the package imports, else None
    (looked up once: a failed import would otherwise be retried at every forward)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:  # not installed, or built without its CUDA extension
        return None
    return selective_scan_fn


def rope_angles(
    seq_len: int, dim: int, base: float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Angles ``t * base^(-2j/dim)`` of position ``t`` for pair ``j``: ``[L, dim // 2]``."""
    frequencies = torch.exp(
        torch.arange(dim // 2, device=device, dtype=dtype) * (-2.0 * math.log(base) / dim)
    )
    return torch.arange(seq_len, device=device, dtype=dtype).unsqueeze(1) * frequencies


def euler_rotate(
    inputs: torch.Tensor,
    position_angles: torch.Tensor,
    semantic_scale: torch.Tensor,
    bias: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    r"""EulerFormer's rotation: each pair ``(x_{2j}, x_{2j+1})`` is read as the complex number
    ``r e^{i theta}`` and becomes ``r e^{i (scale * theta + phi_t + bias)}``.

    Args:
        inputs: ``[..., L, dim]``, ``dim`` even.
        position_angles: ``[L, dim // 2]``, the position phase ``phi_t`` of each pair.
        semantic_scale: the adaptive factor on the semantic angle (a scalar or ``[dim // 2]``).
        bias: an extra phase (EulerFormer adds a learnt one to the queries only).

    With ``semantic_scale = 1`` and no bias this is RoPE.
    """
    real, imag = inputs[..., 0::2], inputs[..., 1::2]
    radius = torch.hypot(real, imag)
    angle = torch.atan2(imag, real) * semantic_scale + position_angles + bias
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1).flatten(-2)
