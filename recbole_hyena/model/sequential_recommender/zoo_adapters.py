"""
Zoo adapters
################################################

RecBole's causal baselines with all-position training. Each class is RecBole's own model (same
layers, config keys, state dict and prefix-mode behaviour); the adapter only reads the output at
every position instead of the last one, so that ``train_mode: autoregressive`` trains them on the
same protocol as HyenaRec.

Reference:
    Wang-Cheng Kang et al. "Self-Attentive Sequential Recommendation." in ICDM 2018.
    Balázs Hidasi et al. "Session-based Recommendations with Recurrent Neural Networks." in ICLR 2016.
    Jing Li et al. "Neural Attentive Session-based Recommendation." in CIKM 2017.
"""

from __future__ import annotations

import torch
from recbole.model.sequential_recommender.gru4rec import GRU4Rec as RecBoleGRU4Rec
from recbole.model.sequential_recommender.narm import NARM as RecBoleNARM
from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec
from torch.utils.checkpoint import checkpoint

from recbole_hyena.model.abstract_recommender import AllPositionMixin


class PerPositionAdapter(AllPositionMixin):
    """For RecBole models whose ``forward`` ends with ``gather_indexes(output, item_seq_len - 1)``:
    ``forward_sequence`` runs that same ``forward`` with the gather turned into the identity."""

    _all_positions = False

    def forward_sequence(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        self._all_positions = True
        try:
            return self.forward(item_seq, item_seq_len)  # [B, L, H]
        finally:
            self._all_positions = False

    def gather_indexes(self, output: torch.Tensor, gather_index: torch.Tensor) -> torch.Tensor:
        # Overrides SequentialRecommender.gather_indexes only while forward_sequence runs.
        if self._all_positions:
            return output
        return super().gather_indexes(output, gather_index)


class SASRec(PerPositionAdapter, RecBoleSASRec):
    """RecBole's SASRec (causal self-attention), trainable at every position."""


class GRU4Rec(PerPositionAdapter, RecBoleGRU4Rec):
    """RecBole's GRU4Rec, trainable at every position."""


class NARM(AllPositionMixin, RecBoleNARM):
    """RecBole's NARM, trainable at every position.

    NARM's local encoder attends from the last GRU state over all earlier states, so the output
    at position t needs its own query: the sigmoid scores form a ``[B, L, L, H]`` tensor
    (quadratic in L, like attention). It is built a block of query positions at a time, each
    against the keys it can see (about half the pairs), and in training recomputed in the
    backward pass instead of stored, so memory stays at one block.
    """

    # elements of one [B, block, L, H] score block (32 MiB): small blocks skip the most masked pairs
    score_block_elements = 2**23

    def forward_sequence(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        gru_out, _ = self.gru(self.emb_dropout(self.item_embedding(item_seq)))  # [B, L, H]
        keys, queries = self.a_1(gru_out), self.a_2(gru_out)
        batch, length, hidden = gru_out.shape
        causal = torch.ones(length, length, dtype=torch.bool, device=item_seq.device).tril()
        visible = causal & item_seq.gt(0).unsqueeze(1)  # [B, query t, key j]: j <= t, not padding
        block = max(1, self.score_block_elements // (batch * length * hidden))
        recompute = torch.is_grad_enabled() and block < length
        local = []
        for start in range(0, length, block):
            end = min(start + block, length)  # queries start..end-1 see keys 0..end-1 only
            args = (
                keys[:, :end],
                queries[:, start:end],
                gru_out[:, :end],
                visible[:, start:end, :end],
            )
            if recompute:
                local.append(checkpoint(self._local_context, *args, use_reentrant=False))
            else:
                local.append(self._local_context(*args))
        c_t = torch.cat([torch.cat(local, dim=1), gru_out], dim=-1)  # [c_local, c_global]
        return self.b(self.ct_dropout(c_t))

    def _local_context(
        self, keys: torch.Tensor, queries: torch.Tensor, values: torch.Tensor, visible: torch.Tensor
    ) -> torch.Tensor:
        """NARM's weighted sum of the visible states for a block of query positions."""
        scores = torch.sigmoid(keys.unsqueeze(1) + queries.unsqueeze(2))  # [B, T, L, H]
        alpha = self.v_t(scores).squeeze(-1) * visible  # v_t has no bias: masking after is exact
        return alpha @ values  # [B, T, H]
