"""
LRURec
################################################

Reference:
    Zhenrui Yue et al. "Linear Recurrent Units for Sequential Recommendation." in WSDM 2024.

Reference code:
    https://github.com/yueqirex/LRURec

Each block is a linear recurrent unit ``h_t = lambda * h_{t-1} + gamma * B x_t`` with a complex
diagonal ``lambda`` (stable ring initialisation), read out as ``Re(C h_t)``, followed by a
position-wise feed-forward network, both post-norm residual. Training runs the recurrence in
parallel (recursive doubling, ``ceil(log2 L)`` steps); inference can run it as a recurrence, one
item at a time (``recurrent_inference``), the form that serves a new interaction in O(1).

Where this departs from the authors' code:
    - Right padding, and no padding of the length to a power of two: the scan is causal, so the
      padding after a sequence never reaches it (the authors pad on the left and mask).
    - The complex projections ``B`` and ``C`` are real ``nn.Linear`` layers on the real and
      imaginary parts (the same function class, and RecBole's initialisation applies to them).
    - Embedding and linear weights use RecBole's normal initialisation (std
      ``initializer_range``) instead of a truncated normal, and the padding item's embedding is 0.
    - Weight decay (the authors use 0.01 with AdamW, sparing biases and norms) is RecBole's
      ``weight_decay`` on every parameter, 0 unless configured.
"""

from __future__ import annotations

import math

import torch
from recbole.model.layers import FeedForward
from torch import nn

from recbole_hyena.model.abstract_recommender import CausalSequentialRecommender
from recbole_hyena.model.sequence_layers import linear_recurrence


class LRULayer(nn.Module):
    r"""One linear recurrent unit with a post-norm residual: ``LN(x + Dropout(Re(C h)))``.

    The state has ``state_size`` complex channels with ``lambda = exp(-exp(nu_log) + i
    exp(theta_log))``; ``|lambda|`` starts uniform on the ring ``[r_min, r_max]`` and
    ``gamma = sqrt(1 - |lambda|^2)`` normalises the input so that the state's scale does not grow
    with the decay.
    """

    def __init__(
        self,
        hidden_size: int,
        state_size: int,
        r_min: float,
        r_max: float,
        dropout_prob: float,
        layer_norm_eps: float,
    ):
        super().__init__()
        if not 0 < r_min < r_max < 1:
            raise ValueError(f"LRU needs 0 < r_min < r_max < 1, got r_min={r_min}, r_max={r_max}")
        self.state_size = state_size
        self.r_min, self.r_max = r_min, r_max
        self.input_proj = nn.Linear(hidden_size, 2 * state_size)  # real | imaginary part of B x
        self.output_proj = nn.Linear(2 * state_size, hidden_size)  # Re(C h) from (Re h, Im h)
        self.nu_log = nn.Parameter(torch.empty(state_size))
        self.theta_log = nn.Parameter(torch.empty(state_size))
        self.gamma_log = nn.Parameter(torch.empty(state_size))
        self.dropout = nn.Dropout(dropout_prob)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The LRU ring initialisation of ``lambda`` (RecBole's pass leaves these alone)."""
        with torch.no_grad():
            radius_sq = torch.empty(self.state_size).uniform_(self.r_min**2, self.r_max**2)
            self.nu_log.copy_(torch.log(-0.5 * torch.log(radius_sq)))
            self.theta_log.copy_(torch.log(torch.empty(self.state_size).uniform_(0, 2 * math.pi)))
            self.gamma_log.copy_(0.5 * torch.log(1 - radius_sq))

    def log_decay(self) -> torch.Tensor:
        """``log(lambda)``, ``[state_size]`` complex."""
        return torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log))

    def _drive(self, inputs: torch.Tensor) -> torch.Tensor:
        """``gamma * B x``: the complex input of the recurrence, ``[..., state_size]``."""
        # float32: complex tensors have no bfloat16 type (autocast gives the projection bf16)
        projected = self.input_proj(inputs).float()
        real, imag = projected.split(self.state_size, dim=-1)
        return torch.complex(real, imag) * torch.exp(self.gamma_log)

    def _read_out(self, inputs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        output = self.output_proj(torch.cat([states.real, states.imag], dim=-1))
        return self.layer_norm(inputs + self.dropout(output))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:  # [B, L, H] -> [B, L, H]
        states = linear_recurrence(self._drive(inputs), self.log_decay())  # [B, L, N] complex
        return self._read_out(inputs, states)

    def step(
        self, inputs: torch.Tensor, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step: ``inputs`` ``[B, H]`` and the previous state ``[B, N]`` (None at the
        start) give the output ``[B, H]`` and the new state."""
        drive = self._drive(inputs)
        state = drive if state is None else torch.exp(self.log_decay()) * state + drive
        return self._read_out(inputs, state), state


class LRURec(CausalSequentialRecommender):
    r"""LRURec: embedding, ``n_layers`` blocks of (LRU layer, feed-forward), weight-tied scores
    with a learnable item bias."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.n_layers = config["n_layers"]
        self.hidden_size = config["hidden_size"]
        self.state_size = config["state_size"]
        self.inner_size = config["inner_size"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.lru_dropout_prob = config["lru_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.initializer_range = config["initializer_range"]
        self.r_min = config["r_min"]
        self.r_max = config["r_max"]
        self.recurrent_inference = config["recurrent_inference"]

        # define layers and loss
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.item_bias = nn.Parameter(torch.zeros(self.n_items))
        self.emb_dropout = nn.Dropout(self.hidden_dropout_prob)
        self.emb_norm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.lru_layers = nn.ModuleList(
            LRULayer(
                self.hidden_size,
                self.state_size,
                self.r_min,
                self.r_max,
                self.lru_dropout_prob,
                self.layer_norm_eps,
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

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()

    def _embed(self, item_seq: torch.Tensor) -> torch.Tensor:
        return self.emb_norm(self.emb_dropout(self.item_embedding(item_seq)))

    def forward_sequence(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        if self.recurrent_inference and not self.training:
            return self.forward_recurrent(item_seq, item_seq_len)
        return self.forward_parallel(item_seq, item_seq_len)

    def forward_parallel(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """All positions at once (the scan form), ``[B, L, H]``."""
        hidden = self._embed(item_seq)  # [B, L, H]
        for lru_layer, feed_forward in zip(self.lru_layers, self.feed_forwards):
            hidden = feed_forward(lru_layer(hidden))
        return hidden

    def forward_recurrent(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """One item at a time through every layer (the recurrent form), ``[B, L, H]``.

        Steps stop at the longest sequence in the batch: later positions are padding for every
        row and are returned as zeros.
        """
        embedded = self._embed(item_seq)  # [B, L, H]
        states: list[torch.Tensor | None] = [None] * self.n_layers
        outputs = []
        for t in range(int(item_seq_len.max())):
            hidden = embedded[:, t]  # [B, H]
            for index, (lru_layer, feed_forward) in enumerate(
                zip(self.lru_layers, self.feed_forwards)
            ):
                hidden, states[index] = lru_layer.step(hidden, states[index])
                hidden = feed_forward(hidden)
            outputs.append(hidden)
        outputs = torch.stack(outputs, dim=1)  # [B, max_len, H]
        return nn.functional.pad(outputs, (0, 0, 0, item_seq.shape[1] - outputs.shape[1]))
