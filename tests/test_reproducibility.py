"""The same seed gives the same run twice in a row (CPU, ml-100k, tiny settings)."""

from __future__ import annotations

import glob

import pytest
import torch
from tiny_data import single_thread  # noqa: F401 (fixture)

from recbole_hyena.quick_start import run_recbole_hyena
from recbole_hyena.trainer import load_checkpoint

TINY_ML100K = {
    "use_gpu": False,
    "gpu_id": "",
    "MAX_ITEM_LIST_LENGTH": 10,
    "hidden_size": 16,
    "inner_size": 32,
    "filter_order": 8,
    "epochs": 1,
    "train_batch_size": 2048,
    "eval_batch_size": 4096,
    "show_progress": False,
    "state": "ERROR",
}

pytestmark = pytest.mark.usefixtures("single_thread")


def best_state_dict(folder) -> dict:
    (path,) = glob.glob(f"{folder}/*.pth")
    return load_checkpoint(path)["state_dict"]


def test_same_seed_same_metrics_and_weights(tmp_path):
    results = []
    for run in ("first", "second"):
        config_dict = {**TINY_ML100K, "seed": 7, "checkpoint_dir": str(tmp_path / run)}
        results.append(run_recbole_hyena("HyenaRec", "ml-100k", config_dict=config_dict))
    first, second = results
    assert first["best_valid_result"]["recall@10"] > 0
    assert first == second
    # metrics are rounded to 4 decimals: the trained weights must match bit for bit too
    first_state, second_state = (
        best_state_dict(tmp_path / "first"),
        best_state_dict(tmp_path / "second"),
    )
    assert first_state.keys() == second_state.keys()
    for name, tensor in first_state.items():
        assert torch.equal(tensor, second_state[name]), name
