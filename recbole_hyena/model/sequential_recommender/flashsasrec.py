"""
FlashSASRec
################################################

RecBole's SASRec with its attention computed by PyTorch's fused
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels), so that
it runs at sequence lengths where RecBole's explicit ``[B, heads, L, L]`` score tensor does not
fit. Same layers, config keys and state dict as RecBole's SASRec; same outputs at every real
position.

Reference:
    Wang-Cheng Kang et al. "Self-Attentive Sequential Recommendation." in ICDM 2018.
    Tri Dao et al. "FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness."
    in NeurIPS 2022.
"""

from __future__ import annotations

import torch
from recbole.model.layers import MultiHeadAttention
from torch import nn

from recbole_hyena.model.layers import gather_positions
from recbole_hyena.model.sequential_recommender.zoo_adapters import SASRec


class SDPAMultiHeadAttention(MultiHeadAttention):
    r"""RecBole's ``MultiHeadAttention`` (same parameters: query, key, value, dense, LayerNorm,
    attention and output dropouts) whose attention runs in one fused SDPA call.

    ``attention_mask`` is ``None`` for plain causal attention (the fused kernels' fast path) or a
    boolean tensor broadcastable to ``[B, heads, L, L]``, True where a query may attend a key.
    """

    def forward(
        self,
        input_tensor: torch.Tensor,
        attention_mask: torch.Tensor | None,
        positions: torch.Tensor | None = None,
    ):
        """``[B, L, H] -> [B, L, H]``; with ``positions`` (``[B]``) the outputs at those
        positions only, ``[B, H]``: their queries alone attend over every key."""
        batch_size, seq_len, _ = input_tensor.shape
        queries_from = input_tensor
        if positions is not None:
            queries_from = gather_positions(input_tensor, positions.unsqueeze(1))  # [B, 1, H]
            if attention_mask is None:  # causal: each query sees the keys up to its position
                keys = torch.arange(seq_len, device=input_tensor.device)
                attention_mask = (keys <= positions.unsqueeze(1)).view(batch_size, 1, 1, seq_len)
            else:  # the rows of the [B, 1, L, L] mask at the queries' positions
                attention_mask = gather_positions(attention_mask.transpose(1, 2), positions)
                attention_mask = attention_mask.unsqueeze(2)  # [B, 1, 1, L]
        heads_shape = (batch_size, -1, self.num_attention_heads, self.attention_head_size)
        # [B, heads, L (queries: L or 1), head_size]
        query = self.query(queries_from).view(heads_shape).transpose(1, 2)
        key = self.key(input_tensor).view(heads_shape).transpose(1, 2)
        value = self.value(input_tensor).view(heads_shape).transpose(1, 2)

        # SDPA's default scale is 1 / sqrt(head_size), RecBole's; its dropout acts on the
        # attention probabilities, as RecBole's attn_dropout does.
        context = nn.functional.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=self.attn_dropout.p if self.training else 0.0,
            is_causal=attention_mask is None,
        )  # [B, heads, L, head_size]
        context = context.transpose(1, 2).reshape(batch_size, -1, self.all_head_size)
        hidden_states = self.out_dropout(self.dense(context))
        outputs = self.LayerNorm(hidden_states + queries_from)  # [B, L, H]
        return outputs if positions is None else outputs.squeeze(1)


class FlashSASRec(SASRec):
    r"""SASRec on fused attention: the plugin's SASRec (RecBole's model with all-position
    training) whose attention modules are swapped for :class:`SDPAMultiHeadAttention`.

    A RecBole ``SASRec`` checkpoint loads unchanged. Causal masking costs no memory on
    right-padded batches (RecBole's layout); other padding layouts fall back to an explicit
    boolean mask.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info: RecBole's SASRec has read them all (n_heads, hidden_size, ...)

        # define layers and loss: the same parameters in a module whose forward calls SDPA
        for layer in self.trm_encoder.layer:
            fused = SDPAMultiHeadAttention(
                self.n_heads,
                self.hidden_size,
                self.hidden_dropout_prob,
                self.attn_dropout_prob,
                self.layer_norm_eps,
            )
            fused.load_state_dict(layer.multi_head_attention.state_dict())
            layer.multi_head_attention = fused

        # parameters initialization: copied from the modules RecBole's SASRec initialised

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """RecBole's ``SASRec.forward`` (the output at each sequence's last item, ``[B, H]``),
        with the last layer run at that position only: its attention becomes one query per
        sequence, O(L) instead of O(L^2), and its feed-forward one row. The same result as
        RecBole's (tests); ``forward_sequence`` still runs every position."""
        if self._all_positions:
            return super().forward(item_seq, item_seq_len)
        # RecBole's SASRec embedding: item + learned absolute position, LayerNorm, dropout
        position_ids = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        hidden = self.item_embedding(item_seq) + self.position_embedding(position_ids)
        hidden = self.dropout(self.LayerNorm(hidden))
        attention_mask = self.get_attention_mask(item_seq)
        *layers, last = self.trm_encoder.layer
        for layer in layers:
            hidden = layer(hidden, attention_mask)
        attended = last.multi_head_attention(hidden, attention_mask, positions=item_seq_len - 1)
        return last.feed_forward(attended)  # [B, H]

    def get_attention_mask(
        self, item_seq: torch.Tensor, bidirectional: bool = False
    ) -> torch.Tensor | None:
        """Overrides ``SequentialRecommender.get_attention_mask``, which builds an additive float
        ``[B, 1, L, L]`` mask (32 GB at B=128, L=8000) and keeps SDPA off its fused path.

        ``None`` (causal attention, no mask tensor) when every sequence is right-padded: a real
        position then only sees real items before it, exactly RecBole's causal + padding mask.
        Otherwise a boolean ``[B, 1, L, L]`` mask, causal and padding, where each query may also
        see itself so that no row is fully masked (a fully masked row is NaN in some kernels).
        """
        if bidirectional:
            raise ValueError("FlashSASRec is causal; a bidirectional mask is not supported")
        is_item = item_seq != 0  # [B, L]
        if not (is_item[:, 1:] & ~is_item[:, :-1]).any():
            return None
        seq_len = item_seq.size(1)
        eye = torch.eye(seq_len, dtype=torch.bool, device=item_seq.device)
        visible = is_item.unsqueeze(1) | eye  # [B, L, L]: key is an item, or the query itself
        return visible.tril().unsqueeze(1)  # [B, 1, L, L]
