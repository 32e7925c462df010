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
    """
    batch, heads, seq_len, d_k = k.shape
    d_v = v.shape[-1]
    chunk_size = max(1, min(chunk_size, seq_len))
    n_chunks = -(-seq_len // chunk_size)
    pad = n_chunks * chunk_size - seq_len
    if pad:
        # Padded events neither decay nor write (alpha = 1, beta = 0): the state passes through.
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        log_alpha, beta = F.pad(log_alpha, (0, pad)), F.pad(beta, (0, pad))

    def chunks(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(batch, heads, n_chunks, chunk_size, *x.shape[3:])

    q, k, v, log_alpha, beta = (chunks(x) for x in (q, k, v, log_alpha, beta))
    log_g = log_alpha.cumsum(dim=-1)  # [B, H, N, C], cumulative decay from the chunk's start
    # Decay from event j to event i >= j; entries j > i are masked before exp (they would overflow).
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril()
    log_ratio = (log_g.unsqueeze(-1) - log_g.unsqueeze(-2)).masked_fill(~causal, -math.inf)
    gamma = log_ratio.exp()  # [B, H, N, C, C]

    beta_ = beta.unsqueeze(-1)
    beta_k = beta_ * k
    # A (strictly lower) and the scores Q K^T * Gamma in one product, as both multiply K^T. The
    # solver reads only the strict lower triangle of I + A (unitriangular) and its backward
    # returns a gradient there alone, so A keeps Gamma's diagonal unmasked.
    products = torch.cat([beta_k, q], dim=-2) @ k.transpose(-1, -2)  # [B, H, N, 2C, C]
    products = products.unflatten(-2, (2, chunk_size)) * gamma.unsqueeze(-3)
    system, scores = products.unbind(dim=-3)
    rhs = torch.cat([beta_ * v, beta_k * log_g.exp().unsqueeze(-1)], dim=-1)
    solved = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
    values, keys_w = solved.split([d_v, d_k], dim=-1)  # U_v [.., C, d_v], W [.., C, d_k]

    # Across chunks the state follows S_{n+1} = S_n M_n + E_n with
    # M_n = g_C I - W^T diag(g_C / g) K and E_n = U_v^T diag(g_C / g) K, both computed for all
    # chunks at once: the sequential loop is one fused multiply-add per chunk, which keeps the
    # per-step overhead small when a long sequence makes hundreds of chunks.
    k_to_end = k * (log_g[..., -1:] - log_g).exp().unsqueeze(-1)  # [B, H, N, C, d_k]
    chunk_decay = log_g[..., -1].exp()[..., None, None]  # [B, H, N, 1, 1]
    identity = torch.eye(d_k, dtype=k.dtype, device=k.device)
    writes, keys_w_to_end = (solved.transpose(-1, -2) @ k_to_end).split([d_v, d_k], dim=-2)
    transitions = chunk_decay * identity - keys_w_to_end  # [B, H, N, d_k, d_k]

    state = initial_state
    if state is None:
        state = q.new_zeros(batch, heads, d_v, d_k)
    state = state.reshape(batch * heads, d_v, d_k)
    # unbind once: indexing chunk n in the loop would make autograd write a full-size gradient
    # per chunk (quadratic in the number of chunks)
    states = []
    for transition, write in zip(
        transitions.flatten(0, 1).unbind(dim=1), writes.flatten(0, 1).unbind(dim=1)
    ):
        states.append(state)
        state = torch.baddbmm(write, state, transition)
    states_before = torch.stack(states, dim=1).view(batch, heads, n_chunks, d_v, d_k)
    state = state.view(batch, heads, d_v, d_k)

    # U = U_v - W S_0^T; O = diag(g) Q S_0^T + (Q K^T * Gamma) U, batched over all chunks
    q_decayed = q * log_g.exp().unsqueeze(-1)
    read = torch.cat([keys_w, q_decayed], dim=-2) @ states_before.transpose(-1, -2)
    keys_w_read, q_read = read.split(chunk_size, dim=-2)  # W S_0^T, diag(g) Q S_0^T
    outputs = q_read + scores @ (values - keys_w_read)
    outputs = outputs.reshape(batch, heads, n_chunks * chunk_size, d_v)
    return outputs[:, :, :seq_len], state


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
