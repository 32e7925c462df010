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
"""

from __future__ import annotations

import torch
from recbole.model.sequential_recommender.gru4rec import GRU4Rec as RecBoleGRU4Rec
from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec

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
