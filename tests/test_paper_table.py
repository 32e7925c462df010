"""benchmarks/paper_table.py: two models end to end on tiny data, the published rows, new result
keys as columns, and a run cut off mid-training that continues from its checkpoint."""

import csv
import importlib.util

import pytest
import torch

from tests.conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location(
    "paper_table", f"{REPO_ROOT}/benchmarks/paper_table.py"
)
paper_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paper_table)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: a second intra-op thread only adds hand-off cost on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def write_tiny_dataset(folder, n_users=64, n_items=30, length=16):
    """64 users walking the item cycle 1 -> 2 -> ... with one random jump in five."""
    generator = torch.Generator().manual_seed(0)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(1, n_users + 1):
        item = int(torch.randint(1, n_items + 1, (1,), generator=generator))
        for step in range(length):
            lines.append(f"{user}\t{item}\t{step + 1}")
            jump = torch.rand(1, generator=generator).item() < 0.2
            item = (
                int(torch.randint(1, n_items + 1, (1,), generator=generator))
                if jump
                else item % n_items + 1
            )
    (folder / "tiny").mkdir(parents=True, exist_ok=True)
    (folder / "tiny" / "tiny.inter").write_text("\n".join(lines) + "\n")


def tiny_args(tmp_path, models, epochs=1, extra=()):
    write_tiny_dataset(tmp_path / "data")
    settings = {
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "use_gpu": False,
        "MAX_ITEM_LIST_LENGTH": 10,
        "hidden_size": 16,
        "inner_size": 32,
        "state_size": 16,
        "train_batch_size": 256,
        "eval_batch_size": 256,
        "state": "ERROR",
    }
    return (
        ["--dataset", "tiny", "--models", *models, "--epochs", str(epochs)]
        + ["--data_path", str(tmp_path / "data")]
        + ["--out", str(tmp_path / "out"), "--state_dir", str(tmp_path / "state")]
        + [f"--{key}={value!r}" for key, value in settings.items()]
        + list(extra)
    )


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_published_rows():
    assert paper_table.published("HyenaRec", "ml-1m") == {
        "ndcg@10": 0.20007,
        "ndcg@20": 0.22878,
        "recall@10": 0.33471,
        "recall@20": 0.44858,
    }
    ablation = paper_table.published("HyenaRecWoGLU", "steam")
    assert (ablation["ndcg@10"], ablation["recall@10"], ablation["ndcg@20"]) == (
        0.06855,
        0.12936,
        None,
    )
    assert paper_table.published("AtrousHyena", "xlong")["recall@10"] == 0.4701
    assert set(paper_table.published("Mamba4Rec", "ml-1m").values()) == {None}


def test_markdown_reports_training_time_relative_to_hyenarec():
    rows = [
        {"model": "HyenaRec", "train_time_s": "600", "time_per_epoch_s": "20"},
        {"model": "SASRec", "train_time_s": "1500", "time_per_epoch_s": "30"},
        {"model": "GRU4Rec", "train_time_s": "", "time_per_epoch_s": "10"},
    ]
    table = paper_table.render_markdown(rows, "ml-1m")
    cells = {
        line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[-4:-1]]
        for line in table.splitlines()
        if line.startswith("| ") and not line.startswith("| model")
    }
    assert cells["HyenaRec"] == ["1.00x", "1.00x", "1.00x"]
    assert cells["SASRec"] == ["2.50x", "1.50x", "1.77x"]  # paper: SASRec 1.77x on ML-1M
    assert cells["GRU4Rec"] == ["", "0.50x", ""]
    without_reference = paper_table.render_markdown(rows[1:], "ml-1m")
    sasrec_line = next(line for line in without_reference.splitlines() if "| SASRec |" in line)
    assert [cell.strip() for cell in sasrec_line.split("|")[-4:-1]] == ["", "", "1.77x"]


def test_overrides_are_literals_and_state_is_not_state_dir():
    overrides = paper_table.parse_overrides(
        ["--hidden_size=16", "--use_gpu=False", "--state=ERROR", "--topk=[10, 20]", "--x=true"]
    )
    assert overrides == {
        "hidden_size": 16,
        "use_gpu": False,
        "state": "ERROR",
        "topk": [10, 20],
        "x": True,
    }
    with pytest.raises(SystemExit, match="--key=value"):
        paper_table.parse_overrides(["--hidden_size", "16"])


def test_two_models_train_and_write_table_with_every_reported_metric(tmp_path, monkeypatch):
    timed = paper_table.timed_trainer

    def with_extra_metric(trainer_class):
        class Reporting(timed(trainer_class)):
            def evaluate(self, *args, **kwargs):  # a key the table has no column for yet
                result = super().evaluate(*args, **kwargs)
                result["probe@10"] = 0.123
                return result

        return Reporting

    monkeypatch.setattr(paper_table, "timed_trainer", with_extra_metric)
    rows = paper_table.main(tiny_args(tmp_path, ["LRURec", "STAMP"]))
    assert [row["model"] for row in rows] == ["LRURec", "STAMP"]
    written = read_csv(tmp_path / "out" / "paper_table_tiny.csv")
    assert [(row["model"], row["train_mode"], row["history_mask"]) for row in written] == [
        ("LRURec", "autoregressive", "True"),
        ("STAMP", "prefix", "True"),
    ]
    for row in written:
        for metric in paper_table.METRICS:
            assert 0 <= float(row[metric]) <= 1
        assert row["epochs"] == "1" and float(row["train_time_s"]) > 0
        assert int(row["threads"]) >= 1
        assert float(row["probe@10"]) == 0.123
        # the long-history users' metrics, when the evaluation reports them; blank otherwise
        for metric in paper_table.METRICS:
            assert row[f"long_{metric}"] == "" or 0 <= float(row[f"long_{metric}"]) <= 1
        assert row["paper_ndcg@10"] == ""  # no published row for this data set
    markdown = (tmp_path / "out" / "paper_table_tiny.md").read_text()
    assert "| LRURec | " in markdown and "| STAMP | " in markdown
    assert (tmp_path / "out" / "paper_table_tiny.png").stat().st_size > 0
    # every validation of every model, for comparisons at equal epochs
    validations = read_csv(tmp_path / "out" / "paper_table_tiny_validations.csv")
    assert [(row["model"], row["epoch"]) for row in validations] == [
        ("LRURec", "1"),
        ("STAMP", "1"),
    ]
    for row in validations:
        assert 0 <= float(row["recall@10"]) <= 1 and row["seed"] == "2020"
    best = {row["model"]: row["valid_recall@10"] for row in written}
    assert {row["model"]: row["recall@10"] for row in validations} == best
    assert (tmp_path / "out" / "paper_table_tiny_validations.png").stat().st_size > 0

    # a second run skips both models
    monkeypatch.setattr(paper_table, "train_and_test", lambda *args: pytest.fail("retrained"))
    assert len(paper_table.main(tiny_args(tmp_path, ["LRURec", "STAMP"]))) == 2


def test_a_run_cut_off_continues_from_its_last_checkpoint(tmp_path, monkeypatch):
    args = tiny_args(tmp_path, ["HSTU"], epochs=4, extra=["--eval_every_steps", "1"])
    timed = paper_table.timed_trainer

    def cut_off_in_third_validation(trainer_class):
        class CutOff(timed(trainer_class)):
            def _valid_epoch(self, *args, **kwargs):
                if self.last_epoch == 2:
                    raise KeyboardInterrupt
                return super()._valid_epoch(*args, **kwargs)

        return CutOff

    monkeypatch.setattr(paper_table, "timed_trainer", cut_off_in_third_validation)
    with pytest.raises(KeyboardInterrupt):
        paper_table.main(args)
    state = tmp_path / "state" / "tiny" / "HSTU"
    assert (state / "last.pth").is_file() and (state / "best.pth").is_file()
    assert not (tmp_path / "out" / "paper_table_tiny.csv").exists()

    # the saved state belongs to these settings: another epoch cap is refused, by name
    other = tiny_args(tmp_path, ["HSTU"], epochs=5, extra=["--eval_every_steps", "1"])
    with pytest.raises(ValueError, match=r"other settings \(epochs: \[4\] there, \[5\] now"):
        paper_table.main(other)

    started = []

    def recording(trainer_class):
        class Recording(timed(trainer_class)):
            def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
                started.append(epoch_idx)
                return super()._train_epoch(train_data, epoch_idx, *args, **kwargs)

        return Recording

    monkeypatch.setattr(paper_table, "timed_trainer", recording)
    (row,) = paper_table.main(args)
    assert started == [2, 3]  # epochs 0 and 1 were validated and saved before the cut
    # the validations before the cut are kept, none twice
    validations = read_csv(tmp_path / "out" / "paper_table_tiny_validations.csv")
    assert [row["epoch"] for row in validations] == ["1", "2", "3", "4"]
    # rows come back as the CSV holds them
    assert row["epochs"] == "4" and row["resumed"] == "1"
    assert float(row["train_time_s"]) > 0


def test_time_limit_validates_and_stops_at_the_last_epoch_that_fits(tmp_path, monkeypatch):
    # a clock that advances 10 s per training epoch: with a 25 s limit, epoch 1 ends at 20 s and a
    # third epoch would end at 30 s, so epoch 1 is validated (though validation is due only every
    # 1000 steps) and training stops there, 2 epochs of 6
    clock = [0.0]
    monkeypatch.setattr(paper_table.time, "perf_counter", lambda: clock[0])
    timed = paper_table.timed_trainer

    def slow_epochs(trainer_class):
        class Slow(trainer_class):
            def _train_epoch(self, *args, **kwargs):
                clock[0] += 10.0
                return super()._train_epoch(*args, **kwargs)

        return timed(Slow)

    monkeypatch.setattr(paper_table, "timed_trainer", slow_epochs)
    args = tiny_args(tmp_path, ["LRURec"], epochs=6, extra=["--eval_every_steps", "1000"])
    (row,) = paper_table.main([*args, "--time_limit_s", "25"])
    assert row["stopped_by"] == "time limit" and row["epochs"] == "2"
    assert row["best_epoch"] == "2" and row["valid_recall@10"] != ""
    assert "stopped by time limit" in (tmp_path / "out" / "paper_table_tiny.md").read_text()
    # an uncapped run of the same length says why it ended
    (row,) = paper_table.main([*tiny_args(tmp_path / "b", ["LRURec"], epochs=2)])
    assert row["stopped_by"] == "epoch cap" and row["epochs"] == "2"


def test_time_limit_counts_from_the_first_start_across_a_resume(tmp_path, monkeypatch):
    # 10 s per epoch and a 25 s limit: an uninterrupted run trains 2 epochs (test above); cut
    # off in its second validation and resumed, it must not get a fresh 25 s
    clock = [0.0]
    monkeypatch.setattr(paper_table.time, "perf_counter", lambda: clock[0])
    timed = paper_table.timed_trainer
    cut_off = [True]

    def slow_epochs(trainer_class):
        class Slow(trainer_class):
            def _train_epoch(self, *args, **kwargs):
                clock[0] += 10.0
                return super()._train_epoch(*args, **kwargs)

            def _valid_epoch(self, *args, **kwargs):
                if cut_off[0] and self.last_epoch == 1:
                    raise KeyboardInterrupt
                return super()._valid_epoch(*args, **kwargs)

        return timed(Slow)

    monkeypatch.setattr(paper_table, "timed_trainer", slow_epochs)
    args = tiny_args(tmp_path, ["LRURec"], epochs=6, extra=["--eval_every_steps", "1"])
    with pytest.raises(KeyboardInterrupt):
        paper_table.main([*args, "--time_limit_s", "25"])
    cut_off[0] = False
    (row,) = paper_table.main([*args, "--time_limit_s", "25"])
    assert row["stopped_by"] == "time limit" and row["epochs"] == "2" and row["resumed"] == "1"


def test_jobs_train_models_side_by_side_into_one_table(tmp_path):
    rows = paper_table.main([*tiny_args(tmp_path, ["GRU4Rec", "HSTU"]), "--jobs", "2"])
    assert sorted(row["model"] for row in rows) == ["GRU4Rec", "HSTU"]
    for row in rows:
        assert row["concurrent_jobs"] == "2" and 0 <= float(row["ndcg@10"]) <= 1
        log = tmp_path / "out" / f"paper_table_tiny_{row['model']}.log"
        assert f"{row['model']}: NDCG@10" in log.read_text()


@pytest.mark.slow
def test_ml_100k_smoke(tmp_path):
    """The real data path on RecBole's bundled ml-100k: two models, one epoch."""
    rows = paper_table.main(
        ["--dataset", "ml-100k", "--models", "LRURec", "HyenaRec", "--epochs", "1"]
        + ["--out", str(tmp_path / "out"), "--state_dir", str(tmp_path / "state")]
        + ["--hidden_size=16", "--inner_size=32", "--state_size=16", "--use_gpu=False"]
    )
    assert [row["model"] for row in rows] == ["LRURec", "HyenaRec"]
    assert all(0 < float(row["recall@10"]) <= 1 for row in rows)
