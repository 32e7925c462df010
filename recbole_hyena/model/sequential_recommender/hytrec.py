"""
HyTRec
################################################

Reference:
    "HyTRec: A Hybrid Temporal-Aware Attention Architecture for Long Behavior Sequential
    Recommendation", arXiv 2602.18283, 2026.

HyTRec splits a long history in two: a short branch of softmax attention over the most recent K
events (a user's "intent spikes") and a long branch over the earlier history built mostly of
linear-attention layers, the Temporal-Aware Delta Network (TADN, ``recbole_hyena.model.tadn``),
with a few causal softmax layers interleaved. A learned gate fuses the two.

The paper has no public code and only its abstract could be read. What follows it: the long/short
split, the TADN (a delta-rule linear attention whose decay and gating are driven by time) in the
long branch, softmax layers interleaved at a ratio (3 linear : 1 softmax by default), softmax
attention in the short branch, linear cost in the history length. The rest is this project's
design (``shared/HYTREC.md``): the TADN equations, the time features (a bucketed log-scale
embedding of the gap to the previous event), the short branch's long-summary token and relative
position bias, the gated fusion, weight-tied scores with an item bias, and all-position training.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from recbole_hyena.model.abstract_recommender import (
    CausalSequentialRecommender,
    map_chunks,
    read_block_chunk_size,
    sequences_per_chunk,
)
from recbole_hyena.model.fused_norm import LayerNorm
from recbole_hyena.model.layers import Dropout, PreNormBlock, checkpointed, gather_positions
from recbole_hyena.model.tadn import TemporalDeltaNet


class CausalSelfAttention(nn.Module):
    r"""Multi-head causal softmax self-attention, over the whole prefix (``window=0``) or over a
    sliding window (position ``t`` sees events ``t - window + 1 .. t``).

    The windowed form computes blocks of ``window`` queries against the ``2 window`` keys of
    their own and the previous block, so time and memory are O(L * window). It takes a learned
    bias per head and relative distance (the window has no other notion of order) and, optionally,
    one extra key/value per position (``memory`` ``[B, L, D]``), e.g. a summary of the history
    before the window, that every query ``t`` sees beside its window.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float, window: int = 0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"hidden_size {d_model} is not a multiple of n_heads {n_heads}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.window = window
        self.dropout = dropout
        self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        if window > 0:
            self.memory_proj = nn.Linear(d_model, 2 * d_model)
            self.distance_bias = nn.Parameter(torch.zeros(n_heads, window))
            self.memory_bias = nn.Parameter(torch.zeros(n_heads))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, H, L, d]
        return x.view(*x.shape[:2], self.n_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        inputs: torch.Tensor,
        memory: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, L, D] -> [B, L, D]``; with ``positions`` (``[B]`` or ``[B, R]``) the outputs at
        those positions only, ``[B, D]`` or ``[B, R, D]``. Full attention then projects queries
        and attends at those positions alone; the windowed form computes every position."""
        if memory is not None and self.window <= 0:
            raise ValueError("a memory token needs the windowed attention (window > 0)")
        dropout = self.dropout if self.training else 0.0
        if positions is not None and self.window <= 0:
            return self._attend_at(inputs, positions, dropout)
        query, key, value = (self._heads(x) for x in self.qkv_proj(inputs).chunk(3, dim=-1))
        if self.window <= 0:
            outputs = F.scaled_dot_product_attention(
                query, key, value, dropout_p=dropout, is_causal=True
            )
        else:
            outputs = self._windowed(query, key, value, memory, dropout)
        outputs = self.out_proj(outputs.transpose(1, 2).reshape(inputs.shape))
        return outputs if positions is None else gather_positions(outputs, positions)

    def _attend_at(self, inputs: torch.Tensor, positions: torch.Tensor, dropout: float):
        """Causal attention of the queries at ``positions`` over every earlier event."""
        queries_at = positions if positions.dim() == 2 else positions.unsqueeze(1)  # [B, R]
        sizes = [inputs.shape[-1], 2 * inputs.shape[-1]]
        query_weight, key_value_weight = self.qkv_proj.weight.split(sizes)
        query_bias, key_value_bias = self.qkv_proj.bias.split(sizes)
        query = F.linear(gather_positions(inputs, queries_at), query_weight, query_bias)
        key, value = F.linear(inputs, key_value_weight, key_value_bias).chunk(2, dim=-1)
        visible = torch.arange(inputs.shape[1], device=inputs.device) <= queries_at.unsqueeze(-1)
        outputs = F.scaled_dot_product_attention(
            self._heads(query),
            self._heads(key),
            self._heads(value),
            attn_mask=visible.unsqueeze(1),  # [B, 1, R, L]
            dropout_p=dropout,
        )
        outputs = self.out_proj(outputs.transpose(1, 2).flatten(2))  # [B, R, D]
        return outputs if positions.dim() == 2 else outputs.squeeze(1)

    def _windowed(self, query, key, value, memory, dropout) -> torch.Tensor:
        batch, heads, seq_len, head_dim = query.shape
        window = self.window
        n_blocks = -(-seq_len // window)
        tail = n_blocks * window - seq_len

        def query_blocks(x: torch.Tensor) -> torch.Tensor:  # [B, H, n, W, d]
            return F.pad(x, (0, 0, 0, tail)).view(batch, heads, n_blocks, window, head_dim)

        def key_blocks(x: torch.Tensor) -> torch.Tensor:  # [B, H, n, 2W, d]: previous + own block
            padded = F.pad(x, (0, 0, window, tail)).view(batch, heads, n_blocks + 1, window, -1)
            # one contiguous copy; unfold's overlapping view costs a scatter in the backward pass
            return torch.cat([padded[:, :, :-1], padded[:, :, 1:]], dim=3)

        query = query_blocks(query) / math.sqrt(head_dim)
        scores = query @ key_blocks(key).transpose(-1, -2)  # [B, H, n, W, 2W]
        # Query i of a block is event b W + i, key j is event (b - 1) W + j: distance W + i - j.
        rows = torch.arange(window, device=query.device).unsqueeze(1)
        cols = torch.arange(2 * window, device=query.device).unsqueeze(0)
        distance = window + rows - cols
        allowed = (distance >= 0) & (distance < window)  # [W, 2W]
        first_block = allowed & (cols >= window)  # block 0 has no previous block
        allowed = torch.stack([first_block] + [allowed] * (n_blocks - 1))  # [n, W, 2W]
        # bias and mask as one small [H, n, W, 2W] term: a single pass over the scores
        bias = self.distance_bias[:, distance.clamp(0, window - 1)].unsqueeze(1)
        scores = scores + bias.masked_fill(~allowed, -math.inf)
        if memory is not None:
            memory_key, memory_value = (
                query_blocks(self._heads(x)) for x in self.memory_proj(memory).chunk(2, dim=-1)
            )
            memory_scores = (query * memory_key).sum(-1, keepdim=True)
            scores = torch.cat([scores, memory_scores + self.memory_bias.view(-1, 1, 1, 1)], -1)
        weights = F.dropout(scores.softmax(dim=-1), dropout, self.training)
        outputs = weights[..., : 2 * window] @ key_blocks(value)
        if memory is not None:
            outputs = outputs + weights[..., 2 * window :] * memory_value
        return outputs.reshape(batch, heads, n_blocks * window, head_dim)[:, :, :seq_len]


class HyTRec(CausalSequentialRecommender):
    r"""HyTRec: a long branch of TADN and causal softmax layers, a short sliding-window softmax
    branch over the last ``short_window`` events, gated fusion, weight-tied scores.

    Inputs are item ids and the interaction's time list (``TIME_FIELD + LIST_SUFFIX``, e.g.
    ``timestamp_list``, in seconds); without one, positions stand in for time (every gap is 1).
    ``delta_t`` is the gap to the previous event (0 for a sequence's first event), fed both to
    TADN (in units of ``time_unit``) and, bucketed on a log2 scale, as an embedding added to the
    item's.

    Every position is causal, so training at all positions is exact: at position ``t`` the short
    branch attends to events ``t - K + 1 .. t`` (a causal sliding window, not "the last K events
    of the sequence") plus one leading token, the long branch's output at ``t - K`` (the history
    before the window; a learned "empty history" vector while ``t < K``); the fusion gate mixes
    that long summary with the short branch's output. At the last position this is exactly the
    paper's split: the last K events to the short branch, the earlier ones to the long branch.
    Without the short branch (``use_short_branch: False``) the long branch's output at ``t`` is
    the representation.

    Ablations are config values: ``use_short_branch``, ``tadn_time_terms`` (False: the plain gated
    delta rule), ``time_gap_embedding``, ``linear_softmax_ratio`` (0: softmax only; at least
    ``n_long_layers``: TADN only) and ``short_window`` (K).
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.hidden_size = config["hidden_size"]
        self.n_heads = config["n_heads"]
        self.inner_size = config["inner_size"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.attn_dropout_prob = config["attn_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.layer_norm_backend = config["layer_norm_backend"] or "auto"
        self.initializer_range = config["initializer_range"]
        self.n_long_layers = config["n_long_layers"]
        self.linear_softmax_ratio = config["linear_softmax_ratio"]
        self.long_attn_window = config["long_attn_window"]
        self.use_short_branch = config["use_short_branch"]
        self.short_window = config["short_window"]
        self.n_short_layers = config["n_short_layers"]
        self.tadn_time_terms = config["tadn_time_terms"]
        self.time_gap_embedding = config["time_gap_embedding"]
        self.n_time_buckets = config["n_time_buckets"]
        self.time_unit = config["time_unit"]
        self.tadn_conv_size = config["tadn_conv_size"]
        self.tadn_chunk_size = config["tadn_chunk_size"]
        self.tadn_backend = config["tadn_backend"]
        self.gradient_checkpointing = config["gradient_checkpointing"]
        self.block_chunk_size = read_block_chunk_size(config)
        time_field = config["TIME_FIELD"]
        self.TIME_SEQ = time_field + config["LIST_SUFFIX"] if time_field else None
        if self.n_long_layers < 1:
            raise ValueError(f"n_long_layers must be >= 1, got {self.n_long_layers}")
        if self.use_short_branch and self.short_window < 1:
            raise ValueError(f"short_window must be >= 1, got {self.short_window}")
        if self.linear_softmax_ratio < 0:
            raise ValueError(f"linear_softmax_ratio must be >= 0, got {self.linear_softmax_ratio}")

        # define layers and loss
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.item_bias = nn.Parameter(torch.zeros(self.n_items))
        if self.time_gap_embedding:
            # bucket 0: no previous event in the input (first position) or padding
            self.gap_embedding = nn.Embedding(self.n_time_buckets, self.hidden_size, padding_idx=0)
        self.emb_norm = self._layer_norm()
        self.emb_dropout = Dropout(self.hidden_dropout_prob)
        self.long_blocks = nn.ModuleList(
            self._block(self._long_mixer(layer)) for layer in range(self.n_long_layers)
        )
        self.long_norm = self._layer_norm()
        if self.use_short_branch:
            self.empty_history = nn.Parameter(torch.zeros(self.hidden_size))
            self.short_blocks = nn.ModuleList(
                self._block(
                    CausalSelfAttention(
                        self.hidden_size, self.n_heads, self.attn_dropout_prob, self.short_window
                    )
                )
                for _ in range(self.n_short_layers)
            )
            self.short_norm = self._layer_norm()
            self.fusion_gate = nn.Linear(2 * self.hidden_size, self.hidden_size)
        # The interaction's time list while an entry point (loss, predict) runs; see _times_of.
        self._time_seq: torch.Tensor | None = None

        # parameters initialization
        self.apply(self._init_weights)
        if self.use_short_branch:
            nn.init.normal_(self.empty_history, std=self.initializer_range)
        # The generic pass above re-draws every nn.Linear; TADN restores its gate initialisation.
        for module in self.modules():
            if isinstance(module, TemporalDeltaNet):
                module.reset_parameters()

    def _long_mixer(self, layer: int) -> nn.Module:
        """Layer ``layer`` of the long branch: every (ratio + 1)-th layer is softmax attention."""
        ratio = self.linear_softmax_ratio
        if ratio == 0 or (layer + 1) % (ratio + 1) == 0:
            return CausalSelfAttention(
                self.hidden_size, self.n_heads, self.attn_dropout_prob, self.long_attn_window
            )
        return TemporalDeltaNet(
            self.hidden_size,
            self.n_heads,
            conv_size=self.tadn_conv_size,
            time_terms=self.tadn_time_terms,
            chunk_size=self.tadn_chunk_size,
            backend=self.tadn_backend,
        )

    def _block(self, mixer: nn.Module) -> PreNormBlock:
        return PreNormBlock(
            self.hidden_size,
            mixer,
            self.inner_size,
            self.hidden_dropout_prob,
            self.hidden_act,
            self.layer_norm_eps,
            self.layer_norm_backend,
        )

    def _layer_norm(self) -> LayerNorm:
        return LayerNorm(self.hidden_size, eps=self.layer_norm_eps, backend=self.layer_norm_backend)

    def time_gaps(
        self, item_seq: torch.Tensor, time_seq: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaps to the previous event, ``[B, L]``, in ``time_unit`` (in events without a time
        list), and their log2 buckets ``[B, L]``; both 0 at the first position and at padding."""
        mask = item_seq > 0
        if time_seq is None:
            gaps = torch.ones(item_seq.shape, device=item_seq.device)
            unit = 1.0
        else:
            if time_seq.shape != item_seq.shape:
                raise ValueError(
                    f"time list [{self.TIME_SEQ}] has shape {tuple(time_seq.shape)}, the item "
                    f"list {tuple(item_seq.shape)}"
                )
            # float64 for the difference: epoch seconds do not fit float32's mantissa
            times = time_seq.double()
            gaps = F.pad(times[:, 1:] - times[:, :-1], (1, 0)).clamp(min=0).float()
            unit = float(self.time_unit)
        has_previous = mask.clone()
        has_previous[:, 0] = False
        gaps = gaps * has_previous
        buckets = 1 + torch.log2(1 + gaps).floor().long().clamp(max=self.n_time_buckets - 2)
        return gaps / unit, buckets * has_previous

    def forward(
        self,
        item_seq: torch.Tensor,
        item_seq_len: torch.Tensor,
        time_seq: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Representations at the last valid positions, ``[B, H]`` (prefix training and every
        evaluation): equal to ``forward_sequence`` gathered there, at a fraction of its cost
        (see ``_forward_chunk``)."""
        return self._representations(item_seq, time_seq, item_seq_len - 1)

    def forward_sequence(
        self,
        item_seq: torch.Tensor,
        item_seq_len: torch.Tensor,
        time_seq: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Representations at every position ``[B, L, H]``; ``time_seq`` defaults to the time
        list of the interaction being scored (see ``_times_of``)."""
        return self._representations(item_seq, time_seq)

    def _representations(
        self,
        item_seq: torch.Tensor,
        time_seq: torch.Tensor | None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``_forward_chunk`` on ``block_chunk_size`` sequences at a time (see
        ``sequences_per_chunk``)."""
        if time_seq is None:
            time_seq = self._time_seq
        widest = max(self.inner_size, 3 * self.hidden_size)  # the MLP's or q/k/v's features
        chunk = sequences_per_chunk(
            self.block_chunk_size, item_seq, widest * self.item_embedding.weight.element_size()
        )
        return map_chunks(self._forward_chunk, chunk, item_seq, time_seq, positions)

    def _forward_chunk(
        self,
        item_seq: torch.Tensor,
        time_seq: torch.Tensor | None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, L, H]``, or with ``positions`` (``[B]``) ``[B, H]`` at those positions only.

        A position's output reads the short branch over its own ``span`` = n_short_layers x
        (K - 1) + 1 events (each layer widens the receptive field by K - 1) and the long
        summaries K events before each of them. So for scored positions the short branch runs
        on those ``span`` events alone, and the long branch's last block (its queries, MLP and
        norm) at their ``span`` summary positions: at L=1000 and K=50 about a tenth of the
        sequence. Within the span, the short layers' outputs at its earliest events miss the
        events before the span, but the scored position reads none of those outputs.
        """
        batch, seq_len = item_seq.shape
        span = self.n_short_layers * (self.short_window - 1) + 1
        if positions is not None and self.use_short_branch and span >= seq_len:
            # nothing to save: every position is in the span
            return gather_positions(self._forward_chunk(item_seq, time_seq), positions)
        mask = item_seq > 0  # [B, L]
        gaps, buckets = self.time_gaps(item_seq, time_seq)
        hidden = self.item_embedding(item_seq)  # [B, L, H]
        if self.time_gap_embedding:
            hidden = hidden + self.gap_embedding(buckets)
        hidden = self.emb_dropout(self.emb_norm(hidden))

        window = summary_at = long_positions = None
        if positions is not None:
            long_positions = positions
            if self.use_short_branch:
                start = (positions - span + 1).clamp(min=0)
                window = start.unsqueeze(1) + torch.arange(span, device=item_seq.device)
                summary_at = window - self.short_window  # < 0: no history before the window
                long_positions = summary_at.clamp(min=0)
        long_hidden = hidden
        last = len(self.long_blocks) - 1
        for index, block in enumerate(self.long_blocks):
            run = checkpointed(block, self.gradient_checkpointing)
            at = long_positions if index == last else None
            if isinstance(block.mixer, TemporalDeltaNet):
                long_hidden = run(long_hidden, gaps, mask, positions=at)
            else:
                long_hidden = run(long_hidden, positions=at)
        long_hidden = self.long_norm(long_hidden)  # [B, L | span, H], or [B, H]
        if not self.use_short_branch:
            return long_hidden

        # The long branch's output at t - K summarises the history before position t's window.
        if window is None:
            empty = self.empty_history.expand(batch, self.short_window, -1)
            long_summary = torch.cat([empty, long_hidden], dim=1)[:, :seq_len]  # [B, L, H]
            short_hidden = hidden
        else:
            has_history = (summary_at >= 0).unsqueeze(-1)
            long_summary = torch.where(has_history, long_hidden, self.empty_history)
            short_hidden = gather_positions(hidden, window)  # [B, span, H]
        for block in self.short_blocks:
            short_hidden = checkpointed(block, self.gradient_checkpointing)(
                short_hidden, memory=long_summary
            )
        short_hidden = self.short_norm(short_hidden)
        if window is not None:  # the scored positions' rows of the span
            in_window = positions - window[:, 0]
            short_hidden = gather_positions(short_hidden, in_window)  # [B, H]
            long_summary = gather_positions(long_summary, in_window)
        gate = torch.sigmoid(self.fusion_gate(torch.cat([long_summary, short_hidden], dim=-1)))
        return gate * long_summary + (1 - gate) * short_hidden

    @contextmanager
    def _times_of(self, interaction):
        """Makes the interaction's time list visible to ``forward_sequence`` while one of the
        entry points below runs: the shared prefix/all-position code in the base classes calls
        ``forward_sequence(item_seq, item_seq_len)`` without it."""
        has_times = self.TIME_SEQ is not None and self.TIME_SEQ in interaction
        self._time_seq = interaction[self.TIME_SEQ] if has_times else None
        try:
            yield
        finally:
            self._time_seq = None

    def calculate_loss(self, interaction) -> torch.Tensor:
        with self._times_of(interaction):
            return super().calculate_loss(interaction)

    def predict(self, interaction) -> torch.Tensor:
        with self._times_of(interaction):
            return super().predict(interaction)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        with self._times_of(interaction):
            return super().full_sort_predict(interaction)
