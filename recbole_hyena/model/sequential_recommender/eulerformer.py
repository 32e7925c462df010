"""
EulerFormer
################################################

Reference:
    Zhen Tian et al. "EulerFormer: Sequential User Behavior Modeling with Complex Vector
    Attention." in SIGIR 2024.

Reference code:
    https://github.com/RUCAIBox/EulerFormer

A causal SASRec-style transformer whose attention reads each pair of query/key coordinates as a
complex number ``r e^{i theta}`` (Euler's formula) and rotates it to ``r e^{i (delta theta +
phi_t)}``: the semantic angle ``theta`` is scaled by a learnt factor ``delta`` (the adaptive
"differential rotation") and the position phase ``phi_t`` is RoPE's; queries get a learnt phase
bias on top. Their dot products then depend on semantic and positional differences through one
rotation. The input embedding is rotated likewise by a learnt phase per position.

Where this departs from the authors' code:
    - The phase contrastive loss (their ``lamb``, searched over {0, 1e-4, 1e-5, 1e-6}) is not
      implemented: this is their ``lamb = 0`` setting.
    - ``delta`` and the query bias are scalars, their defaults; the position phases are fixed
      RoPE angles (their learnable copy is read through ``.data`` and so never trains).
    - Position phases are computed for the batch's length, not stored in the checkpoint.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from recbole.model.layers import FeedForward
from torch import nn

from recbole_hyena.model.abstract_recommender import CausalSequentialRecommender
from recbole_hyena.model.sequence_layers import euler_rotate, rope_angles


class EulerAttention(nn.Module):
    """Causal multi-head softmax attention on Euler-rotated queries and keys, post-norm."""

    def __init__(
        self,
        n_heads: int,
        hidden_size: int,
        hidden_dropout_prob: float,
        attn_dropout_prob: float,
        layer_norm_eps: float,
        init_factor: float,
        euler_bias: bool,
        rope_base: float,
    ):
        super().__init__()
        if hidden_size % n_heads != 0 or (hidden_size // n_heads) % 2 != 0:
            raise ValueError(
                f"EulerFormer needs hidden_size ({hidden_size}) divisible by n_heads ({n_heads}) "
                "into heads of even size (coordinates are rotated in pairs)"
            )
        self.n_heads = n_heads
        self.head_size = hidden_size // n_heads
        self.rope_base = rope_base
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = nn.Dropout(attn_dropout_prob)
        self.out_dropout = nn.Dropout(hidden_dropout_prob)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        # delta: the adaptive scale of the semantic angle; query_phase: the queries' extra phase.
        self.semantic_scale = nn.Parameter(torch.full((1,), float(init_factor)))
        self.query_phase = nn.Parameter(torch.zeros(1)) if euler_bias else None

    def _heads(self, tensor: torch.Tensor) -> torch.Tensor:  # [B, L, H] -> [B, heads, L, H/heads]
        batch, seq_len, _ = tensor.shape
        return tensor.view(batch, seq_len, self.n_heads, self.head_size).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        batch, seq_len, hidden_size = hidden.shape
        # RoPE phases over the whole hidden vector: pairs never straddle two heads
        angles = rope_angles(seq_len, hidden_size, self.rope_base, hidden.device, hidden.dtype)
        query_phase = 0.0 if self.query_phase is None else self.query_phase
        queries = euler_rotate(self.query(hidden), angles, self.semantic_scale, query_phase)
        keys = euler_rotate(self.key(hidden), angles, self.semantic_scale)
        scores = self._heads(queries) @ self._heads(keys).transpose(-1, -2)
        scores = scores / math.sqrt(self.head_size) + attention_mask  # [B, heads, L, L]
        weights = self.attn_dropout(F.softmax(scores, dim=-1))
        context = (weights @ self._heads(self.value(hidden))).transpose(1, 2)
        context = context.reshape(batch, seq_len, hidden_size)
        return self.layer_norm(hidden + self.out_dropout(self.dense(context)))


class EulerFormer(CausalSequentialRecommender):
    r"""EulerFormer: item + position embedding with a learnt phase rotation, ``n_layers`` blocks
    of (Euler attention, feed-forward), weight-tied scores."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.hidden_size = config["hidden_size"]
        self.inner_size = config["inner_size"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.attn_dropout_prob = config["attn_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.initializer_range = config["initializer_range"]
        self.init_factor = config["init_factor"]
        self.euler_bias = config["euler_bias"]
        self.rope_base = config["rope_base"]

        # define layers and loss
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        # a learnt phase per position and coordinate pair, rotating the input embedding
        self.input_phase = nn.Embedding(self.max_seq_length, self.hidden_size // 2)
        self.emb_norm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.emb_dropout = nn.Dropout(self.hidden_dropout_prob)
        self.attention_layers = nn.ModuleList(
            EulerAttention(
                self.n_heads,
                self.hidden_size,
                self.hidden_dropout_prob,
                self.attn_dropout_prob,
                self.layer_norm_eps,
                self.init_factor,
                self.euler_bias,
                self.rope_base,
            )
            for _ in range(self.n_layers)
        )
        self.feed_forwards = nn.ModuleList(
            FeedForward(
                self.hidden_size,
                self.inner_size,
                self.hidden_dropout_prob,
                self.hidden_act,
                self.layer_norm_eps,
            )
            for _ in range(self.n_layers)
        )

        # parameters initialization
        self.apply(self._init_weights)
        # no rotation at the start: the phases learn from zero, as in the authors' code
        nn.init.zeros_(self.input_phase.weight)

    def forward_sequence(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        hidden = self.item_embedding(item_seq) + self.position_embedding(positions)
        # input rotation: semantic angle kept (scale 1), a learnt phase per position added
        hidden = euler_rotate(hidden, self.input_phase(positions), 1.0)
        hidden = self.emb_dropout(self.emb_norm(hidden))  # [B, L, H]
        # causal, and padded keys hidden (they only ever follow the valid ones)
        attention_mask = self.get_attention_mask(item_seq)  # [B, 1, L, L]
        for attention, feed_forward in zip(self.attention_layers, self.feed_forwards):
            hidden = feed_forward(attention(hidden, attention_mask))
        return hidden
