"""The long-history data path against RecBole's stock sequential path, and its own promises."""

import numpy as np
import pytest
import torch
from recbole.trainer import Trainer

from recbole_hyena.config import Config
from recbole_hyena.data import create_dataset, data_preparation
from recbole_hyena.data.synthetic import user_histories, write_synthetic_dataset
from recbole_hyena.trainer import with_safe_checkpoints
from recbole_hyena.utils import get_model

FIELDS = ["user_id", "item_id", "item_length", "item_id_list", "timestamp_list"]


def prepare(model="HyenaRec", dataset="ml-100k", **overrides):
    config_dict = {"use_gpu": False, "show_progress": False, "MAX_ITEM_LIST_LENGTH": 20}
    config = Config(model=model, dataset=dataset, config_dict={**config_dict, **overrides})
    return config, data_preparation(config, create_dataset(config))


def sample_rows(loader) -> np.ndarray:
    """Every sample of a loader as one integer row, sorted, so two loaders compare as multisets."""
    rows = []
    for batch in loader:
        batch = batch[0] if isinstance(batch, tuple) else batch
        # times at RecBole's float32 precision (the plugin keeps float64, see test_time_gaps_...)
        columns = [batch[f].reshape(len(batch[f]), -1).float().long() for f in FIELDS]
        rows.append(torch.cat(columns, dim=1).numpy())
    rows = np.concatenate(rows)
    return rows[np.lexsort(rows.T[::-1])]


@pytest.fixture(scope="module")
def stock_and_plugin():
    stock = prepare(long_history_dataset=False, train_mode="prefix", history_mask=False)
    plugin = prepare(train_mode="prefix", history_mask=False)
    return stock, plugin


def test_samples_equal_recboles_stock_split(stock_and_plugin):
    (_, stock_loaders), (_, plugin_loaders) = stock_and_plugin
    for stock, plugin in zip(stock_loaders, plugin_loaders):
        assert np.array_equal(sample_rows(stock), sample_rows(plugin))


def test_metrics_equal_the_stock_path_for_a_fixed_model(stock_and_plugin):
    (config, (train, _, stock_test)), (_, (_, _, plugin_test)) = stock_and_plugin
    torch.manual_seed(0)
    model = get_model("HyenaRec")(config, train._dataset)
    trainer = with_safe_checkpoints(Trainer)(config, model)
    stock = trainer.evaluate(stock_test, load_best_model=False)
    plugin = trainer.evaluate(plugin_test, load_best_model=False)
    assert stock == plugin


@pytest.mark.parametrize("stride", [0, 7, 1])
def test_windows_cover_every_training_target_once_without_leaks(stride):
    config, (train, valid, test) = prepare(train_mode="autoregressive", train_window_stride=stride)
    data = train._dataset
    assert data.autoregressive
    items = data.inter_feat["item_id"]
    user_start = data.user_row_start[
        np.searchsorted(data.user_row_start, data.input_start, side="right") - 1
    ]
    seen_rows, contexts = [], []
    for index in np.array_split(np.arange(len(data)), 7):
        batch = data[index]
        rows = torch.from_numpy(data.input_start[index])[:, None] + torch.arange(20)
        has_target = batch["target_item_id_list"] > 0
        # the target of input position t is the next row: never inside its own input 0..t
        assert torch.equal(batch["target_item_id_list"][has_target], items[(rows + 1)[has_target]])
        assert not (has_target & (batch["item_id_list"] == 0)).any()
        if stride == 0:  # non-overlapping windows: a loss at every input position
            assert torch.equal(has_target, batch["item_id_list"] > 0)
        seen_rows.append((rows + 1)[has_target])
        # inputs before each counted target, and the most its user's history allows (L = 20)
        history = (rows + 1) - torch.from_numpy(user_start[index])[:, None]
        inputs = torch.arange(1, 21).expand_as(rows)
        contexts.append(torch.stack([inputs[has_target], history[has_target].clamp(max=20)]))
    seen_rows = torch.cat(seen_rows).sort().values
    # every training target of the stock split (users' rows 1 .. n-3), each exactly once
    expected = []
    for start, end in zip(data.user_row_start, data.user_row_end):
        n = end - start
        held_out = min(2, max(n - 2, 0))
        expected.extend(range(start + 1, end - held_out))
    assert torch.equal(seen_rows, torch.tensor(expected))
    # overlapping windows keep at least L - S + 1 inputs before a target (all of them: S = 1)
    context, available = torch.cat(contexts, dim=1)
    assert (context >= available.clamp(max=20 - (stride or 20) + 1)).all()
    if stride == 1:
        _, (prefix_train, _, _) = prepare(train_mode="prefix")
        prefix = prefix_train._dataset
        assert np.array_equal(
            np.sort(data.input_start * 10**7 + data.input_end),
            np.sort(prefix.input_start * 10**7 + prefix.input_end),
        )


def test_history_mask_removes_exactly_the_input_items():
    _, (_, _, test) = prepare(history_mask=True)
    interaction, history_index, _, _ = next(iter(test))
    rows, items = history_index
    for row in range(len(interaction)):
        sequence = interaction["item_id_list"][row]
        assert set(items[rows == row].tolist()) == set(sequence[sequence > 0].tolist())
    _, (_, _, unmasked) = prepare(history_mask=False)
    assert next(iter(unmasked))[1] is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train_mode": "all"}, "train_mode"),
        ({"history_mask": "yes"}, "history_mask"),
        ({"train_mode": "autoregressive", "long_history_dataset": False}, "long_history_dataset"),
        ({"train_window_stride": -1}, r"train_window_stride \[-1\]"),
        ({"train_window_stride": 2.5}, r"train_window_stride \[2.5\]"),
        ({"train_window_stride": 21}, "exceeds MAX_ITEM_LIST_LENGTH"),
    ],
)
def test_bad_values_of_the_new_keys_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        prepare(**overrides)


def test_autoregressive_mode_refuses_a_non_causal_model():
    with pytest.raises(ValueError, match=r"model \[STAMP\]"):
        prepare(model="STAMP", train_mode="autoregressive")


def test_synthetic_histories_plant_bursts_of_successors():
    rng = np.random.default_rng(0)
    items = user_histories(50, 400, 300, rng, burst_prob=0.1, burst_len=5)
    assert items.min() >= 1 and items.max() <= 300
    successor = (items[:, 1:] - items[:, :-1]) % 300 == 1
    assert successor.mean() > 0.3  # ~ burst share; a random walk alone almost never steps by +1


_NO_FILTERS = {"item_inter_num_interval": None, "user_inter_num_interval": None}


def test_synthetic_dataset_loads_with_the_long_history_path(tmp_path):
    write_synthetic_dataset(str(tmp_path), "synth", n_users=30, n_events=60, n_items=40)
    config, (train, valid, test) = prepare(
        dataset="synth",
        data_path=str(tmp_path),
        train_mode="autoregressive",
        **_NO_FILTERS,
    )
    assert train._dataset.inter_num == 30 * 60
    assert len(test._dataset) == 30 and len(valid._dataset) == 30
    assert len(train._dataset) == 30 * 3  # 57 training targets per user in windows of 20


def _write_inter(folder, name: str, rows: list[tuple[int, int, float]], suffix: str = "inter"):
    data_folder = folder / name
    data_folder.mkdir(exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"{user}\t{item}\t{time:.0f}" for user, item, time in rows]
    (data_folder / f"{name}.{suffix}").write_text("\n".join(lines) + "\n")


def _write_small(folder) -> None:
    """8 users, each rating items 1..8 in order."""
    _write_inter(
        folder, "small", [(u, i, t) for u in range(1, 9) for t, i in enumerate(range(1, 9))]
    )


def test_time_gaps_of_epoch_seconds_survive_loading(tmp_path):
    """float32 holds epoch seconds (~1e9) only to 64 s; the time-aware models read exact gaps."""
    start = 978_300_760
    gaps = [5, 20, 1, 64, 3, 7, 11, 2]
    times = start + np.concatenate([[0], np.cumsum(gaps)])
    rows = [(user, item + 1, t + user) for user in (1, 2) for item, t in enumerate(times)]
    _write_inter(tmp_path, "secs", rows)
    _, (_, _, test) = prepare(
        dataset="secs", data_path=str(tmp_path), train_mode="prefix", **_NO_FILTERS
    )
    batch = next(iter(test))[0]
    history = batch["timestamp_list"][0, : int(batch["item_length"][0])]
    assert history.dtype == torch.float64
    assert history.diff().tolist() == gaps[: len(history) - 1]


def test_sampled_evaluation_takes_recboles_path(tmp_path):
    """uni/pop evaluation scores RecBole's per-interaction samples, which its own loaders build."""
    _write_small(tmp_path)
    eval_args = {
        "split": {"LS": "valid_and_test"},
        "order": "TO",
        "mode": "uni5",
        "group_by": "user",
    }
    config, (train, valid, test) = prepare(
        dataset="small",
        data_path=str(tmp_path),
        train_mode="prefix",
        history_mask=False,
        eval_args=eval_args,
        topk=[3],
        valid_metric="Recall@3",
        **_NO_FILTERS,
    )
    model = get_model("HyenaRec")(config, train._dataset)
    trainer = with_safe_checkpoints(Trainer)(config, model)
    result = trainer.evaluate(test, load_best_model=False)
    assert 0.0 <= result["recall@3"] <= 1.0
    with pytest.raises(ValueError, match="eval_args.mode full"):
        prepare(dataset="small", data_path=str(tmp_path), eval_args=eval_args, **_NO_FILTERS)


def test_fearec_keeps_recboles_augmented_rows(tmp_path):
    """FEARec's loss reads RecBole's per-interaction rows, which only the stock path stores."""
    _write_small(tmp_path)
    config, (train, _, _) = prepare(
        model="FEARec", dataset="small", data_path=str(tmp_path), history_mask=False, **_NO_FILTERS
    )
    model = get_model("FEARec")(config, train._dataset)
    loss = model.calculate_loss(next(iter(train)))
    assert torch.isfinite(loss)


def test_benchmark_files_load_and_are_named_when_missing(tmp_path):
    """Pre-split files (``benchmark_filename``) hold RecBole's augmented rows: its path reads them."""
    folder = tmp_path / "bm"
    folder.mkdir()
    parts = {"train": range(1, 6), "valid": range(6, 7), "test": range(7, 8)}
    for part, targets in parts.items():
        lines = ["user_id:token\titem_id_list:token_seq\titem_id:token"]
        for user in range(1, 5):
            lines += [f"{user}\t{' '.join(map(str, range(1, t + 1)))}\t{t + 1}" for t in targets]
        (folder / f"bm.{part}.inter").write_text("\n".join(lines) + "\n")
    split = {
        "dataset": "bm",
        "data_path": str(tmp_path),
        "benchmark_filename": list(parts),
        "train_mode": "prefix",
        "history_mask": False,
        "load_col": None,
        **_NO_FILTERS,
    }
    _, (train, valid, test) = prepare(**split)
    assert (len(train._dataset), len(valid._dataset), len(test._dataset)) == (20, 4, 4)
    (folder / "bm.valid.inter").unlink()
    with pytest.raises(FileNotFoundError, match=r"bm\.valid\.inter"):
        prepare(**split)
