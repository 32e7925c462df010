"""
recbole_hyena.model.tadn
########################

The Temporal-Aware Delta Network (TADN), HyTRec's linear-attention layer, and the gated delta rule
it runs on.

Reference:
    "HyTRec: A Hybrid Temporal-Aware Attention Architecture for Long Behavior Sequential
    Recommendation", arXiv 2602.18283, 2026 (TADN: a delta-rule linear attention whose decay and
    gating are driven by time; no public code, the equations below are this project's design).
    Songlin Yang, Jan Kautz, Ali Hatamizadeh. "Gated Delta Networks: Improving Mamba2 with Delta
    Rule." in ICLR 2025 (the gated delta rule and its chunked WY form).

Per head, with state ``S`` of shape ``[d_v, d_k]`` and L2-normalised ``q_t``, ``k_t``:

.. math::
    S_t = \\alpha_t S_{t-1} (I - \\beta_t k_t k_t^T) + \\beta_t v_t k_t^T, \\qquad o_t = S_t q_t.

Three interchangeable kernels compute it: ``delta_rule_recurrent`` (one step per event: the
reference, and the form for step-by-step inference), ``delta_rule_chunked`` (block-parallel, for
training: a WY/UT transform inside each chunk, the recurrence across chunks) and, on a GPU with
``flash-linear-attention`` installed, its Triton gated delta-rule kernel. ``gated_delta_rule``
picks one.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from recbole_hyena.model.layers import CausalShortConv, gather_positions, projected_causal_conv

try:  # optional GPU kernels; everything works without them
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as _fla_chunk_gated_delta_rule
except ImportError:  # pragma: no cover - depends on the environment
    _fla_chunk_gated_delta_rule = None

BACKENDS = ("auto", "torch", "recurrent", "fla")
# log(alpha) is clamped at -MAX_LOG_DECAY per event: e^-20 is already a reset of the state, and
# the bound keeps the within-chunk cumulative sums small enough for float32 differences.
MAX_LOG_DECAY = 20.0


def fla_available() -> bool:
    """Whether ``flash-linear-attention``'s gated delta-rule kernel could be imported."""
    return _fla_chunk_gated_delta_rule is not None


@cache
def fla_trains_here() -> bool:
    """Whether fla's kernel has a backward on this machine. fla 0.5 raises in the gated rule's
    backward on Hopper GPUs (H100, H200) with Triton 3.4.0 to 3.7.0 unless ``tilelang`` is
    installed (fla issue #640; seen on an H200 with Triton 3.6)."""
    try:
        from fla.utils import IS_NVIDIA_HOPPER, TRITON_ABOVE_3_4_0, TRITON_ABOVE_3_7_1
    except ImportError:  # other fla versions: no known refusal
        return fla_available()
    refused = IS_NVIDIA_HOPPER and TRITON_ABOVE_3_4_0 and not TRITON_ABOVE_3_7_1
    return not refused or importlib.util.find_spec("tilelang") is not None


def delta_rule_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_alpha: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The gated delta rule one event at a time.

    Args:
        q, k: ``[B, H, L, d_k]`` (``k`` L2-normalised); v: ``[B, H, L, d_v]``.
        log_alpha: ``[B, H, L]``, ``log alpha_t <= 0``; beta: ``[B, H, L]`` in ``[0, 1]``.
        initial_state: ``[B, H, d_v, d_k]`` or None (zeros).

    Returns:
        The outputs ``o_t = S_t q_t`` ``[B, H, L, d_v]`` and the last state ``[B, H, d_v, d_k]``.
    """
    batch, heads, seq_len, d_k = k.shape
    state = initial_state
    if state is None:
        state = q.new_zeros(batch, heads, v.shape[-1], d_k)
    alpha = log_alpha.exp()
    outputs = []
    for t in range(seq_len):
        k_t = k[:, :, t].unsqueeze(-1)  # [B, H, d_k, 1]
        v_t = v[:, :, t].unsqueeze(-1)  # [B, H, d_v, 1]
        beta_t = beta[:, :, t, None, None]
        # S (I - beta k k^T) = S - beta (S k) k^T
        erased = state - beta_t * (state @ k_t) @ k_t.transpose(-1, -2)
        state = alpha[:, :, t, None, None] * erased + beta_t * v_t @ k_t.transpose(-1, -2)
        outputs.append((state @ q[:, :, t].unsqueeze(-1)).squeeze(-1))
    return torch.stack(outputs, dim=2), state


def delta_rule_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_alpha: torch.Tensor,
    beta: torch.Tensor,
    chunk_size: int = 64,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The gated delta rule in chunks of ``chunk_size`` events; same arguments and results as
    ``delta_rule_recurrent``.

    Inside a chunk starting from state ``S_0``, with ``g_i = prod_{j<=i} alpha_j``, the rule is
    ``S_i = alpha_i S_{i-1} + u_i k_i^T`` with the pseudo-values
    ``u_i = beta_i (v_i - alpha_i S_{i-1} k_i)``. Unrolled, they solve the unit lower-triangular
    system ``(I + A) U = diag(beta) V - diag(beta g) K S_0^T`` with
    ``A_ij = beta_i (g_i / g_j) k_i^T k_j`` for ``j < i`` (the UT form of the WY representation),
    so ``U = U_v - W S_0^T`` where ``U_v`` and ``W`` depend on the chunk alone and are computed
    for all chunks at once by one batched triangular solve. Then
    ``O = diag(g) Q S_0^T + (Q K^T * Gamma) U`` (``Gamma_ij = g_i / g_j`` for ``j <= i``) and
    ``S_C = g_C S_0 + U^T diag(g_C / g) K``: only this short recurrence over chunks is sequential.

    The backward pass is written out (``_ChunkedDeltaRule``): it keeps the inputs, the solved
    ``[U_v, W]`` and the state entering each chunk, and recomputes the ``[C, C]`` chunk matrices,
    where autograd kept about a dozen tensors per event: at two heads of 32, 0.8 kB per event
    beyond the inputs instead of 13.7 kB.
    """
    if initial_state is None:
        initial_state = q.new_zeros(*q.shape[:2], v.shape[-1], q.shape[-1])
    return _ChunkedDeltaRule.apply(q, k, v, log_alpha, beta, initial_state, chunk_size)


def _to_chunks(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``[B, H, L, ...]`` -> ``[B, H, N, C, ...]``, zero-padded to whole chunks: padded events
    neither decay nor write (alpha = 1, beta = 0), so the state passes through them."""
    pad = -x.shape[2] % chunk_size
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
    return x.unflatten(2, (-1, chunk_size))


def _from_chunks(x: torch.Tensor, seq_len: int) -> torch.Tensor:
    return x.flatten(2, 3)[:, :, :seq_len]


def _chunk_products(
    q: torch.Tensor, k: torch.Tensor, log_alpha: torch.Tensor, beta: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """What both passes compute from chunked inputs: the cumulative log decay ``log g``
    ``[.., C]``, ``g`` ``[.., C, 1]``, ``Gamma`` ``[.., C, C]``, ``beta k``, and ``beta K K^T`` and
    ``Q K^T`` (A and the scores before ``* Gamma``, from one product as both multiply ``K^T``)."""
    log_g = log_alpha.cumsum(dim=-1)
    size = log_g.shape[-1]
    causal = torch.ones(size, size, dtype=torch.bool, device=q.device).tril()
    # entries j > i are masked before exp (they would overflow)
    gamma = (log_g.unsqueeze(-1) - log_g.unsqueeze(-2)).masked_fill(~causal, -math.inf).exp()
    beta_k = beta.unsqueeze(-1) * k
    products = torch.cat([beta_k, q], dim=-2) @ k.transpose(-1, -2)
    keys_products, query_products = products.split(size, dim=-2)
    return log_g, log_g.exp().unsqueeze(-1), gamma, beta_k, keys_products, query_products


def _chunk_transitions(
    solved: torch.Tensor, k: torch.Tensor, log_g: torch.Tensor, d_v: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Across chunks the state follows ``S_{n+1} = S_n M_n + E_n`` with
    ``M_n = g_C I - W^T diag(g_C / g) K`` and ``E_n = U_v^T diag(g_C / g) K``. Returns
    ``diag(g_C / g) K``, ``g_C / g``, ``M`` and ``E``."""
    to_end = (log_g[..., -1:] - log_g).exp()  # [.., C]
    k_to_end = k * to_end.unsqueeze(-1)
    writes, keys_w_to_end = (solved.transpose(-1, -2) @ k_to_end).split([d_v, k.shape[-1]], dim=-2)
    chunk_decay = log_g[..., -1].exp()[..., None, None]
    identity = torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
    return k_to_end, to_end, chunk_decay * identity - keys_w_to_end, writes


def _scan(
    first: torch.Tensor, transitions: torch.Tensor, inputs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``X_{n+1} = X_n T_n + I_n`` from ``X_0 = first`` ``[B, H, a, b]`` over chunks
    (``T``, ``I``: ``[B, H, N, ..]``): ``X_0 .. X_{N-1}`` stacked ``[B, H, N, a, b]`` and ``X_N``.
    One fused multiply-add per chunk keeps the sequential part small when a long sequence makes
    hundreds of chunks."""
    batch, heads = first.shape[:2]
    state = first.reshape(batch * heads, *first.shape[2:])
    # unbind once: indexing chunk n in the loop costs a copy per chunk
    states = []
    for transition, update in zip(
        transitions.flatten(0, 1).unbind(dim=1), inputs.flatten(0, 1).unbind(dim=1)
    ):
        states.append(state)
        state = torch.baddbmm(update, state, transition)
    stacked = torch.stack(states, dim=1).view(batch, heads, -1, *first.shape[2:])
    return stacked, state.view(first.shape)


def _solve_unit_lower(
    matrix: torch.Tensor, rhs: torch.Tensor, transpose: bool = False
) -> torch.Tensor:
    """``(I + A)^-1 rhs`` (``transpose``: ``(I + A)^-T rhs``), ``A`` the strict lower triangle of
    ``matrix`` ``[.., C, C]``, by substitution one row at a time over all chunks at once: for
    chunks of 32 on CPU this is 1.6-1.8x faster than the batched LAPACK solve (1,024 systems with
    64 right-hand sides: 3.0 against 4.9 ms, transposed 3.5 against 6.0 ms), whose per-matrix
    overhead dominates at this size. Other devices keep the library solve (not measured there:
    the loop would be 2 C small kernel launches)."""
    if matrix.device.type != "cpu":
        return torch.linalg.solve_triangular(
            matrix.transpose(-1, -2) if transpose else matrix,
            rhs,
            upper=transpose,
            unitriangular=True,
        )
    solution = rhs.clone(memory_format=torch.contiguous_format)
    size = matrix.shape[-1]
    if not transpose:
        for row in range(1, size):
            solution[..., row : row + 1, :] -= (
                matrix[..., row : row + 1, :row] @ solution[..., :row, :]
            )
    else:
        columns = matrix.transpose(-1, -2).contiguous()  # rows of A^T: slices stay dense
        for row in range(size - 2, -1, -1):
            solution[..., row : row + 1, :] -= (
                columns[..., row : row + 1, row + 1 :] @ solution[..., row + 1 :, :]
            )
    return solution


def _add_matmul(
    base: torch.Tensor, left: torch.Tensor, right: torch.Tensor, alpha: float = 1.0
) -> torch.Tensor:
    """``base + alpha * left @ right`` over the same leading dims in one ``baddbmm``: no
    separate product tensor and sum pass."""
    result = torch.baddbmm(
        base.reshape(-1, *base.shape[-2:]),
        left.reshape(-1, *left.shape[-2:]),
        right.reshape(-1, *right.shape[-2:]),
        alpha=alpha,
    )
    return result.view(*base.shape[:-2], *result.shape[-2:])


class _ChunkedDeltaRule(torch.autograd.Function):
    """``delta_rule_chunked`` with its gradient written out (see there for the notation)."""

    @staticmethod
    def forward(ctx, q, k, v, log_alpha, beta, initial_state, chunk_size):
        seq_len, d_v = q.shape[2], v.shape[-1]
        chunk_size = max(1, min(chunk_size, seq_len))
        q_, k_, v_, log_alpha_, beta_ = (
            _to_chunks(x, chunk_size) for x in (q, k, v, log_alpha, beta)
        )
        log_g, g, gamma, beta_k, keys_products, query_products = _chunk_products(
            q_, k_, log_alpha_, beta_
        )
        # A keeps Gamma's diagonal: the solve reads its strict lower triangle only.
        rhs = torch.cat([beta_.unsqueeze(-1) * v_, beta_k * g], dim=-1)
        solved = _solve_unit_lower(keys_products * gamma, rhs)
        _, _, transitions, writes = _chunk_transitions(solved, k_, log_g, d_v)
        states_before, state = _scan(initial_state, transitions, writes)

        # U = U_v - W S_0^T; O = diag(g) Q S_0^T + (Q K^T * Gamma) U, batched over all chunks
        values, keys_w = solved.split([d_v, k.shape[-1]], dim=-1)
        read = torch.cat([keys_w, q_ * g], dim=-2) @ states_before.transpose(-1, -2)
        keys_w_read, q_read = read.split(chunk_size, dim=-2)
        outputs = _add_matmul(q_read, query_products * gamma, values - keys_w_read)
        ctx.save_for_backward(q, k, v, log_alpha, beta, solved, states_before)
        ctx.chunk_size = chunk_size
        return _from_chunks(outputs, seq_len), state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_outputs, grad_state):
        # autograd passes zeros for an output that took no part in the loss
        q, k, v, log_alpha, beta, solved, states_before = ctx.saved_tensors
        chunk_size, seq_len, d_k, d_v = ctx.chunk_size, q.shape[2], q.shape[-1], v.shape[-1]
        q, k, v, log_alpha, beta, grad_o = (
            _to_chunks(x, chunk_size) for x in (q, k, v, log_alpha, beta, grad_outputs)
        )
        log_g, g, gamma, beta_k, keys_products, query_products = _chunk_products(
            q, k, log_alpha, beta
        )
        q_decayed = q * g
        values, keys_w = solved.split([d_v, d_k], dim=-1)
        k_to_end, to_end, transitions, _ = _chunk_transitions(solved, k, log_g, d_v)
        states_t = states_before.transpose(-1, -2)

        # O = diag(g) Q S^T + Scores U with U = U_v - W S^T (S: the state entering the chunk)
        scores = query_products * gamma
        pseudo_values = _add_matmul(values, keys_w, states_t, alpha=-1)  # U
        grad_scores = grad_o @ pseudo_values.transpose(-1, -2)
        grad_u = scores.transpose(-1, -2) @ grad_o
        grad_q_decayed = grad_o @ states_before
        local = _add_matmul(
            grad_o.transpose(-1, -2) @ q_decayed, grad_u.transpose(-1, -2), keys_w, alpha=-1
        )
        # Backwards over chunks: dS_n = local_n + dS_{n+1} M_n^T, where dS_{n+1} is the gradient
        # of the state leaving chunk n (that is, of its E_n, and through M_n of S_n).
        flipped = (x.flip(2) for x in (transitions.transpose(-1, -2), local))
        grads_after, grad_initial = _scan(grad_state, *flipped)
        grads_after = grads_after.flip(2)  # [B, H, N, d_v, d_k]
        grad_transitions = states_t @ grads_after  # dM = S^T dS_{n+1}

        # E = U_v^T diag(g_C/g) K and M = g_C I - W^T diag(g_C/g) K, with dE = dS_{n+1}
        grad_values = _add_matmul(grad_u, k_to_end, grads_after.transpose(-1, -2))
        neg_grad_keys_w = _add_matmul(
            grad_u @ states_before, k_to_end, grad_transitions.transpose(-1, -2)
        )
        grad_k_to_end = _add_matmul(values @ grads_after, keys_w, grad_transitions, alpha=-1)
        grad_chunk_decay = grad_transitions.diagonal(dim1=-2, dim2=-1).sum(-1)  # d g_C

        # [U_v, W] = (I + A)^-1 rhs: d rhs = (I + A)^-T d[U_v, W], dA = -d rhs [U_v, W]^T (the
        # solve read A's strict lower triangle only)
        grad_rhs = _solve_unit_lower(
            keys_products * gamma,
            torch.cat([grad_values, -neg_grad_keys_w], dim=-1),
            transpose=True,
        )
        neg_grad_system = (grad_rhs @ solved.transpose(-1, -2)).tril_(-1)
        grad_beta_v, grad_beta_k_g = grad_rhs.split([d_v, d_k], dim=-1)

        # A = (beta K K^T) * Gamma, Scores = (Q K^T) * Gamma; log_gamma_grad = dGamma * Gamma
        log_gamma_grad = grad_scores * query_products
        log_gamma_grad.addcmul_(neg_grad_system, keys_products, value=-1).mul_(gamma)
        grad_scores.mul_(gamma)
        neg_grad_system.mul_(gamma)
        grad_q = _add_matmul(grad_q_decayed * g, grad_scores, k)
        grad_beta_k = _add_matmul(grad_beta_k_g * g, neg_grad_system, k, alpha=-1)
        grad_k = _add_matmul(grad_k_to_end * to_end.unsqueeze(-1), grad_scores.transpose(-1, -2), q)
        grad_k = _add_matmul(grad_k, neg_grad_system.transpose(-1, -2), beta_k, alpha=-1)
        grad_k.addcmul_(grad_beta_k, beta.unsqueeze(-1))
        grad_v = grad_beta_v * beta.unsqueeze(-1)
        grad_beta = (grad_beta_v * v).sum(-1) + (grad_beta_k * k).sum(-1)

        # Every use of log g: Gamma_ij = g_i / g_j, diag(g) in rhs and Q_dec, g_C / g, g_C.
        to_end_terms = (grad_k_to_end * k_to_end).sum(-1)
        grad_log_g = (
            log_gamma_grad.sum(-1)
            - log_gamma_grad.sum(-2)
            + (grad_beta_k_g * beta_k * g).sum(-1)
            + (grad_q_decayed * q_decayed).sum(-1)
            - to_end_terms
        )
        grad_log_g[..., -1] += to_end_terms.sum(-1) + grad_chunk_decay * g[..., -1, 0]
        grad_log_alpha = grad_log_g.flip(-1).cumsum(-1).flip(-1)  # log g = cumsum(log alpha)

        grads = (grad_q, grad_k, grad_v, grad_log_alpha, grad_beta)
        return (*(_from_chunks(x, seq_len) for x in grads), grad_initial, None)


def delta_rule_fla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_alpha: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``flash-linear-attention``'s chunked Triton kernel (GPU only); same arguments and results
    as ``delta_rule_recurrent``. fla keeps tensors time-major ``[B, L, H, d]`` and the state
    as ``[d_k, d_v]``, hence the transposes."""
    if _fla_chunk_gated_delta_rule is None:
        raise ImportError("tadn_backend 'fla' needs the flash-linear-attention package")
    if initial_state is not None:
        initial_state = initial_state.float().transpose(-1, -2).contiguous()
    # one dtype for q, k, v and beta (under autocast q and k come out of the L2 norm in float32
    # while v is half); the decays stay in float32
    dtype = v.dtype

    def time_major(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return x.transpose(1, 2).to(dtype).contiguous()

    outputs, state = _fla_chunk_gated_delta_rule(
        time_major(q, dtype),
        time_major(k, dtype),
        time_major(v, dtype),
        time_major(log_alpha, torch.float32),
        time_major(beta, dtype),
        scale=1.0,
        initial_state=initial_state,
        output_final_state=True,
    )
    return outputs.transpose(1, 2), state.transpose(-1, -2)


def resolve_backend(backend: str, tensor: torch.Tensor) -> str:
    """``auto``: fla's kernel for CUDA tensors in a precision it supports when fla is installed
    (and, when a gradient will be needed, has a backward here: ``fla_trains_here``), the chunked
    PyTorch form otherwise."""
    if backend not in BACKENDS:
        raise ValueError(f"tadn_backend [{backend}] must be one of {list(BACKENDS)}")
    if backend != "auto":
        return backend
    fla_dtypes = (torch.float32, torch.float16, torch.bfloat16)
    needs_backward = torch.is_grad_enabled() and tensor.requires_grad
    if (
        fla_available()
        and tensor.is_cuda
        and tensor.dtype in fla_dtypes
        and (not needs_backward or fla_trains_here())
    ):
        return "fla"
    return "torch"


def gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_alpha: torch.Tensor,
    beta: torch.Tensor,
    backend: str = "auto",
    chunk_size: int = 64,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule by the kernel ``backend`` names (see ``resolve_backend``); the
    result has ``v``'s dtype.

    The PyTorch kernels run in float32 at least, outside autocast: the triangular solve and the
    cumulative decays lose too much in half precision (as the FFT does in ``fft_causal_conv``).
    """
    backend = resolve_backend(backend, q)
    if backend == "fla":
        return delta_rule_fla(q, k, v, log_alpha, beta, initial_state)
    dtype = torch.promote_types(v.dtype, torch.float32)
    inputs = [x.to(dtype) for x in (q, k, v, log_alpha, beta)]
    if initial_state is not None:
        initial_state = initial_state.to(dtype)
    with torch.autocast(device_type=q.device.type, enabled=False):
        if backend == "recurrent":
            outputs, state = delta_rule_recurrent(*inputs, initial_state)
        else:
            outputs, state = delta_rule_chunked(*inputs, chunk_size, initial_state)
    return outputs.to(v.dtype), state


@dataclass
class TADNCache:
    """What ``TemporalDeltaNet.step`` carries between events: the delta-rule state
    ``[B, H, d_v, d_k]`` and the short convolution's last inputs ``[B, 3D, conv_size - 1]``."""

    state: torch.Tensor
    conv_inputs: torch.Tensor | None


class TemporalDeltaNet(nn.Module):
    r"""TADN: a multi-head gated delta rule whose decay and write strength depend on time.

    Per head, from the layer input ``x_t`` and the time gap ``delta_t`` to the previous event
    (in units of ``tau``, 0 for the first event):

    - decay ``alpha_t = exp(-softplus(a) delta_t - softplus(w_alpha x_t + b_alpha))``;
    - recency ``f_t = exp(-lambda delta_t)`` with a learnable ``lambda >= 0``;
    - write strength ``beta_t = min(1, sigmoid(w_beta x_t) (1 + gamma f_t))``, ``gamma >= 0``;
    - ``o_t = RMSNorm(S_t q_t) * SiLU(W_z x_t)``, then an output projection.

    Causal time terms: the age of an event at position ``t`` enters through the decay alone, as
    the product of the alphas between that event and ``t`` is at most
    ``exp(-softplus(a) (T_t - T_s))``, an exponential in the age measured from the current
    position; this stays causal at every position in all-position training. The recency term
    ``f_t`` cannot use the age relative to the window's last event (that would read future
    timestamps at earlier positions), so ``Delta_t`` here is the gap to the previous event: an
    event that follows the last one closely (a burst) is written more strongly.

    With ``time_terms=False`` the time parameters are absent and this is the plain gated delta
    rule (``alpha_t = exp(-softplus(w_alpha x_t + b_alpha))``, ``beta_t = sigmoid(w_beta x_t)``).
    q, k and v pass a causal depth-wise convolution of ``conv_size`` taps and SiLU first (0: none).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        conv_size: int = 4,
        time_terms: bool = True,
        chunk_size: int = 64,
        backend: str = "auto",
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"hidden_size {d_model} is not a multiple of n_heads {n_heads}")
        if backend not in BACKENDS:
            raise ValueError(f"tadn_backend [{backend}] must be one of {list(BACKENDS)}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.time_terms = time_terms
        self.chunk_size = chunk_size
        self.backend = backend
        self.norm_eps = norm_eps

        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=False)
        self.conv = CausalShortConv(3 * d_model, conv_size) if conv_size > 0 else None
        self.decay_proj = nn.Linear(d_model, n_heads, bias=False)
        self.decay_bias = nn.Parameter(torch.empty(n_heads))
        self.write_proj = nn.Linear(d_model, n_heads, bias=False)
        if time_terms:
            self.time_decay = nn.Parameter(torch.empty(n_heads))  # a
            self.recency_rate = nn.Parameter(torch.empty(n_heads))  # lambda = softplus(.)
            self.recency_gain = nn.Parameter(torch.empty(n_heads))  # gamma = softplus(.)
        self.gate_proj = nn.Linear(d_model, d_model, bias=False)
        self.norm_weight = nn.Parameter(torch.empty(self.head_dim))
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gate initialisation in the style of Mamba/GDN: per-head rates spread on a log scale,
        so that heads start with memories from a few events to hundreds."""
        nn.init.xavier_uniform_(self.qkv_proj.weight)
        nn.init.xavier_uniform_(self.gate_proj.weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.normal_(self.decay_proj.weight, std=0.02)
        nn.init.normal_(self.write_proj.weight, std=0.02)
        if self.conv is not None:
            self.conv.conv.reset_parameters()
        with torch.no_grad():
            # softplus(b_alpha) in [1e-3, 1e-1]: per-event data decay at the start of training.
            self.decay_bias.copy_(_inverse_softplus(_log_spaced(1e-3, 1e-1, self.n_heads)))
            if self.time_terms:
                # softplus(a) in [1e-3, 0.3] per unit of time (tau).
                self.time_decay.copy_(_inverse_softplus(_log_spaced(1e-3, 0.3, self.n_heads)))
                self.recency_rate.copy_(_inverse_softplus(torch.ones(self.n_heads)))
                self.recency_gain.copy_(_inverse_softplus(torch.full((self.n_heads,), 0.5)))
        nn.init.ones_(self.norm_weight)

    def gates(
        self, inputs: torch.Tensor, gaps: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``log alpha`` and ``beta``, ``[B, H, L]``, from ``inputs`` ``[B, L, D]`` and ``gaps``
        ``[B, L]``; events outside ``mask`` (``[B, L]``, True at events) keep the state as is."""
        log_alpha = -F.softplus(self.decay_proj(inputs) + self.decay_bias)  # [B, L, H]
        beta = torch.sigmoid(self.write_proj(inputs))
        if self.time_terms:
            gaps = gaps.to(inputs.dtype).unsqueeze(-1)  # [B, L, 1]
            log_alpha = log_alpha - F.softplus(self.time_decay) * gaps
            recency = torch.exp(-F.softplus(self.recency_rate) * gaps)
            beta = (beta * (1 + F.softplus(self.recency_gain) * recency)).clamp(max=1.0)
        log_alpha = log_alpha.clamp(min=-MAX_LOG_DECAY)
        if mask is not None:
            keep = mask.unsqueeze(-1)
            log_alpha = log_alpha.masked_fill(~keep, 0.0)
            beta = beta.masked_fill(~keep, 0.0)
        return log_alpha.transpose(1, 2), beta.transpose(1, 2)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, H, L, d]
        return x.view(*x.shape[:2], self.n_heads, self.head_dim).transpose(1, 2)

    def _qkv(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        query, key, value = (self._heads(x) for x in qkv.split(self.d_model, dim=-1))
        return F.normalize(query, dim=-1), F.normalize(key, dim=-1), value

    def _output(self, outputs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Per-head RMSNorm, SiLU output gate, projection: outputs ``[..., H, d]`` with inputs
        ``[..., D]`` -> ``[..., D]``."""
        outputs = outputs * torch.rsqrt(outputs.pow(2).mean(-1, keepdim=True) + self.norm_eps)
        outputs = (outputs * self.norm_weight).reshape(inputs.shape)
        return self.out_proj(outputs * F.silu(self.gate_proj(inputs)))

    def forward(
        self,
        inputs: torch.Tensor,
        gaps: torch.Tensor,
        mask: torch.Tensor | None = None,
        backend: str | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``inputs`` ``[B, L, D]``, ``gaps`` ``[B, L]`` (units of tau), ``mask`` ``[B, L]``
        (True at events) -> ``[B, L, D]``; with ``positions`` (``[B]`` or ``[B, R]``) only
        there, ``[B, D]`` or ``[B, R, D]``: the recurrence still runs over every event, the
        output gate and projection at those positions only. ``backend`` overrides the layer's
        kernel choice."""
        if mask is not None:
            inputs_at_events = inputs * mask.unsqueeze(-1).to(inputs.dtype)
        else:
            inputs_at_events = inputs
        if self.conv is not None:
            qkv = projected_causal_conv(inputs_at_events, self.qkv_proj.weight, self.conv.conv)
            qkv = F.silu(qkv)
        else:
            qkv = self.qkv_proj(inputs_at_events)
        query, key, value = self._qkv(qkv)
        log_alpha, beta = self.gates(inputs, gaps, mask)
        outputs, _ = gated_delta_rule(
            query, key, value, log_alpha, beta, backend or self.backend, self.chunk_size
        )
        outputs = outputs.transpose(1, 2)  # [B, L, H, d]
        if positions is not None:
            outputs = gather_positions(outputs, positions)
            inputs = gather_positions(inputs, positions)
        return self._output(outputs, inputs)

    def step(
        self, inputs: torch.Tensor, gaps: torch.Tensor, cache: TADNCache | None = None
    ) -> tuple[torch.Tensor, TADNCache]:
        """One event, recurrent form (O(1) per event): ``inputs`` ``[B, D]``, ``gaps`` ``[B]``
        -> ``[B, D]`` and the updated cache. Feeding a sequence event by event gives what
        ``forward`` gives at every position."""
        batch = inputs.shape[0]
        if cache is None:
            state = inputs.new_zeros(batch, self.n_heads, self.head_dim, self.head_dim)
            conv_inputs = None
            if self.conv is not None:
                conv_inputs = inputs.new_zeros(batch, 3 * self.d_model, self.conv.left_pad)
            cache = TADNCache(state, conv_inputs)
        qkv = self.qkv_proj(inputs)  # [B, 3D]
        conv_inputs = cache.conv_inputs
        if self.conv is not None:
            window = torch.cat([cache.conv_inputs, qkv.unsqueeze(-1)], dim=-1)  # [B, 3D, K]
            qkv = F.silu((window * self.conv.conv.weight.squeeze(1)).sum(-1) + self.conv.conv.bias)
            conv_inputs = window[..., 1:]
        query, key, value = self._qkv(qkv.unsqueeze(1))
        log_alpha, beta = self.gates(inputs.unsqueeze(1), gaps.unsqueeze(1))
        outputs, state = delta_rule_recurrent(query, key, value, log_alpha, beta, cache.state)
        return self._output(outputs.squeeze(2), inputs), TADNCache(state, conv_inputs)


def _log_spaced(low: float, high: float, count: int) -> torch.Tensor:
    return torch.logspace(math.log10(low), math.log10(high), count)


def _inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))
