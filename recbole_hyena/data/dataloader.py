"""
recbole_hyena.data.dataloader
#############################

Full-ranking evaluation that can exclude the items of the user's input sequence.
"""

from __future__ import annotations

from recbole.data.dataloader import FullSortEvalDataLoader


class HistoryMaskedFullSortEvalDataLoader(FullSortEvalDataLoader):
    """RecBole's ``FullSortEvalDataLoader``; with ``history_mask`` the items of each sample's input
    sequence are returned as ``history_index``, whose scores RecBole's trainer sets to -inf (the
    evaluation of LRURec and the HyenaRec paper). RecBole passes no history for sequential models,
    so the default keeps its semantics."""

    def __init__(self, config, dataset, sampler, shuffle=False):
        self.history_mask = config["history_mask"]
        self.item_seq_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
        super().__init__(config, dataset, sampler, shuffle=shuffle)

    def collate_fn(self, index):
        interaction, history_index, positive_u, positive_i = super().collate_fn(index)
        if self.history_mask and self.is_sequential:
            item_seq = interaction[self.item_seq_field]
            rows, positions = (item_seq > 0).nonzero(as_tuple=True)
            history_index = (rows, item_seq[rows, positions])
        return interaction, history_index, positive_u, positive_i
