"""
recbole_hyena.data.dataset
##########################

``LongHistoryDataset``: RecBole's ``SequentialDataset`` without its padded copy of the history
for every interaction.

RecBole's ``SequentialDataset.data_augmentation`` stores one ``[MAX_ITEM_LIST_LENGTH]`` row per
interaction (O(N * L) memory: 24 GB for 1M interactions at L=1000). Here each user's time-sorted
interactions are stored once (the sorted ``inter_feat``), a sample is a pair of row indices
``[input_start, input_end)`` whose target is row ``input_end``, and the padded windows are cut
per batch in ``__getitem__``. Peak memory is O(interactions + batch * L).

Two training protocols (``train_mode``):

- ``prefix``: RecBole's samples, one per training target, each with up to L preceding items.
- ``autoregressive``: each user's training targets are cut into windows of at most L positions,
  from the most recent backwards, so that every training target is predicted exactly once; a
  batch also carries ``target_<ITEM_SEQ>``, the next item at every input position (0 where no
  loss is taken).

  ``train_window_stride`` S < L makes the windows overlap: consecutive windows of a user end S
  targets apart, each keeps up to L inputs but takes the loss only at its last S targets (a
  user's earliest window at all of its targets), so every target is still counted once, and
  with at least L - S items of context. S = 1 gives exactly the prefix samples; S = L (or 0,
  the default) non-overlapping windows. The cost per epoch grows as about L / S.

Validation and test samples are exactly those of RecBole's ``LS: valid_and_test`` split.
"""

from __future__ import annotations

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset
from recbole.data.interaction import Interaction

from recbole_hyena.model.abstract_recommender import TARGET_PREFIX

TRAIN_MODES = ("prefix", "autoregressive")
LEAVE_ONE_MODES = {"valid_and_test": 2, "valid_only": 1, "test_only": 1}


class LongHistoryDataset(SequentialDataset):
    """Sequential data set in O(N) memory; see the module docstring."""

    def __init__(self, config):
        self.train_mode = config["train_mode"]
        if self.train_mode not in TRAIN_MODES:
            raise ValueError(f"train_mode [{self.train_mode}] must be one of {list(TRAIN_MODES)}")
        # Sample views (the split data sets) set these; the full data set has none.
        self.input_start: np.ndarray | None = None
        self.input_end: np.ndarray | None = None
        # autoregressive views: the first target row that carries a loss, per window
        self.loss_start: np.ndarray | None = None
        super().__init__(config)

    def _dataframe_to_interaction(self, data):
        """RecBole's conversion, except that the time field stays float64: float32 rounds epoch
        seconds (~1e9) to steps of 64 s, which erases the gaps that time-aware models read."""
        interaction = super()._dataframe_to_interaction(data)
        if self.time_field in data and self.time_field in interaction:
            times = np.asarray(data[self.time_field].values, dtype=np.float64)
            interaction[self.time_field] = torch.from_numpy(times)
        return interaction

    def data_augmentation(self):
        """Overrides RecBole's augmentation: sort once by (user, time) and record each user's rows."""
        self._aug_presets()  # registers the <field>_list fields, as RecBole does
        self._check_field("uid_field", "time_field")
        users = self.inter_feat[self.uid_field].numpy()
        order = recbole_event_order(users, self.inter_feat[self.time_field])
        self.inter_feat = self.inter_feat[torch.from_numpy(order)]
        users = users[order]
        is_first = np.ones(len(users), dtype=bool)
        is_first[1:] = users[1:] != users[:-1]
        self.user_row_start = np.flatnonzero(is_first)
        self.user_row_end = np.append(self.user_row_start[1:], len(users))

    def build(self):
        """Split by leave-one-out like RecBole's ``LS`` and return (train, valid, test) views."""
        eval_args = self.config["eval_args"]
        if eval_args["order"] != "TO":
            raise ValueError("The ordering args for sequential recommendation has to be 'TO'")
        split = eval_args["split"]
        if list(split) != ["LS"] or split["LS"] not in LEAVE_ONE_MODES:
            raise ValueError(
                f"eval_args.split [{split}] is not supported by LongHistoryDataset: use "
                f"{{'LS': one of {list(LEAVE_ONE_MODES)}}}, or set long_history_dataset: False"
            )
        if eval_args["group_by"] != "user":
            raise ValueError("LongHistoryDataset splits per user: set eval_args.group_by: user")
        mode = split["LS"]
        self._change_feat_format()  # DataFrame -> Interaction, then data_augmentation (as RecBole)

        # RecBole makes n - 1 samples for a user with n interactions (targets at rows 1..n-1 of the
        # user) and leaves min(k, samples - 1) of them out, the last for test.
        n_samples = self.user_row_end - self.user_row_start - 1
        held_out = np.minimum(LEAVE_ONE_MODES[mode], np.maximum(n_samples - 1, 0))
        first_target = self.user_row_start + 1
        last_train_target = self.user_row_end - 1 - held_out  # inclusive
        has_train = last_train_target >= first_target

        valid_targets = self.user_row_end[held_out >= 2] - 2
        test_targets = self.user_row_end[held_out >= 1] - 1
        if mode == "valid_only":
            valid_targets, test_targets = test_targets, test_targets[:0]

        if self.train_mode == "autoregressive":
            train_view = self._view(
                *self._windows(first_target[has_train], last_train_target[has_train])
            )
        else:
            train_targets = _concat_ranges(
                first_target[has_train], last_train_target[has_train] + 1
            )
            train_view = self._view(self._prefix_inputs(train_targets), train_targets)
        views = [
            train_view,
            self._view(self._prefix_inputs(valid_targets), valid_targets),
            self._view(self._prefix_inputs(test_targets), test_targets),
        ]
        return views

    def _user_start_of_rows(self, rows: np.ndarray) -> np.ndarray:
        owner = np.searchsorted(self.user_row_start, rows, side="right") - 1
        return self.user_row_start[owner]

    def _prefix_inputs(self, targets: np.ndarray) -> np.ndarray:
        """First input row of each target's prefix: at most L items, within the user."""
        return np.maximum(self._user_start_of_rows(targets), targets - self.max_item_list_len)

    def _windows(
        self, first: np.ndarray, last: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Windows over each user's targets first..last (inclusive), ending every S targets from
        the most recent backwards (S = ``train_window_stride``); returns the windows' input rows
        [start, end) and the first target row of each that takes a loss."""
        length = self.max_item_list_len
        stride = self.config["train_window_stride"] or length
        n_windows = (last - first) // stride + 1
        window_user = np.repeat(np.arange(len(first)), n_windows)
        # k-th window of a user counted from the end: 0, 1, ...
        window_rank = np.arange(n_windows.sum()) - np.repeat(
            np.cumsum(n_windows) - n_windows, n_windows
        )
        user_first = first[window_user]
        window_last = last[window_user] - window_rank * stride
        window_first = np.maximum(user_first, window_last - length + 1)
        loss_start = np.maximum(user_first, window_last - stride + 1)
        # inputs are the rows before the targets
        return window_first - 1, window_last, loss_start

    def _view(
        self,
        input_start: np.ndarray,
        input_end: np.ndarray,
        loss_start: np.ndarray | None = None,
    ):
        """A sample view; with ``loss_start`` an autoregressive one (windows, loss per position)."""
        view = self.copy(self.inter_feat)
        view.input_start = input_start.astype(np.int64)
        view.input_end = input_end.astype(np.int64)
        view.loss_start = None if loss_start is None else loss_start.astype(np.int64)
        return view

    @property
    def autoregressive(self) -> bool:
        return self.loss_start is not None

    def __len__(self) -> int:
        return len(self.inter_feat) if self.input_start is None else len(self.input_start)

    def __getitem__(self, index, join=True):
        if self.input_start is None:
            return super().__getitem__(index, join)
        return self.collate_samples(np.asarray(index, dtype=np.int64).reshape(-1))

    def collate_samples(self, index: np.ndarray) -> Interaction:
        """The samples ``index`` as RecBole's augmented rows: the target row's fields, each
        field's right-padded input list, the list length and, in autoregressive views, the
        next item at every input position."""
        start, end = self.input_start[index], self.input_end[index]
        positions = torch.arange(self.max_item_list_len)
        lengths = torch.from_numpy(end - start)
        is_input = positions.unsqueeze(0) < lengths.unsqueeze(1)  # [B, L]
        rows = torch.from_numpy(start).unsqueeze(1) + positions  # [B, L]
        rows = torch.where(is_input, rows, torch.zeros_like(rows))
        target_rows = torch.from_numpy(end)

        data = {self.item_list_length_field: lengths}
        for field in self.inter_feat.columns:
            column = self.inter_feat[field]
            data[field] = column[target_rows]
            if field != self.uid_field:
                data[getattr(self, f"{field}_list_field")] = _masked_gather(column, rows, is_input)
        if self.autoregressive:
            targets = self.inter_feat[self.iid_field]
            # no loss before the window's loss_start (targets an overlapping window counts)
            takes_loss = is_input & (rows + 1 >= torch.from_numpy(self.loss_start[index])[:, None])
            data[TARGET_PREFIX + self.item_id_list_field] = _masked_gather(
                targets, rows + 1, takes_loss
            )
        return self.join(Interaction(data))

    def __str__(self) -> str:
        info = super().__str__()
        if self.input_start is not None:
            info += f"\nThe number of samples ({'windows' if self.autoregressive else 'prefixes'}): {len(self)}"
        return info


def recbole_event_order(users: np.ndarray, times: torch.Tensor | None) -> np.ndarray:
    """The permutation that puts interactions in ``SequentialDataset``'s order: a stable sort by
    user, then by time as float32, the precision RecBole stores it in (events less than 64 s
    apart at epoch seconds tie there and keep their file order). Sorting exact float64 times
    instead would reorder such events and change RecBole's samples."""
    keys = [np.arange(len(users))]
    if times is not None:
        keys.append(times.float().numpy())
    keys.append(users)
    return np.lexsort(keys)


def _concat_ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """``np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)])`` without the loop."""
    sizes = stops - starts
    offsets = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return np.repeat(starts, sizes) + offsets


def _masked_gather(column: torch.Tensor, rows: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    values = column[rows]  # [B, L, ...]
    keep = keep.view(keep.shape + (1,) * (values.dim() - keep.dim()))
    return torch.where(keep, values, torch.zeros_like(values))
