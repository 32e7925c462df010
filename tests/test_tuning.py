"""Grid search with RecBole's HyperTuning (and Ray Tune) over plugin and RecBole models."""

from __future__ import annotations

import csv
import itertools
import json

import matplotlib.image
import pytest
from recbole.trainer.hyper_tuning import _spacesize
from tiny_data import TINY_DATASET, single_thread, write_tiny_dataset  # noqa: F401 (fixture)

from recbole_hyena.tuning import (
    HyperTuning,
    hyper_file,
    hyperopt_tune,
    plot_heatmap,
    ray_tune,
    read_params_file,
)

PAPER_WEIGHT_DECAY = [0.0, 1e-8, 1e-6, 1e-4, 1e-2]
PAPER_DROPOUT = [0.0, 0.2, 0.4, 0.6, 0.8]

pytestmark = pytest.mark.usefixtures("single_thread")


def write_grid(path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def read_csv(path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_paper_grid_is_shipped_and_readable_by_recbole():
    path = hyper_file()
    assert path.name == "paper_grid.hyper"
    space = read_params_file(path)
    assert space == {
        "weight_decay": ("choice", PAPER_WEIGHT_DECAY),
        "hidden_dropout_prob": ("choice", PAPER_DROPOUT),
    }
    # RecBole's own parser reads it, and its exhaustive search covers the 25 points.
    assert _spacesize(HyperTuning._build_space_from_file(str(path))) == 25


def test_params_file_errors_name_the_line(tmp_path):
    path = write_grid(tmp_path / "bad.hyper", ["weight_decay choice [0.0,", "x normal 0,1"])
    with pytest.raises(ValueError, match="line 1"):
        read_params_file(path)
    with pytest.raises(FileNotFoundError, match="paper_grid"):
        hyper_file("no_such_grid")


@pytest.mark.parametrize(
    "line, message",
    [
        ("hidden_dropout_prob choice 0.5", "non-empty list"),
        ("learning_rate uniform 0.001", "uniform takes low,high"),
        ("learning_rate loguniform -9,-5,1", "loguniform takes low,high"),
        ("n_layers quniform 1,4", "quniform takes low,high,q"),
    ],
)
def test_malformed_values_are_refused_with_file_and_line(tmp_path, line, message):
    path = write_grid(tmp_path / "bad.hyper", ["weight_decay choice [0.0,0.01]", line])
    with pytest.raises(ValueError, match=rf"bad\.hyper, line 2 .*{message}"):
        read_params_file(path)


def test_grid_search_runs_every_point_and_survives_a_failing_trial(tmp_path):
    config_dict = write_tiny_dataset(tmp_path / "data")
    # dropout 1.5 is refused by torch: those two trials fail, the other two must still be kept.
    params_file = write_grid(
        tmp_path / "grid.hyper",
        ["weight_decay choice [0.0,0.01]", "hidden_dropout_prob choice [0.0,1.5]"],
    )
    output_file = tmp_path / "out" / "hyper.result"
    output_file.parent.mkdir()
    summary = hyperopt_tune(
        "HyenaRec",
        TINY_DATASET,
        params_file=params_file,
        config_dict=config_dict,
        output_file=output_file,
    )

    points = {
        (r["params"]["weight_decay"], r["params"]["hidden_dropout_prob"]) for r in summary["trials"]
    }
    assert points == set(itertools.product([0.0, 0.01], [0.0, 1.5]))
    assert summary["n_trials"] == 4 and summary["n_failed"] == 2
    for record in summary["trials"]:
        failed = record["params"]["hidden_dropout_prob"] == 1.5
        assert record["status"] == ("failed" if failed else "ok")
        if failed:
            assert "dropout probability" in record["error"] and not record["valid_result"]
        else:
            assert record["error"] is None
            assert {"ndcg@10", "ndcg@20", "recall@10", "recall@20"} <= set(record["valid_result"])
            assert set(record["test_result"]) == set(record["valid_result"])
            assert record["best_valid_score"] == record["valid_result"]["recall@10"]
    finished = [r for r in summary["trials"] if r["status"] == "ok"]
    best = max(finished, key=lambda r: r["valid_result"]["recall@10"])
    assert summary["valid_metric"] == "recall@10"
    assert summary["best_valid_score"] == best["valid_result"]["recall@10"]
    assert summary["best_params"]["hidden_dropout_prob"] == 0.0
    assert summary["best_test_result"] in [r["test_result"] for r in finished]

    # The outputs: RecBole's text export, CSV and JSON with every trial, and the heatmap.
    text = output_file.read_text()
    assert text.count("Valid result:") == 2 and text.count("Failed: ValueError") == 2
    rows = read_csv(tmp_path / "out" / "hyper.csv")
    assert [row["status"] for row in rows].count("failed") == 2 and len(rows) == 4
    assert {"weight_decay", "hidden_dropout_prob", "valid_recall@10", "test_ndcg@20"} <= set(
        rows[0]
    )
    for row in rows:
        record = summary["trials"][int(row["trial"]) - 1]
        if row["status"] == "ok":
            assert float(row["valid_recall@10"]) == record["valid_result"]["recall@10"]
            assert float(row["test_recall@10"]) == record["test_result"]["recall@10"]
    assert json.loads((tmp_path / "out" / "hyper.json").read_text()) == summary
    image = matplotlib.image.imread(summary["files"]["heatmap"])
    assert image.ndim == 3 and min(image.shape[:2]) > 100


def test_heatmap_marks_failed_and_missing_cells(tmp_path):
    def record(wd, dropout, score=None):
        status = "ok" if score is not None else "failed"
        valid = {"recall@10": score} if score is not None else {}
        return {
            "params": {"weight_decay": wd, "hidden_dropout_prob": dropout},
            "status": status,
            "valid_result": valid,
        }

    records = [
        record(0.0, 0.0, 0.2),
        record(0.0, 0.2, 0.3),
        record(0.01, 0.0),
        record(0.01, 0.2, 0.1),
    ]
    path = plot_heatmap(
        records, "weight_decay", "hidden_dropout_prob", "recall@10", tmp_path / "h.png"
    )
    assert matplotlib.image.imread(path).shape[2] in (3, 4)


def test_zoo_model_trial(tmp_path):
    """A RecBole model the plugin does not define (STAMP), through the plugin's objective."""
    config_dict = write_tiny_dataset(tmp_path / "data")
    params_file = write_grid(tmp_path / "grid.hyper", ["embedding_size choice [16,32]"])
    summary = hyperopt_tune(
        "STAMP",
        TINY_DATASET,
        params_file=params_file,
        config_dict=config_dict,
        output_file=tmp_path / "stamp.result",
    )
    assert summary["n_failed"] == 0 and summary["n_trials"] == 2
    assert summary["best_valid_result"]["recall@10"] > 0


@pytest.mark.slow
def test_ray_tune_grid(tmp_path):
    """RecBole's Ray Tune path with a plugin model: a local Ray instance, two trials."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("pyarrow")  # Ray Tune 2.6 needs it to read back its results
    config_dict = write_tiny_dataset(tmp_path / "data")
    params_file = write_grid(tmp_path / "grid.hyper", ["hidden_dropout_prob choice [0.0,1.5]"])
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        summary = ray_tune(
            "HyenaRec",
            TINY_DATASET,
            params_file=params_file,
            config_dict=config_dict,
            output_file=tmp_path / "ray.result",
            storage_path=tmp_path / "ray_results",
        )
    finally:
        ray.shutdown()
    by_dropout = {record["params"]["hidden_dropout_prob"]: record for record in summary["trials"]}
    assert by_dropout[1.5]["status"] == "failed" and "dropout" in by_dropout[1.5]["error"]
    assert by_dropout[0.0]["status"] == "ok" and by_dropout[0.0]["valid_result"]["recall@10"] > 0
    assert summary["best_params"] == {"hidden_dropout_prob": 0.0}
    assert (tmp_path / "ray.csv").is_file() and (tmp_path / "ray.png").is_file()


def test_hyper_tuning_records_failures_without_training(tmp_path):
    """The failure handling alone, with a stand-in objective: every grid point runs once, failed
    trials are recorded, and a search where every trial fails still returns."""

    def objective(config_dict, config_file_list=None):
        if config_dict["b"] == "bad":
            raise RuntimeError(f"no such setting: {config_dict}")
        score = config_dict["a"] / 10
        result = {"ndcg@10": score / 2, "recall@10": score}
        return {
            "model": "Stub",
            "best_valid_score": score,
            "valid_score_bigger": True,
            "best_valid_result": result,
            "test_result": result,
        }

    tuner = HyperTuning(objective, params_dict={"choice": {"a": [1, 2, 3], "b": ["ok", "bad"]}})
    tuner.run()
    assert sorted((r["params"]["a"], r["params"]["b"]) for r in tuner.records) == sorted(
        itertools.product([1, 2, 3], ["ok", "bad"])
    )
    failed = [r for r in tuner.records if r["status"] == "failed"]
    assert len(failed) == 3 and all("RuntimeError: no such setting" in r["error"] for r in failed)
    assert tuner.best_params == {"a": 3, "b": "ok"} and tuner.best_score == pytest.approx(0.3)
    tuner.export_result(output_file=tmp_path / "stub.result")
    assert (tmp_path / "stub.result").read_text().count("Failed: RuntimeError") == 3

    all_fail = HyperTuning(objective, params_dict={"choice": {"a": [1, 2], "b": ["bad"]}})
    all_fail.run()
    assert [r["status"] for r in all_fail.records] == ["failed", "failed"]
    assert all_fail.best_params is None
