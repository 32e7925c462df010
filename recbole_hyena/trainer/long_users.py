"""
recbole_hyena.trainer.long_users
################################

Metrics for the users with the longest histories, beside the usual ones, for every model.

Long histories are what HyenaRec and HyTRec are for, so the evaluation also reports each metric
over the users whose history length is in the top ``1 - long_user_quantile`` share (top 10% by
default) of the evaluated users, under keys prefixed ``long_`` (``long_recall@10``, ...). A user's
history length is their number of interactions in the data set on the plugin's data path, and
the length of the input sequence (at most MAX_ITEM_LIST_LENGTH) on RecBole's stock path.
Under DDP the threshold and the means cover the users of all processes.
"""

from __future__ import annotations

from functools import cache

import torch
from recbole.evaluator.collector import DataStruct

from recbole_hyena.data.dataset import LongHistoryDataset

LONG_PREFIX = "long_"


class LongUserEvaluationMixin:
    """Overrides ``Trainer._full_sort_batch_eval`` (to note each row's history length) and
    ``Trainer.evaluate`` (to add the ``long_`` metrics); everything else is RecBole's."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.long_user_quantile = config["long_user_quantile"]
        if self.long_user_quantile is not None and not 0 < self.long_user_quantile < 1:
            raise ValueError(
                f"long_user_quantile [{self.long_user_quantile}] must be in (0, 1), or None to "
                "turn the long-user metrics off"
            )
        self._row_history_lengths: list[torch.Tensor] = []
        self._user_history_length: torch.Tensor | None = None

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self.long_user_quantile is not None:
            if self._user_history_length is not None:
                lengths = self._user_history_length[interaction[self.config["USER_ID_FIELD"]].cpu()]
            else:
                lengths = interaction[self.config["ITEM_LIST_LENGTH_FIELD"]].cpu()
            self._row_history_lengths.append(lengths)
        return interaction, scores, positive_u, positive_i

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if self.long_user_quantile is None or not eval_data:
            return super().evaluate(eval_data, load_best_model, model_file, show_progress)
        self._row_history_lengths = []
        self._user_history_length = None
        if isinstance(eval_data._dataset, LongHistoryDataset):
            self._user_history_length = _interactions_per_user(eval_data._dataset)
        struct = None
        get_data_struct = self.eval_collector.get_data_struct

        def keep_struct():
            nonlocal struct
            struct = get_data_struct()
            return struct

        self.eval_collector.get_data_struct = keep_struct  # the one RecBole's evaluate reads
        try:
            result = super().evaluate(eval_data, load_best_model, model_file, show_progress)
        finally:
            del self.eval_collector.get_data_struct
        if struct is None or not self._row_history_lengths:
            return result  # not a full-ranking evaluation
        lengths = torch.cat(self._row_history_lengths).float()
        distributed = not self.config["single_spec"] and torch.distributed.is_initialized()
        # Under DDP each process holds a shard of the users: the threshold comes from all of
        # them, and the per-process means are combined weighted by their long users, as
        # RecBole's _map_reduce does for the overall metrics.
        all_lengths = _gather_lengths(lengths) if distributed else lengths
        is_long = lengths >= torch.quantile(all_lengths, self.long_user_quantile)
        long_result = (
            self.evaluator.evaluate(_select_rows(struct, is_long)) if is_long.any() else {}
        )
        if distributed:
            long_result = self._mean_over_processes(long_result, list(result), int(is_long.sum()))
        result.update({LONG_PREFIX + key: value for key, value in long_result.items()})
        return result

    def _mean_over_processes(self, local: dict, keys: list[str], n_rows: int) -> dict:
        totals = torch.tensor(
            [local.get(key, 0.0) * n_rows for key in keys] + [n_rows],
            dtype=torch.float64,
            device=self.device,
        )
        torch.distributed.all_reduce(totals)
        n_total = totals[-1].item()
        places = self.config["metric_decimal_place"]
        return {key: round(totals[i].item() / n_total, places) for i, key in enumerate(keys)}


def _gather_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """The history lengths of every process's rows (the shards may differ in size)."""
    shards: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(shards, lengths.tolist())
    return torch.tensor([length for shard in shards for length in shard])


def _interactions_per_user(dataset: LongHistoryDataset) -> torch.Tensor:
    counts = dataset.user_row_end - dataset.user_row_start
    users = dataset.inter_feat[dataset.uid_field][torch.from_numpy(dataset.user_row_start)]
    table = torch.zeros(dataset.user_num, dtype=torch.long)
    table[users] = torch.from_numpy(counts)
    return table


def _select_rows(struct: DataStruct, rows: torch.Tensor) -> DataStruct:
    """A copy of the collected evaluation data restricted to ``rows`` (per-user tensors only)."""
    selected = DataStruct()
    for key in struct._data_dict:
        value = struct.get(key)
        if isinstance(value, torch.Tensor) and value.dim() > 0 and len(value) == len(rows):
            value = value[rows]
        selected.set(key, value)
    return selected


@cache
def with_long_user_evaluation(trainer_class: type) -> type:
    """``trainer_class`` reporting the ``long_`` metrics too."""
    if issubclass(trainer_class, LongUserEvaluationMixin):
        return trainer_class
    return type(trainer_class.__name__, (LongUserEvaluationMixin, trainer_class), {})
