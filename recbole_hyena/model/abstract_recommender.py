"""
recbole_hyena.model.abstract_recommender
########################################

``CausalSequentialRecommender``: what every causal model of the plugin shares. A subclass
implements ``forward_sequence`` (a representation at every position); this class turns it into
RecBole's ``forward`` (the last valid position), weight-tied scores with an optional item bias,
and two losses: RecBole's prefix loss on ``POS_ITEM_ID`` (CE or BPR) and, when a batch carries a
per-position target list (the all-position data path), cross-entropy at every target.
"""

from __future__ import annotations

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.loss import BPRLoss
from torch import nn

# Field prefix of the per-position targets written by the all-position (autoregressive) data path.
TARGET_PREFIX = "target_"


class CausalSequentialRecommender(SequentialRecommender):
    """A sequential recommender whose output at position t depends on items 0..t only."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.TARGET_ITEM_SEQ = TARGET_PREFIX + self.ITEM_SEQ
        self.loss_type = config["loss_type"]
        if self.loss_type == "BPR":
            self.loss_fct = BPRLoss()
        elif self.loss_type == "CE":
            self.loss_fct = nn.CrossEntropyLoss()
        else:
            raise NotImplementedError(
                f"loss_type [{self.loss_type}] is not supported; make sure it is in ['BPR', 'CE']"
            )
        # Subclasses with a learnable item bias replace this by an nn.Parameter [n_items].
        self.item_bias: torch.Tensor | None = None

    def forward_sequence(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """Representations at every position, ``[B, L, H]``; position t sees items 0..t."""
        raise NotImplementedError

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        output = self.forward_sequence(item_seq, item_seq_len)  # [B, L, H]
        return self.gather_indexes(output, item_seq_len - 1)  # [B, H]

    def item_scores(
        self, seq_output: torch.Tensor, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores of ``items`` (same leading shape as ``seq_output``), or of every item."""
        if items is None:
            scores = seq_output @ self.item_embedding.weight.transpose(0, 1)
            return scores if self.item_bias is None else scores + self.item_bias
        scores = (seq_output * self.item_embedding(items)).sum(dim=-1)
        return scores if self.item_bias is None else scores + self.item_bias[items]

    def calculate_loss(self, interaction) -> torch.Tensor:
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        if self.TARGET_ITEM_SEQ in interaction:
            return self._all_position_loss(
                item_seq, item_seq_len, interaction[self.TARGET_ITEM_SEQ]
            )
        seq_output = self.forward(item_seq, item_seq_len)
        pos_items = interaction[self.POS_ITEM_ID]
        if self.loss_type == "BPR":
            neg_items = interaction[self.NEG_ITEM_ID]
            pos_score = self.item_scores(seq_output, pos_items)
            neg_score = self.item_scores(seq_output, neg_items)
            return self.loss_fct(pos_score, neg_score)
        return self.loss_fct(self.item_scores(seq_output), pos_items)

    def _all_position_loss(
        self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """Cross-entropy of the next item at every position that has one (target 0 = none)."""
        if self.loss_type != "CE":
            raise NotImplementedError("all-position training needs loss_type CE")
        output = self.forward_sequence(item_seq, item_seq_len)  # [B, L, H]
        has_target = targets > 0
        return self.loss_fct(self.item_scores(output[has_target]), targets[has_target])

    def predict(self, interaction) -> torch.Tensor:
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self.item_scores(seq_output, interaction[self.ITEM_ID])  # [B]

    def full_sort_predict(self, interaction) -> torch.Tensor:
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self.item_scores(seq_output)  # [B, n_items]
