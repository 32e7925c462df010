"""End to end on the ml-100k that RecBole ships: train, early-stop, reload the best model, test."""

import os
import subprocess
import sys

import pytest

from recbole_hyena.quick_start import run_recbole_hyena

from conftest import REPO_ROOT

TINY = {
    "epochs": 2,
    "hidden_size": 16,
    "inner_size": 32,
    "MAX_ITEM_LIST_LENGTH": 20,
    "show_progress": False,
    "use_gpu": False,
}


def check_result(result):
    assert set(result) == {
        "best_valid_score",
        "valid_score_bigger",
        "best_valid_result",
        "test_result",
    }
    for metrics in (result["best_valid_result"], result["test_result"]):
        base = {"ndcg@10", "ndcg@20", "recall@10", "recall@20"}
        assert set(metrics) == base | {"long_" + key for key in base}
        assert all(0.0 <= value <= 1.0 for value in metrics.values())
        assert metrics["recall@20"] >= metrics["recall@10"]


def test_hyenarec_trains_and_reloads_the_best_checkpoint():
    result = run_recbole_hyena("HyenaRec", "ml-100k", config_dict=TINY)
    check_result(result)
    # far above a random ranking of 1,682 items (recall@10 ~ 0.006)
    assert result["test_result"]["recall@10"] > 0.03
    assert any(name.endswith(".pth") for name in os.listdir("saved"))


@pytest.mark.parametrize("mode", ["prefix", "autoregressive"])
def test_zoo_gru4rec_in_both_training_modes(mode):
    config = {**TINY, "epochs": 1, "embedding_size": 16, "train_mode": mode}
    if mode == "prefix":  # RecBole's prefix samples: one per interaction, ~L times more work
        config.update(MAX_ITEM_LIST_LENGTH=5, train_batch_size=2048)
    check_result(run_recbole_hyena("GRU4Rec", "ml-100k", config_dict=config))


def run_cli(*args):
    return subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "run_recbole_hyena.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_runs_a_plugin_model_and_prints_the_metrics():
    process = run_cli("--model=HyenaRec", *[f"--{key}={value}" for key, value in TINY.items()])
    assert process.returncode == 0, process.stderr[-3000:]
    assert "test result:" in process.stdout and "recall@10" in process.stdout


def test_cli_runs_a_zoo_model():
    process = run_cli(
        "-m",
        "SASRec",
        "--epochs=1",
        "--hidden_size=16",
        "--inner_size=32",
        "--MAX_ITEM_LIST_LENGTH=20",
        "--train_batch_size=2048",
        "--show_progress=False",
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert "test result:" in process.stdout


def test_missing_dataset_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "no-such-set")):
        run_recbole_hyena(
            "HyenaRec", "no-such-set", config_dict={**TINY, "data_path": str(tmp_path)}
        )
